//! Parity of the Rust subspace math with the independent numpy reference
//! (`tools/elx_reference.py`), on the six committed task adapters.
//!
//! The reference outputs are committed under `models/fixtures/reference/` (rebuilt by
//! `python3 tools/make_fixtures.py --only reference`); `reference_is_reproducible` re-runs the
//! reference live so that those files cannot go stale. It needs python3 with numpy and
//! safetensors, and fails (never skips) without them: CI installs them.
//!
//! The reference files are read with the `safetensors` crate directly, not with the crate's own
//! reader, so that a reader bug cannot hide a math mismatch.

use eigenlorax::adapter::Adapter;
use eigenlorax::subspace::{
    self, ExtractOptions, KRule, ModuleSubspace, SideInfo, Subspace, extract, project,
};
use faer::Mat;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Entrywise tolerance on the bases (both sides use the same sign convention).
const BASIS_TOL: f64 = 1e-8;
/// Bound on the sine of every principal angle between the two bases' spans.
const ANGLE_TOL: f64 = 1e-7;
/// Spectra, relative to the largest singular value of the side.
const SPECTRUM_TOL: f64 = 1e-9;
/// Coefficients, entrywise.
const COEFF_TOL: f64 = 1e-8;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn task_dirs() -> Vec<PathBuf> {
    (0..6)
        .map(|i| root().join(format!("models/fixtures/adapters/task{i}")))
        .collect()
}

fn reference_dir() -> PathBuf {
    root().join("models/fixtures/reference")
}

/// The three committed extractions: file name, reference CLI arguments, matching Rust options.
fn extraction_cases() -> Vec<(&'static str, Vec<&'static str>, ExtractOptions)> {
    vec![
        (
            "k4.safetensors",
            vec!["--k", "4"],
            ExtractOptions {
                canonicalize: true,
                center: false,
                k_rule_a: KRule::Fixed(4),
                k_rule_b: KRule::Fixed(4),
                pseudo: 0,
                seed: 0,
                full_spectrum: false,
            },
        ),
        (
            "k4_center_pseudo.safetensors",
            vec!["--k", "3", "--center", "--pseudo", "2", "--seed", "7"],
            ExtractOptions {
                canonicalize: true,
                center: true,
                k_rule_a: KRule::Fixed(3),
                k_rule_b: KRule::Fixed(3),
                pseudo: 2,
                seed: 7,
                full_spectrum: false,
            },
        ),
        (
            "energy09_nocanon.safetensors",
            vec!["--energy", "0.9", "--no-canonicalize"],
            ExtractOptions {
                canonicalize: false,
                center: false,
                k_rule_a: KRule::Energy(0.9),
                k_rule_b: KRule::Energy(0.9),
                pseudo: 0,
                seed: 0,
                full_spectrum: false,
            },
        ),
    ]
}

/// A safetensors file read whole: tensors as (shape, f64 values) and the metadata.
struct RefFile {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    metadata: HashMap<String, String>,
}

impl RefFile {
    fn open(path: &Path) -> RefFile {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F64,
                "{}: {name} is not F64",
                path.display()
            );
            let values: Vec<f64> = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        RefFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
        }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.path.display()))
    }

    fn vec(&self, name: &str) -> Vec<f64> {
        self.get(name).1.clone()
    }

    fn mat(&self, name: &str) -> Mat<f64> {
        let (shape, v) = self.get(name);
        assert_eq!(shape.len(), 2, "{}: {name} is not 2-D", self.path.display());
        let cols = shape[1];
        Mat::from_fn(shape[0], cols, |i, j| v[i * cols + j])
    }

    /// Module names: the prefixes of the `.V_A` / `.alpha_A` tensors.
    fn modules(&self, suffix: &str) -> Vec<String> {
        let mut m: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_suffix(suffix).map(str::to_string))
            .collect();
        m.sort();
        m
    }
}

fn open_tasks() -> Vec<Adapter> {
    task_dirs()
        .iter()
        .map(|d| Adapter::open(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())))
        .collect()
}

fn max_abs_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut worst = 0.0f64;
    for i in 0..a.nrows() {
        for j in 0..a.ncols() {
            worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    worst
}

/// Frobenius norm of the part of `x`'s rows outside the row span of the orthonormal rows of
/// `q`. It bounds the sine of the largest principal angle between the two spans (same size).
fn residual_outside_rows(x: &Mat<f64>, q: &Mat<f64>) -> f64 {
    let (k, n) = (x.nrows(), x.ncols());
    let mut total = 0.0;
    for i in 0..k {
        let mut r: Vec<f64> = (0..n).map(|c| x[(i, c)]).collect();
        for p in 0..q.nrows() {
            let dot: f64 = (0..n).map(|c| q[(p, c)] * x[(i, c)]).sum();
            for (c, rc) in r.iter_mut().enumerate() {
                *rc -= dot * q[(p, c)];
            }
        }
        total += r.iter().map(|v| v * v).sum::<f64>();
    }
    total.sqrt()
}

fn transpose(m: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(m.ncols(), m.nrows(), |i, j| m[(j, i)])
}

fn check_spectrum(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: spectrum length");
    let top = want.first().copied().unwrap_or(0.0).max(f64::MIN_POSITIVE);
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / top)
        .fold(0.0, f64::max);
    assert!(
        worst <= SPECTRUM_TOL,
        "{what}: spectrum differs by {worst:e} of σ_max"
    );
    worst
}

/// Compares one basis (as rows: V_A, or V_Bᵀ) entrywise and by principal angles.
fn check_basis(what: &str, got_rows: &Mat<f64>, want_rows: &Mat<f64>) -> (f64, f64) {
    assert_eq!(
        (got_rows.nrows(), got_rows.ncols()),
        (want_rows.nrows(), want_rows.ncols()),
        "{what}: basis shape"
    );
    let angle = residual_outside_rows(got_rows, want_rows);
    assert!(
        angle < ANGLE_TOL,
        "{what}: subspaces differ, sin(principal angle) up to {angle:e}"
    );
    let entry = max_abs_diff(got_rows, want_rows);
    assert!(
        entry < BASIS_TOL,
        "{what}: entries differ by {entry:e} (same span; sign convention?)"
    );
    (entry, angle)
}

/// Counts the reference recorded per module: [k_a, mean_a, pseudo_a, k_b, mean_b, pseudo_b].
fn check_counts(what: &str, reference: &RefFile, name: &str, a: &SideInfo, b: &SideInfo) {
    let counts: serde_json::Value =
        serde_json::from_str(reference.metadata.get("counts").expect("counts metadata"))
            .expect("json");
    let c = &counts[name];
    let num = |i: usize| c[i].as_u64().unwrap_or(u64::MAX) as usize;
    let flag = |i: usize| c[i].as_bool().expect("bool");
    assert_eq!(
        (
            a.k_principal,
            a.mean_vector,
            a.pseudo,
            b.k_principal,
            b.mean_vector,
            b.pseudo
        ),
        (num(0), flag(1), num(2), num(3), flag(4), num(5)),
        "{what}: (k, mean, pseudo) per side"
    );
}

fn run_extraction(adapters: &[Adapter], options: &ExtractOptions) -> Subspace {
    extract(adapters, options, &|_, _, _| {}).expect("extract on the fixtures")
}

#[test]
fn extraction_matches_numpy_reference() {
    let adapters = open_tasks();
    for (file, _, options) in extraction_cases() {
        let reference = RefFile::open(&reference_dir().join(file));
        let sub = run_extraction(&adapters, &options);
        let names = reference.modules(".V_A");
        assert_eq!(
            sub.modules.keys().cloned().collect::<Vec<_>>(),
            names,
            "{file}: module names"
        );
        let (mut worst_spec, mut worst_entry, mut worst_angle) = (0.0f64, 0.0f64, 0.0f64);
        for name in &names {
            let m = &sub.modules[name];
            let what = format!("{file} {name}");
            worst_spec = worst_spec.max(check_spectrum(
                &format!("{what} A"),
                &m.a.spectrum,
                &reference.vec(&format!("{name}.sigma_A")),
            ));
            worst_spec = worst_spec.max(check_spectrum(
                &format!("{what} B"),
                &m.b.spectrum,
                &reference.vec(&format!("{name}.sigma_B")),
            ));
            let (e, a) = check_basis(
                &format!("{what} V_A"),
                &m.v_a,
                &reference.mat(&format!("{name}.V_A")),
            );
            worst_entry = worst_entry.max(e);
            worst_angle = worst_angle.max(a);
            let (e, a) = check_basis(
                &format!("{what} V_B"),
                &transpose(&m.v_b),
                &transpose(&reference.mat(&format!("{name}.V_B"))),
            );
            worst_entry = worst_entry.max(e);
            worst_angle = worst_angle.max(a);
            check_counts(&what, &reference, name, &m.a, &m.b);
            assert_eq!(m.n_adapters, 6, "{what}: n_adapters");
            assert_eq!(
                (m.in_features, m.out_features, m.r_max),
                (32, 32, 4),
                "{what}: dims"
            );
        }
        eprintln!(
            "{file}: {} modules; worst spectrum diff {worst_spec:.1e}·σ_max, basis entry {worst_entry:.1e}, \
             sin angle {worst_angle:.1e}",
            names.len()
        );
    }
}

/// Projection of task0 into the reference k4 basis itself (isolates `project` from `extract`).
#[test]
fn projection_matches_numpy_reference() {
    let basis = RefFile::open(&reference_dir().join("k4.safetensors"));
    let coeffs = RefFile::open(&reference_dir().join("task0_in_k4.safetensors"));
    let errors: BTreeMap<String, f64> = serde_json::from_str(
        coeffs
            .metadata
            .get("relative_errors")
            .expect("relative_errors metadata"),
    )
    .expect("json");
    let task0 = Adapter::open(&task_dirs()[0]).expect("open task0");
    let names = coeffs.modules(".alpha_A");
    assert_eq!(names.len(), 4);
    let (mut worst, mut worst_err) = (0.0f64, 0.0f64);
    for name in &names {
        let v_a = basis.mat(&format!("{name}.V_A"));
        let v_b = basis.mat(&format!("{name}.V_B"));
        let side = |k: usize| SideInfo {
            spectrum: Vec::new(),
            total_energy: 0.0,
            full_spectrum: false,
            k_principal: k,
            mean_vector: false,
            pseudo: 0,
            energy_kept: 0.0,
        };
        let s = ModuleSubspace {
            in_features: v_a.ncols(),
            out_features: v_b.nrows(),
            r_max: 4,
            n_adapters: 6,
            a: side(v_a.nrows()),
            b: side(v_b.ncols()),
            v_a,
            v_b,
        };
        let module = task0.load_module(name).expect("load task0 module");
        let c = project(&module, &s);
        let (want_a, want_b) = (
            coeffs.mat(&format!("{name}.alpha_A")),
            coeffs.mat(&format!("{name}.alpha_B")),
        );
        assert_eq!(
            (c.alpha_a.nrows(), c.alpha_a.ncols()),
            (want_a.nrows(), want_a.ncols()),
            "{name} alpha_A shape"
        );
        assert_eq!(
            (c.alpha_b.nrows(), c.alpha_b.ncols()),
            (want_b.nrows(), want_b.ncols()),
            "{name} alpha_B shape"
        );
        let d = max_abs_diff(&c.alpha_a, &want_a).max(max_abs_diff(&c.alpha_b, &want_b));
        assert!(d < COEFF_TOL, "{name}: coefficients differ by {d:e}");
        worst = worst.max(d);
        let err = subspace::relative_error(&module, &subspace::reconstruct(&c, &s));
        let want_err = errors[name];
        assert!(
            (err - want_err).abs() < 1e-9,
            "{name}: relative error {err} vs reference {want_err}"
        );
        worst_err = worst_err.max((err - want_err).abs());
    }
    eprintln!(
        "task0_in_k4: worst coefficient diff {worst:.1e}, worst relative-error diff {worst_err:.1e}"
    );
}

/// PEFT variants whose folded ΔW the reference wrote as `reference/delta_<variant>.safetensors`.
const READER_VARIANTS: [&str; 5] = [
    "rslora",
    "rank_pattern",
    "task2_fp16",
    "task2_bf16",
    "gpt2_fan_in_fan_out",
];

fn variant_dir(v: &str) -> PathBuf {
    root().join(format!("models/fixtures/adapters/variants/{v}"))
}

/// Frobenius norm of a - b over that of b.
fn rel_frobenius(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..b.nrows() {
        for j in 0..b.ncols() {
            num += (a[(i, j)] - b[(i, j)]).powi(2);
            den += b[(i, j)].powi(2);
        }
    }
    (num / den).sqrt()
}

/// Compares every module's B'·A' from the Rust reader with the reference's folded ΔW.
fn check_reader(what: &str, adapter: &Adapter, expected: &RefFile) -> f64 {
    let names = expected.modules(".delta");
    assert_eq!(
        adapter.modules.keys().cloned().collect::<Vec<_>>(),
        names,
        "{what}: module names"
    );
    let mut worst = 0.0f64;
    for name in &names {
        let want_scale = expected.vec(&format!("{name}.scale"))[0];
        let scale = adapter.modules[name].scale;
        assert!(
            (scale - want_scale).abs() <= 1e-15 * want_scale.abs(),
            "{what} {name}: scale {scale} vs reference {want_scale}"
        );
        let m = adapter.load_module(name).expect("load_module");
        let delta: Mat<f64> = &m.b * &m.a;
        let want = expected.mat(&format!("{name}.delta"));
        assert_eq!(
            (delta.nrows(), delta.ncols()),
            (want.nrows(), want.ncols()),
            "{what} {name}: ΔW shape [out, in]"
        );
        let e = rel_frobenius(&delta, &want);
        assert!(
            e < 1e-12,
            "{what} {name}: ΔW differs from the reference by {e:e} (relative)"
        );
        worst = worst.max(e);
    }
    worst
}

/// The Rust readers against the reference reader (PEFT: rslora, rank/alpha patterns, f16,
/// bf16, fan_in_fan_out) and against the numpy-built kohya file's expected ΔW.
#[test]
fn readers_match_numpy_reference() {
    for v in READER_VARIANTS {
        let adapter = Adapter::open(&variant_dir(v)).unwrap_or_else(|e| panic!("{v}: {e}"));
        let expected = RefFile::open(&reference_dir().join(format!("delta_{v}.safetensors")));
        let worst = check_reader(v, &adapter, &expected);
        eprintln!("{v}: worst relative ΔW diff {worst:.1e}");
    }
    let kohya = root().join("models/fixtures/kohya/tiny_sd_lora.safetensors");
    let adapter = Adapter::open(&kohya).unwrap_or_else(|e| panic!("kohya: {e}"));
    let expected =
        RefFile::open(&root().join("models/fixtures/kohya/tiny_sd_lora.expected.safetensors"));
    let worst = check_reader("kohya", &adapter, &expected);
    eprintln!("kohya: worst relative ΔW diff {worst:.1e}");
}

/// Locates python3 with numpy and safetensors, or fails with the command that installs them.
fn python() -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&py)
        .args(["-c", "import numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{py}` with numpy and safetensors is required to re-run the numpy reference: \
         pip install numpy safetensors (or set PYTHON to an interpreter that has them)"
    );
    py
}

/// Re-runs the reference CLI live and checks it reproduces every committed reference file.
#[test]
fn reference_is_reproducible() {
    let py = python();
    let dir = std::env::temp_dir().join(format!("elx-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tasks: Vec<String> = task_dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let mut runs: Vec<(String, Vec<String>)> = Vec::new();
    for (file, args, _) in extraction_cases() {
        let mut a = vec!["extract".to_string()];
        a.extend(tasks.iter().cloned());
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend(["-o".to_string(), dir.join(file).display().to_string()]);
        runs.push((file.to_string(), a));
    }
    runs.push((
        "task0_in_k4.safetensors".to_string(),
        vec![
            "project".to_string(),
            tasks[0].clone(),
            "--ref".to_string(),
            dir.join("k4.safetensors").display().to_string(),
            "-o".to_string(),
            dir.join("task0_in_k4.safetensors").display().to_string(),
        ],
    ));
    for v in READER_VARIANTS {
        let file = format!("delta_{v}.safetensors");
        runs.push((
            file.clone(),
            vec![
                "delta".to_string(),
                variant_dir(v).display().to_string(),
                "-o".to_string(),
                dir.join(&file).display().to_string(),
            ],
        ));
    }
    // One interpreter runs the CLI's main() for every invocation in order: starting python and
    // numpy once instead of four times keeps this test quick on a loaded machine.
    let program = "import json, sys\nsys.path.insert(0, sys.argv[1])\nimport elx_reference as r\n\
                   for argv in json.loads(sys.argv[2]):\n    assert r.main(argv) == 0, argv\n";
    let argv_json = serde_json::to_string(&runs.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>())
        .expect("json");
    let out = Command::new(&py)
        .args(["-c", program])
        .arg(root().join("tools"))
        .arg(&argv_json)
        .output()
        .expect("spawn python");
    assert!(
        out.status.success(),
        "reference runs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, _) in &runs {
        let fresh = RefFile::open(&dir.join(file));
        let committed = RefFile::open(&reference_dir().join(file));
        let mut a: Vec<&String> = fresh.tensors.keys().collect();
        let mut b: Vec<&String> = committed.tensors.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(
            a, b,
            "{file}: tensor names (stale committed reference? rebuild with make_fixtures.py --only reference)"
        );
        for (name, (shape, v)) in &committed.tensors {
            let (fshape, fv) = &fresh.tensors[name];
            assert_eq!(shape, fshape, "{file} {name}: shape");
            let scale = v.iter().fold(1e-300f64, |m, x| m.max(x.abs()));
            let d = v
                .iter()
                .zip(fv)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
                / scale;
            assert!(
                d < 1e-10,
                "{file} {name}: committed reference differs from a fresh run by {d:e} (relative)"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The recycling diagnostics (`elx inspect --held-out`, `elx demo`) against the numpy
/// reference on the dense ΔW: each fixture adapter's energy-weighted capture in the other
/// five's subspace, in their mean direction alone, in the centered basis alone and in both,
/// and the chance expectation.
#[test]
fn held_out_diagnostics_match_numpy_reference() {
    use eigenlorax::eval::capture_vs_chance::{Pool, held_out};
    let py = python();
    let dirs = task_dirs();
    let out = Command::new(&py)
        .arg(root().join("tools/elx_reference.py"))
        .arg("held-out")
        .args(&dirs)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let pool = Pool::load(&dirs).expect("pool");
    let got = held_out(&pool, &ExtractOptions::default(), 0).expect("held out");
    assert_eq!(got.len(), want.len());
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        for (name, value) in [
            ("captured", g.recycled.captured),
            ("input_side", g.recycled.input_side),
            ("output_side", g.recycled.output_side),
            ("chance", g.recycled.chance),
            ("mean_only", g.mean_only),
            ("basis_only", g.basis_only),
            ("mean_plus_basis", g.mean_plus_basis),
        ] {
            let r = w[name].as_f64().expect("number");
            let d = (value - r).abs();
            worst = worst.max(d);
            assert!(d < 1e-9, "{}: {name} {value} vs numpy {r}", g.name);
        }
    }
    eprintln!("held-out diagnostics: worst |diff| vs numpy {worst:.1e}");
}
