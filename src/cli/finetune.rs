//! `elx finetune --model BASE.onnx --bundle B.elxb --train train.jsonl [--val val.jsonl] -o task.elxc`
//!
//! Trains a new task's coefficients (SPSA, forward passes only) and its linear head on the
//! tract runtime, and writes them as a `.elxc` that `elx run` serves beside the other tasks.
//! Data is JSONL: pre-tokenized `{"input_ids": [...], "label": ...}` lines, or
//! `{"text": ..., "label": ...}` lines when a tokenizer is given.

// Without the tract backend the command only reports that it is missing.
#![cfg_attr(not(feature = "tract"), allow(dead_code, unused_imports))]

use super::progress_bar;
use eigenlorax::bundle::Bundle;
use eigenlorax::finetune::data::{Example, RawSet, ReadOptions, class_indices, label_set};
use eigenlorax::finetune::{FinetuneConfig, Split};
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
    /// HF tokenizer.json: lines may then carry `text` instead of `input_ids`.
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
    /// Maximum optimisation steps.
    #[arg(long, default_value_t = 500)]
    pub steps: u64,
    /// SPSA directions per step.
    #[arg(long, default_value_t = 4)]
    pub directions: usize,
    /// Seed of the initialisation, the directions and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate of the coefficients.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Peak learning rate of the head.
    #[arg(long)]
    pub head_lr: Option<f64>,
    /// Steps between evaluations.
    #[arg(long, default_value_t = 25)]
    pub eval_every: u64,
    /// Train the head only over random coefficients in the subspace (ELoRAx^ZS).
    #[arg(long)]
    pub zero_shot: bool,
    /// Write a checkpoint every N steps (with --checkpoint).
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint file (written atomically).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (same data and settings).
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Task name recorded in the file (default: the output's file stem).
    #[arg(long)]
    pub task: Option<String>,
}

/// Token source for the data files.
enum Tokens {
    /// Pre-tokenized `input_ids`.
    Ids,
    /// `text` through a tokenizer (pre-tokenized lines are accepted too).
    #[cfg(feature = "tract")]
    Text(Box<eigenlorax::runtime::input::TextEncoder>),
}

/// Runs `elx finetune`.
pub fn run(args: &FinetuneArgs) -> Result<()> {
    #[cfg(feature = "tract")]
    {
        run_tract(args)
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = args;
        Err(Error::Usage(
            "elx finetune runs on the tract backend; rebuild with the `tract` feature".into(),
        ))
    }
}

#[cfg(feature = "tract")]
fn run_tract(args: &FinetuneArgs) -> Result<()> {
    use eigenlorax::finetune::seq::SequenceModel;
    use eigenlorax::finetune::tract_backend::TractBackend;
    use eigenlorax::finetune::{Event, Finetuner, Objective};
    use eigenlorax::runtime::input::{DEFAULT_MAX_LENGTH, TextEncoder};
    use eigenlorax::runtime::tract::Runtime;
    use std::sync::Arc;

    let bundle = Bundle::read(&args.bundle)?;
    let tokens = match &args.tokenizer {
        Some(p) => Tokens::Text(Box::new(TextEncoder::from_file(p, args.max_length)?)),
        None => Tokens::Ids,
    };
    let max_len = match &tokens {
        Tokens::Text(t) => t.max_length(),
        Tokens::Ids => args
            .max_length
            .or_else(|| config_max_positions(&args.model))
            .unwrap_or(DEFAULT_MAX_LENGTH),
    };
    let pad_id = match (args.pad_id, &tokens) {
        (Some(p), _) => p,
        (None, Tokens::Text(t)) => i64::from(t.pad_id()),
        (None, Tokens::Ids) => 0,
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
    let val = match &args.val {
        Some(p) => {
            let v = read_set(p, &tokens, &opts)?;
            let labels = class_indices(p, &v, &classes)?;
            Some((v, labels))
        }
        None => None,
    };

    let rt = Arc::new(Runtime::load(&args.model, &bundle)?);
    let r_max = rt.coeff_inputs().iter().map(|c| c.r).min().unwrap_or(0);
    let rank = args.rank.unwrap_or(r_max);
    let mut examples: Vec<Example> = train.examples.clone();
    let n_train = examples.len();
    if let Some((v, _)) = &val {
        examples.extend(v.examples.iter().cloned());
    }
    // A model tract plans per input shape pads to power-of-two lengths: a handful of plans.
    let backend = TractBackend::new(Arc::clone(&rt))?;
    let mut model = SequenceModel::new(backend, examples, pad_id, None)?;
    if !rt.is_shape_generic() {
        model = model.bucketed(max_len)?;
    }
    let defaults = FinetuneConfig::default();
    let cfg = FinetuneConfig {
        rank,
        zero_shot: args.zero_shot,
        seed: args.seed,
        lr: args.lr.unwrap_or(defaults.lr),
        head_lr: args.head_lr.unwrap_or(defaults.head_lr),
        directions: args.directions,
        batch_size: args.batch_size,
        max_steps: args.steps,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every.unwrap_or(0),
        checkpoint_path: args.checkpoint.clone(),
        ..defaults
    };
    let train_split = Split {
        ids: (0..n_train).collect(),
        labels: train_labels,
    };
    let val_split = val.as_ref().map(|(v, labels)| Split {
        ids: (n_train..n_train + v.examples.len()).collect(),
        labels: labels.clone(),
    });
    let val_eval = val_split.clone();
    let mut ft = Finetuner::new(
        model,
        cfg,
        Objective::Classify {
            classes: classes.len(),
        },
        train_split,
        val_split,
    )?;
    if let Some(p) = &args.resume {
        ft.resume(p)?;
    }

    let bar = progress_bar(args.steps);
    bar.set_position(ft.steps());
    let mut last_val = String::from("val -");
    let mut last_loss = f64::NAN;
    let report = ft.fit(&mut |e: &Event| match e {
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
        Event::Checkpoint(step) if bar.is_hidden() => eprintln!("checkpoint at step {step}"),
        Event::Checkpoint(step) => bar.println(format!("checkpoint at step {step}")),
    })?;
    bar.finish_and_clear();

    let task = match &args.task {
        Some(t) => t.clone(),
        None => args
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into()),
    };
    ft.save(&args.output, &bundle.manifest.subspace_id, &task, &classes)?;
    let train_eval = ft.evaluate(&Split {
        ids: (0..n_train).collect(),
        labels: class_indices(&args.train, &train, &classes)?,
    })?;
    println!(
        "{} steps ({} forward passes){}; best {} {:.4} at step {}",
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
    );
    println!(
        "train: loss {:.6}, accuracy {:.1}% ({} examples, {} classes: {})",
        train_eval.loss,
        100.0 * train_eval.accuracy.unwrap_or(f64::NAN),
        n_train,
        classes.len(),
        classes.join(", ")
    );
    let final_val = match &val_eval {
        Some(split) => Some(ft.evaluate(split)?),
        None => None,
    };
    if let Some(v) = &final_val {
        println!(
            "validation: loss {:.6}, accuracy {:.1}% ({} examples)",
            v.loss,
            100.0 * v.accuracy.unwrap_or(f64::NAN),
            v.examples
        );
    }
    println!(
        "wrote {} (task {task}, rank {rank}{})",
        args.output.display(),
        if args.zero_shot { ", zero-shot" } else { "" }
    );
    Ok(())
}

/// Reads one data file; texts go through the tokenizer. Truncation is reported on stderr.
fn read_set(path: &Path, tokens: &Tokens, opts: &ReadOptions) -> Result<RawSet> {
    let set = match tokens {
        Tokens::Ids => eigenlorax::finetune::data::read_jsonl(path, opts)?,
        #[cfg(feature = "tract")]
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
        ));
    }
    Ok(set)
}

/// `max_position_embeddings` of a HF config.json beside the model, if any.
#[cfg(feature = "tract")]
fn config_max_positions(model: &Path) -> Option<usize> {
    let p = model.parent()?.join("config.json");
    let meta = std::fs::metadata(&p).ok()?;
    if meta.len() > 1 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
    v.get("max_position_embeddings")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}
