//! `elx generate --model DIR --bundle B.elxb [--task T.elxc] --prompt TEXT`
//!
//! Generates from a decoder (`elx import-gguf`) with a task's coefficients, streaming text to
//! stdout as tokens come (or, with `--json`, one JSON line per token).

use super::{BackendArg, EpArg};
use eigenlorax::error::Result;
use eigenlorax::serve::backend::WeightFormat;
use eigenlorax::serve::generate::{GenerateOptions, SamplingOptions, TextGenerator};
use eigenlorax::serve::input::chat::ChatMessage;
use std::path::PathBuf;

/// Arguments of `elx generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The decoder: the folder `elx import-gguf` wrote, or its model.onnx.
    #[arg(long, value_name = "DIR|model.onnx")]
    pub model: PathBuf,
    /// Bundle (.elxb), bound to the model with `elx bind`. Without one, the base model runs
    /// alone.
    #[arg(long, value_name = "B.elxb")]
    pub bundle: Option<PathBuf>,
    /// Task coefficient file (needs --bundle). Without one, the base model runs (all-zero
    /// coefficients).
    #[arg(long, value_name = "T.elxc", requires = "bundle")]
    pub task: Option<PathBuf>,
    /// The prompt (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user message with the model's chat template (the assistant's
    /// turn opened).
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat", value_name = "TEXT")]
    pub system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text; repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stops: Vec<String>,
    /// One JSON object per token (id, text, logprob), then one with the finish reason.
    #[arg(long)]
    pub json: bool,
    /// Threads for the CPU engine's matrix products (default: every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// How the engine stores the base weights: `f32` (exact), `q4_0` (4-bit blocks, tract or
    /// ONNX Runtime) or `q4_1` (4-bit blocks with an offset, `--backend ort`: a model imported
    /// from a Q4_1 GGUF file then multiplies the file's own blocks). The subspace and the token
    /// embedding stay f32; on ONNX Runtime the LM head keeps 8 bits.
    #[arg(long, value_name = "FORMAT", default_value = "f32")]
    pub weights: WeightFormat,
    /// Inference engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: BackendArg,
    /// ONNX Runtime execution provider (`--backend ort`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
}

/// Runs `elx generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let backend = args.backend.with_ep(args.ep)?;
    let sampling = SamplingOptions {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.check()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    eigenlorax::serve::backend::set_cpu_threads(threads);
    let tg = TextGenerator::open_with(&args.model, args.bundle.as_deref(), backend, args.weights)?;
    let task = match &args.task {
        Some(p) => tg.generator().engine().load_task(p)?,
        None => tg.base_task(),
    };
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        stop_tokens: Vec::new(),
    };
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s.as_str()));
        }
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        tg.chat_prompt(&messages)?
    } else {
        args.prompt.clone()
    };
    let finish = tg.generate(task, &prompt, &options, &args.stops, &mut |p| {
        match (args.json, p.token) {
            (true, Some(t)) => outln!(
                "{}",
                serde_json::json!({"id": t.id, "text": p.text, "logprob": t.logprob})
            )?,
            (true, None) => outln!("{}", serde_json::json!({"text": p.text}))?,
            (false, _) => super::write_generated(p.text)?,
        }
        Ok(true)
    })?;
    if args.json {
        outln!("{}", serde_json::json!({"finish": finish.name()}))?;
    } else {
        outln!()?;
    }
    Ok(())
}
