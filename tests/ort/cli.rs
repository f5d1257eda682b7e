//! `elx run` end to end: a synthetic base model, a bundle and task files on disk, raw tensor
//! input, against a plain-Rust f64 forward pass of the merged weights with the task's head.
//! The tract backend always; ONNX Runtime too with the `ort` feature.

use crate::support::ort as ort_support;

use eigenlorax::bundle::{Bundle, CoeffFile, StorageDtype};
use ort_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Files {
    dir: PathBuf,
    model: PathBuf,
    bundle: PathBuf,
    task: PathBuf,
    plain: PathBuf,
    input: PathBuf,
    coeffs: CoeffFile,
    x: Vec<f32>,
}

const ROWS: usize = 2;

fn npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut h = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend(data.iter().flat_map(|f| f.to_le_bytes()));
    std::fs::write(path, v).unwrap();
}

fn files(tag: &str) -> Files {
    let (model, b) = base_on_disk(tag);
    let dir = model.parent().unwrap().to_path_buf();
    let bundle = dir.join("synthetic.elxb");
    let manifest = Bundle::write(
        &bundle,
        &b.subspace,
        &[],
        StorageDtype::F32,
        b.manifest.binding.as_ref(),
    )
    .unwrap();
    let mut coeffs = task("sentiment", 71, 2, true);
    coeffs.subspace_id = manifest.subspace_id.clone();
    let task_path = dir.join("sentiment.elxc");
    coeffs.write(&task_path).unwrap();
    let mut plain = task("plain", 72, 2, false);
    plain.subspace_id = manifest.subspace_id.clone();
    let plain_path = dir.join("plain.elxc");
    plain.write(&plain_path).unwrap();
    let x = match &input(ROWS, 13)[0].data {
        eigenlorax::serve::input::TensorData::F32(v) => v.clone(),
        _ => unreachable!(),
    };
    let input_path = dir.join("x.npy");
    npy_f32(&input_path, &[ROWS, SEQ, D_IN], &x);
    Files {
        dir,
        model,
        bundle,
        task: task_path,
        plain: plain_path,
        input: input_path,
        coeffs,
        x,
    }
}

/// Mean-pooled output of the merged model, in f64, per row.
fn reference_pooled(f: &Files) -> Vec<Vec<f64>> {
    let b = bundle();
    let (w1, b1, w2) = base_weights();
    let merged = |w: &[f32], m: &str, din: usize, dout: usize| -> Vec<f64> {
        let s = &b.subspace.modules[m];
        let c = &f.coeffs.modules[m];
        let dw = &s.v_b * &c.alpha_b * &c.alpha_a * &s.v_a;
        (0..din * dout)
            .map(|k| f64::from(w[k]) + dw[(k % dout, k / dout)])
            .collect()
    };
    let w1m = merged(&w1, "l1", D_IN, D_HID);
    let w2m = merged(&w2, "l2", D_HID, D_OUT);
    (0..ROWS)
        .map(|r| {
            let mut acc = vec![0f64; D_OUT];
            for t in 0..SEQ {
                let xt = &f.x[(r * SEQ + t) * D_IN..(r * SEQ + t + 1) * D_IN];
                let h: Vec<f64> = (0..D_HID)
                    .map(|j| {
                        let v = f64::from(b1[j])
                            + (0..D_IN)
                                .map(|i| f64::from(xt[i]) * w1m[i * D_HID + j])
                                .sum::<f64>();
                        v.max(0.0)
                    })
                    .collect();
                for (o, a) in acc.iter_mut().enumerate() {
                    *a += (0..D_HID).map(|j| h[j] * w2m[j * D_OUT + o]).sum::<f64>() / SEQ as f64;
                }
            }
            acc
        })
        .collect()
}

fn elx(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `elx run --model M --bundle B [--task T] --input I EXTRA...` on `f`'s files.
fn elx_run(f: &Files, task: Option<&Path>, extra: &[&str]) -> (bool, String, String) {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut args = vec![
        "run".to_string(),
        "--model".into(),
        s(&f.model),
        "--bundle".into(),
        s(&f.bundle),
    ];
    if let Some(t) = task {
        args.extend(["--task".to_string(), s(t)]);
    }
    args.extend(["--input".to_string(), s(&f.input)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    elx(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn check_probs(f: &Files, stdout: &str) -> f64 {
    let head = f.coeffs.head.as_ref().unwrap();
    let pooled = reference_pooled(f);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ROWS, "{stdout}");
    let mut worst = 0f64;
    for (r, line) in lines.iter().enumerate() {
        let logits: Vec<f64> = (0..2)
            .map(|c| {
                head.bias[c]
                    + (0..D_OUT)
                        .map(|j| head.weight[(c, j)] * pooled[r][j])
                        .sum::<f64>()
            })
            .collect();
        let m = logits.iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        for (c, label) in head.labels.iter().enumerate() {
            let want = (logits[c] - m).exp() / z;
            let got = line["probs"][label].as_f64().unwrap();
            worst = worst.max((got - want).abs());
        }
        let best = if logits[1] > logits[0] { "yes" } else { "no" };
        assert_eq!(line["label"], best);
    }
    worst
}

#[test]
fn elx_run_on_tract_matches_the_merged_reference() {
    let f = files("cli-tract");
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (ok, out, err) = elx_run(&f, Some(&f.task), &["--json"]);
    assert!(ok, "elx run failed: {err}");
    let worst = check_probs(&f, &out);
    println!("elx run (tract) probabilities vs f64 merged reference: max |diff| = {worst:e}");
    assert!(worst <= 1e-4);

    // Without a head the pooled vector is printed; it matches the reference too.
    let (ok, out, err) = elx_run(&f, Some(&f.plain), &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("pooled[4]") && out.contains("no head"),
        "{out}"
    );

    // --text without a tokenizer next to the model: a clear error naming the file.
    let (ok, _, err) = elx(&[
        "run",
        "--model",
        &s(&f.model),
        "--bundle",
        &s(&f.bundle),
        "--text",
        "hi",
    ]);
    assert!(!ok && err.contains("tokenizer.json"), "{err}");
    // A task for another subspace is refused, naming both ids.
    let mut other = f.coeffs.clone();
    other.subspace_id = "0".repeat(64);
    let wrong = f.dir.join("wrong.elxc");
    other.write(&wrong).unwrap();
    let (ok, _, err) = elx_run(&f, Some(&wrong), &[]);
    assert!(!ok && err.contains("subspace"), "{err}");
}

#[cfg(feature = "ort")]
#[test]
fn elx_run_on_onnx_runtime_matches_and_falls_back_from_cuda() {
    require_ort();
    let f = files("cli-ort");
    let (ok, out, err) = elx_run(&f, Some(&f.task), &["--json", "--backend", "ort"]);
    assert!(ok, "elx run --backend ort failed: {err}");
    let worst = check_probs(&f, &out);
    println!("elx run (ORT CPU) probabilities vs f64 merged reference: max |diff| = {worst:e}");
    assert!(worst <= 1e-4);
    let (ok, out2, err) = elx_run(
        &f,
        Some(&f.task),
        &["--json", "--backend", "ort", "--ep", "cuda"],
    );
    assert!(ok, "{err}");
    if !err.is_empty() {
        assert!(err.contains("warning") && err.contains("CUDA"), "{err}");
        assert_eq!(out2, out, "the CPU fallback gives the CPU answer");
    }
}

#[cfg(not(feature = "ort"))]
#[test]
fn elx_run_without_the_ort_feature_says_how_to_get_it() {
    let f = files("cli-no-ort");
    let (ok, _, err) = elx_run(&f, None, &["--backend", "ort"]);
    assert!(!ok && err.contains("--features ort"), "{err}");
}
