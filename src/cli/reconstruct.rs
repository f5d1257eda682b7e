//! `elx reconstruct task.elxc --bundle B.elxb -o PEFT_DIR`

use super::Table;
use eigenlorax::Result;
use eigenlorax::adapter::peft::{self, PeftWriteOptions};
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::subspace;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `elx reconstruct`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The coefficient file (.elxc).
    pub coeffs: PathBuf,
    /// The bundle (.elxb) it belongs to.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Output folder for the PEFT adapter (adapter_config.json + adapter_model.safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write into a folder that is not empty, removing its files first (so no stale file,
    /// e.g. an old head.safetensors, stays beside the new adapter).
    #[arg(long)]
    pub force: bool,
}

/// Runs `elx reconstruct`.
pub fn run(a: Args) -> Result<()> {
    let bundle = Bundle::read(&a.bundle)?;
    let c = CoeffFile::read_for(&a.coeffs, &bundle.manifest)?;
    let mut modules = BTreeMap::new();
    let mut t = Table::new(&["module", "r", "in", "out"]);
    for (name, co) in &c.modules {
        // read_for checked that every module is in the bundle.
        if let Some(s) = bundle.subspace.modules.get(name) {
            let m = subspace::try_reconstruct(co, s)?;
            t.row(vec![
                name.clone(),
                m.rank().to_string(),
                m.in_features().to_string(),
                m.out_features().to_string(),
            ]);
            modules.insert(name.clone(), m);
        }
    }
    eigenlorax::util::prepare_output_dir(&a.output, a.force, &[&a.coeffs, &a.bundle])?;
    let base_model = bundle
        .manifest
        .sources
        .iter()
        .find_map(|s| s.base_model.clone());
    let pass = CoeffFile::read_pass_through(&a.coeffs)?;
    peft::write(
        &a.output,
        &modules,
        &PeftWriteOptions {
            base_model: base_model.clone(),
            pass_through: pass.clone(),
            ..Default::default()
        },
    )?;
    out!("{}", t.render())?;
    if let Some(pt) = &pass {
        outln!(
            "wrote back from the source adapter: {} non-LoRA tensors ({} B), task_type {}, fan_in_fan_out {}, modules_to_save {}, target_modules {}",
            pt.tensors.len(),
            pt.bytes(),
            pt.task_type.as_deref().unwrap_or("-"),
            pt.fan_in_fan_out,
            super::printable(&pt.modules_to_save.to_string()),
            super::printable(&pt.target_modules.to_string())
        )?;
    }
    outln!(
        "wrote PEFT adapter {} (task `{}`, {} modules, base model {})",
        a.output.display(),
        super::printable(&c.task),
        modules.len(),
        base_model.as_deref().unwrap_or("unknown")
    )?;
    Ok(())
}
