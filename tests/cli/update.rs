//! `elx extract --keep-stats` / `--update` and `elx project --remap` end to end (issue 31):
//! the updated bundle against `elx extract` over all adapters (same K per module and side,
//! principal angles at the f32 storage floor), a task carried across the update, and the
//! refusals.

use crate::support::adapter_fixtures::TmpDir;
use crate::support::lora_pool;
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::linalg::max_principal_angle;
use std::path::{Path, PathBuf};
use std::process::Command;

fn elx(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = elx(args);
    assert_eq!(code, 0, "elx {args:?} failed:\n{out}\n{err}");
    out
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

const MODULES: [(&str, usize, usize); 2] = [("enc.q", 32, 24), ("enc.v", 12, 12)];

#[test]
fn update_matches_extraction_over_all_adapters_and_tasks_follow() {
    let tmp = TmpDir::new("cli-update");
    let old: Vec<PathBuf> = lora_pool::write(&tmp.join("pool"), &MODULES, 21, 0, 4, 2);
    let new: Vec<PathBuf> = lora_pool::write(&tmp.join("pool"), &MODULES, 21, 4, 3, 2);
    let (b_old, b_new, b_all) = (
        tmp.join("old.elxb"),
        tmp.join("new.elxb"),
        tmp.join("all.elxb"),
    );
    let mut args: Vec<String> = old.iter().map(|p| s(p)).collect();
    args.extend(["--energy", "0.9", "--keep-stats", "-o"].map(String::from));
    args.push(s(&b_old));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = vec!["extract"];
    cmd.extend(&argv);
    let out = ok(&cmd);
    assert!(out.contains("old.elxs"), "{out}");

    // --update: only the new adapters are read.
    let mut cmd: Vec<String> = vec!["extract".into(), "--update".into(), s(&b_old)];
    cmd.extend(new.iter().map(|p| s(p)));
    cmd.extend(["-o".into(), s(&b_new)]);
    let out = ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("with 3 adapters"), "{out}");

    let mut cmd: Vec<String> = vec!["extract".into()];
    cmd.extend(old.iter().chain(&new).map(|p| s(p)));
    cmd.extend(["--energy".into(), "0.9".into(), "-o".into(), s(&b_all)]);
    ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());

    let (updated, scratch) = (Bundle::read(&b_new).unwrap(), Bundle::read(&b_all).unwrap());
    assert_eq!(updated.manifest.sources, scratch.manifest.sources);
    assert_eq!(updated.manifest.options, scratch.manifest.options);
    for (name, want) in &scratch.subspace.modules {
        let got = &updated.subspace.modules[name];
        assert_eq!(
            (got.a.k_principal, got.b.k_principal),
            (want.a.k_principal, want.b.k_principal),
            "{name}: K"
        );
        let a = max_principal_angle(got.v_a.as_ref(), want.v_a.as_ref()).unwrap();
        let b = max_principal_angle(got.v_b.transpose(), want.v_b.transpose()).unwrap();
        // f32 storage: both bundles round the same f64 subspace to ~6e-8.
        assert!(a <= 1e-6 && b <= 1e-6, "{name}: angles {a:e} {b:e}");
    }

    // A task of the old bundle carried into the new one.
    let task = tmp.join("t.elxc");
    ok(&[
        "project",
        &s(&old[1]),
        "--bundle",
        &s(&b_old),
        "-o",
        &s(&task),
    ]);
    let moved = tmp.join("t-new.elxc");
    let out = ok(&[
        "project",
        "--remap",
        &s(&task),
        "--from",
        &s(&b_old),
        "--bundle",
        &s(&b_new),
        "-o",
        &s(&moved),
    ]);
    assert!(out.contains("captured"), "{out}");
    let c = CoeffFile::read_for(&moved, &updated.manifest).unwrap();
    assert_eq!(c.subspace_id, updated.manifest.subspace_id);
    assert_eq!(c.task, "a001");

    // Refusals: a K rule with --update, a bundle without statistics, a task of another bundle.
    let (code, _, err) = elx(&[
        "extract",
        "--update",
        &s(&b_old),
        &s(&new[0]),
        "--k",
        "3",
        "-o",
        &s(&tmp.join("x.elxb")),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("keeps the old bundle's extraction options"),
        "{err}"
    );
    let (code, _, err) = elx(&[
        "extract",
        "--update",
        &s(&b_all),
        &s(&new[0]),
        "-o",
        &s(&tmp.join("x.elxb")),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("all.elxs") && err.contains("--keep-stats"),
        "{err}"
    );
    assert!(!tmp.join("x.elxb").exists());
    let (code, _, err) = elx(&[
        "project",
        "--remap",
        &s(&moved),
        "--from",
        &s(&b_old),
        "--bundle",
        &s(&b_new),
        "-o",
        &s(&tmp.join("y.elxc")),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("t-new.elxc"), "{err}");
}
