//! Bad input to the runtime: a coefficient file from another subspace, a bundle bound to
//! another base model, a model lacking a bound node, modules that cannot be bound.

use crate::support::runtime as runtime_support;

use eigenlorax::bundle::CoeffFile;
use eigenlorax::graph::{bind_file, patch, patch_file};
use eigenlorax::serve::TaskStore;
use runtime_support::*;

fn setup(
    tag: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    eigenlorax::bundle::Bundle,
) {
    let dir = temp_dir(tag);
    let path = write_model(&dir, "base.onnx", &model(&Weights::random(1)));
    let mut b = bundle(2, "sub-a");
    bind_bundle(&mut b, &path);
    (dir, path, b)
}

#[test]
fn coefficients_of_another_subspace_are_refused_with_both_ids() {
    let (dir, path, b) = setup("othersub");
    let p = patch_file(&path, &b, 1).expect("patch");
    let store = TaskStore::new(&b.manifest, &p.coeff_inputs);
    // In memory.
    let err = store
        .insert(&coeffs(1, "sub-zzz", "t", 2, 0.1))
        .expect_err("other subspace")
        .to_string();
    println!("{err}");
    assert!(err.contains("sub-a") && err.contains("sub-zzz"), "{err}");
    // From a file (checked once, at load).
    let f = dir.join("other.elxc");
    coeffs(1, "sub-zzz", "t", 2, 0.1)
        .write(&f)
        .expect("write coeffs");
    let err = store.load(&f).expect_err("other subspace").to_string();
    println!("{err}");
    assert!(
        err.contains("sub-a") && err.contains("sub-zzz") && err.contains("other.elxc"),
        "{err}"
    );
    assert_eq!(store.len(), 0);
    // The right subspace loads, and its tensors are transposed and zero-padded to r_max.
    let good = dir.join("good.elxc");
    let c = coeffs(3, "sub-a", "good", 2, 0.1);
    c.write(&good).expect("write");
    let id = store.load(&good).expect("load good");
    let t = store.get(id).expect("get");
    let ci = p
        .coeff_inputs
        .iter()
        .position(|ci| ci.module == "layer.0.query")
        .expect("module");
    let (ta, tb) = t.input(&p.coeff_inputs, ci).expect("input");
    assert_eq!(ta.shape, [1, K_A, R_MAX]);
    assert_eq!(tb.shape, [1, R_MAX, K_B]);
    let back = CoeffFile::read(&good).expect("read");
    let co = &back.modules["layer.0.query"];
    for k in 0..K_A {
        for j in 0..R_MAX {
            let want = if j < 2 {
                co.alpha_a[(j, k)] as f32
            } else {
                0.0
            };
            assert_eq!(ta.data[k * R_MAX + j], want);
        }
    }
    for j in 0..R_MAX {
        for k in 0..K_B {
            let want = if j < 2 {
                co.alpha_b[(k, j)] as f32
            } else {
                0.0
            };
            assert_eq!(tb.data[j * K_B + k], want);
        }
    }
}

#[test]
fn rank_above_r_max_and_non_finite_coefficients_are_refused() {
    let (_dir, path, b) = setup("rank");
    let p = patch_file(&path, &b, 1).expect("patch");
    let store = TaskStore::new(&b.manifest, &p.coeff_inputs);
    let err = store
        .insert(&coeffs(1, "sub-a", "t", R_MAX + 1, 0.1))
        .expect_err("rank")
        .to_string();
    println!("{err}");
    assert!(err.contains("r <= 4"), "{err}");
    let mut bad = coeffs(1, "sub-a", "t", 2, 0.1);
    if let Some(c) = bad.modules.get_mut("mid.proj") {
        c.alpha_b[(0, 0)] = f64::NAN;
    }
    let err = store.insert(&bad).expect_err("nan").to_string();
    println!("{err}");
    assert!(err.contains("mid.proj") && err.contains("finite"), "{err}");
}

#[test]
fn a_bundle_bound_to_another_model_is_refused_with_both_hashes() {
    let (dir, _path, b) = setup("otherbase");
    let other = write_model(&dir, "other.onnx", &model(&Weights::random(99)));
    let err = patch_file(&other, &b, 1)
        .expect_err("other base")
        .to_string();
    println!("{err}");
    let bound = &b.manifest.binding.as_ref().expect("binding").base_sha256;
    let found = eigenlorax::util::sha256_file(&other).expect("hash");
    assert!(
        err.contains(bound.as_str()) && err.contains(found.as_str()),
        "{err}"
    );
    #[cfg(feature = "tract")]
    {
        let err = eigenlorax::serve::backend::tract::Runtime::load(&other, &b)
            .err()
            .expect("other base")
            .to_string();
        println!("{err}");
        assert!(
            err.contains(bound.as_str()) && err.contains(found.as_str()),
            "{err}"
        );
    }
    // An unbound bundle asks for `elx bind`.
    let mut unbound = b.clone();
    unbound.manifest.binding = None;
    let err = patch_file(&other, &unbound, 1)
        .expect_err("unbound")
        .to_string();
    println!("{err}");
    assert!(err.contains("elx bind"), "{err}");
}

#[test]
fn a_model_lacking_a_bound_node_is_refused_naming_module_and_node() {
    let (_dir, _path, b) = setup("lacking");
    let mut m = model(&Weights::random(1));
    if let Some(g) = m.graph.as_mut() {
        for n in &mut g.node {
            if n.name == "/l1/v/MatMul" {
                n.name = "/l1/v/Renamed".into();
            }
        }
    }
    let err = patch(&m, &b, 1).expect_err("lacking node").to_string();
    println!("{err}");
    assert!(
        err.contains("layer.1.value") && err.contains("/l1/v/MatMul"),
        "{err}"
    );
}

#[test]
fn unresolved_modules_list_candidates() {
    let dir = temp_dir("unresolved");
    let path = write_model(&dir, "base.onnx", &model(&Weights::random(1)));
    let b = bundle(2, "sub-a");
    // Without the user map, `mid.proj` has no anchor; the error names the fitting nodes.
    let err = bind_file(&path, &b, None)
        .expect_err("unresolved")
        .to_string();
    println!("{err}");
    assert!(err.contains("1 of 4 unresolved"), "{err}");
    assert!(
        err.contains("mid.proj") && err.contains("/mid/MatMul"),
        "{err}"
    );
    // A user map to a node of the wrong shape.
    let bad =
        std::collections::BTreeMap::from([("mid.proj".to_string(), "/l0/q/MatMul".to_string())]);
    let err = bind_file(&path, &b, Some(&bad))
        .expect_err("wrong shape")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("16 in x 24 out") && err.contains("expected 20 x 20"),
        "{err}"
    );
    // A user map to a missing node.
    let bad = std::collections::BTreeMap::from([("mid.proj".to_string(), "/nope".to_string())]);
    let err = bind_file(&path, &b, Some(&bad))
        .expect_err("missing")
        .to_string();
    println!("{err}");
    assert!(err.contains("/nope"), "{err}");
    // A module whose shape fits nothing.
    let mut wrong = bundle(2, "sub-a");
    if let Some(mm) = wrong.manifest.modules.get_mut("classifier") {
        mm.in_features = 7;
    }
    let err = bind_file(&path, &wrong, Some(&user_map()))
        .expect_err("shape")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("classifier") && err.contains("expected 7 x 4"),
        "{err}"
    );
    // Not an ONNX file.
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"not a protobuf \xff\xff\xff").expect("write");
    let err = bind_file(&junk, &b, None).expect_err("junk").to_string();
    println!("{err}");
    assert!(err.contains("junk.onnx"), "{err}");
}
