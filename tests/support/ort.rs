//! Shared fixtures of the ONNX Runtime tests: a small synthetic ONNX graph with two bound
//! linear modules, a bundle in memory, coefficient files, and the merged-weights reference.
#![allow(dead_code)]

use eigenlorax::bundle::format::SideSummary;
use eigenlorax::bundle::{
    Binding, Bundle, CoeffFile, Head, Manifest, ModuleBinding, ModuleManifest, Provenance,
    StorageDtype, WeightLayout,
};
use eigenlorax::graph::onnx::{self, Dim, node, tensor_f32, value_info};
use eigenlorax::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use eigenlorax::serve::input::{InputTensor, TensorData};
use eigenlorax::subspace::{Coefficients, ExtractOptions, ModuleSubspace, SideInfo, Subspace};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Sizes of the synthetic model: x [batch, SEQ, D_IN] -> l1 (D_IN->D_HID) + bias, relu ->
/// l2 (D_HID->D_OUT) -> y [batch, SEQ, D_OUT].
pub const SEQ: usize = 3;
pub const D_IN: usize = 6;
pub const D_HID: usize = 5;
pub const D_OUT: usize = 4;
/// Ranks and basis sizes: (module, in, out, K_A, K_B, r_max).
pub const MODULES: [(&str, usize, usize, usize, usize, usize); 2] =
    [("l1", D_IN, D_HID, 3, 2, 2), ("l2", D_HID, D_OUT, 2, 3, 2)];

/// The ONNX Runtime library path, or a failing test with instructions (never a skip).
pub fn require_ort() {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => {}
        _ => panic!(
            "ORT_DYLIB_PATH is not set: these tests need ONNX Runtime. Run tools/install_onnxruntime.sh and export ORT_DYLIB_PATH=<the path it prints>"
        ),
    }
}

fn gauss(rng: &mut GaussianRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.next_normal() * scale).collect()
}

/// Base weights, InOut layout: (W1 [D_IN x D_HID], b1 [D_HID], W2 [D_HID x D_OUT]).
pub fn base_weights() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = GaussianRng::new(11);
    let w1 = gauss(&mut rng, D_IN * D_HID, 0.5)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let b1 = gauss(&mut rng, D_HID, 0.5)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let w2 = gauss(&mut rng, D_HID * D_OUT, 0.5)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    (w1, b1, w2)
}

/// The synthetic model with the given weights (so the merged reference is the same graph).
pub fn model_with(w1: &[f32], b1: &[f32], w2: &[f32]) -> ModelProto {
    let batch = Dim::Param("batch".into());
    let graph = GraphProto {
        name: "synthetic".into(),
        node: vec![
            node("MatMul", "mm1", &["x", "W1"], &["h"], vec![]),
            node("Add", "add1", &["h", "b1"], &["h1"], vec![]),
            node("Relu", "relu", &["h1"], &["h2"], vec![]),
            node("MatMul", "mm2", &["h2", "W2"], &["y"], vec![]),
        ],
        initializer: vec![
            tensor_f32("W1", &[D_IN, D_HID], w1),
            tensor_f32("b1", &[D_HID], b1),
            tensor_f32("W2", &[D_HID, D_OUT], w2),
        ],
        input: vec![value_info(
            "x",
            onnx::FLOAT,
            &[batch.clone(), Dim::Fixed(SEQ), Dim::Fixed(D_IN)],
        )],
        output: vec![value_info(
            "y",
            onnx::FLOAT,
            &[batch, Dim::Fixed(SEQ), Dim::Fixed(D_OUT)],
        )],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "eigenlorax-tests".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The base model.
pub fn base_model() -> ModelProto {
    let (w1, b1, w2) = base_weights();
    model_with(&w1, &b1, &w2)
}

fn side(k: usize) -> SideInfo {
    SideInfo {
        spectrum: vec![1.0; k],
        total_energy: k as f64,
        full_spectrum: true,
        k_principal: k,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
    }
}

/// Orthonormal rows [k x n] from a seeded Gaussian draw (modified Gram–Schmidt).
fn orthonormal_rows(k: usize, n: usize, seed: u64) -> Mat<f64> {
    let mut rng = GaussianRng::new(seed);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < k {
        let mut v = gauss(&mut rng, n, 1.0);
        for r in &rows {
            let d: f64 = v.iter().zip(r).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(r).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        rows.push(v);
    }
    Mat::from_fn(k, n, |i, j| rows[i][j])
}

/// A bound bundle (in memory) for the synthetic model.
pub fn bundle() -> Bundle {
    let mut modules = BTreeMap::new();
    let mut manifest_modules = BTreeMap::new();
    let mut bindings = BTreeMap::new();
    for (i, &(m, din, dout, k_a, k_b, r)) in MODULES.iter().enumerate() {
        let v_a = orthonormal_rows(k_a, din, 100 + i as u64);
        let v_b = orthonormal_rows(k_b, dout, 200 + i as u64)
            .transpose()
            .to_owned();
        modules.insert(
            m.to_string(),
            ModuleSubspace {
                in_features: din,
                out_features: dout,
                r_max: r,
                n_adapters: 3,
                v_a,
                v_b,
                a: side(k_a),
                b: side(k_b),
            },
        );
        let summary = |k| SideSummary {
            k_principal: k,
            mean_vector: false,
            pseudo: 0,
            energy_kept: 1.0,
            total_energy: None,
            full_spectrum: true,
        };
        manifest_modules.insert(
            m.to_string(),
            ModuleManifest {
                in_features: din,
                out_features: dout,
                r_max: r,
                n_adapters: 3,
                k_a,
                k_b,
                a: summary(k_a),
                b: summary(k_b),
            },
        );
        let (node, input, output, weight) = if m == "l1" {
            ("mm1", "x", "h1", "W1")
        } else {
            ("mm2", "h2", "y", "W2")
        };
        bindings.insert(
            m.to_string(),
            ModuleBinding {
                node: node.into(),
                input: input.into(),
                output: output.into(),
                weight: weight.into(),
                layout: WeightLayout::InOut,
            },
        );
    }
    let options = ExtractOptions::default();
    let manifest = Manifest {
        format_version: 1,
        subspace_id: "synthetic-subspace".into(),
        dtype: StorageDtype::F32,
        options: options.clone(),
        modules: manifest_modules,
        sources: vec![],
        binding: Some(Binding {
            base_sha256: "not-checked".into(),
            base_file: "synthetic.onnx".into(),
            modules: bindings,
        }),
        base: None,
    };
    Bundle {
        path: PathBuf::from("synthetic.elxb"),
        manifest,
        subspace: Subspace { modules, options },
    }
}

/// A task with seeded coefficients (rank r_task <= r_max per module), optionally a head.
pub fn task(name: &str, seed: u64, r_task: usize, head: bool) -> CoeffFile {
    let mut rng = GaussianRng::new(seed);
    let mut modules = BTreeMap::new();
    for &(m, _, _, k_a, k_b, _) in &MODULES {
        let a = gauss(&mut rng, r_task * k_a, 0.7);
        let b = gauss(&mut rng, k_b * r_task, 0.7);
        modules.insert(
            m.to_string(),
            Coefficients {
                alpha_a: Mat::from_fn(r_task, k_a, |i, j| a[i * k_a + j]),
                alpha_b: Mat::from_fn(k_b, r_task, |i, j| b[i * r_task + j]),
            },
        );
    }
    let head = head.then(|| {
        let w = gauss(&mut rng, 2 * D_OUT, 1.0);
        Head {
            weight: Mat::from_fn(2, D_OUT, |i, j| w[i * D_OUT + j]),
            bias: vec![0.1, -0.2],
            labels: vec!["no".into(), "yes".into()],
        }
    });
    CoeffFile {
        subspace_id: "synthetic-subspace".into(),
        task: name.into(),
        provenance: Provenance::Projected,
        modules,
        head,
    }
}

/// A task whose coefficients are all zero.
pub fn zero_task() -> CoeffFile {
    let mut t = task("zero", 1, 2, false);
    for c in t.modules.values_mut() {
        c.alpha_a.fill(0.0);
        c.alpha_b.fill(0.0);
    }
    t
}

/// The merged-weights model of a task: W_m + ΔW_mᵀ (InOut layout), ΔW = V_B·α_B·α_A·V_A.
pub fn merged_model(bundle: &Bundle, t: &CoeffFile) -> ModelProto {
    let (mut w1, b1, mut w2) = base_weights();
    for (&(m, din, dout, _, _, _), w) in MODULES.iter().zip([&mut w1, &mut w2]) {
        let s = &bundle.subspace.modules[m];
        let c = &t.modules[m];
        let dw = &s.v_b * &c.alpha_b * &c.alpha_a * &s.v_a; // [out x in]
        for i in 0..din {
            for o in 0..dout {
                w[i * dout + o] = (f64::from(w[i * dout + o]) + dw[(o, i)]) as f32;
            }
        }
    }
    model_with(&w1, &b1, &w2)
}

/// A seeded input batch x [rows, SEQ, D_IN].
pub fn input(rows: usize, seed: u64) -> Vec<InputTensor> {
    let mut rng = GaussianRng::new(seed);
    let data = gauss(&mut rng, rows * SEQ * D_IN, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    vec![InputTensor {
        name: "x".into(),
        shape: vec![rows, SEQ, D_IN],
        data: TensorData::F32(data),
    }]
}

/// Rows `rows` of the batch (leading axis).
pub fn rows_of(t: &[InputTensor], row: usize) -> Vec<InputTensor> {
    t.iter()
        .map(|t| {
            let per: usize = t.shape[1..].iter().product();
            let data = match &t.data {
                TensorData::F32(v) => TensorData::F32(v[row * per..(row + 1) * per].to_vec()),
                TensorData::I64(v) => TensorData::I64(v[row * per..(row + 1) * per].to_vec()),
            };
            let mut shape = t.shape.clone();
            shape[0] = 1;
            InputTensor {
                name: t.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

/// max |a - b| over two equally long slices (panics on a length mismatch: a test bug).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared outputs differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max |a| (to show that a compared difference is not trivially small).
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// Writes the base model to a fresh temp file and returns it with a bundle bound to its hash.
pub fn base_on_disk(tag: &str) -> (PathBuf, Bundle) {
    let dir = std::env::temp_dir().join(format!("elx-ort-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("synthetic.onnx");
    let bytes = onnx::encode_model(&base_model());
    std::fs::write(&path, &bytes).expect("write model");
    let mut b = bundle();
    if let Some(binding) = b.manifest.binding.as_mut() {
        binding.base_sha256 = eigenlorax::util::sha256_hex(&bytes);
    }
    (path, b)
}
