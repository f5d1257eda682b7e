//! The workload's labelled data files (JSONL with `text` or `input_ids` and a class index),
//! read through its tokenizer when it has one, truncated to the maximum length.

use super::LooConfig;
use crate::error::{Error, Result};
use crate::finetune::data::{Example, ReadOptions, Tokenize, read_jsonl_with};
use crate::serve::input::TextEncoder;
use std::path::Path;

/// Most examples read from one file (bounds memory on a hostile file).
const MAX_EXAMPLES: usize = 1 << 20;

/// The workload's labelled data files: read through its tokenizer (when given), truncated to
/// the maximum length.
pub(super) struct Reader {
    enc: Option<TextEncoder>,
    opts: ReadOptions,
}

impl Reader {
    pub(super) fn new(cfg: &LooConfig) -> Result<Reader> {
        let enc = match &cfg.tokenizer {
            Some(p) => Some(TextEncoder::from_file(p, Some(cfg.max_length))?),
            None => None,
        };
        let opts = ReadOptions {
            max_len: cfg.max_length,
            truncate: true,
            max_examples: MAX_EXAMPLES,
        };
        Ok(Reader { enc, opts })
    }

    /// The examples of `path` and their class indices (below `classes`).
    pub(super) fn read(&self, path: &Path, classes: usize) -> Result<(Vec<Example>, Vec<usize>)> {
        let tokenize = |t: &str| match &self.enc {
            Some(e) => e.ids_truncated(t),
            None => Err(Error::Usage(
                "a text example, but no tokenizer was given".into(),
            )),
        };
        read_labelled(path, &self.opts, &tokenize, classes)
    }

    /// The padding token id (0 without a tokenizer).
    pub(super) fn pad(&self) -> i64 {
        self.enc.as_ref().map_or(0, |e| i64::from(e.pad_id()))
    }
}

/// Reads a JSONL file whose labels are class indices below `classes`.
fn read_labelled(
    path: &Path,
    opts: &ReadOptions,
    tokenize: Tokenize<'_>,
    classes: usize,
) -> Result<(Vec<Example>, Vec<usize>)> {
    let set = read_jsonl_with(path, opts, Some(tokenize))?;
    let labels = set
        .labels
        .iter()
        .zip(&set.lines)
        .map(|(l, line)| match l.parse::<usize>() {
            Ok(c) if c < classes => Ok(c),
            _ => Err(Error::bad_file(
                path,
                format!("line {line}: expected a class index below {classes}, found {l:?}"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((set.examples, labels))
}
