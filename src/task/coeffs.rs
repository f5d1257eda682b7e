//! A task's coefficients and the one way they are laid out for a model: the flat parameter
//! vector (per module α_A [r x K_A] then α_B [K_B x r], row-major, r the model's rank) and,
//! from it, the graph's inputs α_Aᵀ [1, K_A, r] and α_Bᵀ [1, r, K_B].

use super::layout::CoeffLayout;
use crate::error::{Error, Result};
use faer::Mat;
use std::collections::BTreeMap;

/// One module's coefficients: alpha_A [r x K_A], alpha_B [K_B x r].
#[derive(Clone, Debug)]
pub struct Coefficients {
    /// alpha_A [r x K_A]: Â = alpha_A·V_A.
    pub alpha_a: Mat<f64>,
    /// alpha_B [K_B x r]: B̂ = V_B·alpha_B.
    pub alpha_b: Mat<f64>,
}

impl Coefficients {
    /// Whether these coefficients fit a module of layout `l`: K_A and K_B equal, rank at
    /// most the model's.
    pub fn fits(&self, l: &CoeffLayout) -> bool {
        let r = self.alpha_a.nrows();
        r <= l.r
            && self.alpha_a.ncols() == l.k_a
            && self.alpha_b.nrows() == l.k_b
            && self.alpha_b.ncols() == r
    }

    /// The largest ‖α_A‖_F·‖α_B‖_F an f32 run of a module with `in_features` inputs can
    /// take at rank `r`: sqrt(f32::MAX) / (in_features·r).
    ///
    /// The bases are orthonormal, so every entry of V_Aᵀα_Aᵀ is at most ‖α_A‖_F and every
    /// entry of α_Bᵀ V_Bᵀ at most ‖α_B‖_F; an entry of the correction X·V_Aᵀα_Aᵀ·α_Bᵀ V_Bᵀ is
    /// then at most in·r·max|X|·‖α_A‖_F·‖α_B‖_F. Under this limit, activations up to
    /// sqrt(f32::MAX) ≈ 1.8e19 keep it finite; real tasks are many orders of magnitude below.
    pub fn magnitude_limit(in_features: usize, r: usize) -> f64 {
        f64::from(f32::MAX).sqrt() / (in_features.max(1) as f64 * r.max(1) as f64)
    }

    /// ‖α_A‖_F·‖α_B‖_F (a bound on the spectral norm of the task's ΔW, the bases being
    /// orthonormal).
    pub fn update_norm_bound(&self) -> f64 {
        self.alpha_a.norm_l2() * self.alpha_b.norm_l2()
    }

    /// Checks the coefficients of a module with `in_features` inputs: finite, and within
    /// [`Coefficients::magnitude_limit`]. The error says what was found, to read after the
    /// tensor's name.
    pub fn check_magnitude(&self, in_features: usize) -> std::result::Result<(), String> {
        let bound = self.update_norm_bound();
        let limit = Self::magnitude_limit(in_features, self.alpha_a.nrows());
        if !bound.is_finite() || bound > limit {
            return Err(format!(
                "expected finite coefficients with ‖α_A‖·‖α_B‖ <= {limit:.3e} (what a float32 run of {in_features} inputs at rank {} can carry), found {bound:.3e}",
                self.alpha_a.nrows()
            ));
        }
        Ok(())
    }

    /// Writes these coefficients (already checked with [`Coefficients::fits`]) into `dst`,
    /// the module's `l.len()` flat values: α_A [l.r x K_A] then α_B [K_B x l.r], row-major,
    /// as f32; the rows and columns beyond their rank are left as they are (zero).
    pub fn write_params(&self, l: &CoeffLayout, dst: &mut [f32]) {
        let r = self.alpha_a.nrows();
        let (a, b) = dst.split_at_mut(l.r * l.k_a);
        for i in 0..r {
            for k in 0..l.k_a {
                a[i * l.k_a + k] = self.alpha_a[(i, k)] as f32;
            }
        }
        for k in 0..l.k_b {
            for i in 0..r {
                b[k * l.r + i] = self.alpha_b[(k, i)] as f32;
            }
        }
    }
}

/// Lays fixed coefficients out as the parameter vector of a model with `layout` (per module:
/// α_A [r x K_A] then α_B [K_B x r], row-major, r the layout's rank). Coefficients of a
/// smaller rank are padded with zeros; modules without coefficients stay zero.
pub fn layout_params(
    layout: &[CoeffLayout],
    coeffs: &BTreeMap<String, Coefficients>,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(layout.iter().map(CoeffLayout::len).sum());
    for l in layout {
        let start = out.len();
        out.resize(start + l.len(), 0.0);
        let Some(c) = coeffs.get(&l.name) else {
            continue;
        };
        if !c.fits(l) {
            return Err(Error::Usage(format!(
                "module {}: coefficients α_A {}x{}, α_B {}x{} do not fit K_A = {}, K_B = {}, r <= {}",
                l.name,
                c.alpha_a.nrows(),
                c.alpha_a.ncols(),
                c.alpha_b.nrows(),
                c.alpha_b.ncols(),
                l.k_a,
                l.k_b,
                l.r
            )));
        }
        c.write_params(l, &mut out[start..]);
    }
    Ok(out)
}
