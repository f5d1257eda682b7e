//! Exact decomposition of one stacked side of one module.
//!
//! Both sides are handled as a stack of column blocks X = [X_1 … X_N] of size d x n:
//! on the A side the blocks are A'_tᵀ (in x r_t), so the columns of X are the rows of every A'
//! and d = in; on the B side the blocks are B'_t (out x r_t) and d = out. The wanted basis is
//! the top left singular vectors of X (= the top right singular vectors of the stacked A rows).
//!
//! Two ways to finish, both exact:
//! * [`SideAccumulator::finish`], the full decomposition (every singular vector; forced
//!   routes, tests, plots): n = Σr ≤ d: thin SVD of X itself; n > d: the d x d Gram
//!   G = X·Xᵀ = Σ_t X_t·X_tᵀ and its symmetric eigendecomposition, σ = √max(λ, 0).
//! * [`SideAccumulator::finish_top`], what extraction uses: the Gram in the **smaller**
//!   dimension (XᵀX [n x n] when n ≤ d, X·Xᵀ [d x d] otherwise), its trace (the total
//!   energy), and only the top K eigenpairs, from a block Krylov solver whose residual and an
//!   inertia test certify principal angles to the exact ones ([`super::topk`]); the fixed and
//!   energy rules are decided from the trace plus those top values. All eigenvalues (values
//!   only) are computed when the caller asks for the full spectrum, for Gavish–Donoho (it
//!   reads the median), or when the top values cannot decide or certify K.
//!
//! [`SideAccumulator`] takes the blocks one adapter at a time and switches from holding the
//! columns to holding the Gram (lower triangle, folded in batches) as soon as n exceeds d, so
//! memory stays below about d·(d + 128) values however many adapters stream through, plus the
//!
//! Where things are: the accumulator and its state (`accumulate.rs`), the full decomposition
//! (`full.rs`), the top-K path (`top.rs`) and the Gram helpers both use (`gram.rs`).

mod accumulate;
mod full;
mod gram;
mod top;

pub use accumulate::{Held, SideAccumulator, SideStats};

use crate::error::Result;
use crate::subspace::topk::Solver;
use faer::{Mat, MatRef};

/// Which exact route a decomposition took (or is forced to take, in tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Holds the stack while n ≤ d, streams the d x d Gram once n > d. [`SideAccumulator::finish`]
    /// then takes the SVD of the stack or the Gram's eigendecomposition;
    /// [`SideAccumulator::finish_top`] the Gram in the smaller dimension and the top-K solver.
    Auto,
    /// Always the thin SVD of the stack (holds the whole stack).
    Svd,
    /// Always the streamed d x d Gram and its eigendecomposition.
    Gram,
}

/// Result of decomposing one side.
#[derive(Clone, Debug)]
pub struct Decomposition {
    /// All singular values of the (centered, if asked) stack, descending; min(d, n) of them.
    pub spectrum: Vec<f64>,
    /// Matching left singular vectors as columns [d x min(d, n)] ([d x K] from
    /// [`SideAccumulator::finish_top`]), sign convention applied
    /// (largest-magnitude entry positive, see [`crate::linalg`]).
    pub basis: Mat<f64>,
    /// Numerical rank: singular values above [`Decomposition::rank_tolerance`].
    pub rank: usize,
    /// The tolerance used for `rank`: max(d, n)·ε·σ₁ on the SVD route, √(max(d, n)·ε)·σ₁ on the
    /// Gram route (an eigenvalue error of d·ε·λ₁ becomes that much in σ after the square root).
    pub rank_tolerance: f64,
    /// Vector length d.
    pub dim: usize,
    /// Stacked vectors n = Σr.
    pub n_vectors: usize,
    /// The mean vector that was subtracted (centering), else `None`.
    pub mean: Option<Vec<f64>>,
    /// The route actually taken ([`Route::Svd`] or [`Route::Gram`], the Gram in the smaller
    /// dimension on [`SideAccumulator::finish_top`]).
    pub route: Route,
    /// How the basis vectors were obtained (full decomposition, certified top-K solver, or
    /// the full decomposition as a fallback and why).
    pub solver: Solver,
    /// Σσ² of the (centered, if asked) stack: the trace of its Gram, exact whether or not the
    /// whole spectrum was computed.
    pub total_energy: f64,
    /// Whether `spectrum` holds every singular value (min(d, n) of them). When `false` it
    /// holds the top K only, the ones kept ([`SideAccumulator::finish_top`] without the full
    /// spectrum).
    pub spectrum_complete: bool,
}

/// Decomposes the stack of `blocks` (each [d x r_t]) in one call.
pub fn decompose_blocks<'a>(
    dim: usize,
    blocks: impl IntoIterator<Item = MatRef<'a, f64>>,
    center: bool,
    route: Route,
) -> Result<Decomposition> {
    let mut acc = SideAccumulator::new(dim, route);
    for b in blocks {
        acc.add(b)?;
    }
    acc.finish(center)
}
