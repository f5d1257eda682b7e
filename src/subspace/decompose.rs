//! Exact decomposition of one stacked side of one module.
//!
//! Both sides are handled as a stack of column blocks X = [X_1 … X_N] of size d x n:
//! on the A side the blocks are A'_tᵀ (in x r_t), so the columns of X are the rows of every A'
//! and d = in; on the B side the blocks are B'_t (out x r_t) and d = out. The wanted basis is
//! the top left singular vectors of X (= the top right singular vectors of the stacked A rows).
//!
//! The decomposition is exact on whichever side is smaller:
//! * n = Σr ≤ d: thin SVD of X itself (no Gram squaring, full accuracy);
//! * n > d: the d x d Gram G = X·Xᵀ = Σ_t X_t·X_tᵀ, accumulated one adapter at a time, then its
//!   symmetric eigendecomposition; σ = √max(λ, 0).
//!
//! [`SideAccumulator`] takes the blocks one adapter at a time and switches from holding blocks to
//! holding the Gram as soon as n exceeds d, so memory stays below about d·(d + r) values however
//! many adapters stream through.

use crate::error::{Error, Result};
use crate::linalg::{self, fix_sign_columns};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Which exact route a decomposition took (or is forced to take, in tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// SVD of the stack when n ≤ d, streamed Gram otherwise.
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
    /// Matching left singular vectors as columns [d x min(d, n)], sign convention applied
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
    /// The route actually taken ([`Route::Svd`] or [`Route::Gram`]).
    pub route: Route,
}

enum State {
    Blocks(Vec<Mat<f64>>),
    Gram(Mat<f64>),
}

/// Streams the column blocks of one side and decomposes them.
pub struct SideAccumulator {
    dim: usize,
    n: usize,
    sum: Vec<f64>,
    route: Route,
    state: State,
}

impl SideAccumulator {
    /// A new accumulator for vectors of length `dim`.
    pub fn new(dim: usize, route: Route) -> Self {
        let state = match route {
            Route::Gram => State::Gram(Mat::zeros(dim, dim)),
            _ => State::Blocks(Vec::new()),
        };
        Self {
            dim,
            n: 0,
            sum: vec![0.0; dim],
            route,
            state,
        }
    }

    /// Vectors stacked so far.
    pub fn n_vectors(&self) -> usize {
        self.n
    }

    /// Adds one adapter's block [d x r] (its columns are stacked vectors).
    pub fn add(&mut self, block: MatRef<'_, f64>) -> Result<()> {
        if block.nrows() != self.dim {
            return Err(Error::Numeric(format!(
                "block of {} rows added to a side of dimension {}",
                block.nrows(),
                self.dim
            )));
        }
        for j in 0..block.ncols() {
            for i in 0..self.dim {
                self.sum[i] += block[(i, j)];
            }
        }
        self.n += block.ncols();
        if self.route == Route::Auto
            && self.n > self.dim
            && let State::Blocks(blocks) = &mut self.state
        {
            // Past the crossover: fold what we hold into the Gram and stream from now on.
            let mut g = Mat::zeros(self.dim, self.dim);
            for b in blocks.drain(..) {
                gram_add(&mut g, b.as_ref());
            }
            self.state = State::Gram(g);
        }
        match &mut self.state {
            State::Blocks(blocks) => blocks.push(block.to_owned()),
            State::Gram(g) => gram_add(g, block),
        }
        Ok(())
    }

    /// Finishes: optional centering (subtract the mean of all stacked vectors), then the exact
    /// decomposition on the route chosen.
    pub fn finish(self, center: bool) -> Result<Decomposition> {
        let (d, n) = (self.dim, self.n);
        let mean: Option<Vec<f64>> =
            (center && n > 0).then(|| self.sum.iter().map(|s| s / n as f64).collect());
        let eps = f64::EPSILON;
        let big = d.max(n) as f64;
        match self.state {
            State::Blocks(blocks) => {
                let mut x = Mat::zeros(d, n);
                let mut c0 = 0;
                for b in &blocks {
                    for j in 0..b.ncols() {
                        for i in 0..d {
                            x[(i, c0 + j)] = b[(i, j)];
                        }
                    }
                    c0 += b.ncols();
                }
                drop(blocks);
                if let Some(mu) = &mean {
                    for j in 0..n {
                        for i in 0..d {
                            x[(i, j)] -= mu[i];
                        }
                    }
                }
                let sv = linalg::thin_svd(x.as_ref())?;
                let tol = big * eps * sv.s.first().copied().unwrap_or(0.0);
                let rank = sv.s.iter().filter(|&&s| s > tol).count();
                Ok(Decomposition {
                    spectrum: sv.s,
                    basis: sv.u,
                    rank,
                    rank_tolerance: tol,
                    dim: d,
                    n_vectors: n,
                    mean,
                    route: Route::Svd,
                })
            }
            State::Gram(mut g) => {
                if let Some(mu) = &mean {
                    // X_c·X_cᵀ = X·Xᵀ − n·μ·μᵀ.
                    for j in 0..d {
                        for i in 0..d {
                            g[(i, j)] -= n as f64 * mu[i] * mu[j];
                        }
                    }
                }
                let (vals, mut vecs) = linalg::sym_eigen_desc(g.as_ref())?;
                let p = d.min(n);
                let spectrum: Vec<f64> = vals.iter().take(p).map(|l| l.max(0.0).sqrt()).collect();
                vecs.truncate(d, p);
                fix_sign_columns(&mut vecs);
                let tol = (big * eps).sqrt() * spectrum.first().copied().unwrap_or(0.0);
                let rank = spectrum.iter().filter(|&&s| s > tol).count();
                Ok(Decomposition {
                    spectrum,
                    basis: vecs,
                    rank,
                    rank_tolerance: tol,
                    dim: d,
                    n_vectors: n,
                    mean,
                    route: Route::Gram,
                })
            }
        }
    }
}

/// g += b·bᵀ.
fn gram_add(g: &mut Mat<f64>, b: MatRef<'_, f64>) {
    matmul(g.as_mut(), Accum::Add, b, b.transpose(), 1.0, Par::Seq);
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
