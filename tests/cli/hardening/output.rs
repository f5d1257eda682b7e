//! What a command prints: a closed stdout ends it quietly with status 0, a duplicate adapter
//! is named in a warning.

use super::{elx, fixture, p};
use crate::support::bundle::temp_dir;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
