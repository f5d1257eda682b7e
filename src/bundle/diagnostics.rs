//! Diagnostics on a loaded bundle: the random-basis control and quantization error bounds.
//!
//! The random-basis control is the honest test that recycling helped (`docs/ARCHITECTURE.md`,
//! "Honest numbers"): a held-out
//! adapter's capture in the recycled subspace is only meaningful beside its capture in a
//! random orthonormal subspace of the same size.

use super::Bundle;
use super::quant::{StorageDtype, float_error_bound_sq, int8_error_bound_sq};
use crate::subspace::{ModuleSubspace, SideInfo, Subspace};
use crate::util::GaussianRng;
use faer::Mat;
use sha2::{Digest, Sha256};

/// An orthonormal basis of `k` vectors in R^n: thin Q of an [n x k] standard normal matrix
/// (drawn column after column from `rng`), as [n x k]. `k` is capped at `n`.
pub fn random_orthonormal(n: usize, k: usize, rng: &mut GaussianRng) -> Mat<f64> {
    let k = k.min(n);
    if k == 0 {
        return Mat::zeros(n, 0);
    }
    let mut g = Mat::<f64>::zeros(n, k);
    for j in 0..k {
        for i in 0..n {
            g[(i, j)] = rng.next_normal();
        }
    }
    g.qr().compute_thin_Q()
}

/// A random subspace with the same shapes as `s`: V_A [K_A x in] with orthonormal rows and
/// V_B [out x K_B] with orthonormal columns, uniformly distributed (QR of Gaussian draws:
/// first V_B's then V_A's, from one generator seeded with `seed`). Side infos record
/// K = k_principal and no spectrum.
pub fn random_subspace_like(s: &ModuleSubspace, seed: u64) -> ModuleSubspace {
    let mut rng = GaussianRng::new(seed);
    let v_b = random_orthonormal(s.out_features, s.v_b.ncols(), &mut rng);
    let v_a = random_orthonormal(s.in_features, s.v_a.nrows(), &mut rng)
        .transpose()
        .to_owned();
    let side = |k: usize| SideInfo {
        spectrum: Vec::new(),
        total_energy: 0.0,
        full_spectrum: false,
        k_principal: k,
        mean_vector: false,
        pseudo: 0,
        energy_kept: 0.0,
    };
    ModuleSubspace {
        in_features: s.in_features,
        out_features: s.out_features,
        r_max: s.r_max,
        n_adapters: s.n_adapters,
        a: side(v_a.nrows()),
        b: side(v_b.ncols()),
        v_a,
        v_b,
    }
}

/// The seed used for `module` in a random control of a whole subspace: the first 8 bytes of
/// SHA-256(seed as little-endian u64 ‖ module name), so each module gets its own draw and
/// adding a module does not change the others.
pub fn module_seed(seed: u64, module: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(module.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// Random subspaces of the same sizes as every module of `s` (see [`random_subspace_like`]
/// and [`module_seed`]).
pub fn random_subspace(s: &Subspace, seed: u64) -> Subspace {
    Subspace {
        modules: s
            .modules
            .iter()
            .map(|(n, m)| (n.clone(), random_subspace_like(m, module_seed(seed, n))))
            .collect(),
        options: s.options.clone(),
    }
}

/// Per-side bound on the storage error ‖Ṽ − V‖_F of one module of a loaded bundle, as
/// (A side, B side). For float dtypes it is the a-priori u·√K bound (see [`super::quant`]); for
/// int8 it is √(Σ n·s²/4) with each vector's scale recovered from the dequantized values
/// (the absmax entry of a vector is stored as ±127, so s = max|v̂|/127 exactly).
pub fn storage_error_bounds(bundle: &Bundle, module: &str) -> Option<(f64, f64)> {
    let m = bundle.subspace.modules.get(module)?;
    let (ka, kb) = (m.v_a.nrows(), m.v_b.ncols());
    let (ea, eb) = match bundle.manifest.dtype {
        StorageDtype::Int8 => {
            let row_scales: Vec<f32> = (0..ka)
                .map(|i| {
                    ((0..m.in_features).fold(0.0f64, |a, j| a.max(m.v_a[(i, j)].abs())) / 127.0)
                        as f32
                })
                .collect();
            let col_scales: Vec<f32> = (0..kb)
                .map(|j| {
                    ((0..m.out_features).fold(0.0f64, |a, i| a.max(m.v_b[(i, j)].abs())) / 127.0)
                        as f32
                })
                .collect();
            (
                int8_error_bound_sq(&row_scales, m.in_features),
                int8_error_bound_sq(&col_scales, m.out_features),
            )
        }
        d => (
            float_error_bound_sq(d, ka, m.in_features)?,
            float_error_bound_sq(d, kb, m.out_features)?,
        ),
    };
    Some((ea.sqrt(), eb.sqrt()))
}

/// Bound on the relative ΔW error that storage alone causes for an adapter inside the span:
/// √(‖E_A‖²_F + ‖E_B‖²_F) with the bounds of [`storage_error_bounds`].
pub fn projection_error_bound(bundle: &Bundle, module: &str) -> Option<f64> {
    let (a, b) = storage_error_bounds(bundle, module)?;
    Some((a * a + b * b).sqrt())
}

/// Cumulative explained-energy curve of a spectrum: entry k−1 is Σ_{i<k} σᵢ² / Σ σᵢ², the share
/// kept by the top k directions (the paper's Fig. 2). Empty for an empty or all-zero spectrum.
pub fn explained_energy(spectrum: &[f64]) -> Vec<f64> {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    explained_energy_of(spectrum, total)
}

/// [`explained_energy`] against a given total Σσ² of the whole stack, for a spectrum that may
/// hold only the top values (a bundle extracted without `--full-spectrum`): the curve then
/// stops at the last stored value, exact up to there. Empty when `total` is not positive.
pub fn explained_energy_of(spectrum: &[f64], total: f64) -> Vec<f64> {
    if total <= 0.0 || !total.is_finite() {
        return Vec::new();
    }
    let mut acc = 0.0;
    spectrum
        .iter()
        .map(|s| {
            acc += s * s;
            acc / total
        })
        .collect()
}
