//! A pool of PEFT adapter folders with shared structure, for the update and remap tests:
//! each module's A and B are a few shared latent directions (per module) mixed by per-adapter
//! Gaussian coefficients, plus smaller isotropic noise, so that energy rules keep some but not
//! all directions (the shape of `tools/bench_reference.py`'s generator, in miniature).
#![allow(dead_code)]

use eigenlorax::tensorfile::{self, Dtype, TensorOut};
use eigenlorax::util::GaussianRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Latent directions shared by the pool, per module and side.
const LATENT: usize = 3;

/// Writes adapters `first..first + n` of the pool `seed` under `dir` (folders `a{index}`), each
/// with every module (name, in, out) at rank `r`; returns their paths. Adapter `i` is the same
/// whatever `first` and `n` (its draws depend on `seed` and `i` only), so a pool can be
/// written in parts.
pub fn write(
    dir: &Path,
    modules: &[(&str, usize, usize)],
    seed: u64,
    first: usize,
    n: usize,
    r: usize,
) -> Vec<PathBuf> {
    (first..first + n)
        .map(|i| {
            let path = dir.join(format!("a{i:03}"));
            std::fs::create_dir_all(&path).unwrap();
            let mut tensors = Vec::new();
            for (m, &(name, in_f, out_f)) in modules.iter().enumerate() {
                let mut shared = GaussianRng::new(seed.wrapping_mul(7919) + m as u64);
                let la: Vec<f64> = (0..LATENT * in_f).map(|_| shared.next_normal()).collect();
                let lb: Vec<f64> = (0..out_f * LATENT).map(|_| shared.next_normal()).collect();
                let mut own = GaussianRng::new(seed.wrapping_mul(104_729) + (i * 1000 + m) as u64);
                let mut a = vec![0f64; r * in_f];
                for k in 0..r {
                    let c: Vec<f64> = (0..LATENT).map(|_| own.next_normal()).collect();
                    for j in 0..in_f {
                        let s: f64 = (0..LATENT).map(|l| c[l] * la[l * in_f + j]).sum();
                        a[k * in_f + j] = s + 0.3 * own.next_normal();
                    }
                }
                let mut b = vec![0f64; out_f * r];
                for k in 0..r {
                    let c: Vec<f64> = (0..LATENT).map(|_| own.next_normal()).collect();
                    for o in 0..out_f {
                        let s: f64 = (0..LATENT).map(|l| c[l] * lb[o * LATENT + l]).sum();
                        b[o * r + k] = 0.1 * (s + 0.3 * own.next_normal());
                    }
                }
                tensors.push(TensorOut::from_f64(
                    format!("base_model.model.{name}.lora_A.weight"),
                    Dtype::F32,
                    vec![r, in_f],
                    &a,
                ));
                tensors.push(TensorOut::from_f64(
                    format!("base_model.model.{name}.lora_B.weight"),
                    Dtype::F32,
                    vec![out_f, r],
                    &b,
                ));
            }
            let cfg = serde_json::json!({
                "peft_type": "LORA", "r": r, "lora_alpha": r,
                "base_model_name_or_path": "synthetic/base"
            });
            std::fs::write(
                path.join("adapter_config.json"),
                serde_json::to_string_pretty(&cfg).unwrap(),
            )
            .unwrap();
            tensorfile::write(
                &path.join("adapter_model.safetensors"),
                tensors,
                BTreeMap::new(),
            )
            .unwrap();
            path
        })
        .collect()
}
