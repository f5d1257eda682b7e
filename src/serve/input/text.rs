//! Text inputs: a HF `tokenizer.json` with the truncation length and pad id the model needs.

use super::tensor::{Batch, ElemType, InputSpec, InputTensor, TensorData};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

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
    /// Loads `tokenizer.json`. The maximum length is `max_length` when given; else the
    /// file's own truncation length, or `model_max_length` of a `tokenizer_config.json`
    /// beside it, at most the `max_position_embeddings` of a `config.json` beside it (the
    /// model's limit), which is also the default when the tokenizer files name none; else
    /// [`DEFAULT_MAX_LENGTH`].
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
        // The model's own limit (config.json beside the tokenizer, where `elx import-hf`
        // and HF folders keep it): the default when the tokenizer names none, and a cap on
        // what the tokenizer files claim, so a long row is refused by name instead of failing
        // inside the engine at the position embeddings.
        let positions = path.parent().and_then(max_position_embeddings);
        let max_length = match max_length {
            Some(n) => n,
            None => {
                let claimed = tokenizer
                    .get_truncation()
                    .map(|t| t.max_length)
                    .or_else(from_config);
                match (claimed, positions) {
                    (Some(c), Some(p)) => c.min(p),
                    (Some(c), None) => c,
                    (None, Some(p)) => p,
                    (None, None) => DEFAULT_MAX_LENGTH,
                }
            }
        };
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

/// Where a base model's tokenizer is looked for when none is given: `tokenizer.json` in the
/// model's folder, where `elx import-hf` writes it (the CLI and the C API both use this).
pub fn tokenizer_beside(model: &Path) -> PathBuf {
    model
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokenizer.json")
}

/// The tokenizer to use for `model`: `given`, else [`tokenizer_beside`] the model when that
/// file exists, else none.
pub fn find_tokenizer(model: &Path, given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => Some(tokenizer_beside(model)).filter(|p| p.is_file()),
    }
}

/// `max_position_embeddings` of the HF `config.json` in `dir`, if any (and sane).
pub fn max_position_embeddings(dir: &Path) -> Option<usize> {
    let p = dir.join("config.json");
    let meta = std::fs::metadata(&p).ok()?;
    if meta.len() > 1 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
    let n = v.get("max_position_embeddings")?.as_u64()?;
    (n > 0 && n <= 1 << 20).then_some(n as usize)
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
