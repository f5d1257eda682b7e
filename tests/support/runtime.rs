//! Synthetic ONNX models, bundles and coefficients for the runtime tests.
//!
//! The model exercises every binding rule:
//! * `layer.0.query` (16 -> 24): renamed weight `onnx::MatMul_11` [in x out], anchored by
//!   the Add of `layer.0.query.bias` (rule 2), then Relu;
//! * `layer.1.value` (24 -> 20): `layer.1.value.weight` [out x in] through a Transpose into a
//!   MatMul (rule 1), bias Add, Relu;
//! * `mid.proj` (20 -> 20): renamed weight `onnx::MatMul_99`, no bias, output is the graph
//!   output `hidden` (needs the user map, rule 3);
//! * `classifier` (20 -> 4): Gemm transB=1 with `classifier.weight` (rule 1) on the
//!   sequence-mean of `hidden` (a rank-2 activation), output `logits`.
#![allow(dead_code)]

use eigenlorax::bundle::format::SideSummary;
use eigenlorax::bundle::{
    Binding, Bundle, CoeffFile, Manifest, ModuleManifest, Provenance, StorageDtype,
};
use eigenlorax::graph::onnx::{self, Dim, attr_int, attr_ints, node, tensor_f32, value_info};
use eigenlorax::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use eigenlorax::subspace::{Coefficients, ExtractOptions, ModuleSubspace, SideInfo, Subspace};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// (module, in, out)
pub const MODULES: [(&str, usize, usize); 4] = [
    ("classifier", 20, 4),
    ("layer.0.query", 16, 24),
    ("layer.1.value", 24, 20),
    ("mid.proj", 20, 20),
];
pub const K_A: usize = 5;
pub const K_B: usize = 6;
pub const R_MAX: usize = 4;
pub const D_IN: usize = 16;

/// Base weights of the synthetic model, row-major as stored in the graph.
pub struct Weights {
    pub q_w: Vec<f32>, // [16 x 24] in x out
    pub q_b: Vec<f32>, // [24]
    pub v_w: Vec<f32>, // [20 x 24] out x in
    pub v_b: Vec<f32>, // [20]
    pub m_w: Vec<f32>, // [20 x 20] in x out
    pub c_w: Vec<f32>, // [4 x 20] out x in
    pub c_b: Vec<f32>, // [4]
}

pub fn gauss(rng: &mut GaussianRng, n: usize, s: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.next_normal() * s) as f32).collect()
}

impl Weights {
    pub fn random(seed: u64) -> Self {
        let mut g = GaussianRng::new(seed);
        Weights {
            q_w: gauss(&mut g, 16 * 24, 0.25),
            q_b: gauss(&mut g, 24, 0.1),
            v_w: gauss(&mut g, 20 * 24, 0.2),
            v_b: gauss(&mut g, 20, 0.1),
            m_w: gauss(&mut g, 20 * 20, 0.2),
            c_w: gauss(&mut g, 4 * 20, 0.3),
            c_b: gauss(&mut g, 4, 0.1),
        }
    }

    /// Adds ΔW [out x in] (row-major, f64) of `module` to the stored weight, in its layout.
    pub fn merge(&mut self, module: &str, dw: &Mat<f64>) {
        let (w, layout_in_out, din, dout) = match module {
            "layer.0.query" => (&mut self.q_w, true, 16, 24),
            "layer.1.value" => (&mut self.v_w, false, 24, 20),
            "mid.proj" => (&mut self.m_w, true, 20, 20),
            "classifier" => (&mut self.c_w, false, 20, 4),
            _ => panic!("unknown module {module}"),
        };
        for o in 0..dout {
            for i in 0..din {
                let idx = if layout_in_out {
                    i * dout + o
                } else {
                    o * din + i
                };
                w[idx] += dw[(o, i)] as f32;
            }
        }
    }
}

/// The synthetic model (opset 13), input `x` [batch, seq, 16]; outputs `logits`, `hidden`.
pub fn model(w: &Weights) -> ModelProto {
    let nodes = vec![
        node(
            "MatMul",
            "/l0/q/MatMul",
            &["x", "onnx::MatMul_11"],
            &["q_mm"],
            vec![],
        ),
        node(
            "Add",
            "/l0/q/Add",
            &["layer.0.query.bias", "q_mm"],
            &["q_add"],
            vec![],
        ),
        node("Relu", "/l0/relu", &["q_add"], &["h1"], vec![]),
        node(
            "Transpose",
            "/l1/v/Transpose",
            &["layer.1.value.weight"],
            &["v_wt"],
            vec![attr_ints("perm", &[1, 0])],
        ),
        node("MatMul", "/l1/v/MatMul", &["h1", "v_wt"], &["v_mm"], vec![]),
        node(
            "Add",
            "/l1/v/Add",
            &["v_mm", "layer.1.value.bias"],
            &["v_add"],
            vec![],
        ),
        node("Relu", "/l1/relu", &["v_add"], &["h2"], vec![]),
        node(
            "MatMul",
            "/mid/MatMul",
            &["h2", "onnx::MatMul_99"],
            &["hidden"],
            vec![],
        ),
        node(
            "ReduceMean",
            "/pool",
            &["hidden"],
            &["pooled"],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        ),
        node(
            "Gemm",
            "/classifier/Gemm",
            &["pooled", "classifier.weight", "classifier.bias"],
            &["logits"],
            vec![attr_int("transB", 1)],
        ),
    ];
    let graph = GraphProto {
        name: "synthetic".into(),
        node: nodes,
        initializer: vec![
            tensor_f32("onnx::MatMul_11", &[16, 24], &w.q_w),
            tensor_f32("layer.0.query.bias", &[24], &w.q_b),
            tensor_f32("layer.1.value.weight", &[20, 24], &w.v_w),
            tensor_f32("layer.1.value.bias", &[20], &w.v_b),
            tensor_f32("onnx::MatMul_99", &[20, 20], &w.m_w),
            tensor_f32("classifier.weight", &[4, 20], &w.c_w),
            tensor_f32("classifier.bias", &[4], &w.c_b),
        ],
        input: vec![value_info(
            "x",
            onnx::FLOAT,
            &[
                Dim::Param("batch".into()),
                Dim::Param("seq".into()),
                Dim::Fixed(16),
            ],
        )],
        output: vec![
            value_info(
                "logits",
                onnx::FLOAT,
                &[Dim::Param("batch".into()), Dim::Fixed(4)],
            ),
            value_info(
                "hidden",
                onnx::FLOAT,
                &[
                    Dim::Param("batch".into()),
                    Dim::Param("seq".into()),
                    Dim::Fixed(20),
                ],
            ),
        ],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "eigenlorax-tests".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// A random matrix with orthonormal columns [n x k] (modified Gram–Schmidt on Gaussians).
pub fn orthonormal_cols(rng: &mut GaussianRng, n: usize, k: usize) -> Mat<f64> {
    let mut m = Mat::<f64>::from_fn(n, k, |_, _| rng.next_normal());
    for j in 0..k {
        for _pass in 0..2 {
            for p in 0..j {
                let dot: f64 = (0..n).map(|i| m[(i, j)] * m[(i, p)]).sum();
                for i in 0..n {
                    let v = m[(i, p)];
                    m[(i, j)] -= dot * v;
                }
            }
        }
        let norm: f64 = (0..n).map(|i| m[(i, j)] * m[(i, j)]).sum::<f64>().sqrt();
        for i in 0..n {
            m[(i, j)] /= norm;
        }
    }
    m
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

fn side_summary(k: usize) -> SideSummary {
    SideSummary {
        k_principal: k,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 1.0,
        total_energy: None,
        full_spectrum: true,
    }
}

/// A random subspace over [`MODULES`] and its (unbound) bundle with id `id`.
pub fn bundle(seed: u64, id: &str) -> Bundle {
    let mut rng = GaussianRng::new(seed);
    let mut modules = BTreeMap::new();
    let mut mm = BTreeMap::new();
    for (m, din, dout) in MODULES {
        let v_a = orthonormal_cols(&mut rng, din, K_A).transpose().to_owned();
        let v_b = orthonormal_cols(&mut rng, dout, K_B);
        modules.insert(
            m.to_string(),
            ModuleSubspace {
                in_features: din,
                out_features: dout,
                r_max: R_MAX,
                n_adapters: 3,
                v_a,
                v_b,
                a: side(K_A),
                b: side(K_B),
            },
        );
        mm.insert(
            m.to_string(),
            ModuleManifest {
                in_features: din,
                out_features: dout,
                r_max: R_MAX,
                n_adapters: 3,
                k_a: K_A,
                k_b: K_B,
                a: side_summary(K_A),
                b: side_summary(K_B),
            },
        );
    }
    let options = ExtractOptions::default();
    Bundle {
        path: PathBuf::from(format!("{id}.elxb")),
        manifest: Manifest {
            format_version: 1,
            subspace_id: id.to_string(),
            dtype: StorageDtype::F32,
            options: options.clone(),
            modules: mm,
            sources: vec![],
            binding: None,
            base: None,
        },
        subspace: Subspace { modules, options },
    }
}

/// Random coefficients for every module (rank `r` <= R_MAX), scaled by `s`.
pub fn coeffs(seed: u64, subspace_id: &str, task: &str, r: usize, s: f64) -> CoeffFile {
    let mut rng = GaussianRng::new(seed);
    let mut modules = BTreeMap::new();
    for (m, _, _) in MODULES {
        let alpha_a = Mat::<f64>::from_fn(r, K_A, |_, _| rng.next_normal() * s);
        let alpha_b = Mat::<f64>::from_fn(K_B, r, |_, _| rng.next_normal() * s);
        modules.insert(m.to_string(), Coefficients { alpha_a, alpha_b });
    }
    CoeffFile {
        subspace_id: subspace_id.to_string(),
        task: task.to_string(),
        provenance: Provenance::Projected,
        modules,
        head: None,
    }
}

/// ΔŴ = V_B·alpha_B·alpha_A·V_A [out x in] of one module.
pub fn delta(b: &Bundle, c: &CoeffFile, m: &str) -> Mat<f64> {
    let s = &b.subspace.modules[m];
    let co = &c.modules[m];
    &s.v_b * &co.alpha_b * &co.alpha_a * &s.v_a
}

/// The user map that binds `mid.proj`.
pub fn user_map() -> BTreeMap<String, String> {
    BTreeMap::from([("mid.proj".to_string(), "/mid/MatMul".to_string())])
}

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-rt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Writes `model` to `dir/name`, returns its path.
pub fn write_model(dir: &std::path::Path, name: &str, model: &ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, onnx::encode_model(model)).expect("write model");
    p
}

/// Binds `bundle` to the model file at `path` (with the user map) and stores the binding.
pub fn bind_bundle(bundle: &mut Bundle, path: &std::path::Path) -> Binding {
    let b = eigenlorax::graph::bind_file(path, bundle, Some(&user_map())).expect("bind");
    bundle.manifest.binding = Some(b.clone());
    b
}

/// Deterministic input x [batch, seq, 16].
pub fn input(seed: u64, batch: usize, seq: usize) -> (Vec<usize>, Vec<f32>) {
    let mut g = GaussianRng::new(seed);
    (
        vec![batch, seq, D_IN],
        gauss(&mut g, batch * seq * D_IN, 1.0),
    )
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
