//! `elx run`: run the base model with one or more tasks' coefficients on text or tensors,
//! pool the output and apply each task's head.

use super::{BackendArg, EpArg, PoolingArg, printable};
use eigenlorax::bundle::Head;
use eigenlorax::error::{Error, Result};
use eigenlorax::serve::Backend;
use eigenlorax::serve::input::{apply_head, load_tensors};
use eigenlorax::serve::job::{OutputChoice, Rows, RunSpec, Runner};
use eigenlorax::serve::store::TaskId;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `elx run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Base ONNX model the bundle is bound to.
    #[arg(long, value_name = "BASE.onnx")]
    pub model: PathBuf,
    /// Bundle (.elxb), bound to the model with `elx bind`.
    #[arg(long, value_name = "B.elxb")]
    pub bundle: PathBuf,
    /// Task coefficient file; repeat for several tasks. Without one, the base model runs
    /// (all-zero coefficients).
    #[arg(long = "task", value_name = "T.elxc")]
    pub tasks: Vec<PathBuf>,
    /// Text to classify or embed; repeat for a batch.
    #[arg(long = "text", value_name = "TEXT", conflicts_with = "input")]
    pub texts: Vec<String>,
    /// Raw model inputs instead of text: a .npy (one tensor: input_ids, or the model's only
    /// input) or a .safetensors file with one tensor per model input.
    #[arg(long, value_name = "FILE.npy|FILE.safetensors")]
    pub input: Option<PathBuf>,
    /// HF tokenizer.json (default: tokenizer.json next to the model).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Truncate texts to this many tokens (default: from the tokenizer files, else 512).
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// How token states become one vector per row.
    #[arg(long, value_enum, default_value = "mean")]
    pub pooling: PoolingArg,
    /// Graph output to pool (default: the first).
    #[arg(long, value_name = "NAME")]
    pub output: Option<String>,
    /// Inference engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`); falls back to the CPU with a warning.
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
    /// Mixed-task batch: row i runs with the i-th --task, all in one pass.
    #[arg(long)]
    pub mixed: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `elx run`, printing to stdout.
pub fn run(args: &RunArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(args, &mut out)
}

/// The run job `args` describe.
fn spec(args: &RunArgs) -> Result<RunSpec> {
    Ok(RunSpec {
        model: args.model.clone(),
        bundle: args.bundle.clone(),
        backend: args.backend.with_ep(args.ep)?,
        text_inputs: args.input.is_none(),
        tokenizer: args.tokenizer.clone(),
        max_length: args.max_length,
        pooling: args.pooling.into(),
        output: args
            .output
            .clone()
            .map_or(OutputChoice::First, OutputChoice::Name),
    })
}

/// [`run`] writing to `out` (for tests).
pub fn run_to(args: &RunArgs, out: &mut dyn Write) -> Result<()> {
    if args.texts.is_empty() && args.input.is_none() {
        return Err(Error::Usage(
            "elx run: give --text (repeatable) or --input FILE".into(),
        ));
    }
    let spec = spec(args)?;
    let runner = Runner::open(&spec)?;
    let engine = runner.engine();
    if let (Backend::Ort(want), Backend::Ort(got)) = (spec.backend, engine.backend())
        && got != want
    {
        errln!(
            "note: running on {} (requested {})",
            got.name(),
            want.name()
        )?;
    }

    // Tasks: the given files, or one all-zero task (the base model).
    let mut tasks: Vec<(TaskId, String)> = Vec::new();
    for p in &args.tasks {
        let id = engine.load_task(p)?;
        tasks.push((id, p.display().to_string()));
    }
    if tasks.is_empty() {
        tasks.push((
            runner.insert_base_task()?,
            "(base model, zero coefficients)".into(),
        ));
    }

    let batch = match &args.input {
        Some(p) => load_tensors(p, engine.specs()?)?,
        None => runner.encode(&args.texts)?,
    };
    let row_names: Vec<String> = if args.input.is_some() {
        (0..batch.rows).map(|r| format!("row {r}")).collect()
    } else {
        args.texts.iter().map(|t| format!("{t:?}")).collect()
    };

    if args.mixed {
        if tasks.len() != batch.rows {
            return Err(Error::Usage(format!(
                "--mixed pairs row i with task i: {} rows but {} tasks",
                batch.rows,
                tasks.len()
            )));
        }
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.0).collect();
        let result = runner.run(&batch, Rows::Each(&ids))?;
        let pooled = result.pooled?;
        for (row, ((_, label), v)) in tasks.iter().zip(&pooled).enumerate() {
            let (name, head) = &result.rows[row];
            report(
                out,
                args.json,
                name,
                label,
                &row_names[row],
                head.as_ref(),
                v,
            )?;
        }
        return Ok(());
    }
    for (id, label) in &tasks {
        let result = runner.run(&batch, Rows::One(*id))?;
        let pooled = result.pooled?;
        let (name, head) = engine.task_info(*id)?;
        if !args.json {
            writeln!(out, "task {} [{}]", printable(&name), printable(label))
                .map_err(|e| Error::io("<stdout>", e))?;
        }
        for (row, v) in pooled.iter().enumerate() {
            report(
                out,
                args.json,
                &name,
                label,
                &row_names[row],
                head.as_ref(),
                v,
            )?;
        }
    }
    Ok(())
}

/// Prints one row: label and probabilities when the task has a head, else the pooled vector.
fn report(
    out: &mut dyn Write,
    json: bool,
    task: &str,
    file: &str,
    row: &str,
    head: Option<&Head>,
    pooled: &[f32],
) -> Result<()> {
    let line = match head {
        Some(h) => {
            let p = apply_head(h, pooled)?;
            if json {
                let probs: serde_json::Map<String, serde_json::Value> = h
                    .labels
                    .iter()
                    .cloned()
                    .zip(p.probs.iter().map(|&v| serde_json::json!(v)))
                    .collect();
                serde_json::json!({"task": task, "file": file, "row": row, "label": p.label, "probs": probs}).to_string()
            } else {
                let probs: Vec<String> = h
                    .labels
                    .iter()
                    .zip(&p.probs)
                    .map(|(l, v)| format!("{} {v:.4}", printable(l)))
                    .collect();
                format!(
                    "  {} -> {}  [{}]",
                    printable(row),
                    printable(&p.label),
                    probs.join(", ")
                )
            }
        }
        None => {
            if json {
                serde_json::json!({"task": task, "file": file, "row": row, "pooled": pooled})
                    .to_string()
            } else {
                let norm = pooled
                    .iter()
                    .map(|v| f64::from(*v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let head: Vec<String> = pooled.iter().take(8).map(|v| format!("{v:.4}")).collect();
                let more = if pooled.len() > 8 { ", ..." } else { "" };
                format!(
                    "  {} -> pooled[{}] = [{}{more}] (norm {norm:.4}; the task has no head)",
                    printable(row),
                    pooled.len(),
                    head.join(", ")
                )
            }
        }
    };
    writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))
}
