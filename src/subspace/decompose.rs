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
//! n x n Gram while n ≤ d.

use super::topk::{self, Solver, TopK, TopPairs};
use super::{KRule, select};
use crate::error::{Error, Result};
use crate::linalg::{self, fix_sign_columns};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

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

/// The exact state of one side after some vectors: what [`SideAccumulator`] holds, so that
/// more vectors can be added later without the first ones (`elx extract --update`).
#[derive(Clone, Debug)]
pub struct SideStats {
    /// Vector length d.
    pub dim: usize,
    /// Vectors stacked, n = Σr.
    pub n: usize,
    /// Their sum (for centering).
    pub sum: Vec<f64>,
    /// The vectors themselves or their Gram.
    pub held: Held,
}

impl SideStats {
    /// Values a statistics file stores for this side (sum included): d + d·n while n ≤ d,
    /// else d + d·(d + 1)/2 (the Gram's lower triangle).
    pub fn stored_values(&self) -> usize {
        self.dim
            + match &self.held {
                Held::Columns(c) => c.len(),
                Held::Gram(_) => self.dim * (self.dim + 1) / 2,
            }
    }
}

/// What a side holds: the stacked vectors while there are at most d of them, else their Gram.
#[derive(Clone, Debug)]
pub enum Held {
    /// Column-major d x n: the stacked vectors.
    Columns(Vec<f64>),
    /// The d x d Gram Σ x·xᵀ; only the lower triangle is meaningful.
    Gram(Mat<f64>),
}

enum State {
    /// Every stacked vector so far, column-major d x n.
    Columns(Vec<f64>),
    /// Lower triangle of the Gram Σ x·xᵀ, and columns not folded into it yet (column-major):
    /// folding [`GRAM_BATCH`] columns per product instead of one adapter's r keeps the
    /// products large enough to run at full speed.
    Gram { g: Mat<f64>, pending: Vec<f64> },
}

/// Columns folded into the streamed Gram per product.
const GRAM_BATCH: usize = 128;

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
            Route::Gram => State::Gram {
                g: Mat::zeros(dim, dim),
                pending: Vec::new(),
            },
            _ => State::Columns(Vec::new()),
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
        let d = self.dim;
        if block.nrows() != d {
            return Err(Error::Numeric(format!(
                "block of {} rows added to a side of dimension {}",
                block.nrows(),
                d
            )));
        }
        for j in 0..block.ncols() {
            match block.col(j).try_as_col_major() {
                Some(c) => {
                    for (s, v) in self.sum.iter_mut().zip(c.as_slice()) {
                        *s += v;
                    }
                }
                None => {
                    for i in 0..d {
                        self.sum[i] += block[(i, j)];
                    }
                }
            }
        }
        self.n += block.ncols();
        if self.route == Route::Auto
            && self.n > d
            && let State::Columns(cols) = &mut self.state
        {
            // Past the crossover: fold what we hold into the Gram and stream from now on.
            let mut g = Mat::zeros(d, d);
            gram_fold(&mut g, cols, d);
            self.state = State::Gram {
                g,
                pending: Vec::new(),
            };
        }
        let buf = match &mut self.state {
            State::Columns(cols) => cols,
            State::Gram { pending, .. } => pending,
        };
        buf.reserve(d * block.ncols());
        for j in 0..block.ncols() {
            match block.col(j).try_as_col_major() {
                Some(c) => buf.extend_from_slice(c.as_slice()),
                None => buf.extend((0..d).map(|i| block[(i, j)])),
            }
        }
        if let State::Gram { g, pending } = &mut self.state
            && pending.len() >= GRAM_BATCH * d
        {
            gram_fold(g, pending, d);
            pending.clear();
        }
        Ok(())
    }

    /// The exact state so far, as sufficient statistics ([`SideStats`]): the columns while
    /// n ≤ d, else the Gram's lower triangle (pending columns folded in first). Only the
    /// [`Route::Auto`] state can be restored by [`SideAccumulator::from_stats`].
    pub fn into_stats(self) -> SideStats {
        let held = match self.state {
            State::Columns(cols) => Held::Columns(cols),
            State::Gram { mut g, pending } => {
                gram_fold(&mut g, &pending, self.dim);
                Held::Gram(g)
            }
        };
        SideStats {
            dim: self.dim,
            n: self.n,
            sum: self.sum,
            held,
        }
    }

    /// An accumulator on [`Route::Auto`] that continues from `stats`, in the state an
    /// accumulator fed the same vectors holds: adding more vectors then gives the
    /// decomposition of the whole stack. Statistics that no such accumulator can hold (sizes
    /// that disagree, columns past the crossover n > d, a Gram before it, non-finite values)
    /// are an [`Error::Usage`] saying which.
    pub fn from_stats(stats: SideStats) -> Result<Self> {
        let SideStats { dim, n, sum, held } = stats;
        if sum.len() != dim {
            return Err(Error::Usage(format!(
                "expected a sum of {dim} values, found {}",
                sum.len()
            )));
        }
        let state = match held {
            Held::Columns(cols) if n <= dim && Some(cols.len()) == dim.checked_mul(n) => {
                State::Columns(cols)
            }
            Held::Columns(cols) => {
                return Err(Error::Usage(format!(
                    "expected {n} stacked vectors of {dim} values held as columns (n <= d), found {} values",
                    cols.len()
                )));
            }
            Held::Gram(g) if n > dim && g.nrows() == dim && g.ncols() == dim => State::Gram {
                g,
                pending: Vec::new(),
            },
            Held::Gram(g) => {
                return Err(Error::Usage(format!(
                    "expected a {dim} x {dim} Gram of n = {n} > d vectors, found {} x {}",
                    g.nrows(),
                    g.ncols()
                )));
            }
        };
        let finite = sum.iter().all(|x| x.is_finite())
            && match &state {
                State::Columns(c) => c.iter().all(|x| x.is_finite()),
                State::Gram { g, .. } => (0..dim).all(|j| (j..dim).all(|i| g[(i, j)].is_finite())),
            };
        if !finite {
            return Err(Error::Usage(
                "expected finite statistics, found NaN or Inf".into(),
            ));
        }
        Ok(Self {
            dim,
            n,
            sum,
            route: Route::Auto,
            state,
        })
    }

    /// The mean of the stacked vectors when centering is asked (and there are any).
    fn mean(&self, center: bool) -> Option<Vec<f64>> {
        let n = self.n;
        (center && n > 0).then(|| self.sum.iter().map(|s| s / n as f64).collect())
    }

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

    /// Finishes with the top K singular vectors only, K chosen by `rule`; the spectrum is
    /// computed in full only when `full_spectrum` is asked or the rule needs it.
    ///
    /// On [`Route::Auto`] the work is done on the Gram in the **smaller** dimension: XᵀX
    /// [n x n] when n ≤ d, the streamed X·Xᵀ [d x d] otherwise. Its trace is the total energy
    /// Σσ². Then:
    /// * [`KRule::Fixed`] and [`KRule::Energy`], without `full_spectrum`: the top eigenpairs
    ///   from the certified block Krylov solver ([`super::topk::top_eigenpairs`]), which proves
    ///   an upper bound on the next eigenvalue by an inertia test and bounds the error of each
    ///   Ritz value. The energy rule grows K in blocks (16, then at least doubling and at least
    ///   to the energy still missing over the bound on the next eigenvalue, each warm-started
    ///   from the last) until the partial sums of the certified values reach the threshold of the
    ///   trace; the K it returns is the full spectrum's K whenever the threshold lies outside
    ///   the values' proven error (else the full spectrum decides, and the vectors follow).
    ///   The spectrum returned is the top K values (`spectrum_complete` false).
    /// * A K proven large enough that its Krylov basis would be a sizeable share of the
    ///   matrix ([`super::topk::krylov_too_large`]): one full decomposition, the SVD of X when
    ///   n ≤ d, the Gram's eigendecomposition otherwise, gives the values, K and the vectors.
    /// * [`KRule::GavishDonoho`] (its threshold is the median singular value, which the trace
    ///   and the top values do not give), `full_spectrum`, a stack whose rank is below K, or a
    ///   K the solver above cannot certify: every eigenvalue (values only), K from the full
    ///   spectrum, the K vectors from the certified solver with the eigenvalues known
    ///   ([`super::topk::top_eigenvectors`]) or from the full decomposition when that
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
                    let (vals, vecs) = linalg::sym_eigen_desc(gram.as_ref())?;
                    drop(gram);
                    let (spectrum, rank, tol) = gram_spectrum(&vals, p, big);
                    let k =
                        select::select_k_total(rule, &spectrum, total_energy, rank, (n, d))?.min(p);
                    (spectrum, vecs.subcols(0, k).to_owned(), rank, tol, k)
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
                let (_, all) = linalg::sym_eigen_desc(gram.as_ref())?;
                (all.subcols(0, k).to_owned(), fallback(full))
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

/// Singular values from the Gram's eigenvalues `vals` (descending): the first `p`, with the
/// rank tolerance √(big·ε)·σ₁. Below it a Gram eigenvalue is rounding (its error is about
/// ε·λ₁, so the square root of a null direction's reads ~√ε·σ₁): those directions are
/// reported as exactly 0, as the SVD would find them to rounding, not as that noise.
/// Returns (spectrum, rank, tolerance).
fn gram_spectrum(vals: &[f64], p: usize, big: f64) -> (Vec<f64>, usize, f64) {
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

/// Copies the lower triangle of a square matrix onto its upper one, in 64 x 64 tiles (a plain
/// row-by-row copy reads the lower triangle across columns, one cache line per element).
fn fill_upper_from_lower(g: &mut Mat<f64>) {
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
fn gram_trace(g: MatRef<'_, f64>) -> f64 {
    (0..g.nrows().min(g.ncols()))
        .map(|i| g[(i, i)])
        .sum::<f64>()
        .max(0.0)
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

/// X_c·X_cᵀ = X·Xᵀ − n·μ·μᵀ (lower triangle is enough; all of it is updated).
fn subtract_mean_gram(g: &mut Mat<f64>, mu: &[f64], n: usize) {
    let d = g.nrows();
    for j in 0..d {
        for i in 0..d {
            g[(i, j)] -= n as f64 * mu[i] * mu[j];
        }
    }
}

/// Lower triangle of g += X·Xᵀ for the column-major `cols` (d rows).
fn gram_fold(g: &mut Mat<f64>, cols: &[f64], d: usize) {
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
