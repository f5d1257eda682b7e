//! Every fuzz target's committed corpus (`fuzz/corpus/<target>/`) and regression inputs
//! (`fuzz/regressions/<target>/`: every input that ever crashed a target) replayed through
//! the targets' own bodies (`fuzz/src/lib.rs`) on the stable toolchain, without a sanitizer.
//! An input that panics fails the test, named by its file. The long libFuzzer + ASan runs
//! stay in `tools/fuzz.sh` (BENCHMARKS.md, "Fuzzing").

#[path = "../fuzz/src/lib.rs"]
mod fuzz_support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `body` on every file of `dir` (none if it is missing). Returns how many ran, or the
/// files that panicked with their messages.
fn replay_dir(dir: &Path, body: fuzz_support::Body) -> Result<usize, Vec<String>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("read a corpus entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    files.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"));
    files.sort();
    let mut failed = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| body(&bytes))) {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    fuzz_support::remove_scratch();
    if failed.is_empty() {
        Ok(files.len())
    } else {
        Err(failed)
    }
}

/// The corpus and the regressions of `target`; at least one corpus input must run.
fn replay(target: &str) {
    let (_, body) = fuzz_support::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let mut ran = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        match replay_dir(&fuzz_dir().join(kind).join(target), *body) {
            Ok(n) if kind == "corpus" && n == 0 => {
                failed.push(format!("fuzz/corpus/{target}/ holds no input"))
            }
            Ok(n) => ran += n,
            Err(f) => failed.extend(f),
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target {target}: {} of its inputs panicked (ASan-free replay):\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("fuzz target {target}: {ran} inputs replayed");
}

macro_rules! replay_tests {
    ($($target:ident),*) => {
        $(#[test]
        fn $target() {
            replay(stringify!($target));
        })*

        /// Every target of `fuzz_support::TARGETS` has a replay test here.
        const REPLAYED: &[&str] = &[$(stringify!($target)),*];
    };
}

replay_tests!(
    tensorfile,
    peft,
    kohya,
    bundle,
    coeffs,
    checkpoint,
    onnx_bind,
    npy,
    tokenizer,
    gguf,
    chat_template
);

#[test]
fn every_target_is_replayed_and_every_folder_names_a_target() {
    let targets: Vec<&str> = fuzz_support::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(REPLAYED, targets.as_slice());
    // A folder whose name matches no target would never be replayed.
    for kind in ["corpus", "regressions"] {
        for e in std::fs::read_dir(fuzz_dir().join(kind)).expect("fuzz folder") {
            let e = e.expect("entry");
            if e.path().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    targets.contains(&name.as_str()),
                    "fuzz/{kind}/{name} names no fuzz target (targets: {targets:?})"
                );
            }
        }
    }
    // Each fuzz binary calls its body in fuzz/src/lib.rs.
    for t in &targets {
        let src = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{t}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{t}.rs: {e}"));
        assert!(
            src.contains(&format!("fuzz_support::{t}(data)")),
            "fuzz/fuzz_targets/{t}.rs must call fuzz_support::{t}"
        );
    }
}

/// A planted crash input fails the replay and names its file: the harness cannot pass over a
/// panicking input.
#[test]
fn a_planted_crash_input_fails_the_replay() {
    fn panics_on_marker(data: &[u8]) {
        assert!(!data.starts_with(b"CRASH"), "planted crash");
    }
    let dir = std::env::temp_dir().join(format!("elx-fuzz-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("benign"), b"fine").unwrap();
    assert_eq!(replay_dir(&dir, panics_on_marker), Ok(1));
    std::fs::write(dir.join("crash-0001"), b"CRASH here").unwrap();
    let failed = replay_dir(&dir, panics_on_marker).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("crash-0001") && failed[0].ends_with("planted crash"));
}
