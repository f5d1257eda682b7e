//! `elx leave-one-out --model DIR --adapters DIR [--workload DIR]`: the generation family's
//! leave-one-out (issue 27, the paper's Lots-of-LoRAs experiment) on the device
//! ([`eigenlorax::eval::loo_lm`]): per held-out task, the other tasks' adapters make the
//! subspace, and the task is scored served every way a user could serve it.

use super::plot_lm_curves::{self, Basis, Curve};
use super::{BackendArg, EpArg, Table, pct};
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::Bundle;
use eigenlorax::error::{Error, Result};
use eigenlorax::eval::loo::Base;
use eigenlorax::eval::loo_lm::{
    self, FewShotCell, HostLoraCurve, LmLooConfig, LmMethod, LmTaskResult, LmTaskSpec, LowestPoint,
    Recycled,
};
use eigenlorax::finetune::lm::LmConfig;
use eigenlorax::subspace::{ExtractOptions, KRule};
use eigenlorax::util::write_atomic;
use std::path::{Path, PathBuf};

/// Arguments of `elx leave-one-out`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The decoder: the folder `elx import-gguf` wrote.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The adapters: one PEFT folder per task, `<DIR>/<task>/`. Tasks are those with both an
    /// adapter and data.
    #[arg(long, value_name = "DIR")]
    pub adapters: PathBuf,
    /// The family: `data/<task>/{train,validation,test}.jsonl` (`prompt`, `answer`) and an
    /// optional held_out.txt naming the default held-out tasks.
    #[arg(long, default_value = "models/wordnet_gen", value_name = "DIR")]
    pub workload: PathBuf,
    /// Held-out tasks to run (default: held_out.txt's, else all).
    #[arg(long, value_delimiter = ',', value_name = "TASK,...")]
    pub tasks: Vec<String>,
    /// Hold out every task in turn.
    #[arg(long, conflicts_with = "tasks")]
    pub all_tasks: bool,
    /// The recycled subspace from this bundle of the other tasks' adapters (`elx extract`'s),
    /// for when those adapters are not at hand (`models/wordnet_gen/demo` commits one): one
    /// held-out task (`--tasks T`), whose adapter is `--adapters`/T/ and must not be among the
    /// bundle's sources. No mean-direction row and no K sweep (both extract from the adapters).
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["all_tasks", "k_sweep"])]
    pub others_bundle: Option<PathBuf>,
    /// Prompts are the user's text, to wrap in the chat template (else already rendered, as
    /// in models/wordnet_gen).
    #[arg(long)]
    pub chat: bool,
    /// Most new tokens of an answer.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_tokens: usize,
    /// Most new tokens for the tasks whose name ends with SUFFIX (repeatable).
    #[arg(long, value_name = "SUFFIX=N", default_values = ["_define=32"])]
    pub max_tokens_for: Vec<String>,
    /// Training pairs shown in the in-context row's prompt (0: no in-context row).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub in_context: usize,
    /// Test pairs per task (the first of test.jsonl).
    #[arg(long, default_value_t = 50)]
    pub test: usize,
    /// Training-set sizes of the device-trained rows (prefixes of train.jsonl).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 150], value_name = "N,...")]
    pub few_shot: Vec<usize>,
    /// No device-trained rows: the zero-shot rows alone.
    #[arg(long)]
    pub no_few_shot: bool,
    /// Share of the other adapters' energy the recycled subspace keeps per side.
    #[arg(long, default_value_t = 0.9)]
    pub energy: f64,
    /// Also score the zero-shot recycled and random-basis rows at these fixed K per side
    /// (each K its own extraction): how few coefficients still carry the task.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub k_sweep: Vec<usize>,
    /// Learning rate of the device-trained coefficients (Adam, no decay).
    #[arg(long, default_value_t = LmConfig::default().lr)]
    pub lr: f64,
    /// Pairs per training step (capped at the few-shot size).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Most training steps of a trained row.
    #[arg(long, default_value_t = 400)]
    pub max_steps: u64,
    /// Validation evaluations (one an epoch) without improvement before stopping.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Seed of the training and of the random basis.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A row's Rouge-L gap below this leaves the task out of the Rouge-L share (too small a
    /// denominator); its NLL share stays.
    #[arg(long, default_value_t = 0.10, value_name = "GAP")]
    pub min_gap: f64,
    /// Rows evaluated side by side, one engine (about 1.5 GB for SmolLM2) each.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Inference and training engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
    /// Host LoRA runs to draw beside the trained rows: folders of `<task>/metrics.json` from
    /// `tools/workload/train_wordnet_gen.py train [--train-n N]` (repeatable).
    #[arg(long, value_name = "DIR")]
    pub host_curves: Vec<PathBuf>,
    /// Where bundles, coefficient files, predictions, results.json and the convergence plots
    /// (curves-<task>.svg, curves-mean.svg) go.
    #[arg(short, long, default_value = "out/leave-one-out")]
    pub output: PathBuf,
}

/// Runs `elx leave-one-out`.
pub fn run(a: &Args) -> Result<()> {
    let tasks = family(a)?;
    let held = held_out(a, &tasks)?;
    let cfg = LmLooConfig {
        model: a.model.clone(),
        chat: a.chat,
        extract: ExtractOptions {
            k_rule_a: KRule::Energy(a.energy),
            k_rule_b: KRule::Energy(a.energy),
            ..ExtractOptions::default()
        },
        in_context: a.in_context,
        test_examples: a.test,
        few_shot: if a.no_few_shot {
            Vec::new()
        } else {
            a.few_shot.clone()
        },
        k_sweep: a.k_sweep.clone(),
        lm: LmConfig {
            seed: a.seed,
            lr: a.lr,
            batch_size: a.batch_size,
            max_steps: a.max_steps,
            patience: a.patience,
            ..LmConfig::default()
        },
        random_seed: a.seed,
        backend: a.backend.with_ep(a.ep)?,
        threads: a.threads,
        out_dir: a.output.clone(),
    };
    let base = Base::open(&a.model.join("model.onnx"))?;
    errln!(
        "{} tasks with an adapter and data; holding out {}",
        tasks.len(),
        held.iter()
            .map(|&i| tasks[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let log = |line: &str| {
        let _ = errln!("{line}");
    };
    // A bad host metrics file is refused now, not after the rows' hour of work.
    for &i in &held {
        host_lora_curves(&a.host_curves, &tasks[i].name)?;
    }
    let others = a
        .others_bundle
        .as_deref()
        .map(|p| others_bundle(p, &tasks, &held))
        .transpose()?;
    let mut file = ResultsFile {
        tasks: Vec::new(),
        min_gap: a.min_gap,
        energy: a.energy,
        seed: a.seed,
        lr: a.lr,
        in_context: a.in_context,
        k_sweep: a.k_sweep.clone(),
    };
    let results_path = a.output.join("results.json");
    for &i in &held {
        let r = match &others {
            Some(b) => loo_lm::run_held_out(&cfg, &base, &tasks[i], Recycled::Bundle(b), &log)?,
            None => loo_lm::run_task(&cfg, &base, &tasks, i, &log)?,
        };
        outln!("{}", task_table(&r).render())?;
        file.tasks.push(r);
        // After every task, so an interrupted run keeps what it measured.
        file.write(&results_path)?;
    }
    report(
        &file.tasks,
        a.min_gap,
        &a.host_curves,
        &a.output,
        "svg",
        false,
    )?;
    outln!("wrote {}", results_path.display())?;
    Ok(())
}

/// `results.json` of `elx leave-one-out`: every task's rows and the settings they share.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ResultsFile {
    /// One entry per held-out task.
    pub tasks: Vec<LmTaskResult>,
    /// `--min-gap`.
    pub min_gap: f64,
    /// `--energy`.
    pub energy: f64,
    /// `--seed`.
    pub seed: u64,
    /// `--lr`.
    pub lr: f64,
    /// `--in-context`.
    pub in_context: usize,
    /// `--k-sweep`.
    pub k_sweep: Vec<usize>,
}

impl ResultsFile {
    /// Reads a `results.json`, naming the file when it is not one.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::bad_file(
                path,
                format!("expected the results.json of `elx leave-one-out` ({e})"),
            )
        })
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Usage(format!("results: {e}")))?;
        write_atomic(path, &json)
    }
}

/// What both `elx leave-one-out` and `elx leave-one-out-report` print after the task tables:
/// the shares of the gap over the tasks, the few-shot comparison, and the convergence plots
/// in `output`.
pub(super) fn report(
    results: &[LmTaskResult],
    min_gap: f64,
    host_curves: &[PathBuf],
    output: &Path,
    plot_ext: &str,
    tables: bool,
) -> Result<()> {
    if tables {
        for r in results {
            outln!("{}\n", task_table(r).render())?;
        }
    }
    outln!("{}", summary(results, min_gap))?;
    let hosts = results
        .iter()
        .map(|r| host_lora_curves(host_curves, &r.task))
        .collect::<Result<Vec<_>>>()?;
    if let Some(t) = few_shot_report(results, &hosts) {
        outln!("\n{t}")?;
    }
    for p in plot_curves(output, plot_ext, results, &hosts)? {
        outln!("wrote {}", p.display())?;
    }
    Ok(())
}

/// The bundle of `--others-bundle`, checked against the one held-out task: a leave-one-out
/// whose subspace holds the held-out adapter itself would measure nothing.
fn others_bundle(path: &Path, tasks: &[LmTaskSpec], held: &[usize]) -> Result<Bundle> {
    let &[i] = held else {
        return Err(Error::Usage(format!(
            "--others-bundle holds one task out: name it with --tasks (found {} held-out tasks)",
            held.len()
        )));
    };
    let spec = &tasks[i];
    let bundle = Bundle::read(path)?;
    let own = Adapter::open(&spec.adapter)?.sha256;
    if let Some(s) = bundle.manifest.sources.iter().find(|s| s.sha256 == own) {
        return Err(Error::bad_file(
            path,
            format!(
                "expected a subspace of the other tasks' adapters, but it holds the held-out task {}'s ({}, SHA-256 {}…)",
                spec.name,
                s.path,
                &s.sha256[..12.min(s.sha256.len())]
            ),
        ));
    }
    Ok(bundle)
}

/// The family's tasks: every `data/<task>/` of the workload with an adapter folder (one is
/// enough with `--others-bundle`: the others are in the bundle).
fn family(a: &Args) -> Result<Vec<LmTaskSpec>> {
    let data = a.workload.join("data");
    let entries = std::fs::read_dir(&data).map_err(|e| Error::io(&data, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|t| a.adapters.join(t).join("adapter_config.json").is_file())
        .collect();
    names.sort();
    let least = if a.others_bundle.is_some() { 1 } else { 2 };
    if names.len() < least {
        return Err(Error::Usage(format!(
            "expected at least {least} tasks with both {}/<task>/ and an adapter in {}/<task>/, found {}",
            data.display(),
            a.adapters.display(),
            names.len()
        )));
    }
    let overrides = a
        .max_tokens_for
        .iter()
        .map(|s| {
            s.split_once('=')
                .and_then(|(k, v)| Some((k.to_string(), v.parse::<usize>().ok()?)))
                .ok_or_else(|| {
                    Error::Usage(format!("--max-tokens-for: expected SUFFIX=N, found `{s}`"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(names
        .into_iter()
        .map(|name| {
            let max_tokens = overrides
                .iter()
                .find(|(suffix, _)| name.ends_with(suffix.as_str()))
                .map_or(a.max_tokens, |&(_, n)| n);
            let dir = data.join(&name);
            LmTaskSpec {
                adapter: a.adapters.join(&name),
                train: dir.join("train.jsonl"),
                validation: dir.join("validation.jsonl"),
                test: dir.join("test.jsonl"),
                max_tokens,
                name,
            }
        })
        .collect())
}

/// The held-out tasks: --tasks, --all-tasks, held_out.txt, or every task.
fn held_out(a: &Args, tasks: &[LmTaskSpec]) -> Result<Vec<usize>> {
    let index = |t: &str, what: &Path| {
        tasks.iter().position(|s| s.name == t).ok_or_else(|| {
            Error::Usage(format!(
                "{}: task `{t}` has no adapter in {} or no data",
                what.display(),
                a.adapters.display()
            ))
        })
    };
    if !a.tasks.is_empty() {
        return a
            .tasks
            .iter()
            .map(|t| index(t, Path::new("--tasks")))
            .collect();
    }
    let list = a.workload.join("held_out.txt");
    if a.all_tasks || !list.is_file() {
        return Ok((0..tasks.len()).collect());
    }
    let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| index(t, &list))
        .collect()
}

/// The training pairs a row used on the device ("-" for the fixed rows).
fn size_cell(method: LmMethod, n: usize) -> String {
    match method {
        LmMethod::InContext | LmMethod::Finetuned | LmMethod::RandomBasis => n.to_string(),
        _ => "-".into(),
    }
}

/// A row's name: its method, and its K for the rows of the K sweep.
fn row_label(method: LmMethod, fixed_k: Option<usize>) -> String {
    match fixed_k {
        Some(k) => format!("{}, K = {k}", method.label()),
        None => method.label().to_string(),
    }
}

fn share_cell(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), pct)
}

/// One held-out task's rows with the share of the base → own-LoRA gap each recovers.
pub(super) fn task_table(r: &LmTaskResult) -> Table {
    let mut t = Table::new(&[
        "method",
        "N",
        "Rouge-L",
        "EM",
        "NLL",
        "RL gap",
        "NLL gap",
        "params",
        "bytes",
        "steps (best)",
    ])
    .left(&[0]);
    let (base, own) = (r.row(LmMethod::Base), r.row(LmMethod::OwnLora));
    for row in &r.rows {
        let (rl, nll) = match (base, own) {
            (Some(b), Some(o)) => row.share(b, o),
            _ => (None, None),
        };
        t.row(vec![
            format!("{}: {}", r.task, row_label(row.method, row.fixed_k)),
            size_cell(row.method, row.train_examples),
            format!("{:.3}", row.rouge_l),
            format!("{:.2}", row.exact_match),
            format!("{:.3}", row.nll),
            share_cell(rl),
            share_cell(nll),
            row.parameters.to_string(),
            row.file_bytes.to_string(),
            match row.curve.last() {
                Some(last) => format!("{} ({})", last.step, row.best_step),
                None => String::new(),
            },
        ]);
    }
    t
}

/// Per method (and size), the median and mean share of the gap over the tasks, by Rouge-L
/// (tasks whose own LoRA gains at least `min_gap`) and by NLL (every task).
fn summary(results: &[LmTaskResult], min_gap: f64) -> String {
    let mut keys: Vec<(LmMethod, Option<usize>, usize)> = results
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .map(|x| (x.method, x.fixed_k, x.train_examples))
        })
        .filter(|(m, _, _)| !matches!(m, LmMethod::Base | LmMethod::OwnLora))
        .collect();
    keys.sort();
    keys.dedup();
    let mut t = Table::new(&[
        "method",
        "N",
        "RL gap: median",
        "mean",
        "tasks",
        "NLL gap: median",
        "mean",
        "tasks",
    ])
    .left(&[0]);
    for (method, fixed_k, n) in keys {
        let (mut rl, mut nll) = (Vec::new(), Vec::new());
        for r in results {
            let (Some(b), Some(o), Some(x)) = (
                r.row(LmMethod::Base),
                r.row(LmMethod::OwnLora),
                r.rows
                    .iter()
                    .find(|x| x.method == method && x.fixed_k == fixed_k && x.train_examples == n),
            ) else {
                continue;
            };
            let (s_rl, s_nll) = x.share(b, o);
            if o.rouge_l - b.rouge_l >= min_gap {
                rl.extend(s_rl);
            }
            nll.extend(s_nll);
        }
        t.row(vec![
            row_label(method, fixed_k),
            size_cell(method, n),
            med(&rl),
            mean(&rl),
            rl.len().to_string(),
            med(&nll),
            mean(&nll),
            nll.len().to_string(),
        ]);
    }
    format!(
        "Share of the base -> own-LoRA gap recovered, over held-out tasks (Rouge-L: tasks whose LoRA gains >= {min_gap}):\n{}",
        t.render()
    )
}

fn med(x: &[f64]) -> String {
    if x.is_empty() {
        return "n/a".into();
    }
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    pct(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

fn mean(x: &[f64]) -> String {
    if x.is_empty() {
        return "n/a".into();
    }
    pct(x.iter().sum::<f64>() / x.len() as f64)
}

/// The host LoRA curves of `task` in the `--host-curves` folders (a folder without the task is
/// skipped; a bad metrics file is an error).
fn host_lora_curves(dirs: &[PathBuf], task: &str) -> Result<Vec<HostLoraCurve>> {
    let mut curves = Vec::new();
    for dir in dirs {
        curves.extend(HostLoraCurve::read(dir, task)?);
    }
    Ok(curves)
}

/// The validation curves of one task: its trained rows and its host LoRA runs.
fn task_curves(r: &LmTaskResult, hosts: &[HostLoraCurve]) -> Vec<Curve> {
    let trained = r
        .rows
        .iter()
        .filter(|x| !x.curve.is_empty())
        .map(|x| Curve {
            basis: if x.method == LmMethod::Finetuned {
                Basis::Recycled
            } else {
                Basis::Random
            },
            examples: x.train_examples,
            points: x.curve.iter().map(|p| (p.step, p.val_nll)).collect(),
            mean_of: None,
        });
    let host = hosts.iter().map(|h| Curve {
        basis: Basis::Lora,
        examples: h.examples,
        points: h.points.clone(),
        mean_of: None,
    });
    trained.chain(host).collect()
}

/// Per task and size, the recycled subspace's trained row against the random basis and the
/// host LoRA (issue 27's target 2), and per size how many tasks meet each clause; `None` when
/// no task has both trained rows.
fn few_shot_report(results: &[LmTaskResult], hosts: &[Vec<HostLoraCurve>]) -> Option<String> {
    let cells: Vec<FewShotCell> = results
        .iter()
        .zip(hosts)
        .flat_map(|(r, h)| loo_lm::few_shot_cells(r, h))
        .collect();
    if cells.is_empty() {
        return None;
    }
    let point = |p: &LowestPoint| format!("{:.3} ({})", p.val_nll, p.step);
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut t = Table::new(&[
        "task",
        "N",
        "val: recycled",
        "random",
        "host LoRA",
        "test NLL: recycled",
        "random",
        "Rouge-L: recycled",
        "random",
        "beats random",
        "reaches LoRA sooner",
    ]);
    let mut sizes: Vec<usize> = cells.iter().map(|c| c.examples).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut tally = Vec::new();
    for &n in &sizes {
        let at: Vec<&FewShotCell> = cells.iter().filter(|c| c.examples == n).collect();
        for c in &at {
            t.row(vec![
                c.task.clone(),
                n.to_string(),
                point(&c.recycled),
                point(&c.random),
                c.lora.as_ref().map_or_else(|| "-".into(), point),
                format!("{:.3}", c.recycled_test_nll),
                format!("{:.3}", c.random_test_nll),
                format!("{:.3}", c.recycled_rouge_l),
                format!("{:.3}", c.random_rouge_l),
                yes_no(c.beats_random_on_test_nll()),
                c.reaches_lora_sooner().map_or_else(|| "-".into(), yes_no),
            ]);
        }
        let beats = at.iter().filter(|c| c.beats_random_on_test_nll()).count();
        let judged: Vec<bool> = at.iter().filter_map(|c| c.reaches_lora_sooner()).collect();
        let sooner = judged.iter().filter(|&&b| b).count();
        tally.push(format!(
            "{n} pairs: recycled beats the random basis on test NLL on {beats} of {} tasks; \
             reaches the host LoRA's lowest validation NLL in fewer steps on {}",
            at.len(),
            if judged.is_empty() {
                "- (no host LoRA curves)".to_string()
            } else {
                format!("{sooner} of {}", judged.len())
            }
        ));
    }
    Some(format!(
        "Few-shot: lowest validation NLL (step) and test figures of each trained row:\n{}\n{}",
        t.render(),
        tally.join("\n")
    ))
}

/// Writes curves-<task>.<ext> per task with trained rows, and curves-mean.<ext> over them
/// (ext: svg or png).
fn plot_curves(
    output: &Path,
    ext: &str,
    results: &[LmTaskResult],
    hosts: &[Vec<HostLoraCurve>],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut all: Vec<Curve> = Vec::new();
    for (r, h) in results.iter().zip(hosts) {
        let curves = task_curves(r, h);
        if !curves.iter().any(|c| c.basis != Basis::Lora) {
            continue;
        }
        let path = output.join(format!("curves-{}.{ext}", r.task));
        plot_lm_curves::write(
            &path,
            &format!("{}: validation NLL while training", r.task),
            &curves,
        )?;
        written.push(path);
        all.extend(curves);
    }
    let mut keys: Vec<(usize, u8)> = all.iter().map(|c| (c.examples, c.basis as u8)).collect();
    keys.sort_unstable();
    keys.dedup();
    let mean: Vec<Curve> = keys
        .iter()
        .filter_map(|&(n, b)| {
            let group: Vec<&Curve> = all
                .iter()
                .filter(|c| c.examples == n && c.basis as u8 == b)
                .collect();
            plot_lm_curves::mean_curve(&group)
        })
        .collect();
    if written.len() > 1 {
        let path = output.join(format!("curves-mean.{ext}"));
        plot_lm_curves::write(&path, "mean over the held-out tasks", &mean)?;
        written.push(path);
    }
    Ok(written)
}
