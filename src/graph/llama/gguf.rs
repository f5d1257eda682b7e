//! A Llama-family decoder read from a GGUF file (llama.cpp's format): its configuration from
//! the `<arch>.*` metadata keys and its weights dequantized to f32 under their Hugging Face
//! names, with the Q and K rows that llama.cpp's converter permuted put back in the Hugging
//! Face order ([`crate::gguf::unpermute_qk`]), so that PEFT adapters trained on the HF layout
//! apply unchanged.

use super::{LlamaConfig, LlamaWeights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use std::collections::HashSet;

/// Architectures read with the Llama layout (`general.architecture`).
pub const ARCHITECTURES: [&str; 1] = ["llama"];

/// The decoder configuration held in `g`'s metadata. An architecture other than
/// [`ARCHITECTURES`], rotary scaling, or a partial rotary dimension is refused, naming the key.
pub fn config(g: &Gguf) -> Result<LlamaConfig> {
    let path = g.path();
    let arch = g.str("general.architecture")?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(Error::bad_tensor(
            path,
            "general.architecture",
            format!("expected one of {ARCHITECTURES:?} (a Llama-family decoder), found `{arch}`"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let size = |k: &str| -> Result<usize> { Ok(g.u32(&key(k))? as usize) };
    let hidden = size("embedding_length")?;
    let heads = size("attention.head_count")?;
    let kv_heads = match g.get(&key("attention.head_count_kv")) {
        Some(_) => size("attention.head_count_kv")?,
        None => heads,
    };
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::bad_tensor(
            path,
            &key("attention.head_count"),
            format!("expected a head count dividing the width {hidden}, found {heads}"),
        ));
    }
    let head_dim = match g.get(&key("attention.key_length")) {
        Some(_) => size("attention.key_length")?,
        None => hidden / heads,
    };
    if let Some(_) = g.get(&key("rope.dimension_count")) {
        let rot = size("rope.dimension_count")?;
        if rot != head_dim {
            return Err(Error::bad_tensor(
                path,
                &key("rope.dimension_count"),
                format!(
                    "expected rotary embeddings over the whole head ({head_dim}), found {rot} (partial rotary is not supported)"
                ),
            ));
        }
    }
    if let Some(_) = g.get(&key("rope.scaling.type")) {
        let t = g.str(&key("rope.scaling.type"))?;
        if t != "none" {
            return Err(Error::bad_tensor(
                path,
                &key("rope.scaling.type"),
                format!("expected no rotary scaling, found `{t}` (not supported)"),
            ));
        }
    }
    let embed = g.tensor("token_embd.weight").ok_or_else(|| {
        Error::bad_tensor(
            path,
            "token_embd.weight",
            "expected this tensor, found none",
        )
    })?;
    let shape = embed.shape();
    let vocab = match shape.as_slice() {
        [v, h] if *h == hidden => *v,
        other => {
            return Err(Error::bad_tensor(
                path,
                "token_embd.weight",
                format!("expected shape [vocab, {hidden}], found {other:?}"),
            ));
        }
    };
    let rope_theta = match g.get(&key("rope.freq_base")) {
        Some(_) => f64::from(g.f32(&key("rope.freq_base"))?),
        None => 10_000.0,
    };
    let cfg = LlamaConfig {
        hidden,
        layers: size("block_count")?,
        heads,
        kv_heads,
        head_dim,
        intermediate: size("feed_forward_length")?,
        vocab,
        max_position: size("context_length")?,
        rope_theta,
        rms_eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?,
        tied_embeddings: g.tensor("output.weight").is_none(),
    };
    cfg.check(path)?;
    Ok(cfg)
}

/// The GGUF name of a Hugging Face Llama tensor, and the head count its rows were permuted
/// with (Q and K), if any.
fn gguf_name(hf: &str, cfg: &LlamaConfig) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, module) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let (name, permuted) = match module {
        "input_layernorm.weight" => ("attn_norm", None),
        "self_attn.q_proj.weight" => ("attn_q", Some(cfg.heads)),
        "self_attn.k_proj.weight" => ("attn_k", Some(cfg.kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v", None),
        "self_attn.o_proj.weight" => ("attn_output", None),
        "post_attention_layernorm.weight" => ("ffn_norm", None),
        "mlp.gate_proj.weight" => ("ffn_gate", None),
        "mlp.up_proj.weight" => ("ffn_up", None),
        "mlp.down_proj.weight" => ("ffn_down", None),
        _ => return None,
    };
    Some((format!("blk.{l}.{name}.weight"), permuted))
}

/// The weights of a GGUF decoder (see the module documentation).
pub struct GgufWeights<'a> {
    file: &'a Gguf,
    cfg: LlamaConfig,
    read: HashSet<String>,
}

impl<'a> GgufWeights<'a> {
    /// The weights of `file`, whose configuration is `cfg` ([`config`]).
    pub fn new(file: &'a Gguf, cfg: &LlamaConfig) -> Self {
        GgufWeights {
            file,
            cfg: cfg.clone(),
            read: HashSet::new(),
        }
    }
}

impl LlamaWeights for GgufWeights<'_> {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = self.file.path();
        let (gname, permuted) = gguf_name(name, &self.cfg)
            .ok_or_else(|| Error::Internal(format!("no GGUF name for `{name}`")))?;
        let t = self.file.tensor(&gname).ok_or_else(|| {
            Error::bad_tensor(
                path,
                &gname,
                format!("expected this tensor ({name}) with shape {shape:?}, found none"),
            )
        })?;
        if t.shape() != shape {
            return Err(Error::bad_tensor(
                path,
                &gname,
                format!(
                    "expected shape {shape:?} (from the file's metadata), found {:?}",
                    t.shape()
                ),
            ));
        }
        self.read.insert(gname.clone());
        let w = self.file.dequantize(&gname)?;
        match permuted {
            Some(n_head) => crate::gguf::unpermute_qk(&w, [shape[0], shape[1]], n_head)
                .map_err(|e| Error::bad_tensor(path, &gname, e.to_string())),
            None => Ok(w),
        }
    }

    fn check_all_read(&self) -> Result<()> {
        let mut unread: Vec<&str> = self
            .file
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !self.read.contains(*n))
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        unread.sort_unstable();
        Err(Error::bad_tensor(
            self.file.path(),
            unread[0],
            format!(
                "expected only the tensors of a Llama decoder; {} other tensor(s) would be dropped ({}{})",
                unread.len(),
                unread[..unread.len().min(4)].join(", "),
                if unread.len() > 4 { ", ..." } else { "" }
            ),
        ))
    }
}
