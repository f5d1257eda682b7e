//! Shared helpers of the bundle / coefficient-file tests: in-memory subspaces and file surgery.
#![allow(dead_code)]

use eigenlorax::adapter::AdapterFormat;
use eigenlorax::bundle::random_control::random_orthonormal;
use eigenlorax::bundle::{SourceAdapter, StorageDtype};
use eigenlorax::subspace::{ExtractOptions, KRule, ModuleSubspace, SideInfo, Subspace};
use eigenlorax::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh empty folder under the system temp dir, unique per test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn side(k_principal: usize, mean: bool, pseudo: usize, spectrum: Vec<f64>) -> SideInfo {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    let kept: f64 = spectrum.iter().take(k_principal).map(|s| s * s).sum();
    SideInfo {
        spectrum,
        total_energy: total,
        full_spectrum: true,
        k_principal,
        mean_vector: mean,
        pseudo,
        energy_kept: kept / total,
    }
}

/// One module with uniformly random orthonormal bases (K_A x in rows, out x K_B columns).
pub fn module(in_f: usize, out_f: usize, k_a: usize, k_b: usize, seed: u64) -> ModuleSubspace {
    let mut rng = GaussianRng::new(seed);
    let v_a = random_orthonormal(in_f, k_a, &mut rng)
        .transpose()
        .to_owned();
    let v_b = random_orthonormal(out_f, k_b, &mut rng);
    let spec = |n: usize| (0..n).map(|i| 3.0 / (1.0 + i as f64)).collect::<Vec<_>>();
    ModuleSubspace {
        in_features: in_f,
        out_features: out_f,
        r_max: 4,
        n_adapters: 3,
        v_a,
        v_b,
        a: side(k_a, false, 0, spec(12)),
        b: side(k_b - 1, true, 0, spec(12)),
    }
}

/// A two-module subspace (the second with a mean vector on B and a pseudo-PC on A).
pub fn subspace(seed: u64) -> Subspace {
    let mut modules = BTreeMap::new();
    modules.insert(
        "encoder.layer.0.attention.self.query".to_string(),
        module(48, 32, 4, 3, seed),
    );
    let mut m = module(32, 40, 3, 5, seed + 1);
    m.a = side(
        2,
        false,
        1,
        (0..9).map(|i| 1.0 / (1.0 + i as f64)).collect(),
    );
    modules.insert("encoder.layer.0.attention.self.value".to_string(), m);
    Subspace {
        modules,
        options: ExtractOptions {
            canonicalize: true,
            center: false,
            k_rule_a: KRule::Energy(0.9),
            k_rule_b: KRule::Fixed(4),
            pseudo: 1,
            seed: 7,
            full_spectrum: false,
        },
    }
}

/// Two made-up source adapters.
pub fn sources() -> Vec<SourceAdapter> {
    (0..2)
        .map(|i| SourceAdapter {
            path: format!("adapters/task{i}"),
            sha256: format!("{:064x}", i + 1),
            format: AdapterFormat::Peft,
            base_model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
            modules: 2,
        })
        .collect()
}

/// All dtypes.
pub const DTYPES: [StorageDtype; 4] = [
    StorageDtype::F32,
    StorageDtype::F16,
    StorageDtype::Bf16,
    StorageDtype::Int8,
];

/// Largest |x - y| over two equally shaped matrices.
pub fn max_abs_diff(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    assert_eq!((x.nrows(), x.ncols()), (y.nrows(), y.ncols()));
    let mut m = 0.0f64;
    for i in 0..x.nrows() {
        for j in 0..x.ncols() {
            m = m.max((x[(i, j)] - y[(i, j)]).abs());
        }
    }
    m
}

/// Header JSON and the offset where tensor data starts, of a safetensors file's bytes.
pub fn header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// Byte range (absolute, in the file) of one tensor's data.
pub fn tensor_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let (h, start) = header(bytes);
    let off = &h[name]["data_offsets"];
    start + off[0].as_u64().unwrap() as usize..start + off[1].as_u64().unwrap() as usize
}

/// Rewrites `src` into `dst` with the metadata JSON under "eigenlorax" replaced by `edit`'s
/// result; tensors are copied verbatim.
pub fn rewrite_metadata(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use eigenlorax::tensorfile::{TensorFile, TensorOut, write};
    let tf = TensorFile::open(src).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&tf.metadata().unwrap()["eigenlorax"]).unwrap();
    edit(&mut meta);
    let tensors = tf
        .names()
        .iter()
        .map(|n| {
            let (dtype, data) = tf.raw(n).unwrap();
            TensorOut {
                name: n.to_string(),
                dtype,
                shape: tf.info(n).unwrap().shape,
                data: data.to_vec(),
            }
        })
        .collect();
    // Other metadata entries (the binding's hash) are kept as they were.
    let mut md: BTreeMap<String, String> = tf
        .metadata()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    md.insert("eigenlorax".to_string(), meta.to_string());
    write(dst, tensors, md).unwrap();
}
