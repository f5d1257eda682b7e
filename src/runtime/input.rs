//! Backend-neutral model inputs and outputs for `elx run`: text through a HF `tokenizer.json`,
//! raw tensors from `.npy` or safetensors, pooling of the hidden states, and a task's head.
//!
//! Everything here works on plain row-major `Vec`s so that tract and ONNX Runtime share it.

use super::onnx::{Dim, value_info_dims};
use super::pb::{ModelProto, type_proto};
use crate::error::{Error, Result};
pub use crate::task::head::{Prediction, apply_head, softmax};
use std::path::{Path, PathBuf};

/// Element type of a graph input or of an input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer (token ids, masks).
    I64,
}

impl ElemType {
    /// ONNX `TensorProto.DataType` code, `None` for types we do not feed.
    pub fn from_onnx(code: i32) -> Option<ElemType> {
        match code {
            1 => Some(ElemType::F32),
            7 => Some(ElemType::I64),
            _ => None,
        }
    }
}

/// What the model expects on one of its own (non-coefficient) inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Dimensions; `None` where symbolic or unknown.
    pub dims: Vec<Option<usize>>,
}

/// The values of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 values.
    F32(Vec<f32>),
    /// i64 values.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem(&self) -> ElemType {
        match self {
            TensorData::F32(_) => ElemType::F32,
            TensorData::I64(_) => ElemType::I64,
        }
    }
}

/// One named input tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// Graph input name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values (`shape.iter().product()` of them).
    pub data: TensorData,
}

/// A batch ready to feed: one tensor per model input, plus the attention mask for pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// One tensor per model input, in the model's input order.
    pub tensors: Vec<InputTensor>,
    /// Rows in the batch (the leading axis of every tensor).
    pub rows: usize,
    /// Attention mask [rows x seq] when the inputs are token sequences (1 = real token).
    pub mask: Option<Vec<i64>>,
}

/// One model output, f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// Graph output name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// The specs of the graph inputs named `names` (in that order), from the model's declarations.
pub fn input_specs(model: &ModelProto, names: &[String]) -> Result<Vec<InputSpec>> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Usage("the model has no graph".into()))?;
    let mut specs = Vec::with_capacity(names.len());
    for name in names {
        let vi = graph
            .input
            .iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| Error::Usage(format!("the model declares no input `{name}`")))?;
        let code = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t.elem_type,
            _ => {
                return Err(Error::Usage(format!(
                    "the model's input `{name}` is not a tensor"
                )));
            }
        };
        let elem = ElemType::from_onnx(code).ok_or_else(|| {
            Error::Usage(format!(
                "the model's input `{name}` has ONNX element type {code}; only float32 (1) and int64 (7) can be fed"
            ))
        })?;
        let dims = value_info_dims(vi)
            .unwrap_or_default()
            .into_iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(n),
                Dim::Param(_) => None,
            })
            .collect();
        specs.push(InputSpec {
            name: name.clone(),
            elem,
            dims,
        });
    }
    Ok(specs)
}

/// Names of the model's graph outputs, in order.
pub fn output_names(model: &ModelProto) -> Vec<String> {
    model
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|v| v.name.clone()).collect())
        .unwrap_or_default()
}

/// Checks that `tensors` are exactly the model inputs `specs` (same names in any order, element
/// types, values matching shapes, fixed dims honoured) and returns them in `specs` order.
pub fn check_inputs<'a>(
    specs: &[InputSpec],
    tensors: &'a [InputTensor],
) -> Result<Vec<&'a InputTensor>> {
    let mut ordered = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = tensors
            .iter()
            .find(|t| t.name == spec.name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no tensor given for the model input `{}`",
                    spec.name
                ))
            })?;
        if t.data.elem() != spec.elem {
            return Err(Error::Usage(format!(
                "the model input `{}` takes {:?} values, found {:?}",
                spec.name,
                spec.elem,
                t.data.elem()
            )));
        }
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(t.data.len()) {
            return Err(Error::Usage(format!(
                "tensor `{}` has shape {:?} but {} values",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        let rank_ok = spec.dims.is_empty() || spec.dims.len() == t.shape.len();
        let dims_ok = spec
            .dims
            .iter()
            .zip(&t.shape)
            .all(|(w, &h)| w.is_none_or(|w| w == h));
        if !rank_ok || !dims_ok {
            let want: Vec<String> = spec
                .dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
                .collect();
            return Err(Error::Usage(format!(
                "the model input `{}` takes shape [{}], found {:?}",
                spec.name,
                want.join(", "),
                t.shape
            )));
        }
        ordered.push(t);
    }
    if let Some(extra) = tensors
        .iter()
        .find(|t| !specs.iter().any(|s| s.name == t.name))
    {
        return Err(Error::Usage(format!(
            "the model has no input `{}`",
            extra.name
        )));
    }
    Ok(ordered)
}

/// Converts inputs (already ordered by [`check_inputs`]) to tract values.
#[cfg(feature = "tract")]
pub fn to_tract(tensors: &[&InputTensor]) -> Result<Vec<tract_onnx::prelude::TValue>> {
    use tract_onnx::prelude::{TValue, Tensor};
    tensors
        .iter()
        .map(|t| {
            let r = match &t.data {
                TensorData::F32(v) => Tensor::from_shape(&t.shape, v),
                TensorData::I64(v) => Tensor::from_shape(&t.shape, v),
            };
            r.map(TValue::from).map_err(|e| {
                Error::Usage(format!("input `{}` with shape {:?}: {e}", t.name, t.shape))
            })
        })
        .collect()
}

/// Converts tract outputs to f32 [`OutputTensor`]s named `names` (in order).
#[cfg(feature = "tract")]
pub fn from_tract(
    names: &[String],
    values: &[tract_onnx::prelude::TValue],
) -> Result<Vec<OutputTensor>> {
    if names.len() != values.len() {
        return Err(Error::Usage(format!(
            "the model declares {} outputs, tract returned {}",
            names.len(),
            values.len()
        )));
    }
    names
        .iter()
        .zip(values)
        .map(|(name, v)| {
            let view = v.to_plain_array_view::<f32>().map_err(|e| {
                Error::Usage(format!(
                    "the model output `{name}` is not an f32 tensor: {e}"
                ))
            })?;
            // Iterating the view gives row-major order whatever the memory layout.
            Ok(OutputTensor {
                name: name.clone(),
                shape: v.shape().to_vec(),
                data: view.iter().copied().collect(),
            })
        })
        .collect()
}

/// How per-token hidden states become one vector per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens whose attention mask is 1 (sentence-transformers' default).
    Mean,
    /// The first token's state (BERT's [CLS]).
    Cls,
    /// The output as it is, one flattened row per batch row.
    None,
}

/// Fallback maximum sequence length when neither the tokenizer nor the model sets one.
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// Largest tokenizer.json we read whole (real ones are a few MB).
const MAX_TOKENIZER_BYTES: u64 = 256 * 1024 * 1024;

/// A HF tokenizer with the truncation length and pad id the model needs.
pub struct TextEncoder {
    path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
    fixed_length: Option<usize>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("fixed_length", &self.fixed_length)
            .finish()
    }
}

impl TextEncoder {
    /// Loads `tokenizer.json`. The maximum length is, in order: `max_length` when given, the
    /// file's own truncation length, `model_max_length` of a `tokenizer_config.json` beside
    /// it, or [`DEFAULT_MAX_LENGTH`].
    pub fn from_file(path: &Path, max_length: Option<usize>) -> Result<TextEncoder> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_TOKENIZER_BYTES {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected a tokenizer.json under {MAX_TOKENIZER_BYTES} bytes, found {} bytes",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::bad_file(
                path,
                format!("expected a HF tokenizers tokenizer.json: {e}"),
            )
        })?;
        let from_config = || config_max_length(path);
        let max_length = max_length
            .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
            .or_else(from_config)
            .unwrap_or(DEFAULT_MAX_LENGTH);
        if max_length == 0 {
            return Err(Error::Usage(
                "the maximum sequence length must be at least 1".into(),
            ));
        }
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .unwrap_or(0);
        let fixed_length = match tokenizer.get_padding().map(|p| &p.strategy) {
            Some(tokenizers::PaddingStrategy::Fixed(n)) => Some(*n),
            _ => None,
        };
        // We truncate through the tokenizer (it keeps the special tokens) and pad ourselves.
        let trunc = tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        };
        tokenizer.with_truncation(Some(trunc)).map_err(|e| {
            Error::bad_file(path, format!("expected a usable truncation setting: {e}"))
        })?;
        tokenizer.with_padding(None);
        Ok(TextEncoder {
            path: path.to_path_buf(),
            tokenizer,
            max_length,
            pad_id,
            fixed_length,
        })
    }

    /// The truncation length in tokens.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one text with special tokens, truncated (no padding), and whether the
    /// truncation cut anything.
    pub fn ids_truncated(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| {
            Error::bad_file(&self.path, format!("could not tokenize {text:?}: {e}"))
        })?;
        Ok((enc.get_ids().to_vec(), !enc.get_overflowing().is_empty()))
    }

    /// Token ids of one text with special tokens, truncated (no padding).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| {
            Error::bad_file(&self.path, format!("could not tokenize {text:?}: {e}"))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `texts` for a model with inputs `inputs`: `input_ids`, `attention_mask` and
    /// `token_type_ids` (each only if the model has it), padded on the right to the longest
    /// text, or to the model's fixed sequence length when its input has one.
    pub fn encode(&self, texts: &[String], inputs: &[InputSpec]) -> Result<Batch> {
        if texts.is_empty() {
            return Err(Error::Usage("no text to encode".into()));
        }
        // A model exported with a fixed sequence axis gets exactly that length.
        let model_len = inputs.iter().find_map(|s| match s.dims.get(1) {
            Some(Some(n)) if is_token_input(&s.name) => Some(*n),
            _ => None,
        });
        let mut encodings = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self.tokenizer.encode(t.as_str(), true).map_err(|e| {
                Error::bad_file(&self.path, format!("could not tokenize {t:?}: {e}"))
            })?;
            encodings.push(enc);
        }
        let longest = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let seq = match (model_len, self.fixed_length) {
            (Some(n), _) => n,
            (None, Some(n)) => n.max(longest),
            (None, None) => longest.max(1),
        };
        if longest > seq {
            return Err(Error::Usage(format!(
                "a text has {longest} tokens but the model takes exactly {seq}; pass --max-length {seq}"
            )));
        }
        let rows = texts.len();
        let n = rows * seq;
        let mut ids = vec![i64::from(self.pad_id); n];
        let mut mask = vec![0i64; n];
        let mut types = vec![0i64; n];
        for (row, enc) in encodings.iter().enumerate() {
            let base = row * seq;
            for (j, ((&id, &ty), &m)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_type_ids())
                .zip(enc.get_attention_mask())
                .enumerate()
            {
                ids[base + j] = i64::from(id);
                types[base + j] = i64::from(ty);
                mask[base + j] = i64::from(m);
            }
        }
        let mut tensors = Vec::with_capacity(inputs.len());
        for spec in inputs {
            let data = match spec.name.as_str() {
                "input_ids" => ids.clone(),
                "attention_mask" => mask.clone(),
                "token_type_ids" => types.clone(),
                other => {
                    return Err(Error::Usage(format!(
                        "the model has an input `{other}` that text cannot fill (only input_ids, attention_mask, token_type_ids); give --input with a tensor named `{other}`"
                    )));
                }
            };
            if spec.elem != ElemType::I64 {
                return Err(Error::Usage(format!(
                    "the model's input `{}` is not int64; text cannot fill it",
                    spec.name
                )));
            }
            tensors.push(InputTensor {
                name: spec.name.clone(),
                shape: vec![rows, seq],
                data: TensorData::I64(data),
            });
        }
        if !inputs.iter().any(|s| s.name == "input_ids") {
            return Err(Error::Usage(
                "the model has no `input_ids` input; text input needs one".into(),
            ));
        }
        Ok(Batch {
            tensors,
            rows,
            mask: Some(mask),
        })
    }
}

fn is_token_input(name: &str) -> bool {
    matches!(name, "input_ids" | "attention_mask" | "token_type_ids")
}

/// `model_max_length` of `tokenizer_config.json` beside the tokenizer, when sane (HF writes a
/// huge sentinel when unset).
fn config_max_length(tokenizer: &Path) -> Option<usize> {
    let cfg = tokenizer.parent()?.join("tokenizer_config.json");
    let meta = std::fs::metadata(&cfg).ok()?;
    if meta.len() > 16 * 1024 * 1024 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).ok()?).ok()?;
    let n = v.get("model_max_length")?.as_u64()?;
    (n > 0 && n <= 1 << 20).then_some(n as usize)
}

// ---------------------------------------------------------------------------------------------
// Raw tensors
// ---------------------------------------------------------------------------------------------

/// Reads a `.npy` file: little-endian f32 (`<f4`) or i64 (`<i8`), C order, any rank. The
/// header is parsed strictly and the data size must equal what the shape says, exactly.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, TensorData)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

/// [`read_npy`] on bytes already in memory; `path` only names the source in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, TensorData)> {
    let bad = |m: String| Error::bad_file(path, m);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("expected a .npy file (magic \\x93NUMPY)".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| bad("expected a .npy v2 header length".into()))?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                12usize,
            )
        }
        v => {
            return Err(bad(format!(
                "expected .npy format version 1, 2 or 3, found {v}"
            )));
        }
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "expected a header of {hlen} bytes inside the file ({} bytes)",
                bytes.len()
            ))
        })?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("expected an ASCII .npy header".into()))?;
    let h = parse_npy_header(header).map_err(|m| {
        bad(format!(
            "expected a valid .npy header: {m}; found {header:?}"
        ))
    })?;
    let (elem, size) = match h.descr.as_str() {
        "<f4" => (ElemType::F32, 4usize),
        "<i8" => (ElemType::I64, 8usize),
        d => {
            return Err(bad(format!(
                "expected dtype '<f4' (float32) or '<i8' (int64), found '{d}'"
            )));
        }
    };
    if h.fortran_order {
        return Err(bad(
            "expected C order (fortran_order: False), found Fortran order".into(),
        ));
    }
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "expected a shape whose element count does not overflow, found {:?}",
                h.shape
            ))
        })?;
    let data = &bytes[end..];
    let want = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("shape {:?} overflows", h.shape)))?;
    if data.len() != want {
        return Err(bad(format!(
            "expected {want} data bytes for shape {:?} of {}, found {}",
            h.shape,
            h.descr,
            data.len()
        )));
    }
    let values = match elem {
        ElemType::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "expected finite values, found {} at flat index {i}",
                    v[i]
                )));
            }
            TensorData::F32(v)
        }
        ElemType::I64 => TensorData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok((h.shape, values))
}

struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a .npy header: exactly the keys descr, fortran_order
/// and shape, in any order.
fn parse_npy_header(h: &str) -> std::result::Result<NpyHeader, String> {
    let s = h.trim_end_matches(['\n', ' ', '\x00']).trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = parse_quoted(rest).ok_or("expected a quoted key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected ':' after a key")?
            .trim_start();
        rest = match key.as_str() {
            "descr" => {
                let (v, a) = parse_quoted(after).ok_or("descr must be a string")?;
                descr = Some(v);
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else {
                    return Err("fortran_order must be True or False".into());
                }
            }
            "shape" => {
                let a = after.strip_prefix('(').ok_or("shape must be a tuple")?;
                let close = a.find(')').ok_or("unclosed shape tuple")?;
                let mut dims = Vec::new();
                for part in a[..close].split(',') {
                    let p = part.trim();
                    if p.is_empty() {
                        continue;
                    }
                    dims.push(
                        p.parse::<usize>()
                            .map_err(|_| format!("bad dimension {p:?}"))?,
                    );
                }
                shape = Some(dims);
                &a[close + 1..]
            }
            k => return Err(format!("unknown key {k:?}")),
        }
        .trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err("expected ',' between entries".into()),
        };
    }
    Ok(NpyHeader {
        descr: descr.ok_or("missing descr")?,
        fortran_order: fortran.ok_or("missing fortran_order")?,
        shape: shape.ok_or("missing shape")?,
    })
}

/// A '...' or "..." string without escapes, and what follows it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((body[..end].to_string(), &body[end + 1..]))
}

/// Reads every tensor of a safetensors file whose dtype is F32 or I64 (others are an error),
/// by name. The safetensors crate validates every offset against the file size.
pub fn read_safetensors(path: &Path) -> Result<Vec<InputTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_file(path, format!("expected a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).map_err(|e| {
            Error::bad_tensor(path, &name, format!("expected a readable tensor: {e}"))
        })?;
        let d = t.data();
        let data = match t.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::bad_tensor(
                        path,
                        &name,
                        format!("expected finite values, found {} at {i}", v[i]),
                    ));
                }
                TensorData::F32(v)
            }
            safetensors::Dtype::I64 => TensorData::I64(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            other => {
                return Err(Error::bad_tensor(
                    path,
                    &name,
                    format!("expected dtype F32 or I64, found {other:?}"),
                ));
            }
        };
        out.push(InputTensor {
            name,
            shape: t.shape().to_vec(),
            data,
        });
    }
    Ok(out)
}

/// Builds a batch for `inputs` from raw tensors read from `path` (`.npy` or `.safetensors`).
///
/// A `.npy` file holds one tensor: it feeds `input_ids` when the model has that input (the
/// mask is then all ones and token types all zeros), otherwise the model's only input. A
/// safetensors file names its tensors after the model inputs; a missing `attention_mask` or
/// `token_type_ids` is filled the same way.
pub fn load_tensors(path: &Path, inputs: &[InputSpec]) -> Result<Batch> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let given: Vec<InputTensor> = match ext.as_str() {
        "npy" => {
            let (shape, data) = read_npy(path)?;
            let target = if inputs.iter().any(|s| s.name == "input_ids") {
                "input_ids".to_string()
            } else if let [only] = inputs {
                only.name.clone()
            } else {
                let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::bad_file(
                    path,
                    format!(
                        "expected a safetensors file naming each model input {names:?}; a .npy holds only one"
                    ),
                ));
            };
            vec![InputTensor {
                name: target,
                shape,
                data,
            }]
        }
        "safetensors" => read_safetensors(path)?,
        other => {
            return Err(Error::bad_file(
                path,
                format!("expected a .npy or .safetensors input, found extension {other:?}"),
            ));
        }
    };
    assemble(path, given, inputs)
}

/// Orders `given` by the model's inputs, checks types and shapes, and fills missing token
/// masks and types.
fn assemble(path: &Path, mut given: Vec<InputTensor>, inputs: &[InputSpec]) -> Result<Batch> {
    let ids_shape = given
        .iter()
        .find(|t| t.name == "input_ids")
        .map(|t| t.shape.clone());
    let mut tensors = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let t = match given.iter().position(|t| t.name == spec.name) {
            Some(i) => given.swap_remove(i),
            None => match (spec.name.as_str(), &ids_shape) {
                ("attention_mask", Some(s)) => filled(&spec.name, s, 1),
                ("token_type_ids", Some(s)) => filled(&spec.name, s, 0),
                _ => {
                    return Err(Error::bad_tensor(
                        path,
                        &spec.name,
                        "expected this model input in the file, found none",
                    ));
                }
            },
        };
        if t.data.elem() != spec.elem {
            return Err(Error::bad_tensor(
                path,
                &spec.name,
                format!(
                    "expected {:?} values for this model input, found {:?}",
                    spec.elem,
                    t.data.elem()
                ),
            ));
        }
        if t.shape.len() != spec.dims.len() && !spec.dims.is_empty() {
            return Err(Error::bad_tensor(
                path,
                &spec.name,
                format!(
                    "expected rank {} for this model input, found shape {:?}",
                    spec.dims.len(),
                    t.shape
                ),
            ));
        }
        for (axis, (&have, want)) in t.shape.iter().zip(&spec.dims).enumerate() {
            if let Some(w) = want
                && *w != have
                && axis > 0
            {
                return Err(Error::bad_tensor(
                    path,
                    &spec.name,
                    format!(
                        "expected dimension {axis} to be {w}, found shape {:?}",
                        t.shape
                    ),
                ));
            }
        }
        tensors.push(t);
    }
    if let Some(extra) = given.first() {
        let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::bad_tensor(
            path,
            &extra.name,
            format!("expected only the model inputs {names:?}"),
        ));
    }
    let rows = match tensors.first().and_then(|t| t.shape.first()) {
        Some(&r) if r > 0 => r,
        _ => {
            return Err(Error::bad_file(
                path,
                "expected tensors with a non-empty leading batch axis",
            ));
        }
    };
    if let Some(t) = tensors.iter().find(|t| t.shape.first() != Some(&rows)) {
        return Err(Error::bad_tensor(
            path,
            &t.name,
            format!(
                "expected a leading batch axis of {rows}, found {:?}",
                t.shape
            ),
        ));
    }
    let mask = tensors
        .iter()
        .find(|t| t.name == "attention_mask")
        .and_then(|t| match &t.data {
            TensorData::I64(v) => Some(v.clone()),
            TensorData::F32(_) => None,
        });
    Ok(Batch {
        tensors,
        rows,
        mask,
    })
}

fn filled(name: &str, shape: &[usize], value: i64) -> InputTensor {
    let n = shape.iter().product();
    InputTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        data: TensorData::I64(vec![value; n]),
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling and the head
// ---------------------------------------------------------------------------------------------

/// Pools a model output of shape `shape` (row-major `values`) into one vector per row.
///
/// * `Mean`/`Cls` need a [rows, seq, hidden] output; `Mean` weights tokens by `mask`
///   ([rows x seq], all ones when `None`); a row whose mask is all zero is an error.
/// * `None` flattens each row of any output.
pub fn pool(
    values: &[f32],
    shape: &[usize],
    mask: Option<&[i64]>,
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>> {
    let total: usize = shape.iter().product();
    if total != values.len() {
        return Err(Error::Usage(format!(
            "model output has {} values but shape {shape:?}",
            values.len()
        )));
    }
    match (pooling, shape) {
        (Pooling::None, [rows, ..]) => {
            let width = total.checked_div(*rows).unwrap_or(0);
            Ok(values
                .chunks(width.max(1))
                .take(*rows)
                .map(<[f32]>::to_vec)
                .collect())
        }
        (Pooling::Cls, &[rows, seq, hidden]) => Ok((0..rows)
            .map(|r| values[r * seq * hidden..r * seq * hidden + hidden].to_vec())
            .collect()),
        (Pooling::Mean, &[rows, seq, hidden]) => {
            if let Some(m) = mask
                && m.len() != rows * seq
            {
                return Err(Error::Usage(format!(
                    "attention mask has {} values but the output is [{rows}, {seq}, {hidden}]",
                    m.len()
                )));
            }
            let mut flat = Vec::with_capacity(rows * hidden);
            crate::task::masked_mean(values, mask, rows, seq, hidden, &mut flat).map_err(|r| {
                Error::Usage(format!(
                    "row {r} has no token with attention mask 1; cannot mean-pool"
                ))
            })?;
            Ok(flat
                .chunks(hidden.max(1))
                .take(rows)
                .map(<[f32]>::to_vec)
                .collect())
        }
        (p, s) => Err(Error::Usage(format!(
            "pooling {p:?} needs a [batch, seq, hidden] model output, found shape {s:?}; try --pooling none"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Head;
    use faer::Mat;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn npy_f32_and_i64_round_trip() {
        let vals = [1.5f32, -2.0, 3.25, 0.0, 7.0, -1.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (shape, data) = parse_npy(&npy("<f4", "(2, 3)", &bytes), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, TensorData::F32(vals.to_vec()));
        let ids = [101i64, 7592, 102];
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (shape, data) = parse_npy(&npy("<i8", "(1, 3)", &bytes), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![1, 3]);
        assert_eq!(data, TensorData::I64(ids.to_vec()));
        let (shape, _) = parse_npy(&npy("<f4", "(2,)", &bytes[..8]), Path::new("x.npy")).unwrap();
        assert_eq!(shape, vec![2]);
    }

    #[test]
    fn npy_rejects_bad_files() {
        let p = Path::new("bad.npy");
        let four = 1f32.to_le_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"NOTNUMPY\x01\x00".to_vec(), "magic"),
            (npy("<f4", "(2, 3)", &four), "data bytes"),
            (npy("<f8", "(1,)", &[0u8; 8]), "'<f4'"),
            (npy(">f4", "(1,)", &four), "'<f4'"),
            (npy("<f4", "(1, x)", &four), "bad dimension"),
            (npy("<f4", "(4611686018427387904, 4)", &four), "overflow"),
            (npy("<f4", "(1,)", &f32::NAN.to_le_bytes()), "finite"),
            (
                {
                    let mut v = npy("<f4", "(1,)", &four);
                    v[8] = 0xff;
                    v[9] = 0xff;
                    v
                },
                "inside the file",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_npy(&bytes, p).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
            assert!(err.contains("bad.npy"), "{err}");
        }
        let mut fortran = npy("<f4", "(1,)", &four);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let err = parse_npy(&fortran, p).unwrap_err().to_string();
        assert!(err.contains("C order"), "{err}");
    }

    #[test]
    fn mean_pooling_respects_the_mask() {
        // 2 rows, 3 tokens, 2 features; row 1's last token is padding.
        let v = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 999.0, 999.0,
        ];
        let mask = [1, 1, 1, 1, 1, 0];
        let p = pool(&v, &[2, 3, 2], Some(&mask), Pooling::Mean).unwrap();
        assert_eq!(p, vec![vec![3.0, 4.0], vec![20.0, 30.0]]);
        let c = pool(&v, &[2, 3, 2], Some(&mask), Pooling::Cls).unwrap();
        assert_eq!(c, vec![vec![1.0, 2.0], vec![10.0, 20.0]]);
        let n = pool(&v, &[2, 6], None, Pooling::None).unwrap();
        assert_eq!(n[1], v[6..].to_vec());
        assert!(pool(&v, &[2, 3, 2], Some(&[0, 0, 0, 1, 1, 1]), Pooling::Mean).is_err());
        assert!(pool(&v, &[2, 6], None, Pooling::Mean).is_err());
    }

    #[test]
    fn head_gives_softmax_and_label() {
        let head = Head {
            weight: Mat::from_fn(2, 3, |i, j| if i == 0 { 1.0 } else { j as f64 }),
            bias: vec![0.5, -1.0],
            labels: vec!["neg".into(), "pos".into()],
        };
        let p = apply_head(&head, &[1.0, 2.0, 3.0]).unwrap();
        // logits: [6 + 0.5, 0 + 2 + 6 - 1] = [6.5, 7]
        assert!((p.logits[0] - 6.5).abs() < 1e-12 && (p.logits[1] - 7.0).abs() < 1e-12);
        let e = (-0.5f64).exp();
        assert!((p.probs[1] - 1.0 / (1.0 + e)).abs() < 1e-12);
        assert_eq!(p.label, "pos");
        assert!(
            apply_head(&head, &[1.0, 2.0])
                .unwrap_err()
                .to_string()
                .contains("3 features")
        );
    }
}
