//! The folder `elx import-gguf` writes: `model.onnx` (the decoder graph), `config.json` (the
//! configuration in Hugging Face's `LlamaConfig` form, with the special token ids),
//! `tokenizer_config.json` (the chat template and the special tokens, as Hugging Face keeps
//! them) and `tokenizer.json` (built from the GGUF's vocabulary and merges), each written atomically; the model last, so that a model is never newer than the
//! files that describe it.

use super::{ImportedDecoder, LlamaConfig};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use std::path::{Path, PathBuf};

/// The model file's name in an imported folder.
pub const MODEL_FILE: &str = "model.onnx";
/// The configuration's name in an imported folder.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer configuration's name (chat template, special tokens).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The tokenizer's name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The special tokens and chat template a GGUF file carries (all optional in the format).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizerMeta {
    /// Beginning-of-sequence id and text.
    pub bos: Option<(u32, String)>,
    /// End-of-sequence id and text (for an instruct model, the end of a turn).
    pub eos: Option<(u32, String)>,
    /// Whether the tokenizer prepends BOS.
    pub add_bos: bool,
    /// The Jinja chat template.
    pub chat_template: Option<String>,
}

/// Reads the special tokens and chat template of `g`; an id outside the token list is an
/// error naming the key.
pub fn tokenizer_meta(g: &Gguf) -> Result<TokenizerMeta> {
    let tokens = match g.get("tokenizer.ggml.tokens") {
        Some(_) => Some(g.strings("tokenizer.ggml.tokens")?),
        None => None,
    };
    let special = |key: &str| -> Result<Option<(u32, String)>> {
        if g.get(key).is_none() {
            return Ok(None);
        }
        let id = g.u32(key)?;
        let text = tokens
            .and_then(|t| t.get(id as usize))
            .ok_or_else(|| {
                Error::bad_tensor(
                    g.path(),
                    key,
                    format!(
                        "expected an id inside tokenizer.ggml.tokens ({} tokens), found {id}",
                        tokens.map_or(0, |t| t.len())
                    ),
                )
            })?
            .clone();
        Ok(Some((id, text)))
    };
    Ok(TokenizerMeta {
        bos: special("tokenizer.ggml.bos_token_id")?,
        eos: special("tokenizer.ggml.eos_token_id")?,
        add_bos: match g.get("tokenizer.ggml.add_bos_token") {
            Some(_) => g.bool("tokenizer.ggml.add_bos_token")?,
            None => false,
        },
        chat_template: match g.get("tokenizer.chat_template") {
            Some(_) => Some(g.str("tokenizer.chat_template")?.to_string()),
            None => None,
        },
    })
}

/// `config.json` in Hugging Face's `LlamaConfig` form.
pub fn config_json(c: &LlamaConfig, meta: &TokenizerMeta) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate,
        "vocab_size": c.vocab,
        "max_position_embeddings": c.max_position,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": c.tied_embeddings,
        "bos_token_id": meta.bos.as_ref().map(|b| b.0),
        "eos_token_id": meta.eos.as_ref().map(|e| e.0),
    })
}

/// `tokenizer_config.json` as Hugging Face keeps it.
pub fn tokenizer_config_json(c: &LlamaConfig, meta: &TokenizerMeta) -> serde_json::Value {
    serde_json::json!({
        "bos_token": meta.bos.as_ref().map(|b| b.1.clone()),
        "eos_token": meta.eos.as_ref().map(|e| e.1.clone()),
        "add_bos_token": meta.add_bos,
        "chat_template": meta.chat_template,
        "model_max_length": c.max_position,
    })
}

/// What [`import_gguf_dir`] wrote.
#[derive(Clone, Debug)]
pub struct ImportedFolder {
    /// The decoder.
    pub decoder: ImportedDecoder,
    /// Special tokens and chat template.
    pub meta: TokenizerMeta,
    /// The files written, the model last.
    pub files: Vec<PathBuf>,
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Internal(format!("encoding {}: {e}", path.display())))?;
    crate::util::write_atomic(path, format!("{text}\n").as_bytes())
}

/// Imports the GGUF decoder at `gguf` into the folder `out` (created if needed; see the
/// module documentation), with `tokenizer.json` built from the file's vocabulary
/// ([`crate::gguf::tokenizer_json`]) when it has one.
pub fn import_gguf_dir(gguf: &Path, out: &Path) -> Result<ImportedFolder> {
    let file = Gguf::open(gguf)?;
    let config = super::gguf::config(&file)?;
    let meta = tokenizer_meta(&file)?;
    let tokenizer_text = match file.get("tokenizer.ggml.tokens") {
        Some(_) => Some(crate::gguf::tokenizer_json(&file)?),
        None => None,
    };
    let mut w = super::gguf::GgufWeights::new(&file, &config);
    let name = file.str("general.name").unwrap_or("llama").to_string();
    let model = super::build(&config, &mut w, &name)?;
    drop(file);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    if let Some(t) = tokenizer_text {
        let p = out.join(TOKENIZER_FILE);
        crate::util::write_atomic(&p, t.as_bytes())?;
        files.push(p);
    }
    let p = out.join(TOKENIZER_CONFIG_FILE);
    write_json(&p, &tokenizer_config_json(&config, &meta))?;
    files.push(p);
    let p = out.join(CONFIG_FILE);
    write_json(&p, &config_json(&config, &meta))?;
    files.push(p);
    let p = out.join(MODEL_FILE);
    crate::util::write_atomic(&p, &crate::graph::onnx::encode_model(&model))?;
    files.push(p);
    Ok(ImportedFolder {
        decoder: ImportedDecoder { model, config },
        meta,
        files,
    })
}

/// Whether the HF folder `dir` holds a Llama decoder (`config.json` with `model_type`
/// `llama`): what `elx import-hf` asks before choosing the decoder import.
pub fn is_llama_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").and_then(|m| m.as_str()) == Some("llama"))
}

/// Builds the decoder graph of the HF Llama folder `dir` ([`super::import_hf`]) and writes it
/// to `out`, after copying the folder's tokenizer and configuration files beside it
/// ([`crate::graph::import_hf::copy_companions`]), each atomically, the model last.
pub fn import_hf_file(
    dir: &Path,
    out: &Path,
) -> Result<(ImportedDecoder, crate::graph::import_hf::Companions)> {
    let m = super::import_hf(dir)?;
    let companions = crate::graph::import_hf::copy_companions(dir, out)?;
    crate::util::write_atomic(out, &crate::graph::onnx::encode_model(&m.model))?;
    Ok((m, companions))
}
