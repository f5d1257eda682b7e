//! Dense f64 linear algebra used by the subspace stage, on top of faer.
//!
//! # Sign convention (shared with `tools/elx_reference.py`)
//!
//! Singular vectors and eigenvectors are only defined up to sign. Every vector this module
//! returns as a basis direction is flipped so that **its entry of largest absolute value is
//! positive**; when several entries tie in absolute value, the first (lowest index) of them
//! decides. [`fix_sign`] implements the rule. For a pair of singular vectors (u, v) the rule
//! is applied to the vector named in each function's doc and the partner is flipped with it,
//! so that U·S·Vᵀ is unchanged. The numpy reference applies exactly the same rule, which is
//! what makes bases from the two implementations comparable entry by entry.
//!
//! Decompositions that fail to converge return [`Error::Numeric`]; nothing here panics on
//! finite input of consistent shape.

use crate::error::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

/// Flips `v` in place so that its entry of largest absolute value is positive (first index on
/// ties). Returns whether it flipped. A zero vector is left alone.
pub fn fix_sign(v: &mut [f64]) -> bool {
    let mut best = 0usize;
    let mut best_abs = -1.0f64;
    for (i, x) in v.iter().enumerate() {
        // Strict `>`: the first index wins ties.
        if x.abs() > best_abs {
            best_abs = x.abs();
            best = i;
        }
    }
    match v.get(best) {
        Some(&x) if x < 0.0 => {
            for x in v.iter_mut() {
                *x = -*x;
            }
            true
        }
        _ => false,
    }
}

/// Applies [`fix_sign`] to every column of `m`; returns which columns were flipped.
pub fn fix_sign_columns(m: &mut Mat<f64>) -> Vec<bool> {
    (0..m.ncols())
        .map(|j| fix_sign(m.col_as_slice_mut(j)))
        .collect()
}

/// Negates column `j` of `m`.
fn negate_column(m: &mut Mat<f64>, j: usize) {
    for x in m.col_as_slice_mut(j) {
        *x = -*x;
    }
}

/// A thin singular value decomposition A = U·diag(s)·Vᵀ.
#[derive(Clone, Debug)]
pub struct ThinSvd {
    /// Left singular vectors [m x p], p = min(m, n), sign convention applied to each column.
    pub u: Mat<f64>,
    /// Singular values, descending, length p.
    pub s: Vec<f64>,
    /// Right singular vectors [n x p], each column flipped together with its partner in `u`.
    pub v: Mat<f64>,
}

/// Thin SVD of `a` [m x n]. The sign convention is applied to the columns of U and V follows.
pub fn thin_svd(a: MatRef<'_, f64>) -> Result<ThinSvd> {
    let (m, n) = a.shape();
    let p = m.min(n);
    if p == 0 {
        return Ok(ThinSvd {
            u: Mat::zeros(m, 0),
            s: Vec::new(),
            v: Mat::zeros(n, 0),
        });
    }
    let svd = a
        .thin_svd()
        .map_err(|e| Error::Numeric(format!("SVD of a {m}x{n} matrix did not converge ({e:?})")))?;
    let mut u = svd.U().to_owned();
    let mut v = svd.V().to_owned();
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    for (j, flipped) in fix_sign_columns(&mut u).into_iter().enumerate() {
        if flipped {
            negate_column(&mut v, j);
        }
    }
    Ok(ThinSvd { u, s, v })
}

/// Eigendecomposition of the symmetric matrix `g` [d x d] (its lower triangle is read):
/// eigenvalues in **descending** order and the matching eigenvectors as columns, each with the
/// sign convention applied.
pub fn sym_eigen_desc(g: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>)> {
    let d = g.nrows();
    if d != g.ncols() {
        return Err(Error::Numeric(format!(
            "eigendecomposition of a non-square {}x{} matrix",
            d,
            g.ncols()
        )));
    }
    if d == 0 {
        return Ok((Vec::new(), Mat::zeros(0, 0)));
    }
    let evd = g.self_adjoint_eigen(Side::Lower).map_err(|e| {
        Error::Numeric(format!(
            "eigendecomposition of a {d}x{d} matrix did not converge ({e:?})"
        ))
    })?;
    let asc: Vec<f64> = evd.S().column_vector().iter().copied().collect();
    let u = evd.U();
    // faer returns ascending order; reverse into descending.
    let mut vecs = Mat::from_fn(d, d, |i, j| u[(i, d - 1 - j)]);
    let vals: Vec<f64> = asc.iter().rev().copied().collect();
    fix_sign_columns(&mut vecs);
    Ok((vals, vecs))
}

/// Eigenvalues only of the symmetric matrix `g` [d x d] (its lower triangle is read), in
/// **descending** order: about half the work of [`sym_eigen_desc`] (no eigenvectors).
pub fn sym_eigenvalues_desc(g: MatRef<'_, f64>) -> Result<Vec<f64>> {
    let d = g.nrows();
    if d != g.ncols() {
        return Err(Error::Numeric(format!(
            "eigenvalues of a non-square {}x{} matrix",
            d,
            g.ncols()
        )));
    }
    if d == 0 {
        return Ok(Vec::new());
    }
    let mut vals = g.self_adjoint_eigenvalues(Side::Lower).map_err(|e| {
        Error::Numeric(format!(
            "eigenvalues of a {d}x{d} matrix did not converge ({e:?})"
        ))
    })?;
    vals.reverse();
    Ok(vals)
}

/// Eigenvalues of the symmetric `g` [d x d] (its lower triangle is read; taken by value and
/// reduced in place) in **descending** order, and the eigenvectors of the top `choose_k(values)`
/// only, with the sign convention applied: the same values and vectors as
/// [`sym_eigen_desc`] up to rounding, at less cost and memory when K is below d.
///
/// The full decomposition is a tridiagonal reduction (most of the time: 12 of 17 s at
/// d = 4096), the tridiagonal matrix's eigendecomposition, then the reduction's reflectors
/// applied to the eigenvectors. Here the reflectors are applied to the K kept vectors only
/// (2d²K flops instead of 2d³), `g`'s storage holds the reduction (no d x d copy), and the
/// vectors are not re-ordered into a second d x d matrix.
pub fn sym_eigen_top(
    mut g: Mat<f64>,
    choose_k: impl FnOnce(&[f64]) -> Result<usize>,
) -> Result<(Vec<f64>, Mat<f64>)> {
    use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
    use faer::linalg::{evd, householder, qr};
    let d = g.nrows();
    if d != g.ncols() {
        return Err(Error::Numeric(format!(
            "eigendecomposition of a non-square {}x{} matrix",
            d,
            g.ncols()
        )));
    }
    if d < 2 {
        let (vals, vecs) = sym_eigen_desc(g.as_ref())?;
        let k = choose_k(&vals)?.min(d);
        return Ok((vals, vecs.subcols(0, k).to_owned()));
    }
    let par = Par::Seq;
    let block = qr::no_pivoting::factor::recommended_block_size::<f64>(d, d);
    let mut reflectors = Mat::<f64>::zeros(block, d - 1);
    // The whole decomposition's scratch bounds each step's (the tridiagonal solver publishes
    // none of its own); pages of it a step does not use are never touched.
    let mut scratch = MemBuffer::new(StackReq::any_of(&[
        evd::self_adjoint_evd_scratch::<f64>(
            d,
            evd::ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ),
        evd::tridiag::tridiag_in_place_scratch::<f64>(d, par, Default::default()),
    ]));
    evd::tridiag::tridiag_in_place(
        g.as_mut(),
        reflectors.as_mut(),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    );
    let diag: Vec<f64> = (0..d).map(|i| g[(i, i)]).collect();
    let offdiag: Vec<f64> = (0..d)
        .map(|i| if i + 1 < d { g[(i + 1, i)] } else { 0.0 })
        .collect();
    let mut ascending = faer::Col::<f64>::zeros(d);
    let mut tri_vectors = Mat::<f64>::zeros(d, d);
    evd::tridiagonal_self_adjoint_evd(
        faer::ColRef::from_slice(&diag).as_diagonal(),
        faer::ColRef::from_slice(&offdiag).as_diagonal(),
        ascending.as_mut().as_diagonal_mut(),
        Some(tri_vectors.as_mut()),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    )
    .map_err(|e| {
        Error::Numeric(format!(
            "eigendecomposition of a {d}x{d} matrix did not converge ({e:?})"
        ))
    })?;
    let vals: Vec<f64> = ascending.iter().rev().copied().collect();
    let k = choose_k(&vals)?.min(d);
    // Ascending order from the solver: the top K are its last K columns, reversed.
    let mut vecs = Mat::from_fn(d, k, |i, j| tri_vectors[(i, d - 1 - j)]);
    drop(tri_vectors);
    let mut apply = MemBuffer::new(
        householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            d - 1,
            block,
            k,
        ),
    );
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        g.as_ref().submatrix(1, 0, d - 1, d - 1),
        reflectors.as_ref(),
        faer::Conj::No,
        vecs.as_mut().subrows_mut(1, d - 1),
        par,
        MemStack::new(&mut apply),
    );
    fix_sign_columns(&mut vecs);
    Ok((vals, vecs))
}

/// Thin Householder QR of `a` [m x n]: Q [m x p] with orthonormal columns and R [p x n] upper
/// trapezoidal, p = min(m, n), with A = Q·R. No sign convention on R's diagonal (callers
/// only use products that do not depend on it).
pub fn thin_qr(a: MatRef<'_, f64>) -> (Mat<f64>, Mat<f64>) {
    let (m, n) = a.shape();
    let p = m.min(n);
    if p == 0 {
        return (Mat::zeros(m, 0), Mat::zeros(0, n));
    }
    let qr = a.qr();
    let q = qr.compute_thin_Q();
    let r = qr.thin_R().to_owned();
    (q, r)
}

/// Relative size under which a vector counts as null after orthogonalization: a vector whose
/// norm drops below `NULL_TOL` times its norm before is linearly dependent on the basis.
pub const NULL_TOL: f64 = 1e-8;

/// Orthogonalizes `v` against the orthonormal columns of `basis` [d x k] by modified
/// Gram–Schmidt run twice (for i in 0..k, v -= (qᵢ·v)·qᵢ; then the same sweep again).
///
/// Returns the normalized vector, or `None` when its norm after both sweeps is below
/// [`NULL_TOL`] times its norm before (or it was zero): then it lies in the span already.
pub fn mgs2(basis: &Mat<f64>, mut v: Vec<f64>) -> Option<Vec<f64>> {
    if v.len() != basis.nrows() {
        return None;
    }
    let before = norm(&v);
    if before == 0.0 || !before.is_finite() {
        return None;
    }
    for _ in 0..2 {
        for j in 0..basis.ncols() {
            let q = basis.col_as_slice(j);
            let c = dot(q, &v);
            for (x, qi) in v.iter_mut().zip(q) {
                *x -= c * qi;
            }
        }
    }
    let after = norm(&v);
    if after < NULL_TOL * before {
        return None;
    }
    for x in v.iter_mut() {
        *x /= after;
    }
    Some(v)
}

/// Appends `v` as a new last column of `basis` [d x k] -> [d x (k+1)].
pub fn push_column(basis: &mut Mat<f64>, v: &[f64]) {
    let (d, k) = basis.shape();
    debug_assert_eq!(v.len(), d);
    basis.resize_with(d, k + 1, |i, _| v.get(i).copied().unwrap_or(0.0));
}

/// Dot product of two equally long slices.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean norm of a slice.
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `a · b` as a new matrix.
pub fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut c = Mat::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    c
}

/// Whether every entry of `m` is finite.
pub fn all_finite(m: MatRef<'_, f64>) -> bool {
    (0..m.ncols()).all(|j| (0..m.nrows()).all(|i| m[(i, j)].is_finite()))
}

/// Squared Frobenius norm.
pub fn frob2(m: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            s += m[(i, j)] * m[(i, j)];
        }
    }
    s
}

/// ||B·A||_F for B [out x k], A [k x in] without forming out x in: with B = Q_B·R_B and
/// Aᵀ = Q_A·R_A (thin QRs), ||B·A||_F = ||R_B·R_Aᵀ||_F. Cost O((in+out)·k²).
///
/// Unlike the Gram-trace formula tr((BᵀB)(AAᵀ)), this has no cancellation floor: when B·A is
/// a difference of two nearly equal products (B = [B1, B2], A = [A1; −A2]) its norm is still
/// accurate to about machine epsilon times ||B1·A1||, not its square root.
pub fn lowrank_frob(b: MatRef<'_, f64>, a: MatRef<'_, f64>) -> f64 {
    let (_, rb) = thin_qr(b);
    let (_, ra) = thin_qr(a.transpose());
    frob2(mul(rb.as_ref(), ra.transpose()).as_ref()).sqrt()
}

/// Principal angles (radians, ascending, min(k1, k2) of them) between the row spaces of
/// `x` [k1 x d] and `y` [k2 x d]. Rows need not be orthonormal: both are orthonormalized by QR
/// first (inputs should have full row rank).
///
/// Computed from sines, not cosines, so small angles are accurate: with Q_x, Q_y orthonormal
/// bases and k1 <= k2, the singular values of Q_x − (Q_x·Q_yᵀ)·Q_y are sin θ. The arccos of
/// the cosines would bottom out near 1e-8 rad.
pub fn principal_angles(x: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Result<Vec<f64>> {
    if x.ncols() != y.ncols() {
        return Err(Error::Numeric(format!(
            "principal angles between row spaces of different dimensions ({} vs {})",
            x.ncols(),
            y.ncols()
        )));
    }
    let (x, y) = if x.nrows() <= y.nrows() {
        (x, y)
    } else {
        (y, x)
    };
    // Orthonormal bases as rows: Q from the QR of the transposes.
    let (qx, _) = thin_qr(x.transpose()); // d x k1
    let (qy, _) = thin_qr(y.transpose()); // d x k2
    let proj = mul(qy.as_ref(), mul(qy.transpose(), qx.as_ref()).as_ref()); // d x k1
    let resid = Mat::from_fn(qx.nrows(), qx.ncols(), |i, j| qx[(i, j)] - proj[(i, j)]);
    let sv = thin_svd(resid.as_ref())?;
    let mut angles: Vec<f64> = sv.s.iter().map(|s| s.clamp(0.0, 1.0).asin()).collect();
    angles.sort_by(|a, b| a.total_cmp(b));
    Ok(angles)
}

/// Largest principal angle between the row spaces of `x` and `y` (0 when either is empty).
pub fn max_principal_angle(x: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Result<f64> {
    Ok(principal_angles(x, y)?.into_iter().fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_rule_largest_abs_positive_first_on_ties() {
        let mut v = vec![0.1, -0.5, 0.3];
        assert!(fix_sign(&mut v));
        assert_eq!(v, vec![-0.1, 0.5, -0.3]);
        let mut t = vec![-0.5, 0.5];
        assert!(fix_sign(&mut t)); // tie: index 0 decides
        assert_eq!(t, vec![0.5, -0.5]);
        let mut z = vec![0.0, 0.0];
        assert!(!fix_sign(&mut z));
    }

    #[test]
    fn svd_reconstructs_and_follows_sign_rule() {
        let a = Mat::from_fn(5, 3, |i, j| {
            ((i * 7 + j * 3) % 5) as f64 - 2.0 + 0.1 * j as f64
        });
        let sv = thin_svd(a.as_ref()).unwrap();
        let mut err: f64 = 0.0;
        for i in 0..5 {
            for j in 0..3 {
                let x: f64 = (0..3).map(|k| sv.u[(i, k)] * sv.s[k] * sv.v[(j, k)]).sum();
                err = err.max((x - a[(i, j)]).abs());
            }
        }
        assert!(err < 1e-13, "reconstruction error {err}");
        for k in 0..3 {
            let c = sv.u.col_as_slice(k);
            let imax = (0..5).fold(0, |b, i| if c[i].abs() > c[b].abs() { i } else { b });
            assert!(c[imax] > 0.0);
        }
    }

    /// The top-K route gives the full decomposition's values and its first K vectors, on a
    /// size where faer's tridiagonal solver divides and conquers and on the small cases.
    #[test]
    fn top_eigenvectors_match_the_full_decomposition() {
        for (d, k) in [(0, 0), (1, 1), (2, 1), (7, 7), (300, 40), (300, 0)] {
            let a = Mat::from_fn(d, d + 5, |i, j| {
                ((i * 31 + j * 17) % 23) as f64 - 11.0 + (i as f64 * 0.37 + j as f64).sin()
            });
            let g = mul(a.as_ref(), a.transpose());
            let (vals, vecs) = sym_eigen_desc(g.as_ref()).unwrap();
            let mut seen = Vec::new();
            let (top_vals, top) = sym_eigen_top(g.clone(), |v| {
                seen = v.to_vec();
                Ok(k)
            })
            .unwrap();
            assert_eq!(seen, top_vals);
            assert_eq!(top.shape(), (d, k));
            let scale = vals.first().copied().unwrap_or(1.0);
            for (x, y) in vals.iter().zip(&top_vals) {
                assert!((x - y).abs() <= 1e-12 * scale, "d {d}: {x} vs {y}");
            }
            let mut err: f64 = 0.0;
            for j in 0..k {
                for i in 0..d {
                    err = err.max((vecs[(i, j)] - top[(i, j)]).abs());
                }
            }
            assert!(err < 1e-9, "d {d} k {k}: vectors differ by {err}");
            let gram = mul(top.transpose(), top.as_ref());
            for j in 0..k {
                for i in 0..k {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((gram[(i, j)] - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn small_angles_are_resolved() {
        // Two planes in R^3 tilted by 1e-9 rad: arccos would read ~1e-8; asin reads 1e-9.
        let t = 1e-9f64;
        let x = Mat::from_fn(2, 3, |i, j| if i == j { 1.0 } else { 0.0 });
        let y = Mat::from_fn(2, 3, |i, j| match (i, j) {
            (0, 0) => 1.0,
            (1, 1) => t.cos(),
            (1, 2) => t.sin(),
            _ => 0.0,
        });
        let a = principal_angles(x.as_ref(), y.as_ref()).unwrap();
        assert!(a[0].abs() < 1e-15);
        assert!((a[1] - t).abs() < 1e-15 * 10.0, "{a:?}");
    }
}
