//! `elx import-hf DIR -o base.onnx`
//!
//! Builds the ONNX graph of a BERT-family encoder from `DIR/config.json` and
//! `DIR/model.safetensors` (see `eigenlorax::graph::import_hf`), with no torch. The graph
//! outputs `last_hidden_state` and the mean-pooled `sentence_embedding`; its weights keep their
//! HF module names, so `elx bind` resolves adapted modules by name.
//!
//! The folder's tokenizer and configuration files (`tokenizer.json`, `tokenizer_config.json`,
//! `special_tokens_map.json`, `config.json`) are copied beside the output, so that `elx run
//! --text` and `elx finetune` find them there without `--tokenizer`.

use super::{file_size, warn};
use eigenlorax::Result;
use eigenlorax::graph::import_hf_file;
use std::path::PathBuf;

/// Arguments of `elx import-hf`.
#[derive(clap::Args, Debug)]
pub struct ImportHfArgs {
    /// The HF model folder (config.json with model_type "bert" or "llama", model.safetensors;
    /// its tokenizer.json, tokenizer_config.json and special_tokens_map.json are copied too).
    pub dir: PathBuf,
    /// Output ONNX model (written atomically; the tokenizer and config files go beside it).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Runs `elx import-hf`.
pub fn run(args: &ImportHfArgs) -> Result<()> {
    super::refuse_clobber(&args.output, &[args.dir.as_path()], "-o")?;
    if eigenlorax::graph::llama::files::is_llama_folder(&args.dir) {
        return run_llama(args);
    }
    let m = import_hf_file(&args.dir, &args.output)?;
    let c = &m.config;
    let graph = m.model.graph.as_ref();
    let nodes = graph.map(|g| g.node.len()).unwrap_or(0);
    let inits = graph.map(|g| g.initializer.len()).unwrap_or(0);
    outln!(
        "BERT encoder: {} layers, hidden {}, {} heads, intermediate {}, vocab {}, max positions {}, type vocab {}, layer_norm_eps {:e}, {}",
        c.layers,
        c.hidden,
        c.heads,
        c.intermediate,
        c.vocab,
        c.max_position,
        c.type_vocab,
        c.layer_norm_eps,
        c.hidden_act
    )?;
    outln!(
        "graph: {nodes} nodes, {inits} initializers (f32); inputs input_ids, attention_mask, token_type_ids [batch, sequence] int64; outputs last_hidden_state [batch, sequence, {}], sentence_embedding [batch, {}] (mask mean)",
        c.hidden,
        c.hidden
    )?;
    let comp = &m.companions;
    if !comp.copied.is_empty() {
        let names: Vec<String> = comp
            .copied
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let dir = comp.copied[0]
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| ".".into());
        outln!("beside it in {dir}: {}", names.join(", "))?;
    }
    if !comp.has_tokenizer() {
        warn(format!(
            "{} has no tokenizer.json: `elx run --text` and `elx finetune` on text will need --tokenizer",
            args.dir.display()
        ))?;
    }
    for p in &comp.stale {
        warn(format!(
            "{} was left from something else ({} has no such file): it does not describe this model; remove or replace it",
            p.display(),
            args.dir.display()
        ))?;
    }
    outln!(
        "wrote {} ({})",
        args.output.display(),
        file_size(&args.output)
    )?;
    Ok(())
}

/// `elx import-hf` on a Llama folder: the decoder graph, with the KV cache.
fn run_llama(args: &ImportHfArgs) -> Result<()> {
    let (m, comp) = eigenlorax::graph::llama::files::import_hf_file(&args.dir, &args.output)?;
    let c = &m.config;
    outln!("Llama decoder: {c}")?;
    for p in &comp.copied {
        outln!("beside it: {}", p.display())?;
    }
    if !comp.has_tokenizer() {
        warn(format!(
            "{} has no tokenizer.json: `elx generate` needs one beside the model",
            args.dir.display()
        ))?;
    }
    outln!(
        "wrote {} ({})",
        args.output.display(),
        file_size(&args.output)
    )?;
    Ok(())
}
