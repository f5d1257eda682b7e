//! `.elxc` coefficient files: round trip, subspace check, refusal of wrong shapes.

use crate::support::bundle as bundle_support;

use bundle_support::*;
use eigenlorax::Error;
use eigenlorax::bundle::{Bundle, CoeffFile, Head, Provenance, StorageDtype};
use eigenlorax::subspace::Coefficients;
use eigenlorax::tensorfile::{Dtype, TensorOut, write};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::Path;

fn gauss(rows: usize, cols: usize, rng: &mut GaussianRng) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| rng.next_normal())
}

/// Coefficients of rank `r` that fit every module of the manifest.
fn coeffs_for(b: &Bundle, r: usize, with_head: bool) -> CoeffFile {
    let mut rng = GaussianRng::new(9);
    let modules = b
        .manifest
        .modules
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                Coefficients {
                    alpha_a: gauss(r, m.k_a, &mut rng),
                    alpha_b: gauss(m.k_b, r, &mut rng),
                },
            )
        })
        .collect();
    let head = with_head.then(|| Head {
        weight: gauss(3, 16, &mut rng),
        bias: vec![0.5, -1.25, 2.0],
        labels: vec!["neg".into(), "neutral".into(), "pos".into()],
    });
    CoeffFile {
        subspace_id: b.manifest.subspace_id.clone(),
        task: "sst2".into(),
        provenance: Provenance::Finetuned,
        modules,
        head,
    }
}

fn bundle(dir: &Path, name: &str, seed: u64) -> Bundle {
    let p = dir.join(name);
    Bundle::write(&p, &subspace(seed), &sources(), StorageDtype::F32, None).unwrap();
    Bundle::read(&p).unwrap()
}

fn f32_close(x: &Mat<f64>, y: &Mat<f64>) {
    for i in 0..x.nrows() {
        for j in 0..x.ncols() {
            assert!(
                (x[(i, j)] - y[(i, j)]).abs() <= 2f64.powi(-24) * x[(i, j)].abs(),
                "({i},{j})"
            );
        }
    }
}

#[test]
fn round_trip_with_and_without_head() {
    let dir = temp_dir("coeff-rt");
    let b = bundle(&dir, "b.elxb", 1);
    for with_head in [false, true] {
        let c = coeffs_for(&b, 4, with_head);
        let p = dir.join(format!("t{with_head}.elxc"));
        c.write(&p).unwrap();
        let r = CoeffFile::read_for(&p, &b.manifest).unwrap();
        assert_eq!(
            (r.subspace_id.as_str(), r.task.as_str(), r.provenance),
            (c.subspace_id.as_str(), "sst2", Provenance::Finetuned)
        );
        assert_eq!(r.modules.len(), 2);
        for (n, x) in &c.modules {
            f32_close(&x.alpha_a, &r.modules[n].alpha_a);
            f32_close(&x.alpha_b, &r.modules[n].alpha_b);
        }
        match (&c.head, &r.head) {
            (None, None) => {}
            (Some(h), Some(g)) => {
                f32_close(&h.weight, &g.weight);
                assert_eq!(g.bias, h.bias); // exactly representable
                assert_eq!(g.labels, h.labels);
            }
            _ => panic!("head lost or invented"),
        }
    }
    // A subset of modules is allowed (absent modules mean zero coefficients).
    let mut c = coeffs_for(&b, 2, false);
    c.modules.pop_first();
    let p = dir.join("subset.elxc");
    c.write(&p).unwrap();
    assert_eq!(
        CoeffFile::read_for(&p, &b.manifest).unwrap().modules.len(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_subspace_is_a_mismatch_naming_both_ids() {
    let dir = temp_dir("coeff-mismatch");
    let b1 = bundle(&dir, "one.elxb", 1);
    let b2 = bundle(&dir, "two.elxb", 2);
    assert_ne!(b1.manifest.subspace_id, b2.manifest.subspace_id);
    let p = dir.join("t.elxc");
    coeffs_for(&b1, 4, false).write(&p).unwrap();
    let e = CoeffFile::read_for(&p, &b2.manifest).unwrap_err();
    let msg = e.to_string();
    match e {
        Error::SubspaceMismatch {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, p);
            assert_eq!(expected, b2.manifest.subspace_id);
            assert_eq!(found, b1.manifest.subspace_id);
        }
        other => panic!("expected SubspaceMismatch, got {other:?}"),
    }
    for needle in [
        &b1.manifest.subspace_id,
        &b2.manifest.subspace_id,
        &p.display().to_string(),
    ] {
        assert!(msg.contains(needle.as_str()), "{msg} lacks {needle}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn expect_bad_tensor(r: eigenlorax::Result<CoeffFile>, tensor: &str, needle: &str) {
    match r {
        Err(e @ Error::BadInput { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("`{tensor}`")),
                "message does not name `{tensor}`: {msg}"
            );
            assert!(msg.contains(needle), "message lacks `{needle}`: {msg}");
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn shapes_that_do_not_fit_the_bundle_are_refused() {
    let dir = temp_dir("coeff-shapes");
    let b = bundle(&dir, "b.elxb", 1);
    let q = "encoder.layer.0.attention.self.query";
    let p = dir.join("t.elxc");
    let mut c = coeffs_for(&b, 4, false);
    c.modules.get_mut(q).unwrap().alpha_a = Mat::zeros(4, 5); // K_A is 4
    c.write(&p).unwrap();
    expect_bad_tensor(
        CoeffFile::read_for(&p, &b.manifest),
        &format!("{q}.alpha_A"),
        "shape [r, 4] (K_A of the bundle), found [4, 5]",
    );
    let mut c = coeffs_for(&b, 4, false);
    c.modules.get_mut(q).unwrap().alpha_b = Mat::zeros(2, 4); // K_B is 3
    c.write(&p).unwrap();
    expect_bad_tensor(
        CoeffFile::read_for(&p, &b.manifest),
        &format!("{q}.alpha_B"),
        "shape [3, r] (K_B of the bundle), found [2, 4]",
    );
    let mut c = coeffs_for(&b, 4, false);
    let x = c.modules[q].clone();
    c.modules.insert("decoder.layer.9.fc".into(), x);
    c.write(&p).unwrap();
    expect_bad_tensor(
        CoeffFile::read_for(&p, &b.manifest),
        "decoder.layer.9.fc.alpha_A",
        "has no module `decoder.layer.9.fc`",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes a coefficient file by hand (to make files `CoeffFile::write` refuses to make).
fn raw_file(path: &Path, tensors: Vec<TensorOut>, meta: serde_json::Value) {
    let mut md = BTreeMap::new();
    md.insert("eigenlorax".to_string(), meta.to_string());
    write(path, tensors, md).unwrap();
}

fn meta(rank: serde_json::Value, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"kind": "coefficients", "format_version": 1, "subspace_id": "elx-0000000000000000",
        "task": "t", "provenance": "projected", "labels": labels, "rank": rank})
}

#[test]
fn hostile_files_are_refused_with_the_tensor_named() {
    let dir = temp_dir("coeff-hostile");
    let p = dir.join("h.elxc");
    let a = |r: usize, k: usize, v: f64| {
        TensorOut::from_f64("m.alpha_A", Dtype::F32, vec![r, k], &vec![v; r * k])
    };
    let bb = |k: usize, r: usize| {
        TensorOut::from_f64("m.alpha_B", Dtype::F32, vec![k, r], &vec![1.0; k * r])
    };
    // A good one reads.
    raw_file(
        &p,
        vec![a(2, 3, 1.0), bb(4, 2)],
        meta(serde_json::json!({"m": 2}), serde_json::Value::Null),
    );
    let c = CoeffFile::read(&p).unwrap();
    assert_eq!(
        (
            c.modules["m"].alpha_a.ncols(),
            c.modules["m"].alpha_b.nrows()
        ),
        (3, 4)
    );
    // Rank disagreement between alpha_A and alpha_B.
    raw_file(
        &p,
        vec![a(2, 3, 1.0), bb(4, 3)],
        meta(serde_json::json!({"m": 2}), serde_json::Value::Null),
    );
    expect_bad_tensor(CoeffFile::read(&p), "m.alpha_B", "shape [rows, 2]");
    // Non-finite coefficient.
    raw_file(
        &p,
        vec![a(2, 3, f64::NAN), bb(4, 2)],
        meta(serde_json::json!({"m": 2}), serde_json::Value::Null),
    );
    assert!(
        CoeffFile::read(&p)
            .unwrap_err()
            .to_string()
            .contains("m.alpha_A")
    );
    // alpha_B without alpha_A.
    raw_file(
        &p,
        vec![bb(4, 2)],
        meta(serde_json::json!({}), serde_json::Value::Null),
    );
    expect_bad_tensor(CoeffFile::read(&p), "m.alpha_A", "beside alpha_B");
    // A stray tensor.
    raw_file(
        &p,
        vec![TensorOut::from_f64("x", Dtype::F32, vec![1], &[1.0])],
        meta(serde_json::json!({}), serde_json::Value::Null),
    );
    expect_bad_tensor(CoeffFile::read(&p), "x", "only `<module>.alpha_A`");
    // Head with a label count that does not match its classes.
    let hw = TensorOut::from_f64("head.weight", Dtype::F32, vec![2, 3], &[0.0; 6]);
    let hb = TensorOut::from_f64("head.bias", Dtype::F32, vec![2], &[0.0; 2]);
    raw_file(
        &p,
        vec![hw, hb],
        meta(serde_json::json!({}), serde_json::json!(["a", "b", "c"])),
    );
    expect_bad_tensor(
        CoeffFile::read(&p),
        "__metadata__.eigenlorax.labels",
        "2 labels",
    );
    // A bundle is not a coefficient file.
    let bp = dir.join("b.elxb");
    Bundle::write(&bp, &subspace(1), &sources(), StorageDtype::F32, None).unwrap();
    let e = CoeffFile::read(&bp).unwrap_err().to_string();
    assert!(e.contains("found a bundle"), "{e}");
    let e = Bundle::read(&p).unwrap_err().to_string();
    assert!(e.contains("found a coefficient file"), "{e}");
    // Truncated.
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    assert!(CoeffFile::read(&p).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn head_files_are_read_and_checked() {
    let dir = temp_dir("coeff-head");
    let p = dir.join("head.safetensors");
    let w: Vec<f64> = (0..6).map(|i| i as f64 * 0.25).collect();
    let head = |labels: Option<&str>, bias_len: usize| {
        let mut md = BTreeMap::new();
        if let Some(l) = labels {
            md.insert("labels".to_string(), l.to_string());
        }
        let t = vec![
            TensorOut::from_f64("head.weight", Dtype::F16, vec![2, 3], &w),
            TensorOut::from_f64(
                "head.bias",
                Dtype::F32,
                vec![bias_len],
                &vec![0.5; bias_len],
            ),
        ];
        write(&p, t, md).unwrap();
    };
    head(Some(r#"["no", "yes"]"#), 2);
    let h = Head::read(&p).unwrap();
    assert_eq!((h.weight.nrows(), h.weight.ncols()), (2, 3));
    assert_eq!(h.weight[(1, 2)], 1.25); // exact in f16
    assert_eq!(
        (h.bias.clone(), h.labels.clone()),
        (vec![0.5, 0.5], vec!["no".to_string(), "yes".to_string()])
    );
    head(None, 2);
    assert_eq!(Head::read(&p).unwrap().labels, ["0", "1"]);
    head(Some(r#"["a"]"#), 2);
    expect_head_err(&p, "__metadata__.labels", "expected 2 labels");
    head(Some(r#"["a", "b"]"#), 3);
    expect_head_err(&p, "head.bias", "expected shape [2], found [3]");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn expect_head_err(p: &Path, tensor: &str, needle: &str) {
    let msg = Head::read(p).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("`{tensor}`")) && msg.contains(needle),
        "{msg}"
    );
}

/// Format 2 carries a PEFT adapter's non-LoRA tensors (their dtype and bytes) and config
/// fields; a file without them stays format 1; the `peft` entry and format 2 go together.
#[test]
fn pass_through_round_trips_in_format_2() {
    use eigenlorax::bundle::coeffs::PassThrough;
    let dir = temp_dir("coeffs-pass");
    let b = bundle(&dir, "b", 21);
    let c = coeffs_for(&b, 2, false);
    let head_w = TensorOut::from_f64(
        "base_model.model.classifier.weight",
        Dtype::BF16,
        vec![2, 3],
        &[1.5, -2.0, 0.25, 3.0, 0.0, -0.5],
    );
    let pt = PassThrough {
        task_type: Some("SEQ_CLS".into()),
        fan_in_fan_out: true,
        modules_to_save: serde_json::json!(["classifier"]),
        target_modules: serde_json::json!("(.*query|.*value)"),
        tensors: vec![head_w.clone()],
    };
    let with = dir.join("with.elxc");
    c.write_with(&with, Some(&pt)).unwrap();
    assert_eq!(
        CoeffFile::read_pass_through(&with).unwrap(),
        Some(pt.clone())
    );
    assert_eq!(pt.bytes(), 12);
    // The coefficients read as before (the carried tensor is not a module).
    let back = CoeffFile::read_for(&with, &b.manifest).unwrap();
    assert_eq!(back.modules.len(), c.modules.len());
    let meta = |p: &Path| -> serde_json::Value {
        let tf = eigenlorax::tensorfile::TensorFile::open(p).unwrap();
        serde_json::from_str(&tf.metadata().unwrap()["eigenlorax"]).unwrap()
    };
    assert_eq!(meta(&with)["format_version"], 2);
    let plain = dir.join("plain.elxc");
    c.write(&plain).unwrap();
    assert_eq!(meta(&plain)["format_version"], 1);
    assert_eq!(CoeffFile::read_pass_through(&plain).unwrap(), None);
    // A version 1 file with a `peft` entry, and a listed tensor that is missing, are refused.
    let p = dir.join("edited.elxc");
    rewrite_metadata(&with, &p, |m| m["format_version"] = 1.into());
    let e = CoeffFile::read(&p).unwrap_err().to_string();
    assert!(
        e.contains(
            "expected a `peft` entry exactly in format version 2, found format version 1 with one"
        ),
        "{e}"
    );
    rewrite_metadata(&with, &p, |m| {
        m["peft"]["tensors"] = serde_json::json!(["base_model.model.classifier.bias"])
    });
    let e = CoeffFile::read(&p).unwrap_err().to_string();
    assert!(
        e.contains("tensor `peft:base_model.model.classifier.weight`"),
        "{e}"
    );
    let e = CoeffFile::read_pass_through(&p).unwrap_err().to_string();
    assert!(
        e.contains("peft:base_model.model.classifier.bias") && e.contains("lists it as carried"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
