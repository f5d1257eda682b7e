//! `elx generate --model DIR --bundle B.elxb [--task T.elxc] --prompt TEXT`
//!
//! Generates from a decoder (`elx import-gguf`) with a task's coefficients, streaming text to
//! stdout as tokens come (or, with `--json`, one JSON line per token).

use super::{BackendArg, EpArg};
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::error::{Error, Result};
use eigenlorax::serve::generate::{
    DecoderFiles, Finish, GenerateOptions, Generator, PromptTokenizer, SamplingOptions, TextStream,
};
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
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
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
    let files = DecoderFiles::open(&args.model)?;
    let tok_path = files.tokenizer.clone().ok_or_else(|| {
        Error::bad_file(
            &files.model,
            "expected a tokenizer.json beside the model (`elx import-gguf` writes one), found none",
        )
    })?;
    let tok = PromptTokenizer::open(&tok_path)?;
    let (generator, task) = match &args.bundle {
        Some(b) => {
            let bundle = Bundle::read(b)?;
            let g = Generator::load(&files.model, &bundle, backend)?;
            let task = match &args.task {
                Some(p) => g.engine().load_task(p)?,
                None => g
                    .engine()
                    .insert_task(&CoeffFile::base(&bundle.manifest.subspace_id))?,
            };
            (g, task)
        }
        None => Generator::load_base(&files.model, backend)?,
    };
    let prompt = args.prompt.clone();
    let ids = tok.encode(&prompt, true)?;
    let mut stop_tokens = files.eos_ids.clone();
    if let Some(id) = files.eos_token.as_deref().and_then(|t| tok.token_id(t)) {
        stop_tokens.push(id);
    }
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        stop_tokens,
    };
    let mut stream = TextStream::new(&args.stops);
    let mut failed: Option<Error> = None;
    let finish = generator.generate(task, &ids, &options, &mut |t| {
        let mut step = || -> Result<bool> {
            let piece = stream.push(&tok, t.id)?;
            if args.json {
                let line = serde_json::json!({"id": t.id, "text": piece, "logprob": t.logprob});
                outln!("{line}")?;
            } else if !piece.is_empty() {
                out!("{piece}")?;
            }
            Ok(!stream.stopped())
        };
        step().unwrap_or_else(|e| {
            failed = Some(e);
            false
        })
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let rest = stream.finish();
    let finish = if stream.stopped() {
        "stop"
    } else {
        finish_name(finish)
    };
    if args.json {
        if !rest.is_empty() {
            outln!("{}", serde_json::json!({"text": rest}))?;
        }
        outln!("{}", serde_json::json!({"finish": finish}))?;
    } else {
        outln!("{rest}")?;
    }
    Ok(())
}

fn finish_name(f: Finish) -> &'static str {
    f.name()
}
