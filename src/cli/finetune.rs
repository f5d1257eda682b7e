//! `elx finetune --model BASE.onnx --bundle B.elxb --train train.jsonl [--val val.jsonl] -o task.elxc`
//!
//! Trains a new task's coefficients (exact gradients through a training graph, or SPSA with
//! forward passes only) and its linear head on the tract runtime or ONNX Runtime
//! (`--backend ort`), and writes them as a `.elxc` that `elx run` serves beside the other
//! tasks.
//! Data is JSONL: pre-tokenized `{"input_ids": [...], "label": ...}` lines, or
//! `{"text": ..., "label": ...}` lines when a tokenizer is given or lies next to the model.
//! With `--objective lm` (a decoder), `{"prompt": ..., "answer": ...}` lines: the coefficients
//! alone are trained on the answer's next-token cross-entropy (`finetune::lm`).

use super::{BackendArg, EpArg, GradArg, progress_bar};
use eigenlorax::finetune::job::{DataSource, FinetuneJob, FinetuneSpec, Recipe, TextOptions};
use eigenlorax::finetune::lm::{LmConfig, LmEvent, LmJob, LmSpec};
use eigenlorax::finetune::{Event, recipe};
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};

/// `--objective`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectiveArg {
    /// An encoder's task: a linear head on the pooled features, trained with the
    /// coefficients (lines with `text` or `input_ids`, and `label`).
    Classify,
    /// A decoder's task: the next-token cross-entropy of the answer, no head (lines with
    /// `prompt` and `answer`; --val required).
    Lm,
}

/// Arguments of `elx finetune`.
#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// Base ONNX model the bundle is bound to.
    #[arg(long, value_name = "BASE.onnx")]
    pub model: PathBuf,
    /// Bundle (.elxb), bound to the model with `elx bind`.
    #[arg(long, value_name = "B.elxb")]
    pub bundle: PathBuf,
    /// Training examples (JSONL).
    #[arg(long, value_name = "train.jsonl")]
    pub train: PathBuf,
    /// Validation examples (JSONL): evaluation, ReduceLROnPlateau and early stopping.
    #[arg(long, value_name = "val.jsonl")]
    pub val: Option<PathBuf>,
    /// Output coefficient file.
    #[arg(short, long, value_name = "task.elxc")]
    pub output: PathBuf,
    /// What the task learns: `classify` (an encoder with a head) or `lm` (a decoder's
    /// answers to prompts).
    #[arg(long, value_enum, default_value = "classify")]
    pub objective: ObjectiveArg,
    /// With --objective lm: wrap each prompt as a user turn in the model's chat template
    /// (without it, prompts are taken as written, e.g. already templated).
    #[arg(long)]
    pub chat: bool,
    /// HF tokenizer.json: lines may then carry `text` instead of `input_ids` (default:
    /// tokenizer.json next to the model, where `elx import-hf` puts it, when there is one).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Longest sequence the model accepts (default: the tokenizer's, else the model folder's
    /// config.json `max_position_embeddings`, else 512).
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// Cut longer examples to the maximum length instead of refusing them.
    #[arg(long)]
    pub truncate: bool,
    /// Padding token id for pre-tokenized data (default: the tokenizer's, else 0).
    #[arg(long, value_name = "ID")]
    pub pad_id: Option<i64>,
    /// Coefficient rank (1 up to the bundle's rank; default: the bundle's smallest r_max).
    #[arg(long = "r", value_name = "R")]
    pub rank: Option<usize>,
    /// Maximum optimisation steps (default: 150 with --grad exact, 1500 with --grad spsa).
    #[arg(long)]
    pub steps: Option<u64>,
    /// How the coefficients' gradient is computed: `exact` (reverse mode through a training
    /// graph on the engine; falls back to `spsa` with a warning when the graph has ops
    /// without a gradient rule) or `spsa` (forward passes only).
    #[arg(long, value_enum, default_value = "exact")]
    pub grad: GradArg,
    /// Micro-batches of an exact-gradient step run at once, one thread each. Each thread
    /// keeps one more micro-batch of activations alive, so the default, 1, gives the smallest
    /// peak memory; on idle cores more threads shorten a step.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// SPSA directions per step (--grad spsa).
    #[arg(long, default_value_t = 2)]
    pub directions: usize,
    /// Seed of the initialisation, the directions and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Examples per step (default: 16; 8 with --objective lm).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate of the coefficients.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Peak learning rate of the head while the coefficients train (default: 4e-3 with
    /// --grad exact; 1e-4 with --grad spsa, so that the head does not re-fit the training set
    /// on its own before the noisy estimates move the coefficients; BENCHMARKS.md, "On-device
    /// finetuning quality").
    #[arg(long)]
    pub head_lr: Option<f64>,
    /// Steps training the head alone first, on features computed once, at
    /// --warmup-head-lr (LP-FT; 0: none, head and coefficients start together from zero).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub head_warmup: u64,
    /// Peak learning rate of the head warm-up.
    #[arg(long, value_name = "LR", default_value_t = 1e-2)]
    pub warmup_head_lr: f64,
    /// Steps between evaluations, early stopping after 6 without improvement (default: 25
    /// with --grad exact, 100 with --grad spsa).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Train the head only over random coefficients in the subspace (ELoRAx^ZS).
    #[arg(long)]
    pub zero_shot: bool,
    /// Write a checkpoint every N steps (with --checkpoint).
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint file (written atomically).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Stop after N steps of this invocation, writing the checkpoint (no task file yet);
    /// continue later with --resume. For devices that train in slices.
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub pause_after: Option<u64>,
    /// Continue the run saved in this checkpoint (same data and settings).
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Task name recorded in the file (default: the output's file stem).
    #[arg(long)]
    pub task: Option<String>,
    /// Inference engine the training runs on.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`); falls back to the CPU with a warning.
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
}

impl FinetuneArgs {
    /// The finetune job these arguments describe.
    fn spec(&self) -> FinetuneSpec {
        FinetuneSpec {
            data: DataSource::Files {
                train: self.train.clone(),
                val: self.val.clone(),
            },
            text: TextOptions {
                tokenizer: self.tokenizer.clone(),
                max_length: self.max_length,
                truncate: self.truncate,
                pad_id: self.pad_id,
            },
            recipe: Recipe {
                rank: self.rank,
                steps: self.steps,
                grad: self.grad.mode(),
                threads: self.threads,
                directions: self.directions,
                seed: self.seed,
                batch_size: self
                    .batch_size
                    .unwrap_or(recipe::Defaults::EXACT.batch_size),
                lr: self.lr,
                head_lr: self.head_lr,
                head_warmup: self.head_warmup,
                warmup_head_lr: self.warmup_head_lr,
                eval_every: self.eval_every,
                zero_shot: self.zero_shot,
                checkpoint_every: self.checkpoint_every,
                checkpoint: self.checkpoint.clone(),
                resume: self.resume.clone(),
            },
        }
    }
}

/// Runs `elx finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    if args.objective == ObjectiveArg::Lm {
        return run_lm(args);
    }
    if args.chat {
        return Err(Error::Usage("--chat goes with --objective lm".into()));
    }
    if args.checkpoint.is_some() && args.checkpoint_every.is_none() && args.pause_after.is_none() {
        // It would never be written: the checkpoints are written every N steps or at a pause.
        return Err(Error::Usage(
            "--checkpoint is written every --checkpoint-every N steps or at --pause-after N; give one of them".into(),
        ));
    }
    let mut inputs = vec![
        args.model.as_path(),
        args.bundle.as_path(),
        args.train.as_path(),
    ];
    inputs.extend(args.val.as_deref());
    inputs.extend(args.tokenizer.as_deref());
    // Resuming from the checkpoint it keeps writing is how a device trains in slices, so
    // --resume is an input of -o only.
    if let Some(ck) = &args.checkpoint {
        super::refuse_clobber(ck, &inputs, "--checkpoint")?;
    }
    inputs.extend(args.resume.as_deref());
    super::refuse_clobber(&args.output, &inputs, "-o")?;
    let backend = args.backend.with_ep(args.ep)?;
    let mut job = FinetuneJob::open(&args.spec(), &args.model, &args.bundle, backend, &mut |w| {
        super::warn(w)
    })?;
    let steps = job.max_steps();

    let bar = progress_bar(steps);
    bar.set_position(job.steps());
    let mut last_val = String::from("val -");
    let mut last_loss = f64::NAN;
    let pause_at = args
        .pause_after
        .map_or(u64::MAX, |n| job.steps().saturating_add(n));
    let mut sink = super::LogSink::default();
    let report = job.fit_until(pause_at, &mut |e: &Event| match e {
        Event::Step(s) => {
            last_loss = s.loss;
            bar.set_position(s.step);
            bar.set_message(format!("loss {last_loss:.4}  {last_val}"));
        }
        Event::Eval { val, metric, .. } => {
            last_val = match val.and_then(|v| v.accuracy) {
                Some(a) => format!("val acc {:.1}% (loss {metric:.4})", 100.0 * a),
                None => format!("train loss {metric:.4}"),
            };
            bar.set_message(format!("loss {last_loss:.4}  {last_val}"));
        }
        Event::Checkpoint(step) if bar.is_hidden() => {
            sink.line(format_args!("checkpoint at step {step}"))
        }
        Event::Checkpoint(step) => bar.println(format!("checkpoint at step {step}")),
    })?;
    sink.finish()?;
    bar.finish_and_clear();
    if report.paused {
        let ck = args.checkpoint.as_deref().unwrap_or(Path::new("?"));
        outln!(
            "paused at step {} of {} ({} forward passes); continue with --resume {}",
            report.steps,
            steps,
            report.forward_passes,
            ck.display()
        )?;
        return Ok(());
    }

    let task = task_name(args);
    job.write_task(&args.output, &task)?;
    let summary = job.summary()?;
    let classes = job.classes();
    outln!(
        "{} steps, {} ({} engine runs){}; best {} {:.4} at step {}",
        report.steps,
        job.gradient_name(),
        report.forward_passes,
        if report.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        if args.val.is_some() {
            "validation loss"
        } else {
            "training loss"
        },
        report.best_metric,
        report.best_step,
    )?;
    let n_train = summary.train_examples;
    outln!(
        "train: loss {:.6}, accuracy {:.1}% ({} examples, {} classes: {})",
        summary.train.loss,
        100.0 * summary.train.accuracy.unwrap_or(f64::NAN),
        if summary.train.examples < n_train {
            format!("{} evenly spaced of {n_train}", summary.train.examples)
        } else {
            n_train.to_string()
        },
        classes.len(),
        classes
            .iter()
            .map(|c| super::printable(c))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if let Some(v) = &summary.val {
        outln!(
            "validation: loss {:.6}, accuracy {:.1}% ({} examples)",
            v.loss,
            100.0 * v.accuracy.unwrap_or(f64::NAN),
            v.examples
        )?;
    }
    outln!(
        "wrote {} (task {}, rank {}{})",
        super::printable(&args.output.display().to_string()),
        super::printable(&task),
        job.rank(),
        if args.zero_shot { ", zero-shot" } else { "" }
    )?;
    Ok(())
}

/// `elx finetune --objective lm`: a decoder task's coefficients from prompt/answer pairs.
fn run_lm(args: &FinetuneArgs) -> Result<()> {
    let classify_only = [
        ("--tokenizer", args.tokenizer.is_some()),
        ("--max-length", args.max_length.is_some()),
        ("--truncate", args.truncate),
        ("--pad-id", args.pad_id.is_some()),
        ("--r", args.rank.is_some()),
        ("--grad spsa", args.grad != super::GradArg::Exact),
        ("--head-lr", args.head_lr.is_some()),
        ("--head-warmup", args.head_warmup > 0),
        ("--zero-shot", args.zero_shot),
        ("--checkpoint", args.checkpoint.is_some()),
        ("--resume", args.resume.is_some()),
    ];
    if let Some((flag, _)) = classify_only.iter().find(|(_, given)| *given) {
        return Err(Error::Usage(format!(
            "{flag} goes with --objective classify; --objective lm trains every coefficient of the bundle's rank with exact gradients, with the decoder folder's tokenizer"
        )));
    }
    let val = args.val.clone().ok_or_else(|| {
        Error::Usage(
            "--objective lm needs --val: the validation NLL picks the kept coefficients and stops the run".into(),
        )
    })?;
    let mut inputs = vec![
        args.model.as_path(),
        args.bundle.as_path(),
        args.train.as_path(),
    ];
    inputs.push(val.as_path());
    super::refuse_clobber(&args.output, &inputs, "-o")?;
    let defaults = LmConfig::default();
    let spec = LmSpec {
        train: args.train.clone(),
        val,
        chat: args.chat,
        config: LmConfig {
            seed: args.seed,
            lr: args.lr.unwrap_or(defaults.lr),
            batch_size: args.batch_size.unwrap_or(defaults.batch_size),
            max_steps: args.steps.unwrap_or(defaults.max_steps),
            eval_every: args.eval_every,
            threads: args.threads,
            ..defaults
        },
    };
    let backend = args.backend.with_ep(args.ep)?;
    let mut job = LmJob::open(&spec, &args.model, &args.bundle, backend)?;
    let (n_train, n_val) = job.examples();
    let bar = progress_bar(spec.config.max_steps);
    let mut sink = super::LogSink::default();
    let mut last_val = String::from("val -");
    let report = job.trainer().fit(&mut |e: &LmEvent| match e {
        LmEvent::Step { step, loss } => {
            bar.set_position(*step);
            bar.set_message(format!("loss {loss:.4}  {last_val}"));
        }
        LmEvent::Eval {
            step,
            train_loss,
            val_nll,
            best,
        } => {
            last_val = format!("val NLL {val_nll:.4}");
            let line = format!(
                "step {step}: train loss {train_loss:.4}, validation NLL {val_nll:.4}{}",
                if *best { " (best)" } else { "" }
            );
            if bar.is_hidden() {
                sink.line(format_args!("{line}"));
            } else {
                bar.println(line);
            }
        }
    })?;
    sink.finish()?;
    bar.finish_and_clear();
    let task = task_name(args);
    job.write_task(&args.output, &task)?;
    outln!(
        "{} steps, exact gradients{}; validation NLL per answer token {:.4} at step {} (base model {:.4}); {n_train} training, {n_val} validation pairs",
        report.steps,
        if report.early_stopped {
            ", stopped early"
        } else {
            ""
        },
        report.best_val_nll,
        report.best_step,
        report.start_val_nll,
    )?;
    outln!(
        "wrote {} (task {}, no head)",
        super::printable(&args.output.display().to_string()),
        super::printable(&task),
    )?;
    Ok(())
}

/// `--task`, else the output's file stem.
fn task_name(args: &FinetuneArgs) -> String {
    match &args.task {
        Some(t) => t.clone(),
        None => args
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into()),
    }
}
