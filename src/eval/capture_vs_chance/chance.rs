//! What chance alone gives: the expected capture of independent random subspaces of the
//! same size, and the largest singular value of a Gaussian matrix of a side's shape and
//! energy (the Bai–Yin edge), against which a spectrum's signal directions are counted.

use crate::subspace::ModuleSubspace;

/// Expected share of a ΔW [out x in] inside independent, uniformly random subspaces of
/// dimensions `k_a` in R^in and `k_b` in R^out: (K_A/in)·(K_B/out).
pub fn chance_capture(k_a: usize, in_features: usize, k_b: usize, out_features: usize) -> f64 {
    if in_features == 0 || out_features == 0 {
        return 0.0;
    }
    (k_a.min(in_features) as f64 / in_features as f64)
        * (k_b.min(out_features) as f64 / out_features as f64)
}

/// One side's spectrum against a Gaussian matrix of the same shape and total energy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NullComparison {
    /// Singular values above the null's largest one.
    pub signal_directions: usize,
    /// Share of the side's energy (Σσ²) in those directions.
    pub signal_energy: f64,
    /// The null's largest singular value, σ·(√rows + √cols) with σ² = Σσᵢ²/(rows·cols).
    pub null_edge: f64,
    /// σ₁ over the null edge (> 1: the top direction stands out).
    pub top_over_edge: f64,
    /// The spectrum held only the top values and every one of them stands above the edge:
    /// `signal_directions` and `signal_energy` are then lower bounds (extract with
    /// `--full-spectrum` for the exact figures).
    pub lower_bound: bool,
}

/// Compares a stacked side's `spectrum` (singular values, descending) with an i.i.d.
/// Gaussian matrix of the same shape [`rows` x `cols`] and the same energy: for such a matrix
/// the largest singular value is σ·(√rows + √cols) in the large-size limit (Bai–Yin; the
/// finite-size fluctuation is of order σ·(√rows+√cols)^(1/3), small against the edge at the
/// sizes here). Directions above that edge carry structure a random stack would not have.
pub fn spectrum_vs_null(spectrum: &[f64], rows: usize, cols: usize) -> NullComparison {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    spectrum_vs_null_of(spectrum, total, true, rows, cols)
}

/// [`spectrum_vs_null`] with the side's total energy Σσ² given, for a spectrum that may hold
/// only the top values (`complete` false: a bundle extracted without `--full-spectrum`). The
/// edge depends only on the total, so it is exact; the directions above it are exact unless
/// every stored value is above it ([`NullComparison::lower_bound`]).
pub fn spectrum_vs_null_of(
    spectrum: &[f64],
    total: f64,
    complete: bool,
    rows: usize,
    cols: usize,
) -> NullComparison {
    if rows == 0 || cols == 0 || !total.is_finite() || total <= 0.0 {
        return NullComparison {
            signal_directions: 0,
            signal_energy: 0.0,
            null_edge: 0.0,
            top_over_edge: 0.0,
            lower_bound: false,
        };
    }
    let sigma = (total / (rows as f64 * cols as f64)).sqrt();
    let edge = sigma * ((rows as f64).sqrt() + (cols as f64).sqrt());
    let above: Vec<f64> = spectrum.iter().copied().filter(|&s| s > edge).collect();
    NullComparison {
        signal_directions: above.len(),
        signal_energy: above.iter().map(|s| s * s).sum::<f64>() / total,
        null_edge: edge,
        top_over_edge: spectrum.first().map_or(0.0, |s| s / edge),
        lower_bound: !complete && above.len() == spectrum.len(),
    }
}

/// Rows of the stacked side of `m` (Σ r over the adapters; the bundle records n and r_max,
/// so this is exact when the adapters share one rank, an upper bound otherwise) and its
/// columns, per side: (A rows, in), (B rows, out).
pub fn stack_shapes(m: &ModuleSubspace) -> ((usize, usize), (usize, usize)) {
    let rows = m.n_adapters * m.r_max;
    ((rows, m.in_features), (rows, m.out_features))
}
