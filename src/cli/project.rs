//! `elx project LORA_DIR --bundle B.elxb -o task.elxc`

use super::{Table, file_size, sci, warn};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, CoeffFile, Head, Provenance};
use eigenlorax::eval::project_adapter;
use eigenlorax::tensorfile::TensorFile;
use eigenlorax::{Error, Result};
use std::path::Path;
use std::path::PathBuf;

/// Arguments of `elx project`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The LoRA adapter to express in the subspace (PEFT folder or kohya file); not with
    /// --remap.
    #[arg(required_unless_present = "remap", conflicts_with = "remap")]
    pub adapter: Option<PathBuf>,
    /// The bundle (.elxb) whose subspace to use.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Output coefficient file (.elxc).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Task name recorded in the file (default: the head file's `task`, else the adapter's
    /// folder or file name).
    #[arg(long)]
    pub task: Option<String>,
    /// A classification head to store with the coefficients: safetensors with `head.weight`
    /// [C, d], `head.bias` [C] and metadata `labels` (e.g. the fixtures' `head.safetensors`).
    #[arg(long, conflicts_with = "remap")]
    pub head: Option<PathBuf>,
    /// Carry this task file (.elxc) of the bundle given by --from into --bundle (after `elx
    /// extract --update`): exact when the old subspace lies in the new one, else the share
    /// of each module's ΔŴ the new subspace captures is reported.
    #[arg(long, value_name = "OLD.elxc", requires = "from")]
    pub remap: Option<PathBuf>,
    /// The bundle (.elxb) the --remap task file belongs to.
    #[arg(long, value_name = "OLD.elxb", requires = "remap")]
    pub from: Option<PathBuf>,
}

/// Runs `elx project`.
pub fn run(a: Args) -> Result<()> {
    if let (Some(task), Some(from)) = (&a.remap, &a.from) {
        return run_remap(&a, task, from);
    }
    let Some(adapter_path) = a.adapter.clone() else {
        return Err(Error::Usage(
            "expected an adapter to project (or --remap OLD.elxc --from OLD.elxb)".into(),
        ));
    };
    let mut inputs = vec![adapter_path.as_path(), a.bundle.as_path()];
    inputs.extend(a.head.as_deref());
    super::refuse_clobber(&a.output, &inputs, "-o")?;
    let bundle = Bundle::read(&a.bundle)?;
    let adapter = Adapter::open(&adapter_path)?;
    // An adapter for another base model (declared name, or a module's shape) is refused.
    bundle.manifest.base_identity().check_adapter(
        &adapter,
        &bundle.manifest.modules,
        &format!(
            "bundle {} ({})",
            bundle.manifest.subspace_id,
            bundle.path.display()
        ),
    )?;
    let head = a.head.as_deref().map(Head::read).transpose()?;
    let head_task = match &a.head {
        Some(p) => head_task_name(p)?,
        None => None,
    };
    let p = project_adapter(
        &adapter,
        &bundle.subspace,
        None,
        &format!(
            "bundle {} ({})",
            bundle.manifest.subspace_id,
            bundle.path.display()
        ),
    )?;
    if !p.missing.is_empty() {
        warn(format!(
            "{} module(s) of {} are not in bundle {} and were skipped: {}",
            p.missing.len(),
            adapter_path.display(),
            bundle.manifest.subspace_id,
            p.missing.join(", ")
        ))?;
    }
    if p.modules.is_empty() {
        return Err(Error::bad_file(
            &adapter_path,
            format!(
                "expected at least one module of bundle {} ({}), found none of its {} modules",
                bundle.manifest.subspace_id,
                a.bundle.display(),
                bundle.manifest.modules.len()
            ),
        ));
    }
    let task = a.task.clone().or(head_task).unwrap_or_else(|| {
        adapter_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into())
    });
    let mut t = Table::new(&["module", "r", "K_A", "K_B", "rel. error ΔW"]);
    for (name, c) in &p.modules {
        t.row(vec![
            name.clone(),
            c.alpha_a.nrows().to_string(),
            c.alpha_a.ncols().to_string(),
            c.alpha_b.nrows().to_string(),
            sci(p.measures[name].error),
        ]);
    }
    let coeffs = CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task,
        provenance: Provenance::Projected,
        modules: p.modules,
        head,
    };
    // What `elx run` would refuse (a rank above the bundle's r_max) is refused now.
    coeffs.check_for(&adapter_path, &bundle.manifest)?;
    // What PEFT keeps besides the LoRA pairs (a head, modules_to_save copies, task_type,
    // fan_in_fan_out, target_modules) travels in the file for `elx reconstruct`.
    let pass = eigenlorax::adapter::peft::pass_through(&adapter)?;
    coeffs.write_with(&a.output, pass.as_ref())?;
    out!("{}", t.render())?;
    if let (Some(h), Some(p)) = (&coeffs.head, &a.head) {
        outln!(
            "head: {} classes x {} features from {} (labels {})",
            h.weight.nrows(),
            h.weight.ncols(),
            p.display(),
            h.labels
                .iter()
                .map(|l| super::printable(l))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    if let Some(pt) = &pass {
        let keys: Vec<String> = pt
            .tensors
            .iter()
            .map(|t| {
                format!(
                    "{} {:?} ({} B)",
                    super::printable(&t.name),
                    t.shape,
                    t.data.len()
                )
            })
            .collect();
        outln!(
            "carried for reconstruct: {} non-LoRA tensors, {} B{}{}; task_type {}, fan_in_fan_out {}",
            pt.tensors.len(),
            pt.bytes(),
            if keys.is_empty() { "" } else { ": " },
            keys.join(", "),
            pt.task_type.as_deref().unwrap_or("-"),
            pt.fan_in_fan_out
        )?;
    }
    let (sum, n) = p
        .measures
        .values()
        .map(|m| m.error)
        .filter(|e| e.is_finite())
        .fold((0.0, 0usize), |(s, n), e| (s + e, n + 1));
    if n > 0 {
        outln!("mean relative error of ΔW: {}", sci(sum / n as f64))?;
    }
    outln!(
        "wrote {} (task `{}`, subspace {}, {})",
        a.output.display(),
        super::printable(&coeffs.task),
        coeffs.subspace_id,
        file_size(&a.output)
    )?;
    Ok(())
}

/// `elx project --remap OLD.elxc --from OLD.elxb --bundle NEW.elxb -o NEW.elxc`.
fn run_remap(a: &Args, task: &Path, from: &Path) -> Result<()> {
    super::refuse_clobber(&a.output, &[task, from, a.bundle.as_path()], "-o")?;
    let old = Bundle::read(from)?;
    let new = Bundle::read(&a.bundle)?;
    let c = CoeffFile::read(task)?;
    let (mut out, measures) = c.remap(task, &old, &new)?;
    if let Some(name) = &a.task {
        out.task = name.clone();
    }
    let pass = CoeffFile::read_pass_through(task)?;
    out.write_with(&a.output, pass.as_ref())?;
    let mut t = Table::new(&["module", "K_A", "K_B", "captured", "rel. change ΔŴ"]);
    let mut worst: f64 = 1.0;
    for (name, m) in &measures {
        let co = &out.modules[name];
        worst = worst.min(m.captured);
        t.row(vec![
            name.clone(),
            co.alpha_a.ncols().to_string(),
            co.alpha_b.nrows().to_string(),
            format!("{:.6}", m.captured),
            sci(m.relative_error),
        ]);
    }
    out!("{}", t.render())?;
    // Bases are stored in f32 or coarser: a kept subspace reads as captured to ~1e-6.
    if worst >= 1.0 - 1e-5 {
        outln!(
            "exact: the task's subspace lies in {} (every module captured to within 1e-5)",
            new.manifest.subspace_id
        )?;
    } else {
        warn(format!(
            "the new subspace holds {:.4}% of the task's ΔŴ in its worst module: the task serves differently (project the adapter again if you have it)",
            100.0 * worst
        ))?;
    }
    outln!(
        "wrote {} (task `{}`, subspace {} -> {}, {})",
        a.output.display(),
        super::printable(&out.task),
        old.manifest.subspace_id,
        out.subspace_id,
        file_size(&a.output)
    )?;
    Ok(())
}

/// The `task` entry of a head file's metadata, when it has one.
fn head_task_name(path: &Path) -> Result<Option<String>> {
    let tf = TensorFile::open(path)?;
    Ok(tf.metadata().and_then(|m| m.get("task")).cloned())
}
