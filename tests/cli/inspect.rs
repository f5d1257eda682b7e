//! `elx inspect` on bundles and coefficient files built in memory (no adapters needed).

use crate::support::bundle as bundle_support;

use bundle_support::*;
use eigenlorax::bundle::{
    Binding, Bundle, CoeffFile, Head, ModuleBinding, Provenance, StorageDtype, WeightLayout,
};
use eigenlorax::subspace::Coefficients;
use faer::Mat;
use std::path::Path;
use std::process::{Command, Output};

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn inspect_prints_bundle_and_coefficient_summaries() {
    let dir = temp_dir("cli-inspect");
    let b = dir.join("domain.elxb");
    let m = Bundle::write(&b, &subspace(1), &sources(), StorageDtype::Int8, None).unwrap();
    let o = elx(&["inspect", s(&b)]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("subspace id:  {}", m.subspace_id)),
        "{out}"
    );
    assert!(out.contains("bases stored as int8"), "{out}");
    assert!(
        out.contains("encoder.layer.0.attention.self.value"),
        "{out}"
    );
    // K_A of the value module is 2 principal + 1 pseudo-PC; K_B of the query module 2 + mean.
    assert!(
        out.contains("3 (2+1p)") && out.contains("3 (2+mean)"),
        "{out}"
    );
    assert!(out.contains(&"0".repeat(63)), "source hashes listed: {out}");

    // A bound bundle shows its binding, under the same id.
    let mut modules = std::collections::BTreeMap::new();
    modules.insert(
        "encoder.layer.0.attention.self.query".to_string(),
        ModuleBinding {
            node: "/q/MatMul".into(),
            input: "h0".into(),
            output: "q0".into(),
            weight: "onnx::MatMul_886".into(),
            layout: WeightLayout::InOut,
        },
    );
    let binding = Binding {
        base_sha256: "cd".repeat(32),
        base_file: "model.onnx".into(),
        modules,
    };
    let bound = dir.join("bound.elxb");
    Bundle::read(&b)
        .unwrap()
        .with_binding(Some(&binding), &bound)
        .unwrap();
    let (out, err) = text(&elx(&["inspect", s(&bound)]));
    assert!(out.contains(&m.subspace_id), "{out}{err}");
    assert!(
        out.contains(&format!(
            "binding:      model.onnx (sha256 {}), 1 modules",
            "cd".repeat(32)
        )),
        "{out}"
    );
    assert!(
        out.contains("/q/MatMul") && out.contains("onnx::MatMul_886") && out.contains("InOut"),
        "{out}"
    );

    let c = dir.join("task.elxc");
    let bundle = Bundle::read(&b).unwrap();
    let modules = bundle
        .manifest
        .modules
        .iter()
        .map(|(n, mm)| {
            (
                n.clone(),
                Coefficients {
                    alpha_a: Mat::zeros(2, mm.k_a),
                    alpha_b: Mat::zeros(mm.k_b, 2),
                },
            )
        })
        .collect();
    let head = Head {
        weight: Mat::zeros(2, 8),
        bias: vec![0.0; 2],
        labels: vec!["negative".into(), "positive".into()],
    };
    CoeffFile {
        subspace_id: m.subspace_id.clone(),
        task: "sst2".into(),
        provenance: Provenance::ZeroShot,
        modules,
        head: Some(head),
    }
    .write(&c)
    .unwrap();
    let o = elx(&["inspect", s(&c)]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for needle in [
        m.subspace_id.as_str(),
        "task:         sst2",
        "zero-shot",
        "2 classes x 8 features",
        "negative, positive",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in {out}");
    }
    // 2·4 + 3·2 for the query module, 2·3 + 5·2 for the value module.
    assert!(out.contains("modules:      2 (30 coefficients)"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_plots_png_and_svg() {
    let dir = temp_dir("cli-plot");
    let b = dir.join("domain.elxb");
    Bundle::write(&b, &subspace(2), &sources(), StorageDtype::F16, None).unwrap();
    for ext in ["png", "svg"] {
        let p = dir.join(format!("energy.{ext}"));
        let o = elx(&["inspect", s(&b), "--plot", s(&p)]);
        assert!(o.status.success(), "{}", text(&o).1);
        let bytes = std::fs::read(&p).unwrap();
        if ext == "png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // 1000 x 520 pixels (IHDR width and height, big endian).
            assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1000);
            assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 520);
        } else {
            let svg = String::from_utf8(bytes).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("Explained energy per module (2 modules)"),
                "{svg:.300}"
            );
            assert!(svg.contains("cumulative σ² share"));
        }
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["domain.elxb", "energy.png", "energy.svg"],
        "temporary files left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_exits_1_naming_the_file() {
    let dir = temp_dir("cli-bad");
    let junk = dir.join("junk.elxb");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    for args in [
        vec!["inspect", s(&junk)],
        vec!["inspect", s(&dir.join("missing.elxb"))],
    ] {
        let o = elx(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: ") && err.contains(args[1]), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let b = dir.join("b.elxb");
    Bundle::write(&b, &subspace(3), &sources(), StorageDtype::F32, None).unwrap();
    let o = elx(&["inspect", s(&b), "--plot", s(&dir.join("x.jpg"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("x.jpg: --plot writes .png or .svg"),
        "{}",
        text(&o).1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
