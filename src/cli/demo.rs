//! `elx demo`: the README's main command. Leave-one-out over the committed fixture adapters:
//! per held-out task, extract the subspace of the other adapters, express the held-out adapter
//! in it, and compare with a random orthonormal subspace of the same size (the control that
//! shows whether recycling helped). Writes the bundles, coefficient files and a plot.

use super::{Table, file_size, inspect, pct, sci};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::diagnostics::random_subspace;
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, SourceAdapter, StorageDtype};
use eigenlorax::subspace::{self, ExtractOptions, Subspace};
use eigenlorax::{Error, Result, linalg};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `elx demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder holding one PEFT adapter per task (default: the committed fixtures).
    #[arg(long, default_value = "models/fixtures/adapters")]
    pub adapters: PathBuf,
    /// Where the bundles, coefficient files and plot go.
    #[arg(short, long, default_value = "out/demo")]
    pub output: PathBuf,
    /// Share of the stack's energy the subspace keeps per side.
    #[arg(long, default_value_t = 0.9)]
    pub energy: f64,
    /// Seed of the random-subspace control.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs the leave-one-out demo.
pub fn run(a: Args) -> Result<()> {
    let tasks = task_dirs(&a.adapters)?;
    if tasks.len() < 2 {
        return Err(Error::bad_file(
            &a.adapters,
            format!(
                "expected at least two adapter folders, found {}",
                tasks.len()
            ),
        ));
    }
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;
    let adapters: Vec<Adapter> = tasks
        .iter()
        .map(|p| Adapter::open(p))
        .collect::<Result<_>>()?;
    let no_progress = |_: usize, _: usize, _: &str| {};
    let options = ExtractOptions {
        k_rule_a: subspace::KRule::Energy(a.energy),
        k_rule_b: subspace::KRule::Energy(a.energy),
        ..ExtractOptions::default()
    };
    println!(
        "leave-one-out over {} adapters in {} (subspace keeps {} of the energy per side)\n",
        adapters.len(),
        a.adapters.display(),
        pct(a.energy)
    );
    let mut table = Table::new(&[
        "held out",
        "K_A+K_B",
        "coeff params",
        ".elxc bytes",
        "LoRA params",
        "captured ΔW",
        "random captured",
        "rel. error",
        "random error",
    ]);
    let mut last_bundle = None;
    for (held, adapter) in adapters.iter().enumerate() {
        // Adapters are memory-mapped: opening the others again costs no copy.
        let others: Vec<Adapter> = (0..tasks.len())
            .filter(|i| *i != held)
            .map(|i| Adapter::open(&tasks[i]))
            .collect::<Result<_>>()?;
        let name = task_name(&tasks[held]);
        let space = subspace::extract(&others, &options, &no_progress)?;
        let sources: Vec<SourceAdapter> = others.iter().map(SourceAdapter::from).collect();
        let bundle_path = a.output.join(format!("without-{name}.elxb"));
        Bundle::write(&bundle_path, &space, &sources, StorageDtype::F32, None)?;
        let bundle = Bundle::read(&bundle_path)?;
        let random = random_subspace(&bundle.subspace, a.seed);
        let m = measure(adapter, &bundle.subspace, &random)?;
        let coeffs = CoeffFile {
            subspace_id: bundle.manifest.subspace_id.clone(),
            task: name.clone(),
            provenance: Provenance::Projected,
            modules: m.coefficients,
            head: None,
        };
        let coeff_path = a.output.join(format!("{name}.elxc"));
        coeffs.write(&coeff_path)?;
        let bytes = std::fs::metadata(&coeff_path).map(|x| x.len()).unwrap_or(0);
        table.row(vec![
            name,
            m.k_total.to_string(),
            m.coeff_params.to_string(),
            bytes.to_string(),
            m.lora_params.to_string(),
            pct(m.captured),
            pct(m.random_captured),
            sci(m.error),
            sci(m.random_error),
        ]);
        last_bundle = Some(bundle_path);
    }
    print!("{}", table.render());
    println!(
        "\ncaptured ΔW: share of the held-out adapter's ||ΔW||² inside the other adapters' subspace;\n\
         random: a random orthonormal subspace of the same K (seed {}). rel. error: ||ΔW-ΔŴ||/||ΔW||.",
        a.seed
    );
    if let Some(bundle_path) = last_bundle {
        let plot = a.output.join("explained-variance.png");
        println!("\nlast bundle, inspected against its held-out adapter:");
        inspect::run(inspect::Args {
            file: bundle_path.clone(),
            adapters: vec![tasks[tasks.len() - 1].clone()],
            random_control: true,
            seed: a.seed,
            plot: Some(plot.clone()),
        })?;
        println!(
            "\noutputs in {}: bundles, coefficient files, {} ({})",
            a.output.display(),
            plot.display(),
            file_size(&plot)
        );
    }
    Ok(())
}

/// Leave-one-out figures of one held-out adapter, summed over its modules.
struct Measured {
    coefficients: BTreeMap<String, subspace::Coefficients>,
    k_total: usize,
    coeff_params: usize,
    lora_params: usize,
    captured: f64,
    random_captured: f64,
    error: f64,
    random_error: f64,
}

fn measure(adapter: &Adapter, space: &Subspace, random: &Subspace) -> Result<Measured> {
    let mut m = Measured {
        coefficients: BTreeMap::new(),
        k_total: 0,
        coeff_params: 0,
        lora_params: 0,
        captured: 0.0,
        random_captured: 0.0,
        error: 0.0,
        random_error: 0.0,
    };
    // Energy-weighted over modules: Σ captured_i·||ΔW_i||² / Σ ||ΔW_i||².
    let (mut total, mut err2, mut rerr2) = (0.0, 0.0, 0.0);
    for name in adapter.modules.keys() {
        let (Some(s), Some(r)) = (space.modules.get(name), random.modules.get(name)) else {
            continue;
        };
        let lora = adapter.load_module(name)?;
        let energy = linalg::lowrank_frob(lora.b.as_ref(), lora.a.as_ref()).powi(2);
        let c = subspace::try_project(&lora, s)?;
        let e = subspace::relative_error(&lora, &subspace::try_reconstruct(&c, s)?);
        let rc = subspace::try_project(&lora, r)?;
        let re = subspace::relative_error(&lora, &subspace::try_reconstruct(&rc, r)?);
        total += energy;
        m.captured += subspace::captured_energy(&lora, s) * energy;
        m.random_captured += subspace::captured_energy(&lora, r) * energy;
        err2 += e * e * energy;
        rerr2 += re * re * energy;
        m.k_total += s.a.k_total() + s.b.k_total();
        m.coeff_params += lora.rank() * (s.a.k_total() + s.b.k_total());
        m.lora_params += lora.rank() * (lora.in_features() + lora.out_features());
        m.coefficients.insert(name.clone(), c);
    }
    if total > 0.0 {
        m.captured /= total;
        m.random_captured /= total;
        m.error = (err2 / total).sqrt();
        m.random_error = (rerr2 / total).sqrt();
    }
    Ok(m)
}

fn task_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("adapter_config.json").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn task_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}
