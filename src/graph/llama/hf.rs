//! A Llama-family decoder read from a Hugging Face folder: `config.json` (`model_type`
//! `llama`) and `model.safetensors` (F32, F16 or BF16), under the names `LlamaForCausalLM`
//! saves.

use super::{LlamaConfig, LlamaWeights};
use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorFile};
use std::collections::HashSet;
use std::path::Path;

/// Largest `config.json` read (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads `config.json` of a Llama model. Rotary scaling, attention or MLP biases, and an
/// activation other than SiLU are refused, naming the field.
pub fn read_config(path: &Path) -> Result<LlamaConfig> {
    let obj = crate::util::read_json_object(path, MAX_CONFIG_BYTES)?;
    let obj = &obj;
    let field = |name: &str, what: String| Error::bad_file(path, format!("field `{name}`: {what}"));
    let size = |name: &str, default: Option<usize>| -> Result<usize> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => {
                default.ok_or_else(|| field(name, "expected a positive integer, found none".into()))
            }
            Some(x) => x
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| field(name, format!("expected a positive integer, found {x}"))),
        }
    };
    let float = |name: &str, default: f64| -> Result<f64> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| field(name, format!("expected a number, found {x}"))),
        }
    };
    match obj.get("model_type").and_then(|m| m.as_str()) {
        Some("llama") => {}
        other => {
            return Err(field(
                "model_type",
                format!(
                    "expected `llama`, found {}",
                    other.map_or("none".into(), |s| format!("`{s}`"))
                ),
            ));
        }
    }
    if let Some(s) = obj.get("rope_scaling").filter(|s| !s.is_null()) {
        return Err(field(
            "rope_scaling",
            format!("expected none (rotary scaling is not supported), found {s}"),
        ));
    }
    // transformers 5 states the rotary type in `rope_parameters`.
    if let Some(t) = obj
        .get("rope_parameters")
        .and_then(|p| p.get("rope_type"))
        .filter(|t| t.as_str() != Some("default"))
    {
        return Err(field(
            "rope_parameters.rope_type",
            format!("expected `default` (rotary scaling is not supported), found {t}"),
        ));
    }
    let rope_theta = obj
        .get("rope_parameters")
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64());
    for flag in ["attention_bias", "mlp_bias"] {
        if obj.get(flag).and_then(|b| b.as_bool()) == Some(true) {
            return Err(field(
                flag,
                "expected false (biases are not supported), found true".into(),
            ));
        }
    }
    let act = obj
        .get("hidden_act")
        .and_then(|a| a.as_str())
        .unwrap_or("silu");
    if act != "silu" {
        return Err(field(
            "hidden_act",
            format!("expected `silu`, found `{act}`"),
        ));
    }
    let hidden = size("hidden_size", None)?;
    let heads = size("num_attention_heads", None)?;
    let cfg = LlamaConfig {
        hidden,
        layers: size("num_hidden_layers", None)?,
        heads,
        kv_heads: size("num_key_value_heads", Some(heads))?,
        head_dim: size("head_dim", Some(hidden / heads.max(1)))?,
        intermediate: size("intermediate_size", None)?,
        vocab: size("vocab_size", None)?,
        max_position: size("max_position_embeddings", Some(2048))?,
        rope_theta: match rope_theta {
            Some(t) => t,
            None => float("rope_theta", 10_000.0)?,
        },
        rms_eps: float("rms_norm_eps", 1e-6)? as f32,
        tied_embeddings: obj
            .get("tie_word_embeddings")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
    };
    cfg.check(path)?;
    Ok(cfg)
}

/// The weights of a Hugging Face Llama checkpoint (`model.safetensors`).
pub struct HfWeights {
    file: TensorFile,
    read: HashSet<String>,
}

impl HfWeights {
    /// Opens `path` (a safetensors file).
    pub fn open(path: &Path) -> Result<HfWeights> {
        Ok(HfWeights {
            file: TensorFile::open(path)?,
            read: HashSet::new(),
        })
    }
}

impl LlamaWeights for HfWeights {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = self.file.path().to_path_buf();
        let (dtype, found) = self.file.stored_info(name).ok_or_else(|| {
            Error::bad_tensor(
                &path,
                name,
                format!("expected this tensor with shape {shape:?}, found none"),
            )
        })?;
        if !matches!(
            Dtype::from_name(dtype),
            Some(Dtype::F32 | Dtype::F16 | Dtype::BF16)
        ) {
            return Err(Error::bad_tensor(
                &path,
                name,
                format!("expected dtype F32, F16 or BF16, found {dtype}"),
            ));
        }
        if found != shape {
            return Err(Error::bad_tensor(
                &path,
                name,
                format!("expected shape {shape:?} (from config.json), found {found:?}"),
            ));
        }
        self.read.insert(name.to_string());
        let (_, v) = self.file.read_f32(name)?;
        Ok(v)
    }

    /// Tensors outside `model.` and `lm_head.` are not the decoder's and are ignored; rotary
    /// `inv_freq` buffers are recomputed.
    fn check_all_read(&self) -> Result<()> {
        let mut unread: Vec<&str> = self
            .file
            .names()
            .into_iter()
            .filter(|n| !self.read.contains(*n))
            .filter(|n| {
                (n.starts_with("model.") || n.starts_with("lm_head."))
                    && !n.ends_with("rotary_emb.inv_freq")
            })
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        unread.sort_unstable();
        Err(Error::bad_tensor(
            self.file.path(),
            unread[0],
            format!(
                "expected only weights config.json accounts for; {} decoder tensor(s) would be dropped ({}{}): does config.json (num_hidden_layers, sizes, tie_word_embeddings) describe this checkpoint?",
                unread.len(),
                unread[..unread.len().min(4)].join(", "),
                if unread.len() > 4 { ", ..." } else { "" }
            ),
        ))
    }
}
