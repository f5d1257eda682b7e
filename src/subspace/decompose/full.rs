//! [`SideAccumulator::finish`]: the full decomposition of a side (every singular vector),
//! on the route chosen: the thin SVD of the stack, or the eigendecomposition of its Gram.

use super::accumulate::{SideAccumulator, State};
use super::gram::{gram_fold, gram_trace, subtract_mean_gram};
use super::{Decomposition, Route};
use crate::error::Result;
use crate::linalg::{self, fix_sign_columns};
use crate::subspace::topk::Solver;
use faer::MatRef;

impl SideAccumulator {
    /// Finishes with the **full** decomposition: optional centering (subtract the mean of all
    /// stacked vectors), then the exact decomposition on the route chosen, every singular
    /// vector returned. [`SideAccumulator::finish_top`] is the fast path for a few vectors.
    pub fn finish(self, center: bool) -> Result<Decomposition> {
        let (d, n) = (self.dim, self.n);
        let mean = self.mean(center);
        let eps = f64::EPSILON;
        let big = d.max(n) as f64;
        match self.state {
            State::Columns(cols) => {
                let mut x = MatRef::from_column_major_slice(&cols, d, n).to_owned();
                drop(cols);
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
                let total_energy = linalg::frob2(x.as_ref());
                Ok(Decomposition {
                    total_energy,
                    spectrum_complete: true,
                    spectrum: sv.s,
                    basis: sv.u,
                    rank,
                    rank_tolerance: tol,
                    dim: d,
                    n_vectors: n,
                    mean,
                    route: Route::Svd,
                    solver: Solver::Full,
                })
            }
            State::Gram { mut g, pending } => {
                gram_fold(&mut g, &pending, d);
                drop(pending);
                if let Some(mu) = &mean {
                    subtract_mean_gram(&mut g, mu, n);
                }
                let total_energy = gram_trace(g.as_ref());
                let (vals, mut vecs) = linalg::sym_eigen_desc(g.as_ref())?;
                let p = d.min(n);
                let spectrum: Vec<f64> = vals.iter().take(p).map(|l| l.max(0.0).sqrt()).collect();
                vecs.truncate(d, p);
                fix_sign_columns(&mut vecs);
                let tol = (big * eps).sqrt() * spectrum.first().copied().unwrap_or(0.0);
                let rank = spectrum.iter().filter(|&&s| s > tol).count();
                Ok(Decomposition {
                    total_energy,
                    spectrum_complete: true,
                    spectrum,
                    basis: vecs,
                    rank,
                    rank_tolerance: tol,
                    dim: d,
                    n_vectors: n,
                    mean,
                    route: Route::Gram,
                    solver: Solver::Full,
                })
            }
        }
    }
}
