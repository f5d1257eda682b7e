//! Helpers on a side's Gram G = X·Xᵀ: folding columns in, centering, its trace, filling the
//! upper triangle, and singular values from its eigenvalues.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Singular values from the Gram's eigenvalues `vals` (descending): the first `p`, with the
/// rank tolerance √(big·ε)·σ₁. Below it a Gram eigenvalue is rounding (its error is about
/// ε·λ₁, so the square root of a null direction's reads ~√ε·σ₁): those directions are
/// reported as exactly 0, as the SVD would find them to rounding, not as that noise.
/// Returns (spectrum, rank, tolerance).
pub(super) fn gram_spectrum(vals: &[f64], p: usize, big: f64) -> (Vec<f64>, usize, f64) {
    let sigma1 = vals.first().map_or(0.0, |l| l.max(0.0).sqrt());
    let tol = (big * f64::EPSILON).sqrt() * sigma1;
    let spectrum: Vec<f64> = vals
        .iter()
        .take(p)
        .map(|l| l.max(0.0).sqrt())
        .map(|s| if s > tol { s } else { 0.0 })
        .collect();
    let rank = spectrum.iter().filter(|&&s| s > tol).count();
    (spectrum, rank, tol)
}

/// Copies the lower triangle of a square matrix onto its upper one, in 64 x 64 tiles (a plain
/// row-by-row copy reads the lower triangle across columns, one cache line per element).
pub(super) fn fill_upper_from_lower(g: &mut Mat<f64>) {
    const TILE: usize = 64;
    let m = g.nrows();
    for jb in (0..m).step_by(TILE) {
        for ib in (0..=jb).step_by(TILE) {
            // Tile rows ib.., columns jb..: upper entries (i < j) from (j, i).
            for j in jb..(jb + TILE).min(m) {
                for i in ib..(ib + TILE).min(j) {
                    g[(i, j)] = g[(j, i)];
                }
            }
        }
    }
}

/// Trace of a square matrix, at least 0 (a PSD Gram's; rounding cannot make it negative).
pub(super) fn gram_trace(g: MatRef<'_, f64>) -> f64 {
    (0..g.nrows().min(g.ncols()))
        .map(|i| g[(i, i)])
        .sum::<f64>()
        .max(0.0)
}

/// X_c·X_cᵀ = X·Xᵀ − n·μ·μᵀ (lower triangle is enough; all of it is updated).
pub(super) fn subtract_mean_gram(g: &mut Mat<f64>, mu: &[f64], n: usize) {
    let d = g.nrows();
    for j in 0..d {
        for i in 0..d {
            g[(i, j)] -= n as f64 * mu[i] * mu[j];
        }
    }
}

/// Lower triangle of g += X·Xᵀ for the column-major `cols` (d rows).
pub(super) fn gram_fold(g: &mut Mat<f64>, cols: &[f64], d: usize) {
    if d == 0 || cols.is_empty() {
        return;
    }
    let x = MatRef::from_column_major_slice(cols, d, cols.len() / d);
    triangular::matmul(
        g.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        x,
        BlockStructure::Rectangular,
        x.transpose(),
        BlockStructure::Rectangular,
        1.0,
        Par::Seq,
    );
}
