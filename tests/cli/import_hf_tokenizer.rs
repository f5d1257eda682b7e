//! `elx import-hf` puts the folder's tokenizer and configuration files next to the ONNX it
//! writes, so that `elx run --text` and `elx finetune` on text work with no `--tokenizer`
//! (issue 17: after `elx demo`, `elx run --model .cache/minilm/base.onnx ... --text` failed for
//! want of a tokenizer.json beside the model). On the committed tiny BERT with a hand-made
//! WordPiece tokenizer, so it is cheap.
#![cfg(feature = "tract")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-hftok-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("run elx")
}

/// (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let o = elx(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A HF folder: the tiny BERT's config.json and weights (32 positions), a WordPiece
/// tokenizer.json without a truncation setting, and a tokenizer_config.json whose
/// `model_max_length` (24) keeps texts inside the 32 positions.
fn hf_folder(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).expect("hf dir");
    let tiny = repo().join("models/fixtures/tiny-bert");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), hf.join(f)).expect("copy fixture");
    }
    std::fs::copy(
        repo().join("tests/ort_support/tokenizer.json"),
        hf.join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    std::fs::write(
        hf.join("tokenizer_config.json"),
        r#"{"model_max_length": 24, "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}"#,
    )
    .expect("tokenizer_config");
    std::fs::write(
        hf.join("special_tokens_map.json"),
        r#"{"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}"#,
    )
    .expect("special_tokens_map");
    hf
}

/// A bundle of the fixture adapters task0..4 bound to `base`, through the CLI.
fn bound_bundle(dir: &Path, base: &Path) -> PathBuf {
    let adapters: Vec<String> = (0..5)
        .map(|i| {
            repo()
                .join(format!("models/fixtures/adapters/task{i}"))
                .display()
                .to_string()
        })
        .collect();
    let unbound = dir.join("domain.elxb");
    let mut a: Vec<&str> = vec!["extract"];
    a.extend(adapters.iter().map(String::as_str));
    a.extend(["-o", s(&unbound)]);
    let (ok, _, err) = run(&a);
    assert!(ok, "extract: {err}");
    let bound = dir.join("domain.bound.elxb");
    let (ok, _, err) = run(&["bind", s(&unbound), "--base", s(base), "-o", s(&bound)]);
    assert!(ok, "bind: {err}");
    bound
}

/// Forty words: 42 tokens with [CLS] and [SEP], past the model's 32 positions unless the
/// copied tokenizer_config.json's 24 applies.
fn long_text() -> String {
    ["hello world"; 20].join(" ")
}

#[test]
fn import_puts_the_tokenizer_beside_the_model_and_run_and_finetune_find_it() {
    let dir = tmpdir("main");
    let hf = hf_folder(&dir);
    let out = dir.join("cache").join("base.onnx");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("out dir");

    let (ok, stdout, err) = run(&["import-hf", s(&hf), "-o", s(&out)]);
    assert!(ok, "import-hf: {err}");
    assert!(
        stdout.contains(
            "tokenizer.json, tokenizer_config.json, special_tokens_map.json, config.json"
        ),
        "{stdout}"
    );
    assert!(!err.contains("warning"), "{err}");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
    ] {
        let (a, b) = (
            std::fs::read(hf.join(f)).expect("source"),
            std::fs::read(out.with_file_name(f)).unwrap_or_else(|e| panic!("{f} beside: {e}")),
        );
        assert_eq!(a, b, "{f} copied byte for byte");
    }
    // Written atomically: no temporary files left.
    let names: Vec<String> = std::fs::read_dir(out.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");

    // `elx run --text` with no --tokenizer, as the issue's command after `elx demo`.
    let bundle = bound_bundle(&dir, &out);
    let text = long_text();
    let (ok, stdout, err) = run(&[
        "run",
        "--model",
        s(&out),
        "--bundle",
        s(&bundle),
        "--text",
        "hello, unbelievable movies!",
        "--text",
        &text,
        "--json",
    ]);
    assert!(ok, "run --text with the tokenizer beside the model: {err}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // The copied tokenizer_config.json is what keeps the long text inside the 32 positions:
    // without it (the default length, 512) the same run fails.
    let no_config = dir.join("no-config");
    std::fs::create_dir_all(&no_config).expect("dir");
    let bare = no_config.join("base.onnx");
    std::fs::copy(&out, &bare).expect("copy model");
    std::fs::copy(
        out.with_file_name("tokenizer.json"),
        no_config.join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    let (ok, _, _) = run(&[
        "run",
        "--model",
        s(&bare),
        "--bundle",
        s(&bundle),
        "--text",
        &text,
    ]);
    assert!(
        !ok,
        "a 42-token text should not fit 32 positions untruncated"
    );
    // And with no tokenizer at all beside the model, the error the issue reported.
    std::fs::remove_file(no_config.join("tokenizer.json")).expect("rm");
    let (ok, _, err) = run(&[
        "run",
        "--model",
        s(&bare),
        "--bundle",
        s(&bundle),
        "--text",
        "hello",
    ]);
    assert!(!ok && err.contains("tokenizer.json"), "{err}");

    // `elx finetune` on text lines, with no --tokenizer.
    let train = dir.join("train.jsonl");
    let mut lines = String::new();
    for i in 0..16 {
        let (t, l) = if i % 2 == 0 {
            ("hello world, the movie!", "pos")
        } else {
            ("unbelievable movies", "neg")
        };
        lines.push_str(&format!("{{\"text\": \"{t}\", \"label\": \"{l}\"}}\n"));
    }
    std::fs::write(&train, lines).expect("train");
    let task = dir.join("task.elxc");
    let (ok, stdout, err) = run(&[
        "finetune",
        "--model",
        s(&out),
        "--bundle",
        s(&bundle),
        "--train",
        s(&train),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--batch-size",
        "4",
        "-o",
        s(&task),
    ]);
    assert!(
        ok,
        "finetune on text with the tokenizer beside the model: {err}"
    );
    assert!(stdout.contains("2 classes: neg, pos"), "{stdout}");
    assert!(task.is_file());
}

#[test]
fn companions_are_checked_before_anything_is_written_and_stale_ones_are_named() {
    let dir = tmpdir("checks");
    let hf = hf_folder(&dir);

    // A tokenizer that does not load: refused, naming it, and no model written.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(hf.join(f), bad.join(f)).expect("copy");
    }
    std::fs::write(bad.join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").expect("write");
    let out = dir.join("out-bad").join("base.onnx");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("dir");
    let (ok, _, err) = run(&["import-hf", s(&bad), "-o", s(&out)]);
    assert!(!ok && err.contains("tokenizer.json"), "{err}");
    assert!(!out.exists() && !out.with_file_name("config.json").exists());

    // A vocabulary larger than the embedding table: ids would index past it.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).expect("config"))
            .expect("json");
    cfg["vocab_size"] = serde_json::json!(10);
    let small = dir.join("small-vocab");
    std::fs::create_dir_all(&small).expect("dir");
    std::fs::write(small.join("config.json"), cfg.to_string()).expect("write");
    std::fs::copy(hf.join("tokenizer.json"), small.join("tokenizer.json")).expect("copy");
    // (The weights do not matter: the tokenizer is checked first.)
    std::fs::copy(
        hf.join("model.safetensors"),
        small.join("model.safetensors"),
    )
    .expect("copy");
    let (ok, _, err) = run(&["import-hf", s(&small), "-o", s(&out)]);
    assert!(
        !ok && err.contains("tokenizer.json") && err.contains("vocab_size 10"),
        "{err}"
    );
    assert!(!out.exists());

    // A folder without a tokenizer into a folder holding another model's: imported, with a
    // warning that names the stale file, which is left alone.
    let out = dir.join("out-stale").join("base.onnx");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("dir");
    std::fs::write(out.with_file_name("tokenizer.json"), "old").expect("write");
    let tiny = repo().join("models/fixtures/tiny-bert");
    let (ok, _, err) = run(&["import-hf", s(&tiny), "-o", s(&out)]);
    assert!(ok, "{err}");
    assert!(
        err.contains("has no tokenizer.json") && err.contains("was left from something else"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.with_file_name("tokenizer.json")).expect("kept"),
        b"old"
    );
    assert!(out.with_file_name("config.json").is_file());

    // Written into the HF folder itself: nothing to copy, the files stay as they are.
    let inside = hf.join("model.onnx");
    let before = std::fs::read(hf.join("tokenizer.json")).expect("read");
    let (ok, stdout, err) = run(&["import-hf", s(&hf), "-o", s(&inside)]);
    assert!(ok, "{err}");
    assert!(stdout.contains("tokenizer.json"), "{stdout}");
    assert_eq!(
        std::fs::read(hf.join("tokenizer.json")).expect("read"),
        before
    );
}
