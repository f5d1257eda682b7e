//! Extra basis directions appended after the principal ones: the mean direction (centering)
//! and pseudo-PCs (the paper's low-resource augmentation).
//!
//! The basis of one side is held as orthonormal columns [d x k] in this order:
//! `[K principal | mean (0 or 1) | pseudo-PCs (0..=P)]`.
//!
//! Both additions use [`crate::linalg::mgs2`]: modified Gram–Schmidt against every column
//! already in the basis (including the ones appended just before), run twice, and a candidate
//! is dropped when its norm after orthogonalization falls below 1e-8 of its norm before.
//!
//! # Pseudo-PC draws (reproducible in numpy)
//!
//! Each (module, side) gets a **fresh** `GaussianRng::new(seed)` with the user's seed — no
//! hashing of module names. Draw p (p = 0..P) is the next d normals of that generator, in
//! order (`next_normal`, entry 0 first). A dropped draw still consumes its d normals and still
//! counts as one of the P draws, so exactly P·d normals are drawn per side. The kept vectors
//! are normalized after orthogonalization; no sign convention is applied to them.

use crate::linalg::{mgs2, push_column};
use crate::util::GaussianRng;
use faer::Mat;

/// Appends the mean direction to `basis` [d x k], orthogonalized against its columns.
/// Returns whether it was appended (false when the mean is zero or already in the span).
pub fn append_mean(basis: &mut Mat<f64>, mean: &[f64]) -> bool {
    match mgs2(basis, mean.to_vec()) {
        Some(v) => {
            push_column(basis, &v);
            true
        }
        None => false,
    }
}

/// Appends up to `p` pseudo-PCs drawn from `GaussianRng::new(seed)` (see the module docs for
/// the exact draw order). Returns how many were kept.
///
/// Stops once the basis spans the whole space (d columns): every further draw would be
/// dropped as near-null, so the result is the same as drawing all `p`, without the cost
/// (`--pseudo 1000000` used to take half a minute).
pub fn append_pseudo(basis: &mut Mat<f64>, p: usize, seed: u64) -> usize {
    let d = basis.nrows();
    let mut rng = GaussianRng::new(seed);
    let mut kept = 0;
    for _ in 0..p {
        if basis.ncols() >= d {
            break;
        }
        let v: Vec<f64> = (0..d).map(|_| rng.next_normal()).collect();
        if let Some(q) = mgs2(basis, v) {
            push_column(basis, &q);
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_pcs_stop_once_the_basis_is_full() {
        // 8 dimensions: at most 8 vectors fit, however many are asked for, and asking for a
        // million returns at once with the same basis as asking for exactly enough.
        let mut a = Mat::<f64>::zeros(8, 0);
        let t = std::time::Instant::now();
        assert_eq!(append_pseudo(&mut a, 100_000_000, 3), 8);
        assert!(t.elapsed().as_secs_f64() < 1.0);
        let mut b = Mat::<f64>::zeros(8, 0);
        assert_eq!(append_pseudo(&mut b, 8, 3), 8);
        assert_eq!(a, b);
    }
}
