//! [`SideAccumulator`]: the blocks of one side taken one adapter at a time, held as columns
//! while there are at most d of them and as the d x d Gram after, and its exact state as
//! [`SideStats`] (`elx extract --update` continues from it).

use super::Route;
use super::gram::gram_fold;
use crate::error::{Error, Result};
use faer::{Mat, MatRef};

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

pub(super) enum State {
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
    pub(super) dim: usize,
    pub(super) n: usize,
    pub(super) sum: Vec<f64>,
    pub(super) route: Route,
    pub(super) state: State,
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
    pub(super) fn mean(&self, center: bool) -> Option<Vec<f64>> {
        let n = self.n;
        (center && n > 0).then(|| self.sum.iter().map(|s| s / n as f64).collect())
    }
}
