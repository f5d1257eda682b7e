//! The K rules: how many principal directions one side keeps.
//!
//! Every rule is capped at the numerical rank of the stack, because directions beyond it are
//! rounding noise, not data. A stack that is entirely zero (e.g. untrained adapters with B = 0)
//! has rank 0 and keeps nothing.

use super::KRule;
use crate::error::{Error, Result};

/// Gavish–Donoho ω(β) for unknown noise, the paper's cubic approximation
/// ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43 (Gavish & Donoho 2014, eq. 5).
pub fn gavish_donoho_omega(beta: f64) -> f64 {
    0.56 * beta.powi(3) - 0.95 * beta.powi(2) + 1.82 * beta + 1.43
}

/// Median of the values (mean of the two middle ones for an even count, as numpy does);
/// 0 for an empty slice.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Chooses K for one side.
///
/// * `spectrum`: all singular values of the stack, descending (min(rows, cols) of them);
/// * `rank`: numerical rank (K never exceeds it);
/// * `shape`: (rows, cols) of the stack, for Gavish–Donoho's aspect ratio β = min/max.
///
/// Rules:
/// * `Fixed(K)`: min(K, rank). `Fixed(0)` is allowed (a basis of pseudo-PCs only, e.g. the
///   random-basis control).
/// * `Energy(t)`, 0 < t ≤ 1: the smallest K with Σ_{i≤K} σᵢ² ≥ t·Σσ². The comparison allows a
///   relative slack of 1e-12·Σσ² so that a boundary hit exactly in exact arithmetic (e.g.
///   σ² = [4, 3, 2, 1], t = 0.7 → K = 2) is not missed by rounding.
/// * `GavishDonoho`: τ = ω(β)·median(σ); keep the σ > τ, at least 1 (when rank ≥ 1).
pub fn select_k(
    rule: KRule,
    spectrum: &[f64],
    rank: usize,
    shape: (usize, usize),
) -> Result<usize> {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    select_k_total(rule, spectrum, total, rank, shape)
}

/// [`select_k`] with the total energy Σσ² given (the trace of the Gram, which extraction
/// knows exactly without the full spectrum): the energy rule compares the partial sums of
/// `spectrum` with `total`. The other rules do not read `total`.
pub fn select_k_total(
    rule: KRule,
    spectrum: &[f64],
    total: f64,
    rank: usize,
    shape: (usize, usize),
) -> Result<usize> {
    let rank = rank.min(spectrum.len());
    let k = match rule {
        KRule::Fixed(k) => k,
        KRule::Energy(t) => {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Error::Usage(format!(
                    "energy threshold must be in (0, 1], got {t}"
                )));
            }
            if total <= 0.0 {
                0
            } else {
                let target = t * total - 1e-12 * total;
                let mut acc = 0.0;
                let mut k = spectrum.len();
                for (i, s) in spectrum.iter().enumerate() {
                    acc += s * s;
                    if acc >= target {
                        k = i + 1;
                        break;
                    }
                }
                k
            }
        }
        KRule::GavishDonoho => {
            let (a, b) = shape;
            let (lo, hi) = (a.min(b), a.max(b));
            if hi == 0 {
                0
            } else {
                let beta = lo as f64 / hi as f64;
                let tau = gavish_donoho_omega(beta) * median(spectrum);
                spectrum.iter().filter(|&&s| s > tau).count().max(1)
            }
        }
    };
    Ok(k.min(rank))
}

/// Share of Σσ² inside the first `k` singular values (1 when the spectrum is all zero:
/// nothing was left out).
pub fn energy_kept(spectrum: &[f64], k: usize) -> f64 {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    if total == 0.0 {
        return 1.0;
    }
    spectrum.iter().take(k).map(|s| s * s).sum::<f64>() / total
}

/// Share of `total` (Σσ² of the whole stack) inside the first `k` singular values of
/// `spectrum` (1 when `total` is 0: nothing was left out).
pub fn energy_kept_of(spectrum: &[f64], k: usize, total: f64) -> f64 {
    if total <= 0.0 {
        return 1.0;
    }
    spectrum.iter().take(k).map(|s| s * s).sum::<f64>() / total
}
