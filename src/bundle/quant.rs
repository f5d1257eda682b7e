//! Storage dtypes of bundle components and their (de)quantization.
//!
//! # Error bounds (what a stored basis can lose)
//!
//! Let Ṽ = V + E be the stored basis. Per entry:
//!
//! * f32 / f16 / bf16 (round to nearest): |e| ≤ u·|v| for normal numbers, with unit roundoff
//!   u = 2⁻²⁴ (f32), 2⁻¹¹ (f16), 2⁻⁸ (bf16); f16 subnormals (|v| < 2⁻¹⁴) add at most 2⁻²⁵
//!   absolute. Because a basis vector has unit norm, ‖E‖_F ≤ u·√K (plus the subnormal term).
//! * int8 (symmetric, one absmax scale s = max|row|/127 per stored row, stored as f32):
//!   v̂ = q·s with q = round(v/s) ∈ [−127, 127], so |e| ≤ s/2 = max|row|/254 exactly, and
//!   ‖E‖²_F ≤ Σ_rows n_row·s²/4 (n_row entries per row), computable from the scales alone
//!   ([`int8_error_bound_sq`]).
//!
//! For an adapter whose ΔW lies inside the exact span (ΔW = V_B·M·V_A), projecting it
//! orthogonally onto the span of the stored bases loses
//! ‖ΔW − P̃_B·ΔW·P̃_A‖_F / ‖ΔW‖_F ≤ √(‖E_A‖²₂ + ‖E_B‖²₂) ≤ √(‖E_A‖²_F + ‖E_B‖²_F),
//! because (I−P̃_B)·V_B = −(I−P̃_B)·E_B, V_A·(I−P̃_A) = −E_A·(I−P̃_A), and the two error
//! terms lie in orthogonal ranges. See `tests/bundle_quant.rs` for the measured figures.
//!
//! For int8 the bases are stored with the scale per *basis vector*: per row of V_A
//! [K_A x in] and per column of V_B [out x K_B] (i.e. per row of V_Bᵀ), each a 1-D f32
//! tensor `<module>.V_A.scale` `[K_A]` / `<module>.V_B.scale` `[K_B]`.

use crate::tensorfile::Dtype;
use faer::Mat;

/// How bundle components are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Symmetric int8 with one f32 absmax scale per stored basis vector.
    Int8,
}

impl StorageDtype {
    /// The safetensors dtype of the stored components.
    pub fn tensor_dtype(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::F16 => Dtype::F16,
            StorageDtype::Bf16 => Dtype::BF16,
            StorageDtype::Int8 => Dtype::I8,
        }
    }

    /// Lowercase name, as in the manifest and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "f32",
            StorageDtype::F16 => "f16",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::Int8 => "int8",
        }
    }

    /// Parses `f32`, `f16`, `bf16` or `int8`.
    pub fn parse(s: &str) -> Option<StorageDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(StorageDtype::F32),
            "f16" => Some(StorageDtype::F16),
            "bf16" => Some(StorageDtype::Bf16),
            "int8" | "i8" => Some(StorageDtype::Int8),
            _ => None,
        }
    }

    /// Unit roundoff u of the float dtypes (|v̂ − v| ≤ u·|v| for normal numbers); `None` for
    /// int8, whose error depends on the scales.
    pub fn unit_roundoff(self) -> Option<f64> {
        match self {
            StorageDtype::F32 => Some(2f64.powi(-24)),
            StorageDtype::F16 => Some(2f64.powi(-11)),
            StorageDtype::Bf16 => Some(2f64.powi(-8)),
            StorageDtype::Int8 => None,
        }
    }
}

/// Vectors quantized to int8 with one scale per vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Vectors {
    /// The quantized values, vector after vector (each `len` long).
    pub values: Vec<i8>,
    /// One scale per vector: value ≈ q·scale.
    pub scales: Vec<f32>,
}

/// Quantizes each of `vectors` (given as an iterator of slices) symmetrically to int8 with its
/// own absmax scale. The scale is rounded to f32 *before* the values are quantized against
/// it, so the stored pair meets |v − q·s| ≤ s/2 exactly.
pub fn quantize_int8<'a>(vectors: impl Iterator<Item = &'a [f64]>) -> Int8Vectors {
    let mut values = Vec::new();
    let mut scales = Vec::new();
    for v in vectors {
        let absmax = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let s = (absmax / 127.0) as f32;
        scales.push(s);
        if s > 0.0 && s.is_finite() {
            let sd = f64::from(s);
            values.extend(
                v.iter()
                    .map(|x| (x / sd).round().clamp(-127.0, 127.0) as i8),
            );
        } else {
            // An all-zero vector (or one that underflows f32) stores zeros.
            values.extend(std::iter::repeat_n(0i8, v.len()));
        }
    }
    Int8Vectors { values, scales }
}

/// Rows of `m` as owned vectors (row-major copies), for quantization per row.
pub fn rows_of(m: &Mat<f64>) -> Vec<Vec<f64>> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect())
        .collect()
}

/// Columns of `m` as owned vectors.
pub fn cols_of(m: &Mat<f64>) -> Vec<Vec<f64>> {
    (0..m.ncols())
        .map(|j| (0..m.nrows()).map(|i| m[(i, j)]).collect())
        .collect()
}

/// ‖E‖²_F bound of an int8 matrix from its scales: Σ n·s²/4 with n entries per scaled vector.
pub fn int8_error_bound_sq(scales: &[f32], entries_per_vector: usize) -> f64 {
    scales
        .iter()
        .map(|&s| entries_per_vector as f64 * f64::from(s) * f64::from(s) / 4.0)
        .sum()
}

/// A-priori bound on ‖E‖²_F of a stored float basis with `k` unit-norm vectors of `n` entries:
/// (u·√k + 2⁻²⁵·√(k·n))², the second term covering f16 subnormals.
pub fn float_error_bound_sq(dtype: StorageDtype, k: usize, n: usize) -> Option<f64> {
    let u = dtype.unit_roundoff()?;
    let sub = if dtype == StorageDtype::F16 {
        2f64.powi(-25) * ((k * n) as f64).sqrt()
    } else {
        0.0
    };
    let b = u * (k as f64).sqrt() + sub;
    Some(b * b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_entry_error_is_at_most_half_a_scale() {
        let mut rng = crate::util::GaussianRng::new(3);
        let v: Vec<f64> = (0..500).map(|_| rng.next_normal()).collect();
        let q = quantize_int8(std::iter::once(v.as_slice()));
        let s = f64::from(q.scales[0]);
        let absmax = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!((s - absmax / 127.0).abs() <= absmax / 127.0 * 1e-7);
        let worst = v
            .iter()
            .zip(&q.values)
            .map(|(x, &qi)| (x - f64::from(qi) * s).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= s / 2.0 * (1.0 + 1e-12),
            "worst {worst} vs s/2 {}",
            s / 2.0
        );
        // The absmax entry maps to ±127.
        assert_eq!(q.values.iter().map(|x| x.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn zero_vector_quantizes_to_zero() {
        let v = [0.0; 7];
        let q = quantize_int8(std::iter::once(&v[..]));
        assert_eq!(q.scales, vec![0.0]);
        assert_eq!(q.values, vec![0i8; 7]);
    }

    #[test]
    fn parse_names_round_trip() {
        for d in [
            StorageDtype::F32,
            StorageDtype::F16,
            StorageDtype::Bf16,
            StorageDtype::Int8,
        ] {
            assert_eq!(StorageDtype::parse(d.name()), Some(d));
        }
        assert_eq!(StorageDtype::parse("f8"), None);
    }
}
