//! How faithfully a bundle holds its adapters: the bound on the error its storage dtype adds
//! to each module's bases and to an adapter inside the span ([`storage_error_bounds`],
//! [`projection_error_bound`]), and the share of each side's energy its top directions keep
//! ([`explained_energy`]).

use super::Bundle;
use super::quant::{StorageDtype, float_error_bound_sq, int8_error_bound_sq};

/// Per-side bound on the storage error ‖Ṽ − V‖_F of one module of a loaded bundle, as
/// (A side, B side). For float dtypes it is the a-priori u·√K bound (see [`super::quant`]); for
/// int8 it is √(Σ n·s²/4) with each vector's scale recovered from the dequantized values
/// (the absmax entry of a vector is stored as ±127, so s = max|v̂|/127 exactly).
pub fn storage_error_bounds(bundle: &Bundle, module: &str) -> Option<(f64, f64)> {
    let m = bundle.subspace.modules.get(module)?;
    let (ka, kb) = (m.v_a.nrows(), m.v_b.ncols());
    let (ea, eb) = match bundle.manifest.dtype {
        StorageDtype::Int8 => {
            let row_scales: Vec<f32> = (0..ka)
                .map(|i| {
                    ((0..m.in_features).fold(0.0f64, |a, j| a.max(m.v_a[(i, j)].abs())) / 127.0)
                        as f32
                })
                .collect();
            let col_scales: Vec<f32> = (0..kb)
                .map(|j| {
                    ((0..m.out_features).fold(0.0f64, |a, i| a.max(m.v_b[(i, j)].abs())) / 127.0)
                        as f32
                })
                .collect();
            (
                int8_error_bound_sq(&row_scales, m.in_features),
                int8_error_bound_sq(&col_scales, m.out_features),
            )
        }
        d => (
            float_error_bound_sq(d, ka, m.in_features)?,
            float_error_bound_sq(d, kb, m.out_features)?,
        ),
    };
    Some((ea.sqrt(), eb.sqrt()))
}

/// Bound on the relative ΔW error that storage alone causes for an adapter inside the span:
/// √(‖E_A‖²_F + ‖E_B‖²_F) with the bounds of [`storage_error_bounds`].
pub fn projection_error_bound(bundle: &Bundle, module: &str) -> Option<f64> {
    let (a, b) = storage_error_bounds(bundle, module)?;
    Some((a * a + b * b).sqrt())
}

/// Cumulative explained-energy curve of a spectrum: entry k−1 is Σ_{i<k} σᵢ² / Σ σᵢ², the share
/// kept by the top k directions (the paper's Fig. 2). Empty for an empty or all-zero spectrum.
pub fn explained_energy(spectrum: &[f64]) -> Vec<f64> {
    let total: f64 = spectrum.iter().map(|s| s * s).sum();
    explained_energy_of(spectrum, total)
}

/// [`explained_energy`] against a given total Σσ² of the whole stack, for a spectrum that may
/// hold only the top values (a bundle extracted without `--full-spectrum`): the curve then
/// stops at the last stored value, exact up to there. Empty when `total` is not positive.
pub fn explained_energy_of(spectrum: &[f64], total: f64) -> Vec<f64> {
    if total <= 0.0 || !total.is_finite() {
        return Vec::new();
    }
    let mut acc = 0.0;
    spectrum
        .iter()
        .map(|s| {
            acc += s * s;
            acc / total
        })
        .collect()
}
