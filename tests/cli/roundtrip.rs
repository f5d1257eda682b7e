//! End to end through the `elx` binary on PEFT folders written by the test:
//! extract -> project -> reconstruct -> project, inspect with adapters, and bad input.

use crate::support::bundle as bundle_support;

use bundle_support::temp_dir;
use eigenlorax::adapter::LoraModule;
use eigenlorax::adapter::peft::{self, PeftWriteOptions};
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const Q: &str = "model.layers.0.self_attn.q_proj";
const V: &str = "model.layers.0.self_attn.v_proj";

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = elx(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "elx {args:?} failed:\n{out}\n{err}");
    out.into_owned()
}

fn fail(args: &[&str]) -> String {
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "elx {args:?} should fail with 1: {err}"
    );
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn gauss(rows: usize, cols: usize, rng: &mut GaussianRng) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| rng.next_normal())
}

/// An adapter whose A rows and B columns lie mostly in shared 6-dimensional subspaces (plus
/// a little private noise), as recycled adapters of one domain would.
fn adapter(dir: &Path, name: &str, seed: u64, shapes: &[(&str, usize, usize)]) -> PathBuf {
    let mut shared = GaussianRng::new(1000);
    let mut rng = GaussianRng::new(seed);
    let mut modules = BTreeMap::new();
    for &(m, in_f, out_f) in shapes {
        let (ua, ub) = (gauss(6, in_f, &mut shared), gauss(out_f, 6, &mut shared));
        let a = gauss(4, 6, &mut rng) * &ua + gauss(4, in_f, &mut rng) * 0.05;
        let b = &ub * gauss(6, 4, &mut rng) + gauss(out_f, 4, &mut rng) * 0.05;
        modules.insert(
            m.to_string(),
            LoraModule {
                a: a * 0.1,
                b: b * 0.1,
            },
        );
    }
    let p = dir.join(name);
    let opts = PeftWriteOptions {
        base_model: Some("tiny-base".into()),
        ..Default::default()
    };
    peft::write(&p, &modules, &opts).unwrap();
    p
}

const SHAPES: [(&str, usize, usize); 2] = [(Q, 32, 24), (V, 32, 16)];

#[test]
fn extract_project_reconstruct_project_is_stable() {
    let dir = temp_dir("cli-rt");
    let train: Vec<PathBuf> = (0..4)
        .map(|i| adapter(&dir, &format!("task{i}"), i, &SHAPES))
        .collect();
    let held = adapter(&dir, "held", 77, &SHAPES);
    let b = dir.join("domain.elxb");
    let mut args = vec!["extract"];
    args.extend(train.iter().map(|p| s(p)));
    args.extend(["-o", s(&b), "--k", "8", "--dtype", "f32"]);
    let out = ok(&args);
    let bundle = Bundle::read(&b).unwrap();
    let id = &bundle.manifest.subspace_id;
    assert!(out.contains(&format!("subspace id: {id}")), "{out}");
    for m in [Q, V] {
        assert!(
            out.lines().any(|l| l.starts_with(m) && l.contains(" 8 ")),
            "{out}"
        );
        assert_eq!(
            (
                bundle.manifest.modules[m].k_a,
                bundle.manifest.modules[m].k_b
            ),
            (8, 8)
        );
    }
    assert_eq!(bundle.manifest.sources.len(), 4);
    assert_eq!(
        bundle.manifest.sources[0].base_model.as_deref(),
        Some("tiny-base")
    );

    // Project the held-out adapter, rebuild it as PEFT, project that again.
    let c1 = dir.join("held.elxc");
    let out = ok(&[
        "project",
        s(&held),
        "--bundle",
        s(&b),
        "-o",
        s(&c1),
        "--task",
        "held",
    ]);
    assert!(out.contains("mean relative error of ΔW"), "{out}");
    let rec = dir.join("rec");
    ok(&["reconstruct", s(&c1), "--bundle", s(&b), "-o", s(&rec)]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rec.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny-base");
    let c2 = dir.join("rec.elxc");
    let out = ok(&["project", s(&rec), "--bundle", s(&b), "-o", s(&c2)]);
    // The rebuilt adapter lies in the subspace: its projection loses nothing but f32 rounding.
    for line in out.lines().filter(|l| l.starts_with("model.")) {
        let err: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(err < 1e-6, "{line}");
    }
    let (x, y) = (
        CoeffFile::read_for(&c1, &bundle.manifest).unwrap(),
        CoeffFile::read_for(&c2, &bundle.manifest).unwrap(),
    );
    assert_eq!(x.task, "held");
    assert_eq!(y.task, "rec");
    for m in [Q, V] {
        for (p, q) in [
            (&x.modules[m].alpha_a, &y.modules[m].alpha_a),
            (&x.modules[m].alpha_b, &y.modules[m].alpha_b),
        ] {
            let scale = (0..p.nrows())
                .flat_map(|i| (0..p.ncols()).map(move |j| (i, j)))
                .fold(0.0f64, |a, (i, j)| a.max(p[(i, j)].abs()));
            for i in 0..p.nrows() {
                for j in 0..p.ncols() {
                    let d = (p[(i, j)] - q[(i, j)]).abs();
                    assert!(
                        d <= 1e-6 * scale,
                        "{m} ({i},{j}): {} vs {} (scale {scale})",
                        p[(i, j)],
                        q[(i, j)]
                    );
                }
            }
        }
    }

    // A training adapter with every direction kept (K = Σr = 16) is reproduced to f32 rounding.
    let full = dir.join("full.elxb");
    let mut args = vec!["extract"];
    args.extend(train.iter().map(|p| s(p)));
    args.extend(["-o", s(&full), "--k", "16"]);
    ok(&args);
    let out = ok(&[
        "project",
        s(&train[2]),
        "--bundle",
        s(&full),
        "-o",
        s(&dir.join("t2.elxc")),
    ]);
    for line in out.lines().filter(|l| l.starts_with("model.")) {
        let err: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(err < 1e-6, "{line}");
    }

    // inspect with adapters and the random control: the recycled subspace captures the
    // held-out adapter far better than a random one of the same size (by construction here).
    let png = dir.join("fig.png");
    let out = ok(&[
        "inspect",
        s(&b),
        "--adapters",
        s(&held),
        "--random-control",
        "--seed",
        "3",
        "--plot",
        s(&png),
    ]);
    assert!(out.contains(id.as_str()), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("all (ΔW-weighted)"))
        .unwrap()
        .to_string();
    // The whole-adapter row: its label is two words, then error, captured, random error.
    let cells: Vec<&str> = row.split_whitespace().collect();
    let (err, rand_err): (f64, f64) = (cells[2].parse().unwrap(), cells[4].parse().unwrap());
    assert!(err < 0.1 && rand_err > 0.5, "{row}");
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    if std::env::var_os("ELX_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_input_names_the_file() {
    let dir = temp_dir("cli-rt-bad");
    let train: Vec<PathBuf> = (0..3)
        .map(|i| adapter(&dir, &format!("t{i}"), i, &SHAPES))
        .collect();
    let b = dir.join("b.elxb");
    ok(&[
        "extract",
        s(&train[0]),
        s(&train[1]),
        s(&train[2]),
        "-o",
        s(&b),
        "--k",
        "4",
    ]);

    // An adapter for another base: same module name, other in_features.
    let other = adapter(&dir, "other", 5, &[(Q, 40, 24)]);
    let err = fail(&[
        "project",
        s(&other),
        "--bundle",
        s(&b),
        "-o",
        s(&dir.join("o.elxc")),
    ]);
    assert!(
        err.contains("adapter_model.safetensors") && err.contains(Q) && err.contains("in=32"),
        "{err}"
    );
    assert!(!dir.join("o.elxc").exists());

    // An adapter sharing nothing with the bundle: warns, then fails.
    let unrelated = adapter(
        &dir,
        "unrelated",
        6,
        &[("model.layers.5.mlp.up_proj", 32, 24)],
    );
    let o = elx(&[
        "project",
        s(&unrelated),
        "--bundle",
        s(&b),
        "-o",
        s(&dir.join("u.elxc")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("warning: 1 module(s)") && err.contains("model.layers.5.mlp.up_proj"),
        "{err}"
    );

    // Missing adapter path, pickles, a coefficient file for another bundle.
    let err = fail(&[
        "extract",
        s(&dir.join("nope")),
        "-o",
        s(&dir.join("x.elxb")),
    ]);
    assert!(err.contains("nope"), "{err}");
    let pickle = dir.join("adapter.bin");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let err = fail(&["extract", s(&pickle), "-o", s(&dir.join("x.elxb"))]);
    assert!(err.contains("adapter.bin"), "{err}");
    let b2 = dir.join("b2.elxb");
    ok(&[
        "extract",
        s(&train[0]),
        s(&train[1]),
        "-o",
        s(&b2),
        "--k",
        "3",
    ]);
    let c = dir.join("t0.elxc");
    ok(&["project", s(&train[0]), "--bundle", s(&b), "-o", s(&c)]);
    let err = fail(&[
        "reconstruct",
        s(&c),
        "--bundle",
        s(&b2),
        "-o",
        s(&dir.join("r")),
    ]);
    let (id1, id2) = (
        Bundle::read(&b).unwrap().manifest.subspace_id,
        Bundle::read(&b2).unwrap().manifest.subspace_id,
    );
    assert!(
        err.contains(&id1) && err.contains(&id2) && err.contains("t0.elxc"),
        "{err}"
    );
    // A bundle where a coefficient file is expected, and the reverse.
    let err = fail(&[
        "reconstruct",
        s(&b),
        "--bundle",
        s(&b),
        "-o",
        s(&dir.join("r")),
    ]);
    assert!(err.contains("found a bundle"), "{err}");
    let err = fail(&[
        "project",
        s(&train[0]),
        "--bundle",
        s(&c),
        "-o",
        s(&dir.join("y.elxc")),
    ]);
    assert!(err.contains("found a coefficient file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
