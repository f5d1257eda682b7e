//! The coefficient layout of a patched graph and the transpositions of the flat parameter
//! vector (per module α_A [r x K_A] then α_B [K_B x r], row-major) into the graph's inputs
//! α_Aᵀ [1, K_A, r] and α_Bᵀ [1, r, K_B].

use crate::error::{Error, Result};

/// The coefficient shape of one module as the model takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoeffLayout {
    /// Canonical module name (as in the bundle).
    pub name: String,
    /// K_A: size of the A-side basis.
    pub k_a: usize,
    /// K_B: size of the B-side basis.
    pub k_b: usize,
    /// The rank the model's inputs hold (the bundle's r_max for this module). Training at a
    /// smaller rank leaves the extra rows of α_A and columns of α_B at zero.
    pub r: usize,
}

impl CoeffLayout {
    /// Values of this module in the flat parameter vector: r·(K_A + K_B).
    pub fn len(&self) -> usize {
        self.r * (self.k_a + self.k_b)
    }

    /// Whether the module has no coefficients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks that `params` holds exactly the values of `layout` (the flat vector of
/// [`crate::finetune::ForwardModel::features`]).
pub fn check_params(layout: &[CoeffLayout], params: &[f32]) -> Result<()> {
    let total: usize = layout.iter().map(CoeffLayout::len).sum();
    if params.len() != total {
        return Err(Error::Usage(format!(
            "expected {total} coefficient values for the model's layout, found {}",
            params.len()
        )));
    }
    Ok(())
}

/// Module `m`'s flat values (α_A [r x K_A] then α_B [K_B x r], row-major) from `params`,
/// already checked by [`check_params`].
pub fn module_params<'a>(
    layout: &[CoeffLayout],
    params: &'a [f32],
    m: usize,
) -> (&'a [f32], &'a [f32]) {
    let at: usize = layout[..m].iter().map(CoeffLayout::len).sum();
    let l = &layout[m];
    let (a, rest) = params[at..at + l.len()].split_at(l.r * l.k_a);
    (a, rest)
}

/// Writes α_A [r x K_A] as the graph's α_Aᵀ [1, K_A, r] into `dst`.
pub fn write_alpha_a_t(l: &CoeffLayout, a: &[f32], dst: &mut [f32]) {
    let (k_a, r) = (l.k_a, l.r);
    for j in 0..r {
        for k in 0..k_a {
            dst[k * r + j] = a[j * k_a + k];
        }
    }
}

/// Writes α_B [K_B x r] as the graph's α_Bᵀ [1, r, K_B] into `dst`.
pub fn write_alpha_b_t(l: &CoeffLayout, b: &[f32], dst: &mut [f32]) {
    let (k_b, r) = (l.k_b, l.r);
    for j in 0..r {
        for k in 0..k_b {
            dst[j * k_b + k] = b[k * r + j];
        }
    }
}
