//! `elx import-hf`: the ONNX graph of a BERT-family encoder built natively from a Hugging Face
//! checkpoint folder (`config.json` + `model.safetensors`), with no torch.
//!
//! The graph (opset 17) takes `input_ids`, `attention_mask` and `token_type_ids` (int64
//! `[batch, seq]`, both axes symbolic) and returns, in this order:
//!
//! 1. `last_hidden_state` `[batch, seq, hidden]`: exactly `BertModel`'s (word + position +
//!    token-type embeddings, LayerNorm, then per layer: self-attention with the additive mask
//!    `finfo(f32).min · (1 − mask)`, softmax, output dense + residual + LayerNorm, GELU (erf)
//!    feed-forward + residual + LayerNorm);
//! 2. `sentence_embedding` `[batch, hidden]`: the attention-mask mean of `last_hidden_state`,
//!    `Σ h·m / max(Σ m, 1e-9)`, without L2 normalisation (sentence-transformers' pooling).
//!
//! Every weight keeps its HF module name with the `bert.` prefix dropped, so that `elx bind`
//! resolves adapted modules by name (rule 1 of [`super::bind`]). Each linear layer's weight
//! `<module>.weight` is stored pre-transposed as `[in x out]` and feeds its MatMul directly
//! (no Transpose to fold at load time), followed by an Add of `<module>.bias`. All weights are
//! converted to f32 (F32, F16 and BF16 checkpoints are accepted).
//!
//! [`import_hf_file`] also copies the folder's [`COMPANION_FILES`] (the tokenizer and the
//! configuration a run reads) next to the ONNX it writes, so that `elx run --text` and
//! `elx finetune` find them beside the model without `--tokenizer`.

use super::onnx::{self, Dim, attr_float, attr_int, attr_ints, node};
use super::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorFile};
use std::path::{Path, PathBuf};

/// Largest `config.json` read (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest accepted size of any one config dimension: far above real encoders, low enough
/// that products of dimensions cannot overflow.
const MAX_DIM: usize = 1 << 24;
/// Largest number of layers accepted.
const MAX_LAYERS: usize = 1024;
/// A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
const MAX_WEIGHT_BYTES: usize = (2usize << 30) - (64 << 20);

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

/// An imported model: the ONNX graph and the configuration it was built from.
#[derive(Clone, Debug)]
pub struct ImportedModel {
    /// The ONNX model (weights inside, f32).
    pub model: ModelProto,
    /// The encoder's configuration.
    pub config: BertConfig,
    /// The files placed beside the written model ([`import_hf_file`]; empty from
    /// [`import_hf`], which writes nothing).
    pub companions: Companions,
}

/// The files of a HF model folder that a run reads beside the model, in the order they are
/// copied: the tokenizer (`elx run --text`, `elx finetune` on text), its configuration
/// (`model_max_length`) and special tokens, and the model's `config.json`
/// (`max_position_embeddings`, the sequence limit of pre-tokenized data). The ONNX graph
/// itself needs none of them.
pub const COMPANION_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
];

/// Largest companion file read (a tokenizer.json of a large vocabulary is a few tens of MB;
/// the same bound as `elx run`'s tokenizer loader).
const MAX_COMPANION_BYTES: u64 = 256 * 1024 * 1024;

/// What [`copy_companions`] did beside a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Companions {
    /// Files of [`COMPANION_FILES`] now beside the model (copied, or already there when the
    /// model is written into the HF folder itself), in that order.
    pub copied: Vec<PathBuf>,
    /// Names of [`COMPANION_FILES`] the HF folder does not have (nothing copied for them).
    pub missing: Vec<&'static str>,
    /// Files beside the model named like a missing companion: left from something else, and
    /// not this model's. They are left in place; callers should warn about them.
    pub stale: Vec<PathBuf>,
}

impl Companions {
    /// Whether the tokenizer (`tokenizer.json`) is now beside the model.
    pub fn has_tokenizer(&self) -> bool {
        self.copied
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == COMPANION_FILES[0]))
    }
}

/// Reads and checks `DIR/config.json` (a BERT `model_type`, absolute positions, GELU).
pub fn read_config(path: &Path) -> Result<BertConfig> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::bad_file(
            path,
            format!(
                "expected a config.json of at most {MAX_CONFIG_BYTES} bytes, found {}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("expected a JSON object: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::bad_file(path, "expected a JSON object"))?;
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

/// The checkpoint's tensors, read under their HF names with an optional `bert.` prefix.
struct Weights {
    file: TensorFile,
    prefix: &'static str,
    bytes: usize,
    /// The stored names read so far ([`Weights::check_all_read`]).
    read: std::collections::HashSet<String>,
}

impl Weights {
    fn open(path: &Path) -> Result<Weights> {
        let file = TensorFile::open(path)?;
        // BertForXxx checkpoints nest the encoder under `bert.`.
        let prefix = if file
            .stored_info("embeddings.word_embeddings.weight")
            .is_some()
        {
            ""
        } else if file
            .stored_info("bert.embeddings.word_embeddings.weight")
            .is_some()
        {
            "bert."
        } else {
            return Err(Error::bad_tensor(
                path,
                "embeddings.word_embeddings.weight",
                "expected this tensor (optionally prefixed `bert.`) in a BERT checkpoint, found neither",
            ));
        };
        Ok(Weights {
            file,
            prefix,
            bytes: 0,
            read: Default::default(),
        })
    }

    /// Refuses encoder weights the graph did not read: a config.json with fewer layers (or
    /// other sizes) than the checkpoint would silently drop them. Heads beside the encoder
    /// (`pooler.`, `cls.`, `classifier.`) and the `position_ids` buffer are not part of it.
    fn check_all_read(&self) -> Result<()> {
        let mut unread: Vec<&str> = self
            .file
            .names()
            .into_iter()
            .filter(|n| !self.read.contains(*n))
            .filter(|n| {
                let name = n.strip_prefix(self.prefix).unwrap_or(n);
                (name.starts_with("encoder.") || name.starts_with("embeddings."))
                    && name != "embeddings.position_ids"
            })
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        unread.sort_unstable();
        let shown = unread.len().min(4);
        Err(Error::bad_tensor(
            self.file.path(),
            unread[0],
            format!(
                "expected only weights config.json accounts for; {} encoder tensor(s) would be dropped ({}{}): does config.json (num_hidden_layers, sizes) describe this checkpoint?",
                unread.len(),
                unread[..shown].join(", "),
                if unread.len() > shown { ", ..." } else { "" }
            ),
        ))
    }

    /// Tensor `name` (canonical, no prefix) as f32, checked to have `shape`.
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}{name}", self.prefix);
        self.read.insert(key.clone());
        let path = self.file.path().to_path_buf();
        let (dtype, found) = self.file.stored_info(&key).ok_or_else(|| {
            Error::bad_tensor(
                &path,
                &key,
                format!("expected this tensor with shape {shape:?}, found none"),
            )
        })?;
        if !matches!(
            Dtype::from_name(dtype),
            Some(Dtype::F32 | Dtype::F16 | Dtype::BF16)
        ) {
            return Err(Error::bad_tensor(
                &path,
                &key,
                format!("expected dtype F32, F16 or BF16, found {dtype}"),
            ));
        }
        if found != shape {
            return Err(Error::bad_tensor(
                &path,
                &key,
                format!("expected shape {shape:?} (from config.json), found {found:?}"),
            ));
        }
        let n: usize = shape.iter().product();
        self.bytes = self.bytes.saturating_add(n.saturating_mul(4));
        if self.bytes > MAX_WEIGHT_BYTES {
            return Err(Error::bad_file(
                &path,
                format!(
                    "expected at most {MAX_WEIGHT_BYTES} bytes of f32 weights (a single-file ONNX model is limited to 2 GiB), found more at tensor `{key}`"
                ),
            ));
        }
        let (_, v) = self.file.read_f32(&key)?;
        Ok(v)
    }
}

/// Transposes a row-major `[rows x cols]` matrix.
fn transpose(rows: usize, cols: usize, w: &[f32]) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// The graph builder, with the encoder's two composite layers added below.
type Builder = onnx::GraphBuilder;

impl Builder {
    /// `y = x·W + b` for the HF linear module `module` (weight [out x in] in the checkpoint,
    /// stored [in x out] under `<module>.weight` so that binding finds it by name).
    fn linear(
        &mut self,
        w: &mut Weights,
        module: &str,
        x: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<String> {
        let wt = w.read(&format!("{module}.weight"), &[d_out, d_in])?;
        let b = w.read(&format!("{module}.bias"), &[d_out])?;
        let wn = self.init_f32(
            &format!("{module}.weight"),
            &[d_in, d_out],
            &transpose(d_out, d_in, &wt),
        );
        let bn = self.init_f32(&format!("{module}.bias"), &[d_out], &b);
        let scope = format!("/{}", module.replace('.', "/"));
        let y = self.op("MatMul", &format!("{scope}/MatMul"), &[x, &wn], vec![]);
        Ok(self.op("Add", &format!("{scope}/Add"), &[&y, &bn], vec![]))
    }

    /// LayerNorm over the last axis with the module's weight and bias.
    fn layer_norm(
        &mut self,
        w: &mut Weights,
        module: &str,
        x: &str,
        hidden: usize,
        eps: f32,
        out: Option<&str>,
    ) -> Result<String> {
        let g = w.read(&format!("{module}.weight"), &[hidden])?;
        let b = w.read(&format!("{module}.bias"), &[hidden])?;
        let gn = self.init_f32(&format!("{module}.weight"), &[hidden], &g);
        let bn = self.init_f32(&format!("{module}.bias"), &[hidden], &b);
        let name = format!("/{}/LayerNormalization", module.replace('.', "/"));
        let y = out.unwrap_or(&name).to_string();
        self.nodes.push(node(
            "LayerNormalization",
            &name,
            &[x, &gn, &bn],
            &[&y],
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
        ));
        Ok(y)
    }
}

/// Builds the ONNX model of the BERT encoder in `dir` (`config.json`, `model.safetensors`).
pub fn import_hf(dir: &Path) -> Result<ImportedModel> {
    let config_path = dir.join("config.json");
    let cfg = read_config(&config_path)?;
    let st_path = dir.join("model.safetensors");
    if !st_path.is_file() {
        return Err(Error::bad_file(
            &st_path,
            "expected the model weights as model.safetensors in the folder beside config.json, found none (a pytorch_model.bin must be converted first)",
        ));
    }
    let mut w = Weights::open(&st_path)?;
    let model = build(&cfg, &mut w)?;
    w.check_all_read()?;
    Ok(ImportedModel {
        model,
        config: cfg,
        companions: Companions::default(),
    })
}

/// Same as [`import_hf`], then writes the model to `out` and copies the folder's
/// [`COMPANION_FILES`] beside it ([`copy_companions`]), each atomically.
///
/// The companions are checked before the graph is built (a tokenizer that does not load, or
/// whose ids reach past the embedding table, is an error naming the file) and written
/// before the model, so that the model file, written last, is never newer than its
/// tokenizer: a caller that skips the import when the model is up to date also has the
/// tokenizer.
pub fn import_hf_file(dir: &Path, out: &Path) -> Result<ImportedModel> {
    let cfg = read_config(&dir.join("config.json"))?;
    let plan = plan_companions(dir, out, Some(&cfg))?;
    let mut m = import_hf(dir)?;
    m.companions = write_companions(plan)?;
    crate::util::write_atomic(out, &onnx::encode_model(&m.model))?;
    Ok(m)
}

/// Copies the [`COMPANION_FILES`] of the HF folder `dir` beside the model `model` (into its
/// folder, under the same names), each atomically, after checking them: `tokenizer.json`
/// must load with HF `tokenizers` and, when `dir` has a valid `config.json`, give ids below
/// its `vocab_size`; the other files must be JSON objects. Files the folder lacks are listed
/// in [`Companions::missing`]; files already beside the model are overwritten. When `model`
/// is in `dir` itself, nothing is copied.
///
/// [`import_hf_file`] calls this; it is public for callers that keep an already imported
/// model and only need its tokenizer beside it.
pub fn copy_companions(dir: &Path, model: &Path) -> Result<Companions> {
    let cfg = read_config(&dir.join("config.json")).ok();
    write_companions(plan_companions(dir, model, cfg.as_ref())?)
}

/// Companions read and checked, ready to be written.
struct CompanionPlan {
    /// (destination, bytes; `None` when the destination is the source itself).
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    missing: Vec<&'static str>,
    stale: Vec<PathBuf>,
}

fn plan_companions(dir: &Path, model: &Path, cfg: Option<&BertConfig>) -> Result<CompanionPlan> {
    let out_dir = match model.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut plan = CompanionPlan {
        files: Vec::new(),
        missing: Vec::new(),
        stale: Vec::new(),
    };
    for name in COMPANION_FILES {
        let src = dir.join(name);
        let dst = out_dir.join(name);
        if !src.is_file() {
            plan.missing.push(name);
            if dst.is_file() {
                plan.stale.push(dst);
            }
            continue;
        }
        let meta = std::fs::metadata(&src).map_err(|e| Error::io(&src, e))?;
        if meta.len() > MAX_COMPANION_BYTES {
            return Err(Error::bad_file(
                &src,
                format!(
                    "expected at most {MAX_COMPANION_BYTES} bytes, found {} bytes",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        check_companion(&src, name, &bytes, cfg)?;
        let same = match (std::fs::canonicalize(&src), std::fs::canonicalize(&dst)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        plan.files.push((dst, (!same).then_some(bytes)));
    }
    Ok(plan)
}

/// Checks one companion before it is copied: the tokenizer loads and fits the embedding
/// table; the JSON files are JSON objects.
fn check_companion(path: &Path, name: &str, bytes: &[u8], cfg: Option<&BertConfig>) -> Result<()> {
    if name == "tokenizer.json" {
        let tok = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
            Error::bad_file(
                path,
                format!("expected a HF tokenizers tokenizer.json: {e}"),
            )
        })?;
        let n = tok.get_vocab_size(true);
        if let Some(cfg) = cfg
            && n > cfg.vocab
        {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected a vocabulary of at most vocab_size {} (config.json), found {n} tokens: ids past the embedding table",
                    cfg.vocab
                ),
            ));
        }
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(other) => Err(Error::bad_file(
            path,
            format!(
                "expected a JSON object, found a JSON {}",
                match other {
                    serde_json::Value::Array(_) => "array",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::Bool(_) => "boolean",
                    _ => "null",
                }
            ),
        )),
        Err(e) => Err(Error::bad_file(
            path,
            format!("expected a JSON object: {e}"),
        )),
    }
}

fn write_companions(plan: CompanionPlan) -> Result<Companions> {
    let mut copied = Vec::with_capacity(plan.files.len());
    for (dst, bytes) in plan.files {
        if let Some(bytes) = bytes {
            crate::util::write_atomic(&dst, &bytes)?;
        }
        copied.push(dst);
    }
    Ok(Companions {
        copied,
        missing: plan.missing,
        stale: plan.stale,
    })
}

fn build(cfg: &BertConfig, w: &mut Weights) -> Result<ModelProto> {
    let h = cfg.hidden;
    let heads = cfg.heads;
    let dh = h / heads;
    let eps = cfg.layer_norm_eps;
    let mut b = Builder::default();

    // Shared constants.
    let c_one = b.init_f32("/const/one", &[], &[1.0]);
    let c_min = b.init_f32("/const/f32_min", &[], &[f32::MIN]);
    let c_scale = b.init_f32("/const/attention_scale", &[], &[1.0 / (dh as f32).sqrt()]);
    let c_inv_sqrt2 = b.init_f32("/const/inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
    let c_half = b.init_f32("/const/half", &[], &[0.5]);
    let c_tiny = b.init_f32("/const/pool_min", &[], &[1e-9]);
    let c_zero1 = b.init_i64("/const/zero_1d", &[1], &[0]);
    let c_one1 = b.init_i64("/const/one_1d", &[1], &[1]);
    let c_ax2 = b.init_i64("/const/axes_2", &[1], &[2]);
    let c_ax12 = b.init_i64("/const/axes_1_2", &[2], &[1, 2]);
    let c_split = b.init_i64("/const/shape_heads", &[4], &[0, 0, heads as i64, dh as i64]);
    let c_merge = b.init_i64("/const/shape_hidden", &[3], &[0, 0, h as i64]);

    // Embeddings: word + position (rows 0..seq) + token type, then LayerNorm.
    let word = w.read("embeddings.word_embeddings.weight", &[cfg.vocab, h])?;
    let word = b.init_f32("embeddings.word_embeddings.weight", &[cfg.vocab, h], &word);
    let pos = w.read(
        "embeddings.position_embeddings.weight",
        &[cfg.max_position, h],
    )?;
    let pos = b.init_f32(
        "embeddings.position_embeddings.weight",
        &[cfg.max_position, h],
        &pos,
    );
    let tt = w.read(
        "embeddings.token_type_embeddings.weight",
        &[cfg.type_vocab, h],
    )?;
    let tt = b.init_f32(
        "embeddings.token_type_embeddings.weight",
        &[cfg.type_vocab, h],
        &tt,
    );
    let e_word = b.op(
        "Gather",
        "/embeddings/word_embeddings/Gather",
        &[&word, "input_ids"],
        vec![],
    );
    let shape = b.op("Shape", "/embeddings/Shape", &["input_ids"], vec![]);
    let seq = b.op(
        "Gather",
        "/embeddings/seq_len",
        &[&shape, &c_one1],
        vec![attr_int("axis", 0)],
    );
    let e_pos = b.op(
        "Slice",
        "/embeddings/position_embeddings/Slice",
        &[&pos, &c_zero1, &seq, &c_zero1],
        vec![],
    );
    let e_tt = b.op(
        "Gather",
        "/embeddings/token_type_embeddings/Gather",
        &[&tt, "token_type_ids"],
        vec![],
    );
    let e = b.op("Add", "/embeddings/Add", &[&e_word, &e_tt], vec![]);
    let e = b.op("Add", "/embeddings/Add_1", &[&e, &e_pos], vec![]);
    let mut x = b.layer_norm(w, "embeddings.LayerNorm", &e, h, eps, None)?;

    // The additive attention mask, [batch, 1, 1, seq]: 0 where attended, f32::MIN elsewhere.
    let mask_f = b.op(
        "Cast",
        "/mask/Cast",
        &["attention_mask"],
        vec![attr_int("to", i64::from(onnx::FLOAT))],
    );
    let m4 = b.op("Unsqueeze", "/mask/Unsqueeze", &[&mask_f, &c_ax12], vec![]);
    let inv = b.op("Sub", "/mask/Sub", &[&c_one, &m4], vec![]);
    let add_mask = b.op("Mul", "/mask/Mul", &[&inv, &c_min], vec![]);

    for l in 0..cfg.layers {
        let p = format!("encoder.layer.{l}");
        let s = format!("/encoder/layer/{l}/attention/self");
        let q = b.linear(w, &format!("{p}.attention.self.query"), &x, h, h)?;
        let k = b.linear(w, &format!("{p}.attention.self.key"), &x, h, h)?;
        let v = b.linear(w, &format!("{p}.attention.self.value"), &x, h, h)?;
        let q = b.op("Reshape", &format!("{s}/q_heads"), &[&q, &c_split], vec![]);
        let q = b.op(
            "Transpose",
            &format!("{s}/q_perm"),
            &[&q],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let q = b.op("Mul", &format!("{s}/q_scale"), &[&q, &c_scale], vec![]);
        let k = b.op("Reshape", &format!("{s}/k_heads"), &[&k, &c_split], vec![]);
        let k = b.op(
            "Transpose",
            &format!("{s}/k_perm"),
            &[&k],
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        );
        let v = b.op("Reshape", &format!("{s}/v_heads"), &[&v, &c_split], vec![]);
        let v = b.op(
            "Transpose",
            &format!("{s}/v_perm"),
            &[&v],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let scores = b.op("MatMul", &format!("{s}/scores"), &[&q, &k], vec![]);
        let scores = b.op(
            "Add",
            &format!("{s}/scores_masked"),
            &[&scores, &add_mask],
            vec![],
        );
        let probs = b.op(
            "Softmax",
            &format!("{s}/Softmax"),
            &[&scores],
            vec![attr_int("axis", -1)],
        );
        let ctx = b.op("MatMul", &format!("{s}/context"), &[&probs, &v], vec![]);
        let ctx = b.op(
            "Transpose",
            &format!("{s}/context_perm"),
            &[&ctx],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let ctx = b.op(
            "Reshape",
            &format!("{s}/context_merge"),
            &[&ctx, &c_merge],
            vec![],
        );
        let a = b.linear(w, &format!("{p}.attention.output.dense"), &ctx, h, h)?;
        let a = b.op(
            "Add",
            &format!("/encoder/layer/{l}/attention/output/residual"),
            &[&a, &x],
            vec![],
        );
        let a = b.layer_norm(
            w,
            &format!("{p}.attention.output.LayerNorm"),
            &a,
            h,
            eps,
            None,
        )?;
        let f = b.linear(
            w,
            &format!("{p}.intermediate.dense"),
            &a,
            h,
            cfg.intermediate,
        )?;
        // GELU, erf form: x · 0.5 · (1 + erf(x / √2)).
        let g = format!("/encoder/layer/{l}/intermediate/gelu");
        let t = b.op("Mul", &format!("{g}/scale"), &[&f, &c_inv_sqrt2], vec![]);
        let t = b.op("Erf", &format!("{g}/Erf"), &[&t], vec![]);
        let t = b.op("Add", &format!("{g}/Add"), &[&t, &c_one], vec![]);
        let t = b.op("Mul", &format!("{g}/Mul"), &[&f, &t], vec![]);
        let f = b.op("Mul", &format!("{g}/half"), &[&t, &c_half], vec![]);
        let o = b.linear(w, &format!("{p}.output.dense"), &f, cfg.intermediate, h)?;
        let o = b.op(
            "Add",
            &format!("/encoder/layer/{l}/output/residual"),
            &[&o, &a],
            vec![],
        );
        let last = (l + 1 == cfg.layers).then_some("last_hidden_state");
        x = b.layer_norm(w, &format!("{p}.output.LayerNorm"), &o, h, eps, last)?;
    }

    // Mean pooling over the attention mask.
    let m3 = b.op("Unsqueeze", "/pool/Unsqueeze", &[&mask_f, &c_ax2], vec![]);
    let hm = b.op("Mul", "/pool/Mul", &[&x, &m3], vec![]);
    let num = b.op(
        "ReduceSum",
        "/pool/sum_states",
        &[&hm, &c_one1],
        vec![attr_int("keepdims", 0)],
    );
    let den = b.op(
        "ReduceSum",
        "/pool/sum_mask",
        &[&m3, &c_one1],
        vec![attr_int("keepdims", 0)],
    );
    let den = b.op("Max", "/pool/clamp", &[&den, &c_tiny], vec![]);
    b.nodes.push(node(
        "Div",
        "/pool/Div",
        &[&num, &den],
        &["sentence_embedding"],
        vec![],
    ));

    let bs = || vec![Dim::Param("batch".into()), Dim::Param("sequence".into())];
    let graph = GraphProto {
        name: "bert_encoder".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![
            onnx::value_info("input_ids", onnx::INT64, &bs()),
            onnx::value_info("attention_mask", onnx::INT64, &bs()),
            onnx::value_info("token_type_ids", onnx::INT64, &bs()),
        ],
        output: vec![
            onnx::value_info(
                "last_hidden_state",
                onnx::FLOAT,
                &[
                    Dim::Param("batch".into()),
                    Dim::Param("sequence".into()),
                    Dim::Fixed(h),
                ],
            ),
            onnx::value_info(
                "sentence_embedding",
                onnx::FLOAT,
                &[Dim::Param("batch".into()), Dim::Fixed(h)],
            ),
        ],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 8,
        producer_name: "eigenlorax import-hf".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_exact() {
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 x 3
        assert_eq!(transpose(2, 3, &w), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
