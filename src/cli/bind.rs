//! `elx bind BUNDLE.elxb --base model.onnx [--map map.json] [-o bound.elxb]`
//!
//! Resolves every bundle module to a MatMul/Gemm of the base ONNX model (see
//! `eigenlorax::graph::bind`) and stores the binding, with the model's SHA-256, in the
//! bundle. The components are copied byte for byte, so the subspace id and every coefficient
//! file made for it stay valid.

use super::Table;
use eigenlorax::bundle::{Bundle, WeightLayout};
use eigenlorax::graph::bind_file;
use eigenlorax::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest user map file read (a JSON object of module -> node names).
const MAX_MAP_BYTES: u64 = 16 << 20;

/// Arguments of `elx bind`.
#[derive(clap::Args, Debug)]
pub struct BindArgs {
    /// The bundle (.elxb) to bind.
    pub bundle: PathBuf,
    /// The base ONNX model the device will run.
    #[arg(long)]
    pub base: PathBuf,
    /// A JSON object mapping module names to ONNX node names, for modules the automatic rules
    /// cannot resolve (or resolve wrongly): its entries win.
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Output bundle (default: rewrite the input bundle in place, atomically).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Reads a user map: a JSON object of strings.
pub fn read_user_map(path: &Path) -> Result<BTreeMap<String, String>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_MAP_BYTES {
        return Err(Error::bad_file(
            path,
            format!(
                "expected a user map of at most {MAX_MAP_BYTES} bytes, found {}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::bad_file(
            path,
            format!("expected a JSON object of module name -> ONNX node name: {e}"),
        )
    })
}

/// Runs `elx bind`.
pub fn run(args: &BindArgs) -> Result<()> {
    // Binding in place (no -o) rewrites the bundle by design; the model and the map stay.
    let out = args.output.as_deref().unwrap_or(&args.bundle);
    let mut inputs = vec![args.base.as_path()];
    inputs.extend(args.map.as_deref());
    super::refuse_clobber(out, &inputs, "-o")?;
    let bundle = Bundle::read(&args.bundle)?;
    let map = args.map.as_deref().map(read_user_map).transpose()?;
    let binding = bind_file(&args.base, &bundle, map.as_ref())?;
    bundle.with_binding(Some(&binding), out)?;
    let mut t = Table::new(&["module", "node", "weight", "layout", "adds to"]);
    for (m, mb) in &binding.modules {
        t.row(vec![
            m.clone(),
            mb.node.clone(),
            mb.weight.clone(),
            match mb.layout {
                WeightLayout::InOut => "in x out".into(),
                WeightLayout::OutIn => "out x in".into(),
            },
            mb.output.clone(),
        ]);
    }
    out!("{}", t.render())?;
    outln!(
        "bound {} modules of subspace {} to {} (SHA-256 {}); wrote {}",
        binding.modules.len(),
        bundle.manifest.subspace_id,
        args.base.display(),
        binding.base_sha256,
        out.display()
    )?;
    Ok(())
}
