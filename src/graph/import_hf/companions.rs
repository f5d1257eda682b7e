//! The companion files ([`COMPANION_FILES`]: the tokenizer and the configuration a run
//! reads), checked and copied beside an imported model.

use super::config::{BertConfig, read_config};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

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

/// Copies the [`COMPANION_FILES`] of the HF folder `dir` beside the model `model` (into its
/// folder, under the same names), each atomically, after checking them: `tokenizer.json`
/// must load with HF `tokenizers` and, when `dir` has a valid `config.json`, give ids below
/// its `vocab_size`; the other files must be JSON objects. Files the folder lacks are listed
/// in [`Companions::missing`]; files already beside the model are overwritten. When `model`
/// is in `dir` itself, nothing is copied.
///
/// [`import_hf_file`](super::import_hf_file) calls this; it is public for callers that keep an already imported
/// model and only need its tokenizer beside it.
pub fn copy_companions(dir: &Path, model: &Path) -> Result<Companions> {
    let cfg = read_config(&dir.join("config.json")).ok();
    write_companions(plan_companions(dir, model, cfg.as_ref())?)
}

/// Companions read and checked, ready to be written.
pub(super) struct CompanionPlan {
    /// (destination, bytes; `None` when the destination is the source itself).
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    missing: Vec<&'static str>,
    stale: Vec<PathBuf>,
}

pub(super) fn plan_companions(
    dir: &Path,
    model: &Path,
    cfg: Option<&BertConfig>,
) -> Result<CompanionPlan> {
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

pub(super) fn write_companions(plan: CompanionPlan) -> Result<Companions> {
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
