//! The hyper-parameters of a BERT encoder ([`BertConfig`]), read from `config.json` and
//! checked: every size bounded, only the architecture the graph builds accepted.

use crate::error::{Error, Result};
use std::path::Path;

/// Largest `config.json` read (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest accepted size of any one config dimension: far above real encoders, low enough
/// that products of dimensions cannot overflow.
const MAX_DIM: usize = 1 << 24;

/// Largest number of layers accepted.
const MAX_LAYERS: usize = 1024;

/// The hyper-parameters of a BERT encoder, read from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `max_position_embeddings`.
    pub max_position: usize,
    /// `type_vocab_size` (HF default 2).
    pub type_vocab: usize,
    /// `layer_norm_eps` (HF default 1e-12).
    pub layer_norm_eps: f32,
    /// `hidden_act` (only `gelu`, the erf form, is supported).
    pub hidden_act: String,
}

/// Reads and checks `DIR/config.json` (a BERT `model_type`, absolute positions, GELU).
pub fn read_config(path: &Path) -> Result<BertConfig> {
    let obj = crate::util::read_json_object(path, MAX_CONFIG_BYTES)?;
    let obj = &obj;
    let field = |name: &str, what: &str| Error::bad_file(path, format!("field `{name}`: {what}"));
    let string = |name: &str, default: Option<&str>| -> Result<String> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            None | Some(serde_json::Value::Null) => default
                .map(str::to_string)
                .ok_or_else(|| field(name, "expected a string, found none")),
            Some(other) => Err(field(name, &format!("expected a string, found {other}"))),
        }
    };
    let size = |name: &str, default: Option<usize>, max: usize| -> Result<usize> {
        let n = match obj.get(name) {
            None | Some(serde_json::Value::Null) => {
                default.ok_or_else(|| field(name, "expected a positive integer, found none"))?
            }
            Some(x) => x
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| field(name, &format!("expected a positive integer, found {x}")))?,
        };
        if n == 0 || n > max {
            return Err(field(
                name,
                &format!("expected an integer in 1..={max}, found {n}"),
            ));
        }
        Ok(n)
    };
    let model_type = string("model_type", None)?;
    if model_type != "bert" {
        return Err(field(
            "model_type",
            &format!(
                "expected \"bert\" (BERT-family encoders such as BERT and MiniLM), found {model_type:?}"
            ),
        ));
    }
    let hidden_act = string("hidden_act", Some("gelu"))?;
    if hidden_act != "gelu" {
        return Err(field(
            "hidden_act",
            &format!(
                "expected \"gelu\" (the erf form; no other activation is supported), found {hidden_act:?}"
            ),
        ));
    }
    let pos = string("position_embedding_type", Some("absolute"))?;
    if pos != "absolute" {
        return Err(field(
            "position_embedding_type",
            &format!(
                "expected \"absolute\" (relative position embeddings are not supported), found {pos:?}"
            ),
        ));
    }
    if obj.get("is_decoder").and_then(|v| v.as_bool()) == Some(true) {
        return Err(field(
            "is_decoder",
            "expected an encoder (false), found true",
        ));
    }
    let eps = match obj.get("layer_norm_eps") {
        None | Some(serde_json::Value::Null) => 1e-12,
        Some(x) => x
            .as_f64()
            .filter(|e| e.is_finite() && *e > 0.0 && *e < 1.0)
            .ok_or_else(|| {
                field(
                    "layer_norm_eps",
                    &format!("expected a number in (0, 1), found {x}"),
                )
            })?,
    };
    let cfg = BertConfig {
        hidden: size("hidden_size", None, MAX_DIM)?,
        layers: size("num_hidden_layers", None, MAX_LAYERS)?,
        heads: size("num_attention_heads", None, MAX_DIM)?,
        intermediate: size("intermediate_size", None, MAX_DIM)?,
        vocab: size("vocab_size", None, MAX_DIM)?,
        max_position: size("max_position_embeddings", None, MAX_DIM)?,
        type_vocab: size("type_vocab_size", Some(2), MAX_DIM)?,
        layer_norm_eps: eps as f32,
        hidden_act,
    };
    if !cfg.hidden.is_multiple_of(cfg.heads) {
        return Err(field(
            "num_attention_heads",
            &format!(
                "expected a divisor of hidden_size {}, found {}",
                cfg.hidden, cfg.heads
            ),
        ));
    }
    Ok(cfg)
}
