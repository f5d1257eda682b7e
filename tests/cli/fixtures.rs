//! `elx` on the committed fixture adapters against the independent numpy reference
//! (`models/fixtures/reference/`, made by tools/elx_reference.py in float64): the command-line
//! flags reach the math, and what the bundle and coefficient files store is what the reference
//! computes, to f32 storage precision.

use crate::support::bundle as bundle_support;

use bundle_support::temp_dir;
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::tensorfile::TensorFile;
use faer::Mat;
use std::path::{Path, PathBuf};
use std::process::Command;

const MODULES: [&str; 4] = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.0.attention.self.value",
    "encoder.layer.1.attention.self.query",
    "encoder.layer.1.attention.self.value",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn task(i: usize) -> String {
    root()
        .join(format!("models/fixtures/adapters/task{i}"))
        .display()
        .to_string()
}

fn elx(args: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "elx {args:?}:\n{out}\n{err}");
    out.into_owned()
}

fn extract(out: &Path, flags: &[&str]) -> Bundle {
    let mut args = vec!["extract".to_string()];
    args.extend((0..6).map(task));
    args.extend([
        "-o".into(),
        out.display().to_string(),
        "--dtype".into(),
        "f32".into(),
    ]);
    args.extend(flags.iter().map(|s| s.to_string()));
    elx(&args);
    Bundle::read(out).unwrap()
}

fn reference(name: &str) -> TensorFile {
    TensorFile::open(&root().join("models/fixtures/reference").join(name)).unwrap()
}

fn max_diff(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    assert_eq!((x.nrows(), x.ncols()), (y.nrows(), y.ncols()));
    let mut m = 0.0f64;
    for i in 0..x.nrows() {
        for j in 0..x.ncols() {
            m = m.max((x[(i, j)] - y[(i, j)]).abs());
        }
    }
    m
}

/// Checks K, spectra and the spanned subspaces (projectors, sign- and rotation-free) of a
/// bundle against a reference extraction file.
fn check_against(b: &Bundle, r: &TensorFile, k: [(usize, usize); 4]) {
    for (m, (ka, kb)) in MODULES.iter().zip(k) {
        let s = &b.subspace.modules[*m];
        assert_eq!((s.v_a.nrows(), s.v_b.ncols()), (ka, kb), "{m}");
        for (side, spec) in [("sigma_A", &s.a.spectrum), ("sigma_B", &s.b.spectrum)] {
            let (_, want) = r.read_f64(&format!("{m}.{side}")).unwrap();
            assert_eq!(spec.len(), want.len(), "{m}.{side}");
            for (x, y) in spec.iter().zip(&want) {
                // f32 storage of the spectrum: relative 2^-24, plus the f64 round-off of both codes.
                assert!(
                    (x - y).abs() <= 1e-7 * y.abs() + 1e-12 * want[0],
                    "{m}.{side}: {x} vs {y}"
                );
            }
        }
        let va = r.read_mat(&format!("{m}.V_A"), Some([ka, 32])).unwrap();
        let vb = r.read_mat(&format!("{m}.V_B"), Some([32, kb])).unwrap();
        let pa = |v: &Mat<f64>| v.transpose() * v;
        let pb = |v: &Mat<f64>| v * v.transpose();
        // Projector entries: f32 rounding of K unit vectors (~K·2^-24), far above f64 noise.
        assert!(
            max_diff(&pa(&s.v_a), &pa(&va)) < 1e-6,
            "{m}: V_A spans differ by {}",
            max_diff(&pa(&s.v_a), &pa(&va))
        );
        assert!(
            max_diff(&pb(&s.v_b), &pb(&vb)) < 1e-6,
            "{m}: V_B spans differ by {}",
            max_diff(&pb(&s.v_b), &pb(&vb))
        );
    }
}

#[test]
fn extract_matches_the_reference_for_fixed_k_and_energy_without_canonicalization() {
    let dir = temp_dir("cli-fixtures-extract");
    let b = extract(&dir.join("k4.elxb"), &["--k", "4"]);
    check_against(&b, &reference("k4.safetensors"), [(4, 4); 4]);
    assert!(b.manifest.options.canonicalize);
    let b = extract(
        &dir.join("e09.elxb"),
        &["--energy", "0.9", "--no-canonicalize"],
    );
    assert!(!b.manifest.options.canonicalize);
    check_against(
        &b,
        &reference("energy09_nocanon.safetensors"),
        [(8, 7), (11, 10), (7, 7), (11, 8)],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn project_matches_the_reference_errors_and_delta() {
    let dir = temp_dir("cli-fixtures-project");
    let bp = dir.join("k4.elxb");
    let b = extract(&bp, &["--k", "4"]);
    let cp = dir.join("task0.elxc");
    let out = elx(&[
        "project".into(),
        task(0),
        "--bundle".into(),
        bp.display().to_string(),
        "-o".into(),
        cp.display().to_string(),
    ]);
    let r = reference("task0_in_k4.safetensors");
    let meta: serde_json::Value =
        serde_json::from_str(&r.metadata().unwrap()["relative_errors"]).unwrap();
    let c = CoeffFile::read_for(&cp, &b.manifest).unwrap();
    let k4 = reference("k4.safetensors");
    for m in MODULES {
        // The printed error (4 significant digits) is the reference's.
        let want = meta[m].as_f64().unwrap();
        let line = out.lines().find(|l| l.starts_with(m)).unwrap();
        let got: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(
            (got - want).abs() <= 5e-4 * want,
            "{m}: printed {got}, reference {want}"
        );
        // The stored coefficients rebuild the reference's ΔŴ = V_B·alpha_B·alpha_A·V_A, which
        // does not depend on either side's basis signs or coefficient gauge.
        let s = &b.subspace.modules[m];
        let ours = &s.v_b * (&c.modules[m].alpha_b * &c.modules[m].alpha_a) * &s.v_a;
        let (ra, rb) = (
            r.read_mat(&format!("{m}.alpha_A"), None).unwrap(),
            r.read_mat(&format!("{m}.alpha_B"), None).unwrap(),
        );
        let (va, vb) = (
            k4.read_mat(&format!("{m}.V_A"), None).unwrap(),
            k4.read_mat(&format!("{m}.V_B"), None).unwrap(),
        );
        let theirs = &vb * (&rb * &ra) * &va;
        let scale = max_diff(&theirs, &Mat::zeros(32, 32));
        assert!(
            max_diff(&ours, &theirs) <= 1e-6 * scale,
            "{m}: ΔŴ differs by {} (scale {scale})",
            max_diff(&ours, &theirs)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn project_stores_the_task_head() {
    let dir = temp_dir("cli-fixtures-head");
    let bp = dir.join("k4.elxb");
    extract(&bp, &["--k", "4"]);
    let cp = dir.join("task4.elxc");
    let head = root().join("models/fixtures/adapters/task4/head.safetensors");
    let out = elx(&[
        "project".into(),
        task(4),
        "--bundle".into(),
        bp.display().to_string(),
        "-o".into(),
        cp.display().to_string(),
        "--head".into(),
        head.display().to_string(),
    ]);
    assert!(out.contains("head: 3 classes x 32 features"), "{out}");
    let c = CoeffFile::read(&cp).unwrap();
    // The task name comes from the head file; its weights are stored (f32 -> f32, exact).
    assert_eq!(c.task, "which_group_3way");
    let h = c.head.unwrap();
    let want = TensorFile::open(&head)
        .unwrap()
        .read_mat("head.weight", Some([3, 32]))
        .unwrap();
    assert_eq!(max_diff(&h.weight, &want), 0.0);
    assert_eq!(h.labels, ["0", "1", "2"]);
    let out = elx(&["inspect".into(), cp.display().to_string()]);
    assert!(
        out.contains("3 classes x 32 features") && out.contains("labels:       0, 1, 2"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inspect --held-out`: the pool's leave-one-out table, capture vs N with its plot, the
/// Gaussian-null table and a verdict; the bundle's own sources are marked in-sample.
#[test]
fn inspect_held_out_prints_diagnostics_and_a_verdict() {
    let dir = temp_dir("cli-held-out");
    let b = dir.join("b.elxb");
    extract(&b, &[]);
    let plot = dir.join("p.svg");
    let mut args = vec![
        "inspect".to_string(),
        b.display().to_string(),
        "--adapters".into(),
    ];
    args.extend((0..6).map(task));
    args.extend([
        "--held-out".into(),
        "--random-control".into(),
        "--plot".into(),
        plot.display().to_string(),
    ]);
    let out = elx(&args);
    for want in [
        "spectrum vs a Gaussian null",
        "[a source of this bundle]",
        "held out, each adapter against the subspace of the other 5",
        "capture vs N",
        "verdict: new tasks like these:",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    // N = 1, 2, 4 and 5 of the other five adapters.
    let curve = out.split("capture vs N").nth(1).expect("curve");
    for n in ["\n1 ", "\n2 ", "\n4 ", "\n5 "] {
        assert!(curve.contains(n), "{curve}");
    }
    assert!(dir.join("p-capture-vs-n.svg").is_file());
    assert!(plot.is_file());
}
