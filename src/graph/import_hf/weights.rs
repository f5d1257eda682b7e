//! The checkpoint's tensors (`model.safetensors`), read under their HF names (with or without
//! the `bert.` prefix), converted to f32 and counted against the 2 GiB a single-file ONNX
//! model can hold; every stored tensor must be read.

use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorFile};
use std::path::Path;

/// A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
const MAX_WEIGHT_BYTES: usize = (2usize << 30) - (64 << 20);

/// The checkpoint's tensors, read under their HF names with an optional `bert.` prefix.
pub(super) struct Weights {
    pub(super) file: TensorFile,
    pub(super) prefix: &'static str,
    pub(super) bytes: usize,
    /// The stored names read so far ([`Weights::check_all_read`]).
    pub(super) read: std::collections::HashSet<String>,
}

impl Weights {
    pub(super) fn open(path: &Path) -> Result<Weights> {
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
    pub(super) fn check_all_read(&self) -> Result<()> {
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
    pub(super) fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
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
