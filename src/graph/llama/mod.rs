//! The ONNX graph of a Llama-family decoder (Llama, SmolLM2, Mistral-style GQA without
//! sliding windows) with a KV cache, built natively from its weights: a GGUF file
//! ([`gguf`], `elx import-gguf`) or a Hugging Face folder ([`hf`]).
//!
//! The graph (opset 17, basic ops only, so that tract and ONNX Runtime both run it) takes
//!
//! * `input_ids` int64 `[batch, sequence]`: the new tokens;
//! * `attention_mask` int64 `[batch, past_sequence + sequence]`: 1 for every real token of
//!   the cache and of the new tokens, 0 for padding (rows of a batch are left-padded);
//! * `position_ids` int64 `[batch, sequence]`: each new token's position (its row's count of
//!   real tokens before it);
//! * `past_key_values.<l>.key` / `.value` f32 `[batch, kv_heads, past_sequence, head_dim]`
//!   per layer (`past_sequence` may be 0: the prompt pass);
//! * `logits_positions` int64 `[logits_sequence]`: the positions among the new tokens
//!   (shared by every row, since rows are left-padded) whose logits are computed;
//!
//! and returns `logits` f32 `[batch, logits_sequence, vocab]`, then `present.<l>.key` /
//! `.value` `[batch, kv_heads, past_sequence + sequence, head_dim]` per layer (the next
//! call's past). The names are those of Optimum's and onnxruntime-genai's decoder exports,
//! but for `logits_positions`: generation needs the last position's logits only, and the
//! head over every position of a 64-token prompt call is a fifth of its products and 12 MB
//! of logits; a score reads every position.
//!
//! Each layer is `LlamaDecoderLayer` in float32: RMSNorm (`x / sqrt(mean(x²) + eps) · w`),
//! rotary embeddings on Q and K (`x·cos + rotate_half(x)·sin`, the tables precomputed as
//! transformers does, in f32), grouped-query attention (query head h reads key/value head
//! `h / (heads / kv_heads)`) with the causal mask and the padding mask added as `f32::MIN`,
//! softmax, the output projection and residual, then RMSNorm, the SwiGLU MLP
//! (`down(silu(gate(x)) · up(x))`) and residual; a final RMSNorm and the LM head (the token
//! embedding itself when the model ties them).
//!
//! Every linear weight keeps its Hugging Face module name (`model.layers.0.self_attn.q_proj`)
//! as `<module>.weight`, stored `[in x out]` and feeding its MatMul directly, so that
//! `elx bind` resolves PEFT adapters of these modules by name and the patch applies them
//! unchanged (`q/k/v/o_proj`, `gate/up/down_proj`).

pub mod files;
pub mod gguf;
pub mod hf;

use super::onnx::{self, Dim, GraphBuilder, attr_int, attr_ints, node, transpose, value_info};
use super::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use crate::error::{Error, Result};
use std::path::Path;

/// The token input.
pub const INPUT_IDS: &str = "input_ids";
/// The padding mask over the cache and the new tokens.
pub const ATTENTION_MASK: &str = "attention_mask";
/// The new tokens' positions.
pub const POSITION_IDS: &str = "position_ids";
/// The logits output.
pub const LOGITS: &str = "logits";
/// The positions among the new tokens whose logits are computed (the last input).
pub const LOGITS_POSITIONS: &str = "logits_positions";

/// The past-key input of layer `l`.
pub fn past_key(l: usize) -> String {
    format!("past_key_values.{l}.key")
}
/// The past-value input of layer `l`.
pub fn past_value(l: usize) -> String {
    format!("past_key_values.{l}.value")
}
/// The present-key output of layer `l`.
pub fn present_key(l: usize) -> String {
    format!("present.{l}.key")
}
/// The present-value output of layer `l`.
pub fn present_value(l: usize) -> String {
    format!("present.{l}.value")
}

/// Largest accepted size of any one dimension.
const MAX_DIM: usize = 1 << 24;
/// Largest number of layers accepted.
const MAX_LAYERS: usize = 1024;
/// Largest context accepted (the rotary tables hold 2 · context · head_dim floats).
const MAX_CONTEXT: usize = 1 << 20;
/// A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
const MAX_WEIGHT_BYTES: usize = (2usize << 30) - (64 << 20);

/// The hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Model width (`hidden_size`, GGUF `embedding_length`).
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head (`hidden / heads` unless the model says otherwise).
    pub head_dim: usize,
    /// MLP width (`intermediate_size`, GGUF `feed_forward_length`).
    pub intermediate: usize,
    /// Vocabulary size (rows of the token embedding).
    pub vocab: usize,
    /// Longest context (`max_position_embeddings`, GGUF `context_length`): rows of the
    /// rotary tables, so larger positions are refused before a run.
    pub max_position: usize,
    /// Rotary base (`rope_theta`, GGUF `rope.freq_base`).
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Whether the LM head is the token embedding (no separate `lm_head.weight`).
    pub tied_embeddings: bool,
}

/// One line: layers, widths, heads, vocabulary, context, rotary base, RMSNorm eps, whether
/// the embeddings are tied (what the importers print).
impl std::fmt::Display for LlamaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers, hidden {}, {} heads ({} key/value heads, width {}), MLP {}, vocab {}, context {}, rope base {}, RMSNorm eps {:e}, {} embeddings",
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.intermediate,
            self.vocab,
            self.max_position,
            self.rope_theta,
            self.rms_eps,
            if self.tied_embeddings {
                "tied"
            } else {
                "untied"
            }
        )
    }
}

impl LlamaConfig {
    /// Checks the sizes fit together and within the bounds; `path` names the source.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Error::bad_file(path, m);
        for (name, v) in [
            ("hidden size", self.hidden),
            ("head count", self.heads),
            ("key/value head count", self.kv_heads),
            ("head width", self.head_dim),
            ("MLP width", self.intermediate),
            ("vocabulary size", self.vocab),
        ] {
            if v == 0 || v > MAX_DIM {
                return Err(bad(format!(
                    "expected a {name} in 1..={MAX_DIM}, found {v}"
                )));
            }
        }
        if self.layers == 0 || self.layers > MAX_LAYERS {
            return Err(bad(format!(
                "expected 1..={MAX_LAYERS} layers, found {}",
                self.layers
            )));
        }
        if self.max_position == 0 || self.max_position > MAX_CONTEXT {
            return Err(bad(format!(
                "expected a context length in 1..={MAX_CONTEXT}, found {}",
                self.max_position
            )));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "expected the head count ({}) to be a multiple of the key/value head count ({})",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "expected an even head width (rotary embeddings rotate pairs), found {}",
                self.head_dim
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(bad(format!(
                "expected a finite rotary base above 1, found {}",
                self.rope_theta
            )));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(bad(format!(
                "expected a finite, non-negative RMSNorm epsilon, found {}",
                self.rms_eps
            )));
        }
        let floats = self
            .weight_count()
            .ok_or_else(|| bad("model sizes overflow".into()))?;
        if floats.saturating_mul(4) > MAX_WEIGHT_BYTES {
            return Err(bad(format!(
                "expected at most {MAX_WEIGHT_BYTES} bytes of f32 weights (a single-file ONNX model is limited to 2 GiB), found {} floats",
                floats
            )));
        }
        Ok(())
    }

    /// The weights' float count (None on overflow): embedding, per-layer projections and
    /// norms, final norm, LM head when untied, rotary tables.
    pub fn weight_count(&self) -> Option<usize> {
        let (h, q, kv) = (
            self.hidden,
            self.heads.checked_mul(self.head_dim)?,
            self.kv_heads.checked_mul(self.head_dim)?,
        );
        let attn = h
            .checked_mul(q)?
            .checked_mul(2)?
            .checked_add(h.checked_mul(kv)?.checked_mul(2)?)?;
        let mlp = h.checked_mul(self.intermediate)?.checked_mul(3)?;
        let layer = attn.checked_add(mlp)?.checked_add(2 * h)?;
        let embed = self.vocab.checked_mul(h)?;
        let head = if self.tied_embeddings { 0 } else { embed };
        let rope = self
            .max_position
            .checked_mul(self.head_dim)?
            .checked_mul(2)?;
        layer
            .checked_mul(self.layers)?
            .checked_add(embed)?
            .checked_add(head)?
            .checked_add(h)?
            .checked_add(rope)
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Where a decoder's weights come from, under their Hugging Face names and shapes
/// (`[out, in]` for a linear layer), as f32 in the Hugging Face layout (a GGUF source undoes
/// llama.cpp's Q/K row permutation).
pub trait LlamaWeights {
    /// Tensor `name`, checked to have `shape` (row-major).
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// Refuses tensors of the source that the graph did not read (a config describing fewer
    /// layers than the file holds would silently drop them).
    fn check_all_read(&self) -> Result<()>;
}

/// A decoder graph and the configuration it was built from.
#[derive(Clone, Debug)]
pub struct ImportedDecoder {
    /// The ONNX model (weights inside, f32).
    pub model: ModelProto,
    /// Its configuration.
    pub config: LlamaConfig,
}

/// Builds the decoder graph of a GGUF file (see [`gguf`]).
pub fn import_gguf(path: &Path) -> Result<ImportedDecoder> {
    let file = crate::gguf::Gguf::open(path)?;
    let config = gguf::config(&file)?;
    let mut w = gguf::GgufWeights::new(&file, &config);
    let name = file
        .get("general.name")
        .and_then(|_| file.str("general.name").ok())
        .unwrap_or("llama")
        .to_string();
    let model = build(&config, &mut w, &name)?;
    Ok(ImportedDecoder { model, config })
}

/// Builds the decoder graph of a Hugging Face Llama folder (`config.json` +
/// `model.safetensors`, see [`hf`]).
pub fn import_hf(dir: &Path) -> Result<ImportedDecoder> {
    let config = hf::read_config(&dir.join("config.json"))?;
    let st = dir.join("model.safetensors");
    if !st.is_file() {
        return Err(Error::bad_file(
            &st,
            "expected the model weights as model.safetensors in the folder beside config.json, found none",
        ));
    }
    let mut w = hf::HfWeights::open(&st)?;
    let model = build(&config, &mut w, "llama")?;
    Ok(ImportedDecoder { model, config })
}

/// The rotary tables as transformers computes them (`LlamaRotaryEmbedding`, default rope
/// type), in f32: `inv_freq[i] = 1 / theta^(2i / d)`, angle `p · inv_freq[i]`, each half of a
/// row repeated (`cat(freqs, freqs)`). Returns `cos` and the signed sine `cat(−sin, sin)`, so
/// that `rotate_half(x)·sin = swap_halves(x)·signed_sin`.
pub fn rotary_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let d = cfg.head_dim;
    let half = d / 2;
    let theta = cfg.rope_theta as f32;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect();
    let mut cos = vec![0f32; cfg.max_position * d];
    let mut sin = vec![0f32; cfg.max_position * d];
    for p in 0..cfg.max_position {
        for (i, f) in inv.iter().enumerate() {
            let a = p as f32 * f;
            let (s, c) = (f64::from(a).sin() as f32, f64::from(a).cos() as f32);
            cos[p * d + i] = c;
            cos[p * d + half + i] = c;
            sin[p * d + i] = -s;
            sin[p * d + half + i] = s;
        }
    }
    (cos, sin)
}

/// Composite layers of the decoder.
impl GraphBuilder {
    /// `y = x·W` for the HF linear module `module` (weight `[out x in]` in the source, stored
    /// `[in x out]` under `<module>.weight` so that binding finds it by name).
    fn linear_nobias(
        &mut self,
        w: &mut dyn LlamaWeights,
        module: &str,
        x: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<String> {
        let wt = w.read(&format!("{module}.weight"), &[d_out, d_in])?;
        let wn = self.init_f32(
            &format!("{module}.weight"),
            &[d_in, d_out],
            &transpose(d_out, d_in, &wt),
        );
        Ok(self.op(
            "MatMul",
            &format!("/{}/MatMul", module.replace('.', "/")),
            &[x, &wn],
            vec![],
        ))
    }

    /// `LlamaRMSNorm`: `x / sqrt(mean(x², last axis) + eps) · weight`.
    fn rms_norm(
        &mut self,
        w: &mut dyn LlamaWeights,
        module: &str,
        x: &str,
        hidden: usize,
        eps: &str,
    ) -> Result<String> {
        let g = w.read(&format!("{module}.weight"), &[hidden])?;
        let gn = self.init_f32(&format!("{module}.weight"), &[hidden], &g);
        let s = format!("/{}", module.replace('.', "/"));
        let sq = self.op("Mul", &format!("{s}/square"), &[x, x], vec![]);
        let mean = self.op(
            "ReduceMean",
            &format!("{s}/mean"),
            &[&sq],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        let var = self.op("Add", &format!("{s}/add_eps"), &[&mean, eps], vec![]);
        let rms = self.op("Sqrt", &format!("{s}/sqrt"), &[&var], vec![]);
        let y = self.op("Div", &format!("{s}/normalize"), &[x, &rms], vec![]);
        Ok(self.op("Mul", &format!("{s}/scale"), &[&y, &gn], vec![]))
    }

    /// Rotary embedding of `x` `[batch, heads, seq, head_dim]`: `x·cos + swap_halves(x)·sin`
    /// with the tables gathered at the positions (`[batch, 1, seq, head_dim]`).
    fn rotary(&mut self, scope: &str, x: &str, cos: &str, sin: &str) -> String {
        let (a, b) = (
            format!("{scope}/first_half"),
            format!("{scope}/second_half"),
        );
        self.nodes.push(node(
            "Split",
            &format!("{scope}/split"),
            &[x],
            &[&a, &b],
            vec![attr_int("axis", -1)],
        ));
        let swapped = self.op(
            "Concat",
            &format!("{scope}/swap"),
            &[&b, &a],
            vec![attr_int("axis", -1)],
        );
        let xc = self.op("Mul", &format!("{scope}/cos"), &[x, cos], vec![]);
        let xs = self.op("Mul", &format!("{scope}/sin"), &[&swapped, sin], vec![]);
        self.op("Add", &format!("{scope}/rotated"), &[&xc, &xs], vec![])
    }
}

/// Builds the decoder graph of `cfg` from `w` (see the module documentation). `name` is
/// recorded as the graph's name.
pub fn build(cfg: &LlamaConfig, w: &mut dyn LlamaWeights, name: &str) -> Result<ModelProto> {
    let (h, nh, kvh, hd) = (cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim);
    let g = cfg.group();
    let mut b = GraphBuilder::default();

    // Shared constants.
    let eps = b.init_f32("/const/rms_eps", &[], &[cfg.rms_eps]);
    let scale = b.init_f32("/const/attention_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let f_zero = b.init_f32("/const/zero", &[], &[0.0]);
    let f_min = b.init_f32("/const/f32_min", &[], &[f32::MIN]);
    let i_zero = b.init_i64("/const/i64_zero", &[], &[0]);
    let i_one = b.init_i64("/const/i64_one", &[], &[1]);
    let ax1 = b.init_i64("/const/axes_1", &[1], &[1]);
    let ax123 = b.init_i64("/const/axes_1_2_3", &[3], &[1, 2, 3]);
    let ax2 = b.init_i64("/const/axes_2", &[1], &[2]);
    let q_heads = b.init_i64("/const/shape_q_heads", &[4], &[0, 0, nh as i64, hd as i64]);
    let kv_heads = b.init_i64(
        "/const/shape_kv_heads",
        &[4],
        &[0, 0, kvh as i64, hd as i64],
    );
    let q_groups = b.init_i64(
        "/const/shape_q_groups",
        &[5],
        &[0, kvh as i64, g as i64, -1, hd as i64],
    );
    let q_merge = b.init_i64("/const/shape_q_merge", &[4], &[0, nh as i64, -1, hd as i64]);
    let hidden_shape = b.init_i64("/const/shape_hidden", &[3], &[0, 0, (nh * hd) as i64]);

    // Rotary tables gathered at the positions: [batch, 1, seq, head_dim].
    let (cos, sin) = rotary_tables(cfg);
    let cos_t = b.init_f32("/rotary/cos_table", &[cfg.max_position, hd], &cos);
    let sin_t = b.init_f32("/rotary/signed_sin_table", &[cfg.max_position, hd], &sin);
    let cos = b.op(
        "Gather",
        "/rotary/cos_gather",
        &[&cos_t, POSITION_IDS],
        vec![],
    );
    let cos = b.op("Unsqueeze", "/rotary/cos", &[&cos, &ax1], vec![]);
    let sin = b.op(
        "Gather",
        "/rotary/sin_gather",
        &[&sin_t, POSITION_IDS],
        vec![],
    );
    let sin = b.op("Unsqueeze", "/rotary/sin", &[&sin, &ax1], vec![]);

    // The additive mask, [batch, 1, 1, seq, total]: query i (absolute index past + i) sees
    // key j when j <= past + i and the key is not padding.
    let ids_shape = b.op("Shape", "/mask/ids_shape", &[INPUT_IDS], vec![]);
    let seq = b.op(
        "Gather",
        "/mask/seq",
        &[&ids_shape, &i_one],
        vec![attr_int("axis", 0)],
    );
    let mask_shape = b.op("Shape", "/mask/mask_shape", &[ATTENTION_MASK], vec![]);
    let total = b.op(
        "Gather",
        "/mask/total",
        &[&mask_shape, &i_one],
        vec![attr_int("axis", 0)],
    );
    let past = b.op("Sub", "/mask/past", &[&total, &seq], vec![]);
    let q_idx = b.op(
        "Range",
        "/mask/query_index",
        &[&past, &total, &i_one],
        vec![],
    );
    let k_idx = b.op(
        "Range",
        "/mask/key_index",
        &[&i_zero, &total, &i_one],
        vec![],
    );
    let q_col = b.op("Unsqueeze", "/mask/query_column", &[&q_idx, &ax1], vec![]);
    let causal = b.op("LessOrEqual", "/mask/causal", &[&k_idx, &q_col], vec![]);
    let pad = b.op(
        "Cast",
        "/mask/padding",
        &[ATTENTION_MASK],
        vec![attr_int("to", 9)],
    );
    let pad = b.op("Unsqueeze", "/mask/padding_5d", &[&pad, &ax123], vec![]);
    let allowed = b.op("And", "/mask/allowed", &[&causal, &pad], vec![]);
    let mask = b.op(
        "Where",
        "/mask/additive",
        &[&allowed, &f_zero, &f_min],
        vec![],
    );

    // Token embedding.
    let embed = w.read("model.embed_tokens.weight", &[cfg.vocab, h])?;
    let embed = b.init_f32("model.embed_tokens.weight", &[cfg.vocab, h], &embed);
    let mut x = b.op(
        "Gather",
        "/model/embed_tokens/Gather",
        &[&embed, INPUT_IDS],
        vec![],
    );

    let mut outputs_kv = Vec::with_capacity(2 * cfg.layers);
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let s = format!("/model/layers/{l}/self_attn");
        let hn = b.rms_norm(w, &format!("{p}.input_layernorm"), &x, h, &eps)?;
        let q = b.linear_nobias(w, &format!("{p}.self_attn.q_proj"), &hn, h, nh * hd)?;
        let k = b.linear_nobias(w, &format!("{p}.self_attn.k_proj"), &hn, h, kvh * hd)?;
        let v = b.linear_nobias(w, &format!("{p}.self_attn.v_proj"), &hn, h, kvh * hd)?;
        let perm = || vec![attr_ints("perm", &[0, 2, 1, 3])];
        let q = b.op("Reshape", &format!("{s}/q_heads"), &[&q, &q_heads], vec![]);
        let q = b.op("Transpose", &format!("{s}/q_perm"), &[&q], perm());
        let k = b.op("Reshape", &format!("{s}/k_heads"), &[&k, &kv_heads], vec![]);
        let k = b.op("Transpose", &format!("{s}/k_perm"), &[&k], perm());
        let v = b.op("Reshape", &format!("{s}/v_heads"), &[&v, &kv_heads], vec![]);
        let v = b.op("Transpose", &format!("{s}/v_perm"), &[&v], perm());
        let q = b.rotary(&format!("{s}/q_rotary"), &q, &cos, &sin);
        let k = b.rotary(&format!("{s}/k_rotary"), &k, &cos, &sin);

        // The cache: past ++ new along the sequence axis.
        let (pk, pv, ok, ov) = (past_key(l), past_value(l), present_key(l), present_value(l));
        b.nodes.push(node(
            "Concat",
            &format!("{s}/present_key"),
            &[&pk, &k],
            &[&ok],
            vec![attr_int("axis", 2)],
        ));
        b.nodes.push(node(
            "Concat",
            &format!("{s}/present_value"),
            &[&pv, &v],
            &[&ov],
            vec![attr_int("axis", 2)],
        ));
        outputs_kv.push((ok.clone(), ov.clone()));

        // Grouped-query attention by broadcasting: queries [b, kv, group, seq, hd] against
        // keys [b, kv, 1, hd, total] and values [b, kv, 1, total, hd].
        let q = b.op("Mul", &format!("{s}/q_scale"), &[&q, &scale], vec![]);
        let q = b.op(
            "Reshape",
            &format!("{s}/q_groups"),
            &[&q, &q_groups],
            vec![],
        );
        let k5 = b.op(
            "Unsqueeze",
            &format!("{s}/k_group_axis"),
            &[&ok, &ax2],
            vec![],
        );
        let kt = b.op(
            "Transpose",
            &format!("{s}/k_t"),
            &[&k5],
            vec![attr_ints("perm", &[0, 1, 2, 4, 3])],
        );
        let v5 = b.op(
            "Unsqueeze",
            &format!("{s}/v_group_axis"),
            &[&ov, &ax2],
            vec![],
        );
        let scores = b.op("MatMul", &format!("{s}/scores"), &[&q, &kt], vec![]);
        let scores = b.op("Add", &format!("{s}/masked"), &[&scores, &mask], vec![]);
        let probs = b.op(
            "Softmax",
            &format!("{s}/softmax"),
            &[&scores],
            vec![attr_int("axis", -1)],
        );
        let ctx = b.op("MatMul", &format!("{s}/context"), &[&probs, &v5], vec![]);
        let ctx = b.op(
            "Reshape",
            &format!("{s}/context_heads"),
            &[&ctx, &q_merge],
            vec![],
        );
        let ctx = b.op("Transpose", &format!("{s}/context_perm"), &[&ctx], perm());
        let ctx = b.op(
            "Reshape",
            &format!("{s}/context_merge"),
            &[&ctx, &hidden_shape],
            vec![],
        );
        let o = b.linear_nobias(w, &format!("{p}.self_attn.o_proj"), &ctx, nh * hd, h)?;
        x = b.op(
            "Add",
            &format!("/model/layers/{l}/attn_residual"),
            &[&x, &o],
            vec![],
        );

        let m = format!("/model/layers/{l}/mlp");
        let hn = b.rms_norm(w, &format!("{p}.post_attention_layernorm"), &x, h, &eps)?;
        let gate = b.linear_nobias(w, &format!("{p}.mlp.gate_proj"), &hn, h, cfg.intermediate)?;
        let up = b.linear_nobias(w, &format!("{p}.mlp.up_proj"), &hn, h, cfg.intermediate)?;
        let sig = b.op("Sigmoid", &format!("{m}/gate_sigmoid"), &[&gate], vec![]);
        let act = b.op("Mul", &format!("{m}/silu"), &[&gate, &sig], vec![]);
        let prod = b.op("Mul", &format!("{m}/gated"), &[&act, &up], vec![]);
        let down = b.linear_nobias(w, &format!("{p}.mlp.down_proj"), &prod, cfg.intermediate, h)?;
        x = b.op(
            "Add",
            &format!("/model/layers/{l}/mlp_residual"),
            &[&x, &down],
            vec![],
        );
    }

    // Only the positions asked for go through the final norm and the head.
    let x = b.op(
        "Gather",
        "/lm_head/positions",
        &[&x, LOGITS_POSITIONS],
        vec![attr_int("axis", 1)],
    );
    let hn = b.rms_norm(w, "model.norm", &x, h, &eps)?;
    if cfg.tied_embeddings {
        let et = b.op(
            "Transpose",
            "/lm_head/tied_embedding_t",
            &[&embed],
            vec![attr_ints("perm", &[1, 0])],
        );
        b.nodes.push(node(
            "MatMul",
            "/lm_head/MatMul",
            &[&hn, &et],
            &[LOGITS],
            vec![],
        ));
    } else {
        let wt = w.read("lm_head.weight", &[cfg.vocab, h])?;
        let wn = b.init_f32(
            "lm_head.weight",
            &[h, cfg.vocab],
            &transpose(cfg.vocab, h, &wt),
        );
        b.nodes.push(node(
            "MatMul",
            "/lm_head/MatMul",
            &[&hn, &wn],
            &[LOGITS],
            vec![],
        ));
    }
    w.check_all_read()?;

    let batch = || Dim::Param("batch".into());
    let dseq = || Dim::Param("sequence".into());
    let dpast = || Dim::Param("past_sequence".into());
    let dtotal = || Dim::Param("total_sequence".into());
    let mut input = vec![
        value_info(INPUT_IDS, onnx::INT64, &[batch(), dseq()]),
        value_info(ATTENTION_MASK, onnx::INT64, &[batch(), dtotal()]),
        value_info(POSITION_IDS, onnx::INT64, &[batch(), dseq()]),
    ];
    let kv_dims = |t: Dim| [batch(), Dim::Fixed(kvh), t, Dim::Fixed(hd)];
    for l in 0..cfg.layers {
        input.push(value_info(&past_key(l), onnx::FLOAT, &kv_dims(dpast())));
        input.push(value_info(&past_value(l), onnx::FLOAT, &kv_dims(dpast())));
    }
    let dlogits = || Dim::Param("logits_sequence".into());
    input.push(value_info(LOGITS_POSITIONS, onnx::INT64, &[dlogits()]));
    let mut output = vec![value_info(
        LOGITS,
        onnx::FLOAT,
        &[batch(), dlogits(), Dim::Fixed(cfg.vocab)],
    )];
    for (k, v) in &outputs_kv {
        output.push(value_info(k, onnx::FLOAT, &kv_dims(dtotal())));
        output.push(value_info(v, onnx::FLOAT, &kv_dims(dtotal())));
    }
    let graph = GraphProto {
        name: name.to_string(),
        node: b.nodes,
        initializer: b.inits,
        input,
        output,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 8,
        producer_name: "eigenlorax".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    })
}
