//! `elx extract --shard / --modules` and `elx bundle merge`: the parts of an extraction
//! join into the one-shot bundle, byte for byte and under the same subspace id.

use crate::support::bundle::temp_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = elx(args);
    assert!(
        o.status.success(),
        "elx {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failure(args: &[&str]) -> String {
    let o = elx(args);
    assert!(!o.status.success(), "elx {args:?} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn id_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("subspace id: "))
        .unwrap_or_else(|| panic!("no subspace id in {stdout}"))
        .to_string()
}

fn tasks() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    (0..6)
        .map(|i| {
            root.join(format!("models/fixtures/adapters/task{i}"))
                .display()
                .to_string()
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Extracts `tasks` with `extra` flags into `out`; returns stdout.
fn extract(out: &Path, extra: &[&str]) -> String {
    let t = tasks();
    let mut args: Vec<&str> = vec!["extract"];
    args.extend(t.iter().map(|x| x.as_str()));
    args.extend(extra);
    args.extend(["-o", s(out)]);
    ok(&args)
}

/// Shards 2 and 3 ways (f32, and int8 whose per-vector scales must travel too), and a split by
/// regex, merge into files equal byte for byte to the one-shot bundle, with its id.
#[test]
fn merged_shards_equal_the_one_shot_bundle() {
    let dir = temp_dir("cli-shards");
    for (dtype, n) in [("f32", 2usize), ("int8", 3)] {
        let full = dir.join(format!("full-{dtype}.elxb"));
        let full_id = id_of(&extract(&full, &["--k", "3", "--dtype", dtype]));
        let parts: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = dir.join(format!("part{i}of{n}-{dtype}.elxb"));
                let out = extract(
                    &p,
                    &["--k", "3", "--dtype", dtype, "--shard", &format!("{i}/{n}")],
                );
                assert_ne!(id_of(&out), full_id, "a part has fewer modules");
                p
            })
            .collect();
        let merged = dir.join(format!("merged-{dtype}.elxb"));
        let mut args = vec!["bundle", "merge"];
        // Reverse order: the result must not depend on the order of the parts.
        args.extend(parts.iter().rev().map(|p| s(p)));
        args.extend(["-o", s(&merged)]);
        let out = ok(&args);
        assert_eq!(id_of(&out), full_id);
        assert!(
            std::fs::read(&merged).unwrap() == std::fs::read(&full).unwrap(),
            "{dtype}: merged bundle differs from the one-shot bundle"
        );
    }
    // Split by name: the query modules and the value modules.
    let full = dir.join("full-f32.elxb");
    let q = dir.join("query.elxb");
    let v = dir.join("value.elxb");
    extract(&q, &["--k", "3", "--modules", "query$"]);
    extract(&v, &["--k", "3", "--modules", "value$"]);
    let merged = dir.join("merged-qv.elxb");
    ok(&["bundle", "merge", s(&q), s(&v), "-o", s(&merged)]);
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&full).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parts that do not belong together, bad selections and clobbering are refused with a
/// message that names the file or the flag; nothing is written.
#[test]
fn merge_and_selection_errors() {
    let dir = temp_dir("cli-shards-err");
    let p0 = dir.join("p0.elxb");
    let p1 = dir.join("p1.elxb");
    let p1k2 = dir.join("p1-k2.elxb");
    extract(&p0, &["--k", "3", "--shard", "0/2"]);
    extract(&p1, &["--k", "3", "--shard", "1/2"]);
    extract(&p1k2, &["--k", "2", "--shard", "1/2"]);
    let out = dir.join("out.elxb");

    let err = failure(&["bundle", "merge", s(&p0), s(&p0), "-o", s(&out)]);
    assert!(
        err.contains("is also in") && err.contains("p0.elxb"),
        "{err}"
    );
    let err = failure(&["bundle", "merge", s(&p0), s(&p1k2), "-o", s(&out)]);
    assert!(
        err.contains("extraction options") && err.contains("p1-k2.elxb"),
        "{err}"
    );
    // A missing part merges (each part is a valid bundle) but is pointed out.
    let p2of3 = dir.join("p2of3.elxb");
    let p0of3 = dir.join("p0of3.elxb");
    extract(&p0of3, &["--k", "3", "--shard", "0/3"]);
    extract(&p2of3, &["--k", "3", "--shard", "2/3"]);
    let partial = dir.join("partial.elxb");
    let o = elx(&["bundle", "merge", s(&p0of3), s(&p2of3), "-o", s(&partial)]);
    let warn = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{warn}");
    assert!(warn.contains("is a part missing?"), "{warn}");

    let err = failure(&["bundle", "merge", s(&p0), "-o", s(&out)]);
    assert!(err.contains("2"), "{err}");
    assert!(!out.exists(), "nothing written on a refused merge");

    let before = std::fs::read(&p0).unwrap();
    let err = failure(&["bundle", "merge", s(&p0), s(&p1), "-o", s(&p0)]);
    assert!(err.contains("-o"), "{err}");
    assert_eq!(std::fs::read(&p0).unwrap(), before, "a part was clobbered");

    let t = tasks();
    let err = failure(&["extract", &t[0], "--shard", "2/2", "-o", s(&out)]);
    assert!(err.contains("I/N"), "{err}");
    let err = failure(&["extract", &t[0], "--modules", "mlp", "-o", s(&out)]);
    assert!(err.contains("no module matching `mlp`"), "{err}");
    let err = failure(&["extract", &t[0], "--modules", "(", "-o", s(&out)]);
    assert!(err.contains("regular expression"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
