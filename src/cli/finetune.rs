//! `elx finetune --model BASE.onnx --bundle B.elxb --train train.jsonl [--val val.jsonl] -o task.elxc`
//!
//! Trains a new task's coefficients (exact gradients through a training graph, or SPSA with
//! forward passes only) and its linear head on the tract runtime or ONNX Runtime
//! (`--backend ort`), and writes them as a `.elxc` that `elx run` serves beside the other
//! tasks.
//! Data is JSONL: pre-tokenized `{"input_ids": [...], "label": ...}` lines, or
//! `{"text": ..., "label": ...}` lines when a tokenizer is given or lies next to the model.

use super::{BackendArg, EpArg, GradArg, progress_bar};
use eigenlorax::bundle::Bundle;
use eigenlorax::finetune::cache::CachedFeatures;
use eigenlorax::finetune::data::{Example, RawSet, ReadOptions, class_indices, label_set};
use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::finetune::{Event, FinetuneConfig, GradMode, Objective, Split, recipe};
use eigenlorax::serve::input::{DEFAULT_MAX_LENGTH, TextEncoder, find_tokenizer};
use eigenlorax::serve::{Engine, HiddenState};
use eigenlorax::{Error, Result};
use std::path::{Path, PathBuf};

/// Most examples read from one file (bounds memory).
const MAX_EXAMPLES: usize = 1_000_000;

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
    /// Examples per step.
    #[arg(long, default_value_t = recipe::Defaults::EXACT.batch_size)]
    pub batch_size: usize,
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

/// Token source for the data files.
enum Tokens {
    /// Pre-tokenized `input_ids`.
    Ids,
    /// `text` through a tokenizer (pre-tokenized lines are accepted too).
    Text(Box<TextEncoder>),
}

/// The data of a run, read and checked before any engine is loaded.
struct Data {
    /// Training examples, then the validation examples (ids index this list); moved into the
    /// engine's model.
    examples: Vec<Example>,
    train: Split,
    val: Option<Split>,
    classes: Vec<String>,
    pad_id: i64,
    max_len: usize,
    /// SHA-256 (hex) of the training examples' tokens and labels, in file order.
    train_digest: String,
    /// The same of the validation examples, "none" without --val.
    val_digest: String,
    /// File line of each example (training, then validation).
    lines: Vec<usize>,
    /// Where the padding id came from, for errors.
    pad_source: String,
}

/// The first 16 bytes (32 hex digits) of a digest: enough to tell data apart, short enough
/// to read in an error.
fn short(digest: &str) -> String {
    digest.chars().take(32).collect()
}

/// SHA-256 (hex) of the class names, in class-index order.
fn classes_digest(classes: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in classes {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of examples' token ids and labels: what a checkpoint's resume must see again.
fn data_digest(examples: &[Example], labels: &[usize]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((examples.len() as u64).to_le_bytes());
    for (e, y) in examples.iter().zip(labels) {
        h.update((e.input_ids.len() as u64).to_le_bytes());
        for id in &e.input_ids {
            h.update(id.to_le_bytes());
        }
        h.update((*y as u64).to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `elx finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
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
    let bundle = Bundle::read(&args.bundle)?;
    let mut data = read_data(args)?;
    // A provider that cannot start falls back to the CPU; the engine says so on stderr.
    let engine = Engine::load(&args.model, &bundle, backend)?;
    let examples = std::mem::take(&mut data.examples);
    // Ids outside the model's vocabulary are named by file and line, the padding id by
    // where it came from.
    let n_train = data.train.ids.len();
    let name = |i: usize| {
        let (file, k) = match &args.val {
            Some(v) if i >= n_train => (v.as_path(), i - n_train),
            _ => (args.train.as_path(), i),
        };
        let line = data.lines.get(i).copied().unwrap_or(0);
        format!("{}: example {} (line {line})", file.display(), k + 1)
    };
    SequenceModel::check_token_ids(&engine, &examples, data.pad_id, &data.pad_source, &name)?;
    // Engines that plan per input shape pad to power-of-two lengths: a handful of plans.
    let model = SequenceModel::for_training(
        &engine,
        examples,
        data.pad_id,
        data.max_len,
        args.grad.mode(),
    )?
    .with_gradient_threads(args.threads);
    if let Some(why) = model.exact_unavailable() {
        errln!("warning: {why}; training with SPSA (forward passes only)")?;
    }
    train(args, &bundle, data, model, engine.min_rank())
}

/// Reads the training (and validation) data: tokens, labels and the class list.
fn read_data(args: &FinetuneArgs) -> Result<Data> {
    let tokenizer = find_tokenizer(&args.model, args.tokenizer.as_deref());
    let tokens = match &tokenizer {
        Some(p) => Tokens::Text(Box::new(TextEncoder::from_file(p, args.max_length)?)),
        None => Tokens::Ids,
    };
    let max_len = match &tokens {
        // The model folder's limit caps a tokenizer given from elsewhere too.
        Tokens::Text(t) if args.max_length.is_none() => {
            config_max_positions(&args.model).map_or(t.max_length(), |p| p.min(t.max_length()))
        }
        Tokens::Text(t) => t.max_length(),
        Tokens::Ids => args
            .max_length
            .or_else(|| config_max_positions(&args.model))
            .unwrap_or(DEFAULT_MAX_LENGTH),
    };
    let (pad_id, pad_source) = match (args.pad_id, &tokens, &tokenizer) {
        (Some(p), _, _) => (p, "the padding id (--pad-id)".to_string()),
        (None, Tokens::Text(t), Some(path)) => (
            i64::from(t.pad_id()),
            format!(
                "the padding id of {} (override with --pad-id)",
                path.display()
            ),
        ),
        _ => (0, "the default padding id 0 (give --pad-id)".to_string()),
    };
    let opts = ReadOptions {
        max_len,
        truncate: args.truncate,
        max_examples: MAX_EXAMPLES,
    };
    let train = read_set(&args.train, &tokens, &opts)?;
    let classes = label_set(&train);
    if classes.len() < 2 {
        return Err(Error::bad_file(
            &args.train,
            format!(
                "expected at least 2 distinct labels to train a classifier, found {:?}",
                classes
            ),
        ));
    }
    let train_labels = class_indices(&args.train, &train, &classes)?;
    let n_train = train.examples.len();
    let train_digest = data_digest(&train.examples, &train_labels);
    let mut lines = train.lines;
    let mut examples = train.examples;
    let mut val_digest = "none".to_string();
    let val = match &args.val {
        Some(p) => {
            let v = read_set(p, &tokens, &opts)?;
            let labels = class_indices(p, &v, &classes)?;
            val_digest = data_digest(&v.examples, &labels);
            lines.extend(&v.lines);
            let ids = (examples.len()..examples.len() + v.examples.len()).collect();
            examples.extend(v.examples);
            Some(Split { ids, labels })
        }
        None => None,
    };
    Ok(Data {
        examples,
        train: Split {
            ids: (0..n_train).collect(),
            labels: train_labels,
        },
        val,
        classes,
        pad_id,
        max_len,
        train_digest,
        val_digest,
        lines,
        pad_source,
    })
}

/// Trains on `model` (any engine), writes the task file and prints the summary.
fn train(
    args: &FinetuneArgs,
    bundle: &Bundle,
    data: Data,
    model: SequenceModel<HiddenState>,
    r_max: usize,
) -> Result<()> {
    let rank = args.rank.unwrap_or(r_max);
    let defaults = FinetuneConfig::default();
    let schedule = recipe::Defaults::for_gradient(args.grad.mode());
    let steps = args.steps.unwrap_or(schedule.steps);
    let mut cfg = FinetuneConfig {
        rank,
        zero_shot: args.zero_shot,
        seed: args.seed,
        lr: args.lr.unwrap_or(defaults.lr),
        head_lr: args.head_lr.unwrap_or(schedule.head_lr),
        directions: args.directions,
        grad: args.grad.mode(),
        batch_size: args.batch_size,
        max_steps: steps,
        eval_every: args.eval_every.unwrap_or(schedule.eval_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(0),
        checkpoint_path: args.checkpoint.clone(),
        ..defaults
    };
    let Data {
        train: train_split,
        val: val_split,
        classes,
        pad_id,
        max_len,
        train_digest,
        val_digest,
        ..
    } = data;
    let n_train = train_split.ids.len();
    let objective = || Objective::Classify {
        classes: classes.len(),
    };
    // Features are cached while the coefficients stay put: the head warm-up costs one engine
    // pass per example. A resumed run restores its head from the checkpoint instead.
    let mut model = CachedFeatures::new(model);
    let mut warm_head = None;
    let warm_up = args.head_warmup > 0 && !args.zero_shot;
    if warm_up {
        cfg.eval_at_start = true;
        if args.resume.is_none() {
            let head_only = recipe::fit_head_only(
                model,
                &cfg,
                args.head_warmup,
                args.warmup_head_lr,
                objective(),
                train_split.clone(),
                val_split.clone(),
            )?;
            warm_head = head_only.head().map(|h| h.params().to_vec());
            model = head_only.into_model();
        }
    }
    let mut ft = recipe::joint(
        model,
        cfg,
        objective(),
        train_split.clone(),
        val_split.clone(),
        warm_head.as_deref(),
    )?;
    // A checkpoint is tied to the data it trained on and to the flags the finetuner does not
    // see (the warm-up shapes the head it starts from; padding and length shape the inputs).
    ft.set_run_identity(&[
        ("--train", short(&train_digest)),
        ("--val", short(&val_digest)),
        ("--head-warmup", args.head_warmup.to_string()),
        ("--warmup-head-lr", format!("{:e}", args.warmup_head_lr)),
        ("--pad-id", pad_id.to_string()),
        ("--max-length", max_len.to_string()),
        ("labels", short(&classes_digest(&classes))),
    ]);
    if let Some(p) = &args.resume {
        ft.resume(p)?;
    }

    let bar = progress_bar(steps);
    bar.set_position(ft.steps());
    let mut last_val = String::from("val -");
    let mut last_loss = f64::NAN;
    let pause_at = args
        .pause_after
        .map_or(u64::MAX, |n| ft.steps().saturating_add(n));
    let mut sink = super::LogSink::default();
    let report = ft.fit_until(pause_at, &mut |e: &Event| match e {
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

    let task = match &args.task {
        Some(t) => t.clone(),
        None => args
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into()),
    };
    // The finetuner checked every trained tensor (finite, within the loosest bound); the
    // bundle knows each module's inputs, so the file must also pass the check `elx run`
    // applies at load, or it is not written.
    let file = ft.to_coeff_file(&bundle.manifest.subspace_id, &task, &classes)?;
    file.check_for(&args.output, &bundle.manifest)
        .map_err(|e| {
            Error::Numeric(format!(
                "the trained task would be refused at load ({e}); nothing was written: lower the learning rate"
            ))
        })?;
    file.write(&args.output)?;
    // The summary's training figures: on a bounded, evenly spaced sample of a large training
    // set (a full pass over 192k rows took longer than the run it summarises).
    let sample = even_sample(&train_split, MAX_SUMMARY_EXAMPLES);
    let train_eval = ft.evaluate(&sample)?;
    let gradient = match ft.gradient() {
        GradMode::Exact if args.zero_shot => "head only",
        GradMode::Exact => "exact gradients",
        GradMode::Spsa => "SPSA",
    };
    outln!(
        "{} steps, {gradient} ({} engine runs){}; best {} {:.4} at step {}",
        report.steps,
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
    outln!(
        "train: loss {:.6}, accuracy {:.1}% ({} examples, {} classes: {})",
        train_eval.loss,
        100.0 * train_eval.accuracy.unwrap_or(f64::NAN),
        if sample.ids.len() < n_train {
            format!("{} evenly spaced of {n_train}", sample.ids.len())
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
    if let Some(split) = &val_split {
        let v = ft.evaluate(split)?;
        outln!(
            "validation: loss {:.6}, accuracy {:.1}% ({} examples)",
            v.loss,
            100.0 * v.accuracy.unwrap_or(f64::NAN),
            v.examples
        )?;
    }
    outln!(
        "wrote {} (task {}, rank {rank}{})",
        super::printable(&args.output.display().to_string()),
        super::printable(&task),
        if args.zero_shot { ", zero-shot" } else { "" }
    )?;
    Ok(())
}

/// Most training examples the final summary evaluates ([`even_sample`]).
const MAX_SUMMARY_EXAMPLES: usize = 4096;

/// At most `max` examples of `split`, evenly spaced over it (all of them when it is smaller).
fn even_sample(split: &Split, max: usize) -> Split {
    let n = split.ids.len();
    if n <= max {
        return split.clone();
    }
    let pick: Vec<usize> = (0..max).map(|i| i * n / max).collect();
    Split {
        ids: pick.iter().map(|&i| split.ids[i]).collect(),
        labels: pick.iter().map(|&i| split.labels[i]).collect(),
    }
}

/// Reads one data file; texts go through the tokenizer. Truncation is reported on stderr.
fn read_set(path: &Path, tokens: &Tokens, opts: &ReadOptions) -> Result<RawSet> {
    let set = match tokens {
        Tokens::Ids => eigenlorax::finetune::data::read_jsonl(path, opts)?,
        Tokens::Text(enc) => {
            let tokenize = |t: &str| enc.ids_truncated(t);
            eigenlorax::finetune::data::read_jsonl_with(path, opts, Some(&tokenize))?
        }
    };
    if set.truncated > 0 {
        super::warn(format!(
            "{}: {} of {} examples were longer than {} tokens and were truncated",
            path.display(),
            set.truncated,
            set.examples.len(),
            opts.max_len
        ))?;
    }
    Ok(set)
}

/// `max_position_embeddings` of a HF config.json beside the model, if any.
fn config_max_positions(model: &Path) -> Option<usize> {
    eigenlorax::serve::input::text::max_position_embeddings(model.parent()?)
}
