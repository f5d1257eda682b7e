//! Labelled training data for `elx finetune`: one JSON object per line,
//!
//! ```text
//! {"input_ids": [101, 7592, 102], "attention_mask": [1, 1, 1], "label": "positive"}
//! ```
//!
//! `attention_mask` is optional (all ones), `label` is a string or an integer (kept as its
//! decimal text). A line may carry `text` instead of `input_ids` when the caller gives a
//! tokenizer ([`read_jsonl_with`]; `elx finetune --tokenizer`, the model's tokenizer.json);
//! without one such a line is refused with a message that says how to fix it.
//!
//! The class set is the sorted set of the training labels; a validation label outside it is
//! an error naming the file, the line and the known labels. Sequences longer than the model
//! accepts are cut to their first `max_len` tokens when truncation is allowed (the count is
//! reported so the caller can warn), and refused otherwise.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Longest line accepted (bytes): bounds the memory a hostile file can make us allocate.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// One tokenized example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding (same length as `input_ids`).
    pub attention_mask: Vec<i64>,
}

/// The examples of one file with their raw labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawSet {
    /// Examples in file order.
    pub examples: Vec<Example>,
    /// Label text per example.
    pub labels: Vec<String>,
    /// 1-based line number per example (blank lines are skipped).
    pub lines: Vec<usize>,
    /// Examples that were cut to `max_len`.
    pub truncated: usize,
}

/// How to read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Longest sequence the model accepts.
    pub max_len: usize,
    /// Cut longer sequences (true) or refuse them (false).
    pub truncate: bool,
    /// Most examples read (bounds memory).
    pub max_examples: usize,
}

#[derive(serde::Deserialize)]
struct Line {
    input_ids: Option<Vec<i64>>,
    attention_mask: Option<Vec<i64>>,
    label: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
}

/// Turns a text into token ids; the flag says whether it was cut to the tokenizer's limit.
pub type Tokenize<'a> = &'a dyn Fn(&str) -> Result<(Vec<u32>, bool)>;

/// Reads a JSONL file of pre-tokenized labelled examples. See the module documentation.
pub fn read_jsonl(path: &Path, opts: &ReadOptions) -> Result<RawSet> {
    read_jsonl_with(path, opts, None)
}

/// Reads a JSONL file of labelled examples; lines with `text` go through `tokenize`.
pub fn read_jsonl_with(
    path: &Path,
    opts: &ReadOptions,
    tokenize: Option<Tokenize<'_>>,
) -> Result<RawSet> {
    let mut set = RawSet::default();
    for_each_line(path, opts.max_examples, &mut |line_no, text| {
        let at = |m: String| Error::bad_file(path, format!("line {line_no}: {m}"));
        let l: Line = serde_json::from_str(text).map_err(|e| {
            at(format!(
                "expected a JSON object with input_ids and label ({e})"
            ))
        })?;
        let mut cut_by_tokenizer = false;
        let ids = match (l.input_ids, l.text, tokenize) {
            (Some(ids), _, _) => ids,
            (None, Some(serde_json::Value::String(t)), Some(tok)) => {
                let (ids, cut) = tok(&t).map_err(|e| at(e.to_string()))?;
                cut_by_tokenizer = cut;
                ids.into_iter().map(i64::from).collect()
            }
            (None, Some(v), Some(_)) => {
                return Err(at(format!("expected `text` to be a string, found {v}")));
            }
            (None, Some(_), None) => {
                return Err(at(
                    "has `text` but no tokenizer was given: pass the model's tokenizer.json (--tokenizer) or pre-tokenize it into `input_ids`"
                        .into(),
                ));
            }
            (None, None, _) => {
                return Err(at(
                    "expected `input_ids` (a list of token ids) or `text`".into()
                ));
            }
        };
        if ids.is_empty() {
            return Err(at("expected at least one token in `input_ids`".into()));
        }
        let mut mask = match l.attention_mask {
            Some(m) if m.len() != ids.len() => {
                return Err(at(format!(
                    "expected `attention_mask` of the same length as `input_ids` ({}), found {}",
                    ids.len(),
                    m.len()
                )));
            }
            Some(m) if m.iter().any(|v| *v != 0 && *v != 1) => {
                return Err(at("expected `attention_mask` values 0 or 1".into()));
            }
            Some(m) => m,
            None => vec![1; ids.len()],
        };
        let label = match l.label {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(v) => {
                return Err(at(format!(
                    "expected `label` to be a non-empty string or an integer, found {v}"
                )));
            }
            None => return Err(at("expected a `label`".into())),
        };
        let mut ids = ids;
        if cut_by_tokenizer || ids.len() > opts.max_len {
            if !opts.truncate {
                return Err(at(format!(
                    "{} tokens, longer than the {max} tokens the model accepts (at most {max} per example); it was not truncated: pass --truncate to cut it",
                    if cut_by_tokenizer {
                        format!("more than {}", ids.len())
                    } else {
                        ids.len().to_string()
                    },
                    max = opts.max_len
                )));
            }
            ids.truncate(opts.max_len);
            mask.truncate(opts.max_len);
            set.truncated += 1;
        }
        if !mask.contains(&1) {
            return Err(at("expected at least one unmasked token".into()));
        }
        set.examples.push(Example {
            input_ids: ids,
            attention_mask: mask,
        });
        set.labels.push(label);
        set.lines.push(line_no);
        Ok(())
    })?;
    if set.examples.is_empty() {
        return Err(Error::bad_file(
            path,
            "expected at least one labelled example, found an empty file",
        ));
    }
    Ok(set)
}

/// Calls `on_line(line number, trimmed text)` for each non-blank line of the JSONL file
/// `path`: lines of at most [`MAX_LINE_BYTES`], UTF-8, at most `max_lines` of them (errors
/// name the file and the line).
pub fn for_each_line(
    path: &Path,
    max_lines: usize,
    on_line: &mut dyn FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(f);
    let mut buf = Vec::new();
    let (mut line_no, mut lines) = (0, 0);
    loop {
        buf.clear();
        line_no += 1;
        let n = (&mut r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        let at = |m: String| Error::bad_file(path, format!("line {line_no}: {m}"));
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            return Err(at(format!(
                "expected a line of at most {MAX_LINE_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| at("expected UTF-8 text".into()))?
            .trim();
        if text.is_empty() {
            continue;
        }
        if lines >= max_lines {
            return Err(at(format!("expected at most {max_lines} examples")));
        }
        lines += 1;
        on_line(line_no, text)?;
    }
}

/// The class names of a task: the sorted distinct training labels.
pub fn label_set(train: &RawSet) -> Vec<String> {
    let mut v = train.labels.clone();
    v.sort();
    v.dedup();
    v
}

/// Class indices of `set`'s labels in `classes`; a label outside them is an error naming the
/// file, the line and the known labels.
pub fn class_indices(path: &Path, set: &RawSet, classes: &[String]) -> Result<Vec<usize>> {
    set.labels
        .iter()
        .zip(&set.lines)
        .map(|(l, line)| {
            classes.binary_search(l).map_err(|_| {
                Error::bad_file(
                    path,
                    format!("line {line}: label {l:?} does not occur in the training data (classes: {})", classes.join(", ")),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("elx-ftdata-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    const OPTS: ReadOptions = ReadOptions {
        max_len: 4,
        truncate: true,
        max_examples: 100,
    };

    #[test]
    fn reads_labels_masks_and_truncates() {
        let p = write(
            "ok.jsonl",
            "{\"input_ids\":[1,2,3],\"label\":\"b\"}\n\n{\"input_ids\":[1,2,3,4,5,6],\"attention_mask\":[1,1,1,1,1,0],\"label\":\"a\"}\n{\"input_ids\":[9],\"label\":3}\n",
        );
        let s = read_jsonl(&p, &OPTS).unwrap();
        assert_eq!(s.labels, ["b", "a", "3"]);
        assert_eq!(s.lines, [1, 3, 4]);
        assert_eq!(s.truncated, 1);
        assert_eq!(s.examples[1].input_ids, [1, 2, 3, 4]);
        assert_eq!(s.examples[0].attention_mask, [1, 1, 1]);
        let classes = label_set(&s);
        assert_eq!(classes, ["3", "a", "b"]);
        assert_eq!(class_indices(&p, &s, &classes).unwrap(), [2, 1, 0]);
        let e = read_jsonl(
            &p,
            &ReadOptions {
                truncate: false,
                ..OPTS
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("6 tokens") && e.contains("at most 4"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let e = read_jsonl(&write("empty.jsonl", "\n\n"), &OPTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.jsonl") && e.contains("empty file"), "{e}");
        let e = read_jsonl(
            &write("text.jsonl", "{\"text\":\"hi\",\"label\":\"a\"}"),
            &OPTS,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("tokenizer"), "{e}");
        // With a tokenizer the same line reads; a cut text is refused unless truncation is on.
        let words = |t: &str| -> Result<(Vec<u32>, bool)> {
            let ids: Vec<u32> = t.split(' ').map(|w| w.len() as u32).collect();
            let cut = ids.len() > 4;
            Ok((ids.into_iter().take(4).collect(), cut))
        };
        let p = write(
            "text2.jsonl",
            "{\"text\":\"hi there\",\"label\":\"a\"}\n{\"text\":\"a bb ccc dddd eeeee\",\"label\":\"b\"}",
        );
        let s = read_jsonl_with(&p, &OPTS, Some(&words)).unwrap();
        assert_eq!(s.examples[0].input_ids, [2, 5]);
        assert_eq!(s.examples[1].input_ids, [1, 2, 3, 4]);
        assert_eq!(s.truncated, 1);
        let strict = ReadOptions {
            truncate: false,
            ..OPTS
        };
        let e = read_jsonl_with(&p, &strict, Some(&words))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("more than 4") && e.contains("not truncated"),
            "{e}"
        );
        let e = read_jsonl(&write("nolabel.jsonl", "{\"input_ids\":[1]}"), &OPTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`label`"), "{e}");
        let e = read_jsonl(
            &write(
                "mask.jsonl",
                "{\"input_ids\":[1,2],\"attention_mask\":[1],\"label\":\"a\"}",
            ),
            &OPTS,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("same length"), "{e}");
        let e = read_jsonl(
            &write(
                "junk.jsonl",
                "{\"input_ids\":[1],\"label\":\"a\"}\nnot json\n",
            ),
            &OPTS,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("JSON"), "{e}");
        let train = read_jsonl(
            &write("t.jsonl", "{\"input_ids\":[1],\"label\":\"a\"}"),
            &OPTS,
        )
        .unwrap();
        let vp = write(
            "v.jsonl",
            "{\"input_ids\":[1],\"label\":\"a\"}\n{\"input_ids\":[1],\"label\":\"zz\"}",
        );
        let val = read_jsonl(&vp, &OPTS).unwrap();
        let e = class_indices(&vp, &val, &label_set(&train))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("v.jsonl")
                && e.contains("line 2")
                && e.contains("\"zz\"")
                && e.contains("classes: a"),
            "{e}"
        );
    }
}
