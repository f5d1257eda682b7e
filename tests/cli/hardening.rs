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
