//! `.elxb` bundle: round trips per dtype, the subspace id, and refusal of damaged files.

use crate::support::bundle as bundle_support;

use bundle_support::*;
use eigenlorax::Error;
use eigenlorax::bundle::{Binding, Bundle, ModuleBinding, StorageDtype, WeightLayout};
use std::collections::BTreeMap;

/// Per-entry storage error bound of each dtype for a value v (row absmax m for int8).
fn entry_bound(dtype: StorageDtype, v: f64, absmax: f64) -> f64 {
    match dtype {
        StorageDtype::F32 => 2f64.powi(-24) * v.abs(),
        // f16 subnormals (|v| < 2^-14) are spaced 2^-24 apart: half of that absolute.
        StorageDtype::F16 => 2f64.powi(-11) * v.abs() + 2f64.powi(-25),
        StorageDtype::Bf16 => 2f64.powi(-8) * v.abs(),
        // s = absmax/127 stored as f32; |e| <= s/2.
        StorageDtype::Int8 => f64::from((absmax / 127.0) as f32) / 2.0,
    }
}

#[test]
fn round_trip_each_dtype_within_its_bound() {
    let dir = temp_dir("bundle-rt");
    let sub = subspace(11);
    for dtype in DTYPES {
        let path = dir.join(format!("b-{}.elxb", dtype.name()));
        let written = Bundle::write(&path, &sub, &sources(), dtype, None).unwrap();
        let b = Bundle::read(&path).unwrap();
        assert_eq!(b.manifest, written);
        assert_eq!(b.manifest.dtype, dtype);
        assert_eq!(b.subspace.options, sub.options);
        assert_eq!(b.manifest.sources, sources());
        let mut worst_ratio = 0.0f64;
        for (name, m) in &sub.modules {
            let r = &b.subspace.modules[name];
            assert_eq!(
                (r.in_features, r.out_features, r.r_max, r.n_adapters),
                (m.in_features, m.out_features, 4, 3)
            );
            assert_eq!(
                (r.a.k_total(), r.b.k_total()),
                (m.a.k_total(), m.b.k_total())
            );
            assert_eq!(
                (r.a.energy_kept, r.b.energy_kept),
                (m.a.energy_kept, m.b.energy_kept)
            );
            // V_A: int8 scale per row.
            for i in 0..m.v_a.nrows() {
                let absmax = (0..m.in_features).fold(0.0f64, |a, j| a.max(m.v_a[(i, j)].abs()));
                for j in 0..m.in_features {
                    let (v, e) = (m.v_a[(i, j)], (r.v_a[(i, j)] - m.v_a[(i, j)]).abs());
                    let bound = entry_bound(dtype, v, absmax);
                    assert!(
                        e <= bound * (1.0 + 1e-12),
                        "{dtype:?} {name}.V_A[{i},{j}]: {e} > {bound}"
                    );
                    if bound > 0.0 {
                        worst_ratio = worst_ratio.max(e / bound);
                    }
                }
            }
            // V_B: int8 scale per column (basis vector).
            for j in 0..m.v_b.ncols() {
                let absmax = (0..m.out_features).fold(0.0f64, |a, i| a.max(m.v_b[(i, j)].abs()));
                for i in 0..m.out_features {
                    let (v, e) = (m.v_b[(i, j)], (r.v_b[(i, j)] - m.v_b[(i, j)]).abs());
                    let bound = entry_bound(dtype, v, absmax);
                    assert!(
                        e <= bound * (1.0 + 1e-12),
                        "{dtype:?} {name}.V_B[{i},{j}]: {e} > {bound}"
                    );
                }
            }
            // Spectra are always f32.
            for (x, y) in
                m.a.spectrum
                    .iter()
                    .chain(&m.b.spectrum)
                    .zip(r.a.spectrum.iter().chain(&r.b.spectrum))
            {
                assert!((x - y).abs() <= 2f64.powi(-24) * x.abs());
            }
        }
        // The bound is attained to within a factor of ~2: rounding really happened as modelled.
        assert!(
            worst_ratio > 0.5,
            "{dtype:?}: worst error only {worst_ratio} of the bound"
        );
    }
    // Nothing but the bundles in the folder: writes leave no temporary files.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["b-bf16.elxb", "b-f16.elxb", "b-f32.elxb", "b-int8.elxb"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn id_is_stable_and_changes_with_any_component() {
    let dir = temp_dir("bundle-id");
    let sub = subspace(5);
    let write = |name: &str, s: &eigenlorax::subspace::Subspace, dtype: StorageDtype| {
        Bundle::write(&dir.join(name), s, &sources(), dtype, None)
            .unwrap()
            .subspace_id
    };
    let id = write("a.elxb", &sub, StorageDtype::F32);
    assert!(id.starts_with("elx-") && id.len() == 20, "{id}");
    assert_eq!(
        write("b.elxb", &sub, StorageDtype::F32),
        id,
        "same content, other path: same id"
    );
    assert_eq!(
        Bundle::read(&dir.join("b.elxb"))
            .unwrap()
            .manifest
            .subspace_id,
        id
    );

    let mut ids = vec![id.clone()];
    let name = "encoder.layer.0.attention.self.query";
    let mut s = sub.clone();
    s.modules.get_mut(name).unwrap().v_a[(1, 2)] += 1e-3;
    ids.push(write("c1.elxb", &s, StorageDtype::F32));
    let mut s = sub.clone();
    s.modules.get_mut(name).unwrap().v_b[(0, 0)] += 1e-3;
    ids.push(write("c2.elxb", &s, StorageDtype::F32));
    let mut s = sub.clone();
    s.modules.get_mut(name).unwrap().a.spectrum[5] *= 1.01;
    ids.push(write("c3.elxb", &s, StorageDtype::F32));
    let mut s = sub.clone();
    s.options.seed += 1;
    ids.push(write("c4.elxb", &s, StorageDtype::F32));
    ids.push(write("c5.elxb", &sub, StorageDtype::F16));
    let mut src = sources();
    src[1].sha256 = format!("{:064x}", 99);
    ids.push(
        Bundle::write(&dir.join("c6.elxb"), &sub, &src, StorageDtype::F32, None)
            .unwrap()
            .subspace_id,
    );
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "every change must change the id: {ids:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn binding() -> Binding {
    let mut modules = BTreeMap::new();
    modules.insert(
        "encoder.layer.0.attention.self.query".to_string(),
        ModuleBinding {
            node: "/encoder/layer.0/attention/self/query/MatMul".into(),
            input: "x".into(),
            output: "q".into(),
            weight: "onnx::MatMul_886".into(),
            layout: WeightLayout::InOut,
        },
    );
    Binding {
        base_sha256: "ab".repeat(32),
        base_file: "model.onnx".into(),
        modules,
    }
}

#[test]
fn binding_keeps_the_id_and_components() {
    let dir = temp_dir("bundle-bind");
    let path = dir.join("b.elxb");
    let m = Bundle::write(&path, &subspace(2), &sources(), StorageDtype::Int8, None).unwrap();
    let b = Bundle::read(&path).unwrap();
    let bound_path = dir.join("bound.elxb");
    let m2 = b.with_binding(Some(&binding()), &bound_path).unwrap();
    assert_eq!(m2.subspace_id, m.subspace_id);
    let b2 = Bundle::read(&bound_path).unwrap();
    assert_eq!(b2.manifest.binding, Some(binding()));
    assert_eq!(b2.manifest.subspace_id, m.subspace_id);
    for (name, x) in &b.subspace.modules {
        assert_eq!(max_abs_diff(&x.v_a, &b2.subspace.modules[name].v_a), 0.0);
        assert_eq!(max_abs_diff(&x.v_b, &b2.subspace.modules[name].v_b), 0.0);
    }
    // Binding in place, and written directly by Bundle::write, gives the same id too.
    b2.with_binding(None, &bound_path).unwrap();
    assert_eq!(Bundle::read(&bound_path).unwrap().manifest.binding, None);
    let direct = Bundle::write(
        &dir.join("d.elxb"),
        &subspace(2),
        &sources(),
        StorageDtype::Int8,
        Some(&binding()),
    )
    .unwrap();
    assert_eq!(direct.subspace_id, m.subspace_id);

    // The binding is covered by its own hash: editing where a module binds (or removing the
    // hash) is refused at load, and `elx bind` (with_binding) can still rebind the file.
    let bound = dir.join("d.elxb");
    let p = dir.join("edited.elxb");
    for edit in [
        |m: &mut serde_json::Value| {
            m["binding"]["modules"]["encoder.layer.0.attention.self.query"]["node"] =
                "/encoder/layer.0/attention/self/value/MatMul".into()
        },
        |m: &mut serde_json::Value| {
            m["binding"]["modules"]["encoder.layer.0.attention.self.query"]["output"] = "v".into()
        },
        |m: &mut serde_json::Value| m["binding"]["base_sha256"] = "cd".repeat(32).into(),
    ] {
        rewrite_metadata(&bound, &p, edit);
        expect_bad(&p, Some("binding"), "binding was modified or is corrupt");
    }
    let tf = eigenlorax::tensorfile::TensorFile::open(&bound).unwrap();
    let mut md: BTreeMap<String, String> = tf
        .metadata()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() == "eigenlorax")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = tf
        .names()
        .iter()
        .map(|n| {
            let (dtype, data) = tf.raw(n).unwrap();
            eigenlorax::tensorfile::TensorOut {
                name: n.to_string(),
                dtype,
                shape: tf.info(n).unwrap().shape,
                data: data.to_vec(),
            }
        })
        .collect();
    drop(tf);
    eigenlorax::tensorfile::write(&p, tensors, std::mem::take(&mut md)).unwrap();
    expect_bad(&p, Some("binding"), "run `elx bind` again");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn expect_bad(path: &std::path::Path, tensor: Option<&str>, needle: &str) {
    match Bundle::read(path) {
        Err(e @ Error::BadInput { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "message does not name the file: {msg}"
            );
            if let Some(t) = tensor {
                assert!(msg.contains(t), "message does not name `{t}`: {msg}");
            }
            assert!(msg.contains(needle), "message lacks `{needle}`: {msg}");
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn tampered_bytes_and_manifest_are_refused() {
    let dir = temp_dir("bundle-tamper");
    let path = dir.join("b.elxb");
    Bundle::write(&path, &subspace(3), &sources(), StorageDtype::F16, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // One bit of one component.
    let r = tensor_range(&bytes, "encoder.layer.0.attention.self.value.V_B");
    let mut t = bytes.clone();
    t[r.start + 3] ^= 0x01;
    let p = dir.join("bit.elxb");
    std::fs::write(&p, &t).unwrap();
    expect_bad(&p, None, "was modified or is corrupt");
    // A spectrum value.
    let r = tensor_range(&bytes, "encoder.layer.0.attention.self.query.sigma_A");
    let mut t = bytes.clone();
    t[r.start] ^= 0x10;
    std::fs::write(&p, &t).unwrap();
    expect_bad(&p, None, "was modified or is corrupt");
    // The manifest's energy figure.
    let p = dir.join("meta.elxb");
    rewrite_metadata(&path, &p, |m| {
        m["modules"]["encoder.layer.0.attention.self.query"]["a"]["energy_kept"] = 0.5.into()
    });
    expect_bad(&p, None, "was modified or is corrupt");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_shapes_versions_and_truncation_are_refused() {
    let dir = temp_dir("bundle-bad");
    let path = dir.join("b.elxb");
    Bundle::write(&path, &subspace(4), &sources(), StorageDtype::Int8, None).unwrap();
    let q = "encoder.layer.0.attention.self.query";
    let p = dir.join("shape.elxb");
    rewrite_metadata(&path, &p, |m| m["modules"][q]["in_features"] = 47.into());
    expect_bad(
        &p,
        Some(&format!("{q}.V_A")),
        "shape [4, 47], found [4, 48]",
    );
    rewrite_metadata(&path, &p, |m| m["modules"][q]["k_b"] = 4.into());
    expect_bad(&p, Some(&format!("modules.{q}.b")), "k_b = 4");
    rewrite_metadata(&path, &p, |m| m["format_version"] = 4.into());
    expect_bad(&p, None, "found version 4");
    rewrite_metadata(&path, &p, |m| m["dtype"] = "f16".into());
    expect_bad(&p, Some(&format!("{q}.V_A")), "dtype F16, found I8");
    rewrite_metadata(&path, &p, |m| {
        m["modules"].as_object_mut().unwrap().remove(q);
    });
    expect_bad(
        &p,
        Some(&format!("{q}.V_A")),
        "only the tensors of the modules listed",
    );

    // Truncated anywhere: an error, never a panic.
    let bytes = std::fs::read(&path).unwrap();
    let p = dir.join("trunc.elxb");
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = Bundle::read(&p).expect_err("truncated file must be refused");
        assert!(e.to_string().contains("trunc.elxb"), "{e}");
    }
    // A missing file is an I/O error naming it.
    let e = Bundle::read(&dir.join("nope.elxb")).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope.elxb"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_components_are_not_written() {
    let dir = temp_dir("bundle-nan");
    let mut s = subspace(6);
    s.modules.values_mut().next().unwrap().v_b[(2, 1)] = f64::NAN;
    let path = dir.join("nan.elxb");
    let e = Bundle::write(&path, &s, &sources(), StorageDtype::F32, None).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bundle written by the previous elx (format 1: full spectra, no totals; the file in
/// tests/fixtures was made by that build) still reads, with its id verified: every side's
/// total energy is Σσ² of the stored spectrum, and the spectrum counts as complete.
#[test]
fn format_1_bundles_still_read() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle_v1.elxb");
    let b = Bundle::read(&path).unwrap();
    assert_eq!(b.manifest.format_version, 1);
    assert_eq!(b.manifest.subspace_id, "elx-f570201c57703fb2");
    assert!(!b.manifest.options.full_spectrum);
    assert_eq!(b.subspace.modules.len(), 4);
    for (name, m) in &b.subspace.modules {
        for (side, s) in [("A", &m.a), ("B", &m.b)] {
            assert!(s.full_spectrum, "{name} {side}");
            assert_eq!(s.spectrum.len(), 20, "{name} {side}");
            let want: f64 = s.spectrum.iter().map(|x| x * x).sum();
            assert!(want > 0.0);
            assert_eq!(s.total_energy, want, "{name} {side}");
        }
        let mm = &b.manifest.modules[name];
        assert_eq!((mm.a.total_energy, mm.a.full_spectrum), (None, true));
    }
    // No stored base identity; one is derived from the sources and module shapes.
    assert_eq!(b.manifest.base, None);
    let base = b.manifest.base_identity();
    assert_eq!(
        base.fingerprint,
        eigenlorax::adapter::base::fingerprint(b.manifest.modules.iter().map(|(n, m)| (
            n.as_str(),
            m.in_features,
            m.out_features
        )))
    );
}

/// Format 3 stores the base model identity: the name the PEFT sources declare and the
/// fingerprint of the module shapes. It must be what the sources and modules give, and only
/// format 3 may carry one.
#[test]
fn format_3_stores_the_base_identity() {
    let dir = temp_dir("bundle-v3");
    let path = dir.join("v3.elxb");
    let written = Bundle::write(&path, &subspace(7), &sources(), StorageDtype::F32, None).unwrap();
    assert_eq!(written.format_version, 3);
    let b = Bundle::read(&path).unwrap();
    let base = b
        .manifest
        .base
        .clone()
        .expect("a format 3 bundle has a base");
    assert_eq!(
        base.name.as_deref(),
        Some("sentence-transformers/all-MiniLM-L6-v2")
    );
    assert!(base.other_names.is_empty());
    let shapes: Vec<(String, usize, usize)> = b
        .manifest
        .modules
        .iter()
        .map(|(n, m)| (n.clone(), m.in_features, m.out_features))
        .collect();
    assert_eq!(
        base.fingerprint,
        eigenlorax::adapter::base::fingerprint(shapes.iter().map(|(n, i, o)| (n.as_str(), *i, *o)))
    );
    // A base identity that does not match its sources is refused before the id is checked.
    let p = dir.join("edited.elxb");
    rewrite_metadata(&path, &p, |m| m["base"]["name"] = "gpt2".into());
    expect_bad(
        &p,
        Some("__metadata__.eigenlorax.base"),
        "expected the base identity its sources and modules give (base model `sentence-transformers/all-MiniLM-L6-v2`",
    );
    rewrite_metadata(&path, &p, |m| {
        m.as_object_mut().unwrap().remove("base");
    });
    expect_bad(&p, Some("__metadata__.eigenlorax.base"), "found none");
    rewrite_metadata(&path, &p, |m| m["format_version"] = 2.into());
    expect_bad(&p, None, "expected no base identity in format version 2");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Format 2: a side that stores only its top K values keeps its exact total energy and says
/// that its spectrum is partial; both survive the round trip and the id covers them (an edited
/// or removed total is refused).
#[test]
fn format_2_stores_totals_and_partial_spectra() {
    let dir = temp_dir("bundle-v2");
    let mut sub = subspace(5);
    let name = sub.modules.keys().next().unwrap().clone();
    {
        let m = sub.modules.get_mut(&name).unwrap();
        let k = m.a.k_principal;
        m.a.spectrum.truncate(k);
        m.a.total_energy = 123.25;
        m.a.full_spectrum = false;
    }
    let path = dir.join("v2.elxb");
    let written = Bundle::write(&path, &sub, &sources(), StorageDtype::F32, None).unwrap();
    assert_eq!(written.format_version, 3);
    let b = Bundle::read(&path).unwrap();
    let (want, got) = (&sub.modules[&name], &b.subspace.modules[&name]);
    assert_eq!(got.a.total_energy, 123.25);
    assert!(!got.a.full_spectrum);
    assert_eq!(got.a.spectrum.len(), want.a.k_principal);
    assert!(got.b.full_spectrum);
    assert_eq!(got.b.total_energy, want.b.total_energy);
    assert_eq!(b.manifest.modules[&name].a.total_energy, Some(123.25));

    let p = dir.join("edited.elxb");
    rewrite_metadata(&path, &p, |m| {
        m["modules"][&name]["a"]["total_energy"] = 124.0.into()
    });
    let err = Bundle::read(&p).unwrap_err().to_string();
    assert!(err.contains("hashes to"), "{err}");
    rewrite_metadata(&path, &p, |m| {
        m["modules"][&name]["a"]
            .as_object_mut()
            .unwrap()
            .remove("total_energy");
    });
    // (Refused by the id before the missing total is looked at: the id covers the manifest.)
    let err = Bundle::read(&p).unwrap_err().to_string();
    assert!(err.contains("hashes to"), "{err}");
}
