//! Bad use of the command line (issue 13): an output that is one of the inputs is refused
//! before anything is written, and a closed stdout ends a command quietly with status 0.
//!
//! One module per concept: outputs that are inputs (`clobber.rs`), what a command prints
//! (`output.rs`), token ids outside the vocabulary (`token_ids.rs`), finetune's guards
//! (`finetune.rs`) and the smaller items of issues 13 and 29 (`small_items.rs`).

mod clobber;
mod finetune;
mod output;
mod small_items;
mod token_ids;

use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

pub(super) fn elx(args: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs")
}

pub(super) fn p(s: &str) -> &Path {
    Path::new(s)
}

/// A bundle of task0..4 extracted and bound to the tiny BERT, in `dir`.
pub(super) fn bound_tiny_bert(dir: &Path) -> PathBuf {
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    let bound = dir.join("bound.elxb");
    let model = fixture("tiny-bert/model.onnx");
    let o = elx(&[p("bind"), &bundle, p("--base"), &model, p("-o"), &bound]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bound
}

/// An int64 .npy (format 1.0) of `shape`.
pub(super) fn write_npy_i64(path: &Path, shape: &[usize], values: &[i64]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut h = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write npy");
}

/// Runs `args`, expecting status 1 (not a panic's 101) and `want` in the error.
pub(super) fn named_error(args: &[&Path], want: &[&str]) {
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected `{w}` in: {err}");
    }
}

/// Eight labelled pre-tokenized rows for the tiny BERT (ids < 200), labels from `label`.
pub(super) fn rows(label: &dyn Fn(usize) -> String) -> String {
    (0..8)
        .map(|i| {
            let ids = if i % 2 == 0 {
                vec![2, 10 + i, 30 + i, 3]
            } else {
                vec![2, 11 + i, 3]
            };
            format!(
                "{{\"input_ids\": {ids:?}, \"label\": {}}}\n",
                serde_json::to_string(&label(i)).unwrap()
            )
        })
        .collect()
}

/// `elx finetune` on the tiny BERT and `bound`, with `extra` flags.
pub(super) fn finetune_args(
    model: &Path,
    bound: &Path,
    train: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<PathBuf> {
    let mut a: Vec<PathBuf> = vec![
        "finetune".into(),
        "--model".into(),
        model.into(),
        "--bundle".into(),
        bound.into(),
        "--train".into(),
        train.into(),
        "--batch-size".into(),
        "4".into(),
        "-o".into(),
        out.into(),
    ];
    a.extend(extra.iter().map(PathBuf::from));
    a
}

pub(super) fn run_elx(args: &[PathBuf]) -> std::process::Output {
    let a: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    elx(&a)
}
