//! [`SideAccumulator::finish_top`], what extraction uses: the Gram in the smaller dimension,
//! its trace, and only the top K eigenpairs from the certified block Krylov solver
//! ([`crate::subspace::topk`]), with the K rule decided from the trace plus those values, and
//! the full spectrum only where the top values cannot decide or certify K.

use super::accumulate::{SideAccumulator, State};
use super::gram::{
    fill_upper_from_lower, gram_fold, gram_spectrum, gram_trace, subtract_mean_gram,
};
use super::{Decomposition, Route};
use crate::error::{Error, Result};
use crate::linalg::{self, fix_sign_columns};
use crate::subspace::topk::{self, Solver, TopK, TopPairs};
use crate::subspace::{KRule, select};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

impl SideAccumulator {
    /// Finishes with the top K singular vectors only, K chosen by `rule`; the spectrum is
    /// computed in full only when `full_spectrum` is asked or the rule needs it.
    ///
    /// On [`Route::Auto`] the work is done on the Gram in the **smaller** dimension: XᵀX
    /// [n x n] when n ≤ d, the streamed X·Xᵀ [d x d] otherwise. Its trace is the total energy
    /// Σσ². Then:
    /// * [`KRule::Fixed`] and [`KRule::Energy`], without `full_spectrum`: the top eigenpairs
    ///   from the certified block Krylov solver ([`crate::subspace::topk::top_eigenpairs`]), which proves
    ///   an upper bound on the next eigenvalue by an inertia test and bounds the error of each
    ///   Ritz value. The energy rule grows K in blocks (16, then at least doubling and at least
    ///   to the energy still missing over the bound on the next eigenvalue, each warm-started
    ///   from the last) until the partial sums of the certified values reach the threshold of the
    ///   trace; the K it returns is the full spectrum's K whenever the threshold lies outside
    ///   the values' proven error (else the full spectrum decides, and the vectors follow).
    ///   The spectrum returned is the top K values (`spectrum_complete` false).
    /// * A K proven large enough that its Krylov basis would be a sizeable share of the
    ///   matrix ([`crate::subspace::topk::krylov_too_large`]): one full decomposition, the SVD of X when
    ///   n ≤ d, the Gram's eigendecomposition otherwise, gives the values, K and the vectors.
    /// * [`KRule::GavishDonoho`] (its threshold is the median singular value, which the trace
    ///   and the top values do not give), `full_spectrum`, a stack whose rank is below K, or a
    ///   K the solver above cannot certify: every eigenvalue (values only), K from the full
    ///   spectrum, the K vectors from the certified solver with the eigenvalues known
    ///   ([`crate::subspace::topk::top_eigenvectors`]) or from the full decomposition when that
    ///   solver declines (recorded in [`Decomposition::solver`] with the reason).
    ///
    /// With n ≤ d the vectors found are right singular vectors W; the left ones are the
    /// Rayleigh–Ritz vectors of X in span(X·W), whose angles to the exact ones are at most
    /// (σ_{K+1}/σ_K)·tan of W's. A forced route ([`Route::Svd`], [`Route::Gram`]) takes
    /// [`SideAccumulator::finish`] and keeps its first K vectors.
    pub fn finish_top(
        self,
        center: bool,
        rule: KRule,
        full_spectrum: bool,
    ) -> Result<Decomposition> {
        if self.route != Route::Auto {
            let mut dec = self.finish(center)?;
            let k = select::select_k_total(
                rule,
                &dec.spectrum,
                dec.total_energy,
                dec.rank,
                (dec.n_vectors, dec.dim),
            )?;
            dec.basis = dec.basis.subcols(0, k.min(dec.basis.ncols())).to_owned();
            return Ok(dec);
        }
        let (d, n) = (self.dim, self.n);
        let mean = self.mean(center);
        let big = d.max(n) as f64;
        // (X when the Gram is XᵀX, to map back; the Gram with both triangles filled.)
        let (x, gram) = match self.state {
            State::Columns(mut cols) => {
                if let Some(mu) = &mean {
                    for col in cols.chunks_exact_mut(d.max(1)) {
                        for (v, m) in col.iter_mut().zip(mu) {
                            *v -= m;
                        }
                    }
                }
                // X is used where it lies (a view of the stacked columns), not copied.
                let x = MatRef::from_column_major_slice(&cols, d, n);
                let mut s = Mat::zeros(n, n);
                triangular::matmul(
                    s.as_mut(),
                    BlockStructure::TriangularLower,
                    Accum::Replace,
                    x.transpose(),
                    BlockStructure::Rectangular,
                    x,
                    BlockStructure::Rectangular,
                    1.0,
                    Par::Seq,
                );
                (Some(cols), s)
            }
            State::Gram { mut g, pending } => {
                gram_fold(&mut g, &pending, d);
                drop(pending);
                if let Some(mu) = &mean {
                    subtract_mean_gram(&mut g, mu, n);
                }
                (None, g)
            }
        };
        let x = x
            .as_deref()
            .map(|c| MatRef::from_column_major_slice(c, d, n));
        let mut gram = gram;
        fill_upper_from_lower(&mut gram);
        let total_energy = gram_trace(gram.as_ref());
        let p = d.min(n);
        let by_values = if full_spectrum || matches!(rule, KRule::GavishDonoho) {
            ByValues::Full(None)
        } else {
            top_by_values(gram.as_ref(), rule, total_energy, p, big)?
        };
        if let ByValues::Large = by_values {
            // K needs a Krylov basis too large to pay: one full decomposition gives the
            // values that decide K and the vectors (the SVD of X when n ≤ d, as the
            // fallback below; the d x d Gram's eigendecomposition otherwise).
            let (spectrum, mut basis, rank, tol, k) = match x {
                Some(x) => {
                    drop(gram);
                    let sv = linalg::thin_svd(x)?;
                    let tol = big * f64::EPSILON * sv.s.first().copied().unwrap_or(0.0);
                    let rank = sv.s.iter().filter(|&&s| s > tol).count();
                    let k = select::select_k_total(rule, &sv.s, total_energy, rank, (n, d))?.min(p);
                    (sv.s, sv.u.subcols(0, k).to_owned(), rank, tol, k)
                }
                None => {
                    // The vectors of the top K only (K from the values on the way).
                    let mut decided = None;
                    let (_, basis) = linalg::sym_eigen_top(gram, |vals| {
                        let (spectrum, rank, tol) = gram_spectrum(vals, p, big);
                        let k =
                            select::select_k_total(rule, &spectrum, total_energy, rank, (n, d))?
                                .min(p);
                        decided = Some((spectrum, rank, tol, k));
                        Ok(k)
                    })?;
                    let (spectrum, rank, tol, k) =
                        decided.ok_or_else(|| Error::Numeric("no K was chosen".into()))?;
                    (spectrum, basis, rank, tol, k)
                }
            };
            debug_assert_eq!(basis.ncols(), k);
            fix_sign_columns(&mut basis);
            return Ok(Decomposition {
                spectrum_complete: spectrum.len() == p,
                spectrum,
                basis,
                rank,
                rank_tolerance: tol,
                dim: d,
                n_vectors: n,
                mean,
                route: Route::Gram,
                solver: Solver::Full,
                total_energy,
            });
        }
        let (spectrum, rank, tol, k, top, why) = match by_values {
            ByValues::Done { k, values, top } => {
                let sigma1 = values.first().map_or(0.0, |l| l.max(0.0).sqrt());
                let tol = (big * f64::EPSILON).sqrt() * sigma1;
                let spectrum: Vec<f64> = values.iter().map(|l| l.max(0.0).sqrt()).collect();
                (spectrum, k, tol, k, top, None)
            }
            ByValues::Large => unreachable_large()?,
            ByValues::Full(why) => {
                let vals = linalg::sym_eigenvalues_desc(gram.as_ref())?;
                let (spectrum, rank, tol) = gram_spectrum(&vals, p, big);
                let k = select::select_k_total(rule, &spectrum, total_energy, rank, (n, d))?.min(p);
                let top = topk::top_eigenvectors(gram.as_ref(), &vals, k)?;
                (spectrum, rank, tol, k, top, why)
            }
        };
        let spectrum_complete = spectrum.len() == p;
        let (mut basis, solver) = match (top, x) {
            (TopK::Vectors(w, solver), Some(x)) => {
                drop(gram);
                (left_from_right(x, w.as_ref())?, solver)
            }
            (TopK::Vectors(v, solver), None) => (v, solver),
            // The full decomposition as before this route existed: the SVD of X itself when
            // n ≤ d (with a tiny gap, the Gram's squared condition would show), else the
            // eigendecomposition of the d x d Gram.
            (full, Some(x)) => {
                drop(gram);
                let sv = linalg::thin_svd(x)?;
                (sv.u.subcols(0, k).to_owned(), fallback(full))
            }
            (full, None) => {
                let (_, top) = linalg::sym_eigen_top(gram, |_| Ok(k))?;
                (top, fallback(full))
            }
        };
        // A reason the top-values path gave up is kept when the vectors then came from the
        // full decomposition without one of their own.
        let solver = match (solver, why) {
            (Solver::Full, Some(w)) => Solver::Fallback(w),
            (s, _) => s,
        };
        fix_sign_columns(&mut basis);
        Ok(Decomposition {
            spectrum,
            basis,
            rank,
            rank_tolerance: tol,
            dim: d,
            n_vectors: n,
            mean,
            route: Route::Gram,
            solver,
            total_energy,
            spectrum_complete,
        })
    }
}

/// [`ByValues::Large`] is handled before the match that would otherwise need it.
fn unreachable_large<T>() -> Result<T> {
    Err(Error::Numeric(
        "internal: the large-K route reached the top-K match".into(),
    ))
}

/// What [`top_by_values`] found.
enum ByValues {
    /// K and the top K eigenvalues (Ritz values, certified), with their vectors.
    Done {
        k: usize,
        values: Vec<f64>,
        top: TopK,
    },
    /// The full spectrum must decide; the reason when something could not be certified.
    Full(Option<String>),
    /// K is proven large enough that its Krylov basis would not pay: one full
    /// decomposition (values and vectors) decides K and gives the vectors.
    Large,
}

/// Starting K of the energy rule's growth (at least doubled, warm-started, until the rule is
/// met).
const ENERGY_FIRST_K: usize = 16;

/// The K rule served from the trace plus the top eigenpairs of the Gram `s` (both triangles
/// filled): see [`SideAccumulator::finish_top`]. `p` = min(d, n) caps K; `big` = max(d, n)
/// sets the rank tolerance (an eigenvalue at most big·ε·λ₁ is a null direction).
fn top_by_values(
    s: MatRef<'_, f64>,
    rule: KRule,
    trace: f64,
    p: usize,
    big: f64,
) -> Result<ByValues> {
    let m = s.nrows();
    if p == 0 || m == 0 || trace <= 0.0 {
        // All zero (or nothing stacked): rank 0, nothing kept.
        return Ok(ByValues::Done {
            k: 0,
            values: Vec::new(),
            top: TopK::Vectors(Mat::zeros(m, 0), Solver::Full),
        });
    }
    let slack = 4.0 * m as f64 * f64::EPSILON * trace;
    let above_rank = |values: &[f64], k: usize| {
        let lambda1 = values.first().copied().unwrap_or(0.0);
        values
            .get(k.wrapping_sub(1))
            .is_some_and(|&l| l > big * f64::EPSILON * lambda1)
    };
    let certified = |pairs: &topk::Pairs, k: usize| -> ByValues {
        ByValues::Done {
            k,
            values: pairs.values[..k].to_vec(),
            top: TopK::Vectors(
                pairs.vectors.subcols(0, k).to_owned(),
                Solver::Krylov {
                    restarts: pairs.restarts,
                    sin_bound: pairs.sin_bound,
                },
            ),
        }
    };
    match rule {
        KRule::GavishDonoho => Ok(ByValues::Full(None)),
        KRule::Fixed(k) => {
            let k = k.min(p);
            if k == 0 {
                return Ok(ByValues::Done {
                    k: 0,
                    values: Vec::new(),
                    top: TopK::Vectors(Mat::zeros(m, 0), Solver::Full),
                });
            }
            Ok(match topk::top_eigenpairs(s, k, None)? {
                TopPairs::Certified(pr) if above_rank(&pr.values, k) => certified(&pr, k),
                TopPairs::Certified(_) => ByValues::Full(None),
                TopPairs::Small => ByValues::Large,
                TopPairs::UseFull(why) => ByValues::Full(Some(why)),
            })
        }
        KRule::Energy(t) => {
            let target = t * trace - 1e-12 * trace;
            let mut k_try = ENERGY_FIRST_K.min(p);
            let mut start: Option<Mat<f64>> = None;
            let mut frobenius2: Option<f64> = None;
            loop {
                let pr = match topk::top_eigenpairs(s, k_try, start.as_ref().map(|m| m.as_ref()))? {
                    TopPairs::Certified(pr) => pr,
                    TopPairs::Small => return Ok(ByValues::Large),
                    // An intermediate K of the growth, not the rule's answer: say so.
                    TopPairs::UseFull(why) => {
                        return Ok(ByValues::Full(Some(format!(
                            "while growing K for the energy rule (trying K = {k_try}): {why}"
                        ))));
                    }
                };
                // Partial sums of the certified values: the exact ones lie in
                // [L_j, L_j + j·e] (Ritz values are lower bounds, e the proven error).
                let e = pr.value_error;
                let mut sum = 0.0;
                let (mut optimistic, mut pessimistic) = (None, None);
                for (j, &theta) in pr.values[..k_try].iter().enumerate() {
                    sum += theta;
                    if optimistic.is_none() && sum + (j + 1) as f64 * e >= target {
                        optimistic = Some(j + 1);
                    }
                    if pessimistic.is_none() && sum >= target {
                        pessimistic = Some(j + 1);
                    }
                }
                let k = match (optimistic, pessimistic) {
                    (None, _) => {
                        // Every eigenvalue after the k_try-th is at most the proven bound on
                        // λ_{k_try+1}, so the energy still missing needs at least that many
                        // more directions: jump there (at least doubling), and go straight
                        // to the full spectrum when the Krylov basis for it would not pay.
                        let missing = target - (sum + k_try as f64 * e);
                        let more = if pr.lambda_next > 0.0 {
                            (missing / pr.lambda_next).ceil().min(p as f64) as usize
                        } else {
                            p
                        };
                        let next = (2 * k_try).max(k_try + more).min(p);
                        if k_try >= p || topk::krylov_too_large(next, m) {
                            return Ok(ByValues::Large);
                        }
                        // The proven bound above sees only the certified K; the block's
                        // uncertified pairs usually show already that K is far larger. A
                        // growth step into a flat noise tail costs many restarts (9 s of
                        // a 4096² side's 32, BENCHMARKS.md) before proving the same.
                        let frobenius2 = *frobenius2.get_or_insert_with(|| linalg::frob2(s));
                        if topk::krylov_too_large(tail_count_estimate(&pr, target, frobenius2), m) {
                            return Ok(ByValues::Large);
                        }
                        k_try = next;
                        start = Some(pr.vectors);
                        continue;
                    }
                    (Some(a), Some(b)) if a == b => a,
                    _ => {
                        return Ok(ByValues::Full(Some(format!(
                            "the energy threshold falls within the proven error of the top values (K = {} or more): the full spectrum decides",
                            optimistic.unwrap_or(0)
                        ))));
                    }
                };
                if !above_rank(&pr.values, k) {
                    return Ok(ByValues::Full(None));
                }
                if k == k_try {
                    return Ok(certified(&pr, k));
                }
                // The first K of the k_try certified pairs: λ_{K+1} ≤ θ_{K+1} + e, so
                // Davis–Kahan bounds their angles with the first K residuals.
                let rk = pr.residuals[..k].iter().map(|r| r * r).sum::<f64>().sqrt();
                let delta = pr.values[k - 1] - (pr.values[k] + e + slack);
                let sin_bound = if delta > 0.0 {
                    rk / delta
                } else {
                    f64::INFINITY
                };
                if sin_bound <= topk::TARGET_SIN {
                    return Ok(ByValues::Done {
                        k,
                        values: pr.values[..k].to_vec(),
                        top: TopK::Vectors(
                            pr.vectors.subcols(0, k).to_owned(),
                            Solver::Krylov {
                                restarts: pr.restarts,
                                sin_bound,
                            },
                        ),
                    });
                }
                return Ok(
                    match topk::top_eigenpairs(s, k, Some(pr.vectors.as_ref()))? {
                        TopPairs::Certified(p2) => ByValues::Done {
                            k,
                            values: pr.values[..k].to_vec(),
                            top: TopK::Vectors(
                                p2.vectors.subcols(0, k).to_owned(),
                                Solver::Krylov {
                                    restarts: pr.restarts + p2.restarts,
                                    sin_bound: p2.sin_bound,
                                },
                            ),
                        },
                        TopPairs::Small => ByValues::Full(None),
                        TopPairs::UseFull(why) => ByValues::Full(Some(why)),
                    },
                );
            }
        }
    }
}

/// An estimate of the energy rule's K from all b Ritz pairs of a solver block, certified or
/// not, and ‖S‖²_F: the b values, raised by their residuals, leave at least M of the
/// `target` energy missing, held by eigenvalues whose squares sum to at most
/// Q = ‖S‖²_F − Σθᵢ² (θᵢ ≤ λᵢ). By Cauchy–Schwarz j eigenvalues of that tail sum to at most
/// √(j·Q), so at least M²/Q more are needed: b + M²/Q. It only chooses the route (the full
/// decomposition or more Krylov growth); both give the rule's exact K, so an error in it
/// costs time, never accuracy. 0 when the block may already hold the target.
fn tail_count_estimate(pairs: &topk::Pairs, target: f64, frobenius2: f64) -> usize {
    let b = pairs.values.len();
    let (mut upper, mut squares) = (0.0, 0.0);
    for (theta, r) in pairs.values.iter().zip(&pairs.residuals) {
        let theta = theta.max(0.0);
        upper += theta + r;
        squares += theta * theta;
    }
    let missing = target - upper;
    let tail_squares = frobenius2 - squares;
    if missing <= 0.0 || tail_squares <= 0.0 {
        return 0;
    }
    let more = (missing * missing / tail_squares).floor();
    b.saturating_add(more.min(usize::MAX as f64 / 2.0) as usize)
}

/// How a full decomposition taken in place of the top-K solver is recorded.
fn fallback(why: TopK) -> Solver {
    match why {
        TopK::UseFull(reason) => Solver::Fallback(reason),
        _ => Solver::Full,
    }
}

/// Left singular vectors of `x` [d x n] for the (approximate) right ones `w` [n x k]: an
/// orthonormal basis Q of span(X·W), then the SVD of the small Qᵀ·X = Y·Σ·Zᵀ; returns Q·Y
/// (the Rayleigh–Ritz left vectors of X in that span, orthonormal to rounding, descending).
fn left_from_right(x: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Result<Mat<f64>> {
    if w.ncols() == 0 {
        return Ok(Mat::zeros(x.nrows(), 0));
    }
    let xw = linalg::mul(x, w);
    let (q, _) = linalg::thin_qr(xw.as_ref());
    let c = linalg::mul(q.transpose(), x);
    let sv = linalg::thin_svd(c.as_ref())?;
    Ok(linalg::mul(q.as_ref(), sv.u.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(values: &[f64], residual: f64) -> topk::Pairs {
        topk::Pairs {
            vectors: Mat::zeros(1, values.len()),
            values: values.to_vec(),
            residuals: vec![residual; values.len()],
            k: values.len() / 2,
            lambda_next: 0.0,
            sin_bound: 0.0,
            value_error: 0.0,
            restarts: 1,
        }
    }

    /// The Lots-of-LoRAs spectrum's shape (BENCHMARKS.md): a 32-direction head holding 76%
    /// of the trace, then a flat tail over the other 4064 of d = 4096. After the first growth
    /// step (K = 16, a block of 32 pairs) the proven bound on λ₁₇ (still in the head) only
    /// asks for K ≈ 40; the block's 32 values and ‖S‖_F show that K is in the thousands.
    /// With exact values the estimate is a lower bound on the rule's K (Cauchy–Schwarz).
    #[test]
    fn tail_estimate_sees_a_flat_tail_behind_the_head_and_stays_below_k() {
        let d = 4096;
        let head: Vec<f64> = (0..32)
            .map(|i| 0.76 / 32.0 * (1.3 - 0.02 * i as f64))
            .collect();
        let head_sum: f64 = head.iter().sum();
        let tail = (1.0 - head_sum) / (d - 32) as f64;
        let lambda: Vec<f64> = (0..d)
            .map(|i| {
                if i < 32 {
                    head[i]
                } else {
                    tail * (1.0 + 1e-4 * (d - i) as f64)
                }
            })
            .collect();
        let trace: f64 = lambda.iter().sum();
        let frobenius2: f64 = lambda.iter().map(|l| l * l).sum();
        let target = 0.9 * trace;
        let mut sum = 0.0;
        let k_true = lambda
            .iter()
            .position(|l| {
                sum += l;
                sum >= target
            })
            .unwrap()
            + 1;
        let estimate = tail_count_estimate(&pairs(&lambda[..32], 0.0), target, frobenius2);
        assert!(estimate <= k_true, "{estimate} > {k_true}");
        assert!(estimate > k_true / 2, "{estimate} vs {k_true}");
        assert!(topk::krylov_too_large(estimate, d));
        // What the proven bound alone asks for after K = 16: a step still inside the head.
        let missing = target - lambda[..16].iter().sum::<f64>();
        let next = 16 + (missing / lambda[16]).ceil() as usize;
        assert!(!topk::krylov_too_large(next, d), "{next}");
        // Residuals lower the estimate (the block may hold more than its values say), and a
        // block that already reaches the target gives no estimate.
        let loose = tail_count_estimate(&pairs(&lambda[..32], 1e-3), target, frobenius2);
        assert!(loose < estimate, "{loose} vs {estimate}");
        assert_eq!(
            tail_count_estimate(&pairs(&lambda[..32], 0.0), 0.5 * trace, frobenius2),
            0
        );
    }
}
