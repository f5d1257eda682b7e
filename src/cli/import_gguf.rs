//! `elx import-gguf FILE.gguf -o DIR`
//!
//! Builds the ONNX decoder graph (KV cache in and out) of a Llama-family GGUF file
//! (`eigenlorax::graph::llama`), dequantized to f32 with the Q/K rows in the Hugging Face
//! order, and writes it as `DIR/model.onnx` beside `config.json` and
//! `tokenizer_config.json` (chat template, special tokens) and `tokenizer.json` (from the
//! GGUF's vocabulary and merges).

use super::file_size;
use eigenlorax::Result;
use eigenlorax::graph::llama::files::import_gguf_dir;
use std::path::PathBuf;

/// Arguments of `elx import-gguf`.
#[derive(clap::Args, Debug)]
pub struct ImportGgufArgs {
    /// The GGUF file (llama architecture; F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensors).
    pub file: PathBuf,
    /// Output folder (created if needed): model.onnx, config.json, tokenizer_config.json,
    /// tokenizer.json.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

/// Runs `elx import-gguf`.
pub fn run(args: &ImportGgufArgs) -> Result<()> {
    super::refuse_clobber(
        &args.output.join("model.onnx"),
        &[args.file.as_path()],
        "-o",
    )?;
    let m = import_gguf_dir(&args.file, &args.output)?;
    let c = &m.decoder.config;
    outln!("Llama decoder: {c}")?;
    let special = |t: &Option<(u32, String)>| {
        t.as_ref().map_or_else(
            || "none".to_string(),
            |(id, s)| format!("{} ({id})", super::printable(s)),
        )
    };
    outln!(
        "tokens: bos {}, eos {}; chat template: {}",
        special(&m.meta.bos),
        special(&m.meta.eos),
        m.meta
            .chat_template
            .as_ref()
            .map_or_else(|| "none".to_string(), |t| format!("{} bytes", t.len()))
    )?;
    for f in &m.files {
        outln!("wrote {} ({})", f.display(), file_size(f))?;
    }
    Ok(())
}
