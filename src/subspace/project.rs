//! Coefficients of an adapter in a subspace, reconstruction and errors.
//!
//! The bases may be non-orthonormal (after int8/f16 quantization), so coefficients are
//! least-squares solutions, computed by QR of the basis (not by normal equations):
//! alpha_A = A'·V_Aᵀ·(V_A·V_Aᵀ)⁻¹ and alpha_B = (V_BᵀV_B)⁻¹·V_Bᵀ·B', which are A'·V_Aᵀ and
//! V_Bᵀ·B' for orthonormal bases.
//!
//! Errors on ΔW are computed from the factors only (QR of the stacked factors), never forming
//! the out x in matrix.
use super::ModuleSubspace;
use crate::adapter::LoraModule;
use crate::error::{Error, Result};
use crate::linalg;
use faer::{Mat, MatRef};

pub use crate::task::Coefficients;

/// Least-squares coefficients of `m` in `s` (alpha_A = A·V_Aᵀ, alpha_B = V_Bᵀ·B for orthonormal
/// bases), put in a canonical gauge so that project ∘ reconstruct is the identity.
///
/// This is [`try_project`] for callers whose shapes are already known to agree.
///
/// # Panics
/// When `m`'s in/out features differ from the subspace's. With shapes from a user's file, call
/// [`try_project`], which returns an error instead.
pub fn project(m: &LoraModule, s: &ModuleSubspace) -> Coefficients {
    match try_project(m, s) {
        Ok(c) => c,
        Err(e) => panic!("project: {e}"),
    }
}

/// [`project`], returning an error on a shape mismatch or a decomposition failure.
///
/// Gauge: with M = alpha_B·alpha_A [K_B x K_A] and its SVD M = U·S·Wᵀ (sign convention on
/// U's columns, W flipped alongside, see [`crate::linalg`]), it returns alpha_B = U_r·√S_r and
/// alpha_A = √S_r·W_rᵀ, keeping the adapter's r: columns/rows beyond min(K_A, K_B) are zero,
/// and singular values at or below 16·max(K_A, K_B)·ε·σ₁ are set to exactly zero (their
/// directions are noise). The product alpha_B·alpha_A, hence ΔŴ, is unchanged by the gauge;
/// the gauge only makes the coefficients unique (up to ties among singular values), which is
/// what makes project(reconstruct(c)) == c.
pub fn try_project(m: &LoraModule, s: &ModuleSubspace) -> Result<Coefficients> {
    check_shapes(m, s)?;
    let r = m.rank();
    // alpha_Aᵀ = lstsq(V_Aᵀ, A'ᵀ) [K_A x r]; alpha_B = lstsq(V_B, B') [K_B x r].
    let alpha_a = lstsq(s.v_a.transpose(), m.a.transpose())
        .transpose()
        .to_owned();
    let alpha_b = lstsq(s.v_b.as_ref(), m.b.as_ref());
    gauge(&alpha_a, &alpha_b, r)
}

fn check_shapes(m: &LoraModule, s: &ModuleSubspace) -> Result<()> {
    if m.in_features() != s.in_features
        || m.out_features() != s.out_features
        || m.b.ncols() != m.rank()
        || s.v_a.ncols() != s.in_features
        || s.v_b.nrows() != s.out_features
    {
        return Err(Error::Usage(format!(
            "an adapter module with A [{}, {}] and B [{}, {}] does not fit a subspace with in={} and out={}",
            m.a.nrows(),
            m.a.ncols(),
            m.b.nrows(),
            m.b.ncols(),
            s.in_features,
            s.out_features
        )));
    }
    Ok(())
}

/// Least squares min ||V·X − Y||_F for V [d x K] (full column rank expected), via thin QR of V
/// and back substitution. A pivot at or below K·ε·max|R_ii| (a dependent basis column) gets a
/// zero coefficient instead of a division by ~0.
fn lstsq(v: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Mat<f64> {
    let k = v.ncols();
    let r_cols = y.ncols();
    let mut x = Mat::zeros(k, r_cols);
    if k == 0 {
        return x;
    }
    let (q, r) = linalg::thin_qr(v);
    let z = linalg::mul(q.transpose(), y); // p x r_cols, p = min(d, K)
    let p = z.nrows();
    let rmax = (0..p).map(|i| r[(i, i)].abs()).fold(0.0, f64::max);
    let tol = k as f64 * f64::EPSILON * rmax;
    for c in 0..r_cols {
        for i in (0..p).rev() {
            let piv = r[(i, i)];
            if piv.abs() <= tol {
                x[(i, c)] = 0.0;
                continue;
            }
            let mut acc = z[(i, c)];
            for j in i + 1..p {
                acc -= r[(i, j)] * x[(j, c)];
            }
            x[(i, c)] = acc / piv;
        }
    }
    x
}

/// The canonical gauge of (alpha_A, alpha_B) described in [`try_project`].
fn gauge(alpha_a: &Mat<f64>, alpha_b: &Mat<f64>, r: usize) -> Result<Coefficients> {
    let (kb, ka) = (alpha_b.nrows(), alpha_a.ncols());
    let m = linalg::mul(alpha_b.as_ref(), alpha_a.as_ref());
    let sv = linalg::thin_svd(m.as_ref())?;
    let s1 = sv.s.first().copied().unwrap_or(0.0);
    let tol = 16.0 * ka.max(kb) as f64 * f64::EPSILON * s1;
    let p = sv.s.len().min(r);
    let root: Vec<f64> =
        sv.s.iter()
            .map(|&x| if x > tol { x.sqrt() } else { 0.0 })
            .collect();
    let alpha_b = Mat::from_fn(
        kb,
        r,
        |i, k| if k < p { sv.u[(i, k)] * root[k] } else { 0.0 },
    );
    let alpha_a = Mat::from_fn(
        r,
        ka,
        |k, j| if k < p { root[k] * sv.v[(j, k)] } else { 0.0 },
    );
    Ok(Coefficients { alpha_a, alpha_b })
}

/// Â = alpha_A·V_A, B̂ = V_B·alpha_B.
///
/// # Panics
/// When the coefficient shapes do not fit the subspace; use [`try_reconstruct`] for
/// coefficients read from a file.
pub fn reconstruct(c: &Coefficients, s: &ModuleSubspace) -> LoraModule {
    match try_reconstruct(c, s) {
        Ok(m) => m,
        Err(e) => panic!("reconstruct: {e}"),
    }
}

/// [`reconstruct`], returning an error when alpha_A is not [r x K_A] or alpha_B not [K_B x r].
pub fn try_reconstruct(c: &Coefficients, s: &ModuleSubspace) -> Result<LoraModule> {
    let (ka, kb) = (s.v_a.nrows(), s.v_b.ncols());
    if c.alpha_a.ncols() != ka || c.alpha_b.nrows() != kb || c.alpha_a.nrows() != c.alpha_b.ncols()
    {
        return Err(Error::Usage(format!(
            "expected alpha_A [r, K_A={ka}] and alpha_B [K_B={kb}, r], found alpha_A [{}, {}] and alpha_B [{}, {}]",
            c.alpha_a.nrows(),
            c.alpha_a.ncols(),
            c.alpha_b.nrows(),
            c.alpha_b.ncols()
        )));
    }
    Ok(LoraModule {
        a: linalg::mul(c.alpha_a.as_ref(), s.v_a.as_ref()),
        b: linalg::mul(s.v_b.as_ref(), c.alpha_b.as_ref()),
    })
}

/// ||ΔW − ΔŴ||_F / ||ΔW||_F computed from the factors, never forming out x in.
///
/// Implementation: ΔW − ΔŴ = [B, B̂]·[A; −Â], a product of rank ≤ r + r̂, whose norm is taken
/// by [`linalg::lowrank_frob`] (thin QRs of the two stacked factors, then the small core).
/// That costs the same O((in+out)·(r+r̂)²) as the Gram traces
/// ||BA||² = tr((BᵀB)(AAᵀ)), ⟨B1A1, B2A2⟩ = tr((B1ᵀB2)(A2A1ᵀ)), but has no cancellation:
/// the trace formula cannot report errors below ≈1e-8 (√ε), this one resolves them to ≈ε.
///
/// Returns 0 when both are zero, +∞ when only ΔW is zero, and NaN when the shapes differ.
pub fn relative_error(original: &LoraModule, approx: &LoraModule) -> f64 {
    let (in_f, out_f) = (original.in_features(), original.out_features());
    if approx.in_features() != in_f
        || approx.out_features() != out_f
        || original.b.ncols() != original.rank()
        || approx.b.ncols() != approx.rank()
    {
        return f64::NAN;
    }
    let (r1, r2) = (original.rank(), approx.rank());
    let b = Mat::from_fn(out_f, r1 + r2, |i, k| {
        if k < r1 {
            original.b[(i, k)]
        } else {
            approx.b[(i, k - r1)]
        }
    });
    let a = Mat::from_fn(r1 + r2, in_f, |k, j| {
        if k < r1 {
            original.a[(k, j)]
        } else {
            -approx.a[(k - r1, j)]
        }
    });
    let num = linalg::lowrank_frob(b.as_ref(), a.as_ref());
    let den = linalg::lowrank_frob(original.b.as_ref(), original.a.as_ref());
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    num / den
}

/// Share of ||ΔW||²_F that lies inside the subspace: ||P_B·ΔW·P_A||² / ||ΔW||².
///
/// P_A, P_B are the orthogonal projectors onto the spans of V_A's rows and V_B's columns (also
/// for non-orthonormal quantized bases: P_B·B = V_B·lstsq(V_B, B)). Computed from factors, as
/// in [`relative_error`]. Returns 1 for a zero ΔW (nothing to lose) and NaN on a shape mismatch.
pub fn captured_energy(m: &LoraModule, s: &ModuleSubspace) -> f64 {
    if check_shapes(m, s).is_err() {
        return f64::NAN;
    }
    let den = linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref());
    if den == 0.0 {
        return 1.0;
    }
    let alpha_a = lstsq(s.v_a.transpose(), m.a.transpose()); // K_A x r
    let alpha_b = lstsq(s.v_b.as_ref(), m.b.as_ref()); // K_B x r
    let pb = linalg::mul(s.v_b.as_ref(), alpha_b.as_ref()); // out x r = P_B·B
    let pa = linalg::mul(alpha_a.transpose(), s.v_a.as_ref()); // r x in = A·P_A
    let num = linalg::lowrank_frob(pb.as_ref(), pa.as_ref());
    (num / den).powi(2)
}

/// A task's coefficients carried from one subspace into another ([`remap`]).
#[derive(Clone, Debug)]
pub struct Remapped {
    /// The coefficients in the new subspace (the gauge of [`try_project`]).
    pub coefficients: Coefficients,
    /// Share of the task's ΔŴ (in the old subspace) that the new subspace holds:
    /// ||P_B·ΔŴ·P_A||² / ||ΔŴ||², 1 for a zero ΔŴ. 1 (to rounding) when the old subspace
    /// lies in the new one.
    pub captured: f64,
    /// ||ΔŴ_old − ΔŴ_new||_F / ||ΔŴ_old||_F (0 for a zero ΔŴ): the change in what the task
    /// serves; √(1 − captured) in exact arithmetic.
    pub relative_error: f64,
}

/// Carries coefficients `c` of subspace `old` into subspace `new` (`elx project --remap`,
/// after `elx extract --update`): the task's ΔŴ = V_B·α_B·α_A·V_A in `old` is projected
/// onto `new` (least squares, as [`try_project`]), ΔŴ' = P_B·ΔŴ·P_A. Exact (ΔŴ' = ΔŴ) when
/// the rows of the old V_A lie in the span of the new V_A's and the old V_B's columns in the
/// new V_B's; otherwise ΔŴ' is the closest the new subspace holds and [`Remapped::captured`]
/// says how much of ΔŴ that is. Shapes that do not fit are an [`Error::Usage`].
pub fn remap(c: &Coefficients, old: &ModuleSubspace, new: &ModuleSubspace) -> Result<Remapped> {
    if (old.in_features, old.out_features) != (new.in_features, new.out_features) {
        return Err(Error::Usage(format!(
            "the old subspace has in={} out={}, the new one in={} out={}",
            old.in_features, old.out_features, new.in_features, new.out_features
        )));
    }
    let delta = try_reconstruct(c, old)?;
    let coefficients = try_project(&delta, new)?;
    let carried = try_reconstruct(&coefficients, new)?;
    let err = relative_error(&delta, &carried);
    let (captured, relative_error) = if err.is_finite() {
        (captured_energy(&delta, new), err)
    } else {
        // ΔŴ = 0: nothing to carry.
        (1.0, 0.0)
    };
    Ok(Remapped {
        coefficients,
        captured,
        relative_error,
    })
}
