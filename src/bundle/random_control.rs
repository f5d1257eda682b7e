//! The random-basis control: random orthonormal subspaces of the same shapes as a bundle's,
//! drawn per module from a seed.
//!
//! It is the honest test that recycling helped (`docs/ARCHITECTURE.md`, "Honest numbers"): a
//! held-out adapter's capture in the recycled subspace is only meaningful beside its capture
//! in a random orthonormal subspace of the same size.

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
