//! Bad use of the command line (issue 13): an output that is one of the inputs is refused
//! before anything is written, and a closed stdout ends a command quietly with status 0.

use crate::support::bundle::temp_dir;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

fn elx(args: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs")
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Runs `args` expecting the clobber refusal, and checks that `victim` kept its bytes.
fn refused(args: &[&Path], victim: &Path) {
    let before = std::fs::read(victim).expect("victim");
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("is also an input"), "{args:?}: {err}");
    assert_eq!(
        std::fs::read(victim).expect("victim"),
        before,
        "{args:?} changed it"
    );
}

#[test]
fn outputs_that_are_inputs_are_refused_and_left_intact() {
    let dir = temp_dir("cli-clobber");
    // Copies, so a failure of the check cannot damage the committed fixtures.
    let adapter = dir.join("task5");
    std::fs::create_dir_all(&adapter).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
    ] {
        std::fs::copy(fixture("adapters/task5").join(f), adapter.join(f)).unwrap();
    }
    let base = dir.join("model.onnx");
    std::fs::copy(fixture("tiny-bert/model.onnx"), &base).unwrap();
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());

    let weights = adapter.join("adapter_model.safetensors");
    let head = adapter.join("head.safetensors");
    // extract -o ADAPTER/adapter_model.safetensors
    refused(
        &[
            p("extract"),
            &adapter,
            tasks[0].as_path(),
            p("-o"),
            &weights,
        ],
        &weights,
    );
    // project -o BUNDLE, and --head H -o H (through a hard link too)
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("-o"),
            &bundle,
        ],
        &bundle,
    );
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("--head"),
            &head,
            p("-o"),
            &head,
        ],
        &head,
    );
    let linked = dir.join("linked.elxb");
    std::fs::hard_link(&bundle, &linked).unwrap();
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("-o"),
            &linked,
        ],
        &bundle,
    );
    // bind -o BASE.onnx
    refused(
        &[p("bind"), &bundle, p("--base"), &base, p("-o"), &base],
        &base,
    );
    // finetune -o TRAIN.jsonl and --checkpoint BUNDLE
    let train = dir.join("train.jsonl");
    std::fs::write(&train, "{\"input_ids\": [1, 7, 2], \"label\": 0}\n").unwrap();
    refused(
        &[
            p("finetune"),
            p("--model"),
            &base,
            p("--bundle"),
            &bundle,
            p("--train"),
            &train,
            p("-o"),
            &train,
        ],
        &train,
    );
    refused(
        &[
            p("finetune"),
            p("--model"),
            &base,
            p("--bundle"),
            &bundle,
            p("--train"),
            &train,
            p("-o"),
            &dir.join("new.elxc"),
            p("--checkpoint"),
            &bundle,
            p("--checkpoint-every"),
            p("5"),
        ],
        &bundle,
    );
    // A new output is fine.
    let o = elx(&[
        p("project"),
        &adapter,
        p("--bundle"),
        &bundle,
        p("-o"),
        &dir.join("t5.elxc"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_quietly_with_status_0() {
    let dir = temp_dir("cli-pipe");
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    // `elx inspect B --adapters ... | head -0`: the reader is gone before the first line (the
    // child is still opening files), so the first print meets a closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_elx"))
        .arg("inspect")
        .arg(&bundle)
        .arg("--adapters")
        .args(&tasks)
        .arg("--random-control")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take().expect("stdout"));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_duplicate_adapter_is_named_in_a_warning() {
    let dir = temp_dir("cli-dup");
    let (t0, t1) = (fixture("adapters/task0"), fixture("adapters/task1"));
    let copy = dir.join("task0-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(t0.join(f), copy.join(f)).unwrap();
    }
    let out = dir.join("b.elxb");
    let o = elx(&[p("extract"), &t0, &t1, &copy, p("-o"), &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is the same adapter as") && err.contains("task0-copy"),
        "{err}"
    );
    let o = elx(&[p("extract"), &t0, &t1, p("-o"), &out]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("same adapter"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bundle of task0..4 extracted and bound to the tiny BERT, in `dir`.
fn bound_tiny_bert(dir: &Path) -> PathBuf {
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
fn write_npy_i64(path: &Path, shape: &[usize], values: &[i64]) {
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
fn named_error(args: &[&Path], want: &[&str]) {
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected `{w}` in: {err}");
    }
}

#[test]
fn token_ids_outside_the_vocabulary_are_named_errors_in_run_and_finetune() {
    let dir = temp_dir("cli-vocab");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let run = |input: &Path| {
        vec![
            p("run").to_path_buf(),
            p("--model").to_path_buf(),
            model.clone(),
            p("--bundle").to_path_buf(),
            bound.clone(),
            p("--input").to_path_buf(),
            input.to_path_buf(),
        ]
    };
    // elx run --input ids.npy: the id one past the vocabulary (200 token embeddings), a
    // negative id (used to wrap silently), and the vocabulary's last id, which runs.
    for (ids, want) in [
        ([1, 5, 200, 2], "id 200 at [0, 2]"),
        ([1, -3, 7, 2], "id -3 at [0, 1]"),
    ] {
        let npy = dir.join("ids.npy");
        write_npy_i64(&npy, &[1, 4], &ids);
        let args = run(&npy);
        let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
        named_error(&args, &["`input_ids`", want, "< 200"]);
    }
    let npy = dir.join("ok.npy");
    write_npy_i64(&npy, &[1, 4], &[1, 5, 199, 2]);
    let args = run(&npy);
    let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    let o = elx(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A tokenizer bigger than the model's vocabulary.
    let mut tok: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_support/tokenizer.json"),
        )
        .expect("tokenizer"),
    )
    .expect("json");
    tok["model"]["vocab"]["elxbig"] = serde_json::json!(250);
    let big = dir.join("big-tokenizer.json");
    std::fs::write(&big, serde_json::to_vec(&tok).expect("json")).expect("write");
    named_error(
        &[
            p("run"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--tokenizer"),
            &big,
            p("--text"),
            p("hello elxbig"),
        ],
        &["`input_ids`", "id 250", "< 200"],
    );

    // elx finetune: an id in the JSONL, and a padding id outside the vocabulary.
    let lines = |bad: i64| -> String {
        (0..8)
            .map(|i| {
                let ids: Vec<i64> = if i % 2 == 0 {
                    vec![2, 10 + i, bad, 3]
                } else {
                    vec![2, 11, 3]
                };
                format!("{{\"input_ids\": {ids:?}, \"label\": {}}}\n", i % 2)
            })
            .collect()
    };
    let (train, out) = (dir.join("train.jsonl"), dir.join("t.elxc"));
    let finetune = |extra: &[&str]| -> Vec<PathBuf> {
        let mut a: Vec<PathBuf> = ["finetune", "--model"].map(PathBuf::from).to_vec();
        a.extend([
            model.clone(),
            "--bundle".into(),
            bound.clone(),
            "--train".into(),
        ]);
        a.push(train.clone());
        a.extend(["--steps", "2", "--batch-size", "4", "-o"].map(PathBuf::from));
        a.push(out.clone());
        a.extend(extra.iter().map(PathBuf::from));
        a
    };
    for (bad, extra, want) in [
        (300, &[][..], "id 300"),
        (12, &["--pad-id", "999999"][..], "id 999999"),
    ] {
        std::fs::write(&train, lines(bad)).expect("train");
        let a = finetune(extra);
        let a: Vec<&Path> = a.iter().map(PathBuf::as_path).collect();
        named_error(&a, &["`input_ids`", want, "< 200"]);
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
