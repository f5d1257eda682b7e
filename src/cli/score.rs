//! `elx score --model DIR [--bundle B.elxb [--task T.elxc]] --data test.jsonl`
//!
//! Scores a decoder task on prompt/answer pairs (`eval::generation`): greedy answers, Rouge-L,
//! exact match and the per-token NLL of the reference answers.

use super::{BackendArg, EpArg};
use eigenlorax::error::Result;
use eigenlorax::eval::generation::{ScoreOptions, ScoredPair, score_file};
use eigenlorax::serve::generate::TextGenerator;
use std::path::PathBuf;

/// Arguments of `elx score`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// The decoder: the folder `elx import-gguf` wrote, or its model.onnx.
    #[arg(long, value_name = "DIR|model.onnx")]
    pub model: PathBuf,
    /// Bundle (.elxb), bound to the model with `elx bind`. Without one, the base model.
    #[arg(long, value_name = "B.elxb")]
    pub bundle: Option<PathBuf>,
    /// Task coefficient file (needs --bundle). Without one, the base model (all-zero
    /// coefficients).
    #[arg(long, value_name = "T.elxc", requires = "bundle")]
    pub task: Option<PathBuf>,
    /// Prompt/answer pairs: JSONL lines with string fields `prompt` and `answer`.
    #[arg(long, value_name = "test.jsonl")]
    pub data: PathBuf,
    /// Most new tokens of an answer.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_tokens: usize,
    /// Wrap each prompt as a user turn in the model's chat template (without it, prompts are
    /// taken as written, e.g. already templated).
    #[arg(long)]
    pub chat: bool,
    /// Prompts whose answers are decoded together, in one batch (each answer is what it
    /// would be alone).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch: usize,
    /// One JSON line per pair (prediction, scores), then one for the set.
    #[arg(long)]
    pub json: bool,
    /// Inference engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
}

/// Runs `elx score`.
pub fn run(args: &ScoreArgs) -> Result<()> {
    let backend = args.backend.with_ep(args.ep)?;
    let tg = TextGenerator::open(&args.model, args.bundle.as_deref(), backend)?;
    let task = match &args.task {
        Some(p) => tg.generator().engine().load_task(p)?,
        None => tg.base_task(),
    };
    let options = ScoreOptions {
        max_tokens: args.max_tokens,
        chat: args.chat,
        batch: args.batch,
    };
    let scores = score_file(&tg, task, &args.data, &options, &mut |p: &ScoredPair| {
        if args.json {
            outln!(
                "{}",
                serde_json::json!({
                    "line": p.line, "prediction": p.prediction, "reference": p.reference,
                    "rouge_l": p.rouge_l, "exact_match": p.exact_match,
                    "nll": p.nll_sum / p.reference_tokens as f64,
                    "reference_tokens": p.reference_tokens, "finish": p.finish.name(),
                })
            )?;
        }
        Ok(())
    })?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({"pairs": scores.pairs.len(), "rouge_l": scores.rouge_l,
                "exact_match": scores.exact_match, "nll": scores.nll})
        )?;
    } else {
        outln!(
            "Rouge-L {:.4}, exact match {:.4}, NLL per reference token {:.4} ({} pairs)",
            scores.rouge_l,
            scores.exact_match,
            scores.nll,
            scores.pairs.len()
        )?;
    }
    Ok(())
}
