//! The balanced gauge of a LoRA module's factors ([`canonicalize`]), applied before stacking
//! so that the subspace does not depend on how each adapter happened to split ΔW = B·A.

use crate::adapter::LoraModule;
use crate::error::Result;
use crate::linalg;
use faer::Mat;

/// The balanced factorization of ΔW = B'·A' (the default gauge before stacking).
///
/// With thin QRs B' = Q_B·R_B and A'ᵀ = Q_A·R_A and the SVD of the small core
/// R_B·R_Aᵀ = U·S·Vᵀ, it returns B'' = Q_B·U·√S and A'' = √S·Vᵀ·Q_Aᵀ, so B''·A'' = B'·A' and
/// B''ᵀB'' = A''A''ᵀ = S. Cost O((in+out)·r²); ΔW is never formed.
///
/// Sign convention: applied to the columns of Q_B·U (the left singular vectors of ΔW), with V
/// flipped alongside. Applying it to U itself would make the result depend on the signs the
/// QR happened to choose, which differ between faer and LAPACK. Rank is kept: when
/// r > min(in, out) the extra rows of A'' and columns of B'' are zero.
pub fn canonicalize(m: &LoraModule) -> Result<LoraModule> {
    let (b, a_t) = canonical_factors(m)?;
    Ok(LoraModule {
        a: a_t.transpose().to_owned(),
        b,
    })
}

/// [`canonicalize`]'s B'' [out x r] and A''ᵀ [in x r]: the A side is stacked as the columns
/// of A''ᵀ, so the extraction takes it in that layout (contiguous columns) without a copy.
pub(super) fn canonical_factors(m: &LoraModule) -> Result<(Mat<f64>, Mat<f64>)> {
    let r = m.rank();
    let (in_f, out_f) = (m.in_features(), m.out_features());
    let (qb, rb) = linalg::thin_qr(m.b.as_ref());
    let (qa, ra) = linalg::thin_qr(m.a.transpose());
    let core = linalg::mul(rb.as_ref(), ra.transpose());
    let sv = linalg::thin_svd(core.as_ref())?;
    let mut left = linalg::mul(qb.as_ref(), sv.u.as_ref()); // out x p
    let mut right = linalg::mul(qa.as_ref(), sv.v.as_ref()); // in x p
    for (j, flipped) in linalg::fix_sign_columns(&mut left).into_iter().enumerate() {
        if flipped {
            for x in right.col_as_slice_mut(j) {
                *x = -*x;
            }
        }
    }
    let p = sv.s.len().min(r);
    let root: Vec<f64> = sv.s.iter().map(|s| s.max(0.0).sqrt()).collect();
    let b = Mat::from_fn(
        out_f,
        r,
        |i, k| if k < p { left[(i, k)] * root[k] } else { 0.0 },
    );
    let a_t = Mat::from_fn(
        in_f,
        r,
        |j, k| if k < p { root[k] * right[(j, k)] } else { 0.0 },
    );
    Ok((b, a_t))
}
