//! The stored tensors of one module: their names, their encoding in the storage dtype
//! (int8 with per-vector scales, or a float type) and their decoding, checked, back to f64.

use super::super::quant::{StorageDtype, cols_of, quantize_int8, rows_of};
use super::{ModuleManifest, SideSummary};
use crate::error::{Error, Result};
use crate::subspace::{ModuleSubspace, SideInfo};
use crate::tensorfile::{Dtype, TensorFile, TensorOut};
use faer::Mat;

/// Names of the tensors of one module.
pub(in crate::bundle) struct Names {
    pub(in crate::bundle) v_a: String,
    pub(in crate::bundle) v_b: String,
    pub(in crate::bundle) v_a_scale: String,
    pub(in crate::bundle) v_b_scale: String,
    pub(in crate::bundle) sigma_a: String,
    pub(in crate::bundle) sigma_b: String,
}

impl Names {
    pub(in crate::bundle) fn of(module: &str) -> Names {
        Names {
            v_a: format!("{module}.V_A"),
            v_b: format!("{module}.V_B"),
            v_a_scale: format!("{module}.V_A.scale"),
            v_b_scale: format!("{module}.V_B.scale"),
            sigma_a: format!("{module}.sigma_A"),
            sigma_b: format!("{module}.sigma_B"),
        }
    }

    /// The names a module stores with `dtype`, in the order [`encode_module`] writes them
    /// (the order fixes the data offsets, so a merge that copies tensors keeps the bytes).
    pub(in crate::bundle) fn stored(&self, dtype: StorageDtype) -> Vec<&str> {
        match dtype {
            StorageDtype::Int8 => vec![
                &self.v_a,
                &self.v_a_scale,
                &self.v_b,
                &self.v_b_scale,
                &self.sigma_a,
                &self.sigma_b,
            ],
            _ => vec![&self.v_a, &self.v_b, &self.sigma_a, &self.sigma_b],
        }
    }
}

fn flat_row_major(m: &Mat<f64>) -> Vec<f64> {
    rows_of(m).into_iter().flatten().collect()
}

fn check_finite(m: &Mat<f64>, what: &str) -> Result<()> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            if !m[(i, j)].is_finite() {
                return Err(Error::Numeric(format!(
                    "{what} has a non-finite entry at ({i}, {j})"
                )));
            }
        }
    }
    Ok(())
}

/// Stored tensors of one module.
pub(super) fn encode_module(
    name: &str,
    m: &ModuleSubspace,
    dtype: StorageDtype,
) -> Result<Vec<TensorOut>> {
    let n = Names::of(name);
    check_finite(&m.v_a, &n.v_a)?;
    check_finite(&m.v_b, &n.v_b)?;
    for (what, s) in [(&n.sigma_a, &m.a.spectrum), (&n.sigma_b, &m.b.spectrum)] {
        if s.iter().any(|x| !x.is_finite()) {
            return Err(Error::Numeric(format!("{what} has a non-finite value")));
        }
    }
    let mut out = Vec::with_capacity(6);
    match dtype {
        StorageDtype::Int8 => {
            let qa = quantize_int8(rows_of(&m.v_a).iter().map(|v| v.as_slice()));
            out.push(TensorOut {
                name: n.v_a.clone(),
                dtype: Dtype::I8,
                shape: vec![m.v_a.nrows(), m.v_a.ncols()],
                data: qa.values.iter().map(|&q| q as u8).collect(),
            });
            out.push(scale_tensor(n.v_a_scale, &qa.scales));
            // Quantize V_B per column (basis vector), then lay the values out row-major.
            let (rows, cols) = (m.v_b.nrows(), m.v_b.ncols());
            let qb = quantize_int8(cols_of(&m.v_b).iter().map(|v| v.as_slice()));
            let mut data = vec![0u8; rows * cols];
            for j in 0..cols {
                for i in 0..rows {
                    data[i * cols + j] = qb.values[j * rows + i] as u8;
                }
            }
            out.push(TensorOut {
                name: n.v_b.clone(),
                dtype: Dtype::I8,
                shape: vec![rows, cols],
                data,
            });
            out.push(scale_tensor(n.v_b_scale, &qb.scales));
        }
        _ => {
            let d = dtype.tensor_dtype();
            out.push(TensorOut::from_f64(
                &n.v_a,
                d,
                vec![m.v_a.nrows(), m.v_a.ncols()],
                &flat_row_major(&m.v_a),
            ));
            out.push(TensorOut::from_f64(
                &n.v_b,
                d,
                vec![m.v_b.nrows(), m.v_b.ncols()],
                &flat_row_major(&m.v_b),
            ));
        }
    }
    out.push(TensorOut::from_f64(
        &n.sigma_a,
        Dtype::F32,
        vec![m.a.spectrum.len()],
        &m.a.spectrum,
    ));
    out.push(TensorOut::from_f64(
        &n.sigma_b,
        Dtype::F32,
        vec![m.b.spectrum.len()],
        &m.b.spectrum,
    ));
    Ok(out)
}

fn scale_tensor(name: String, scales: &[f32]) -> TensorOut {
    TensorOut {
        name,
        dtype: Dtype::F32,
        shape: vec![scales.len()],
        data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
    }
}

/// Checks presence, dtype and (optionally) shape of one tensor.
pub(crate) fn check_tensor(
    tf: &TensorFile,
    name: &str,
    dtype: Dtype,
    shape: Option<&[usize]>,
) -> Result<()> {
    let info = tf
        .info(name)
        .ok_or_else(|| Error::bad_tensor(tf.path(), name, "expected this tensor, found none"))?;
    if info.dtype != dtype {
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            format!(
                "expected dtype {}, found {}",
                dtype.name(),
                info.dtype.name()
            ),
        ));
    }
    match shape {
        Some(s) if info.shape != s => Err(Error::bad_tensor(
            tf.path(),
            name,
            format!("expected shape {s:?}, found {:?}", info.shape),
        )),
        None if info.shape.len() != 1 => Err(Error::bad_tensor(
            tf.path(),
            name,
            format!("expected a 1-D tensor, found shape {:?}", info.shape),
        )),
        _ => Ok(()),
    }
}

/// Int8 matrix times per-vector scales; `per_row` says whether scales go with rows or columns.
fn dequantize_int8(
    tf: &TensorFile,
    name: &str,
    scale_name: &str,
    per_row: bool,
) -> Result<Mat<f64>> {
    let shape = tf.info(name).map(|i| i.shape).unwrap_or_default();
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        _ => return Err(Error::bad_tensor(tf.path(), name, "expected a 2-D tensor")),
    };
    let (_, q) = tf.raw(name)?;
    let (_, scales) = tf.read_f64(scale_name)?;
    if let Some(s) = scales.iter().find(|s| **s < 0.0) {
        return Err(Error::bad_tensor(
            tf.path(),
            scale_name,
            format!("expected non-negative scales, found {s}"),
        ));
    }
    if q.len() != rows * cols || scales.len() != if per_row { rows } else { cols } {
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            "expected data that matches its shape and scales",
        ));
    }
    Ok(Mat::from_fn(rows, cols, |i, j| {
        let s = if per_row { scales[i] } else { scales[j] };
        f64::from(q[i * cols + j] as i8) * s
    }))
}

/// One module of a bundle, decoded and checked (orthonormal entries, finite spectra, the
/// total energy of each side).
pub(super) fn read_module(
    tf: &TensorFile,
    name: &str,
    mm: &ModuleManifest,
    dtype: StorageDtype,
) -> Result<ModuleSubspace> {
    let n = Names::of(name);
    let (v_a, v_b) = if dtype == StorageDtype::Int8 {
        (
            dequantize_int8(tf, &n.v_a, &n.v_a_scale, true)?,
            dequantize_int8(tf, &n.v_b, &n.v_b_scale, false)?,
        )
    } else {
        (
            tf.read_mat(&n.v_a, Some([mm.k_a, mm.in_features]))?,
            tf.read_mat(&n.v_b, Some([mm.out_features, mm.k_b]))?,
        )
    };
    // The bases are orthonormal: no entry can exceed 1 in magnitude (quantization rounds
    // within it). A larger or non-finite entry would carry any coefficients out of range.
    for (t, v) in [(&n.v_a, &v_a), (&n.v_b, &v_b)] {
        let worst = (0..v.ncols())
            .flat_map(|j| (0..v.nrows()).map(move |i| v[(i, j)]))
            .find(|x| x.is_nan() || x.abs() > 1.0 + 1e-3);
        if let Some(x) = worst {
            return Err(Error::bad_tensor(
                tf.path(),
                t,
                format!("expected orthonormal components (every entry within [-1, 1]), found {x}"),
            ));
        }
    }
    let (_, sigma_a) = tf.read_f64(&n.sigma_a)?;
    let (_, sigma_b) = tf.read_f64(&n.sigma_b)?;
    let side = |s: &SideSummary, spectrum: Vec<f64>, tensor: &str| -> Result<SideInfo> {
        if let Some(x) = spectrum.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(Error::bad_tensor(
                tf.path(),
                tensor,
                format!("expected finite non-negative singular values, found {x}"),
            ));
        }
        let total_energy = match s.total_energy {
            Some(t) if t.is_finite() && t >= 0.0 => t,
            Some(t) => {
                return Err(Error::bad_tensor(
                    tf.path(),
                    format!("modules.{name}.total_energy"),
                    format!("expected a finite non-negative total energy, found {t}"),
                ));
            }
            // Format 1: the spectrum is complete, its squares sum to the total.
            None if s.full_spectrum => spectrum.iter().map(|x| x * x).sum(),
            None => {
                return Err(Error::bad_tensor(
                    tf.path(),
                    format!("modules.{name}.total_energy"),
                    "expected the total energy of a side whose spectrum holds only the top values",
                ));
            }
        };
        Ok(SideInfo {
            spectrum,
            total_energy,
            full_spectrum: s.full_spectrum,
            k_principal: s.k_principal,
            mean_vector: s.mean_vector,
            pseudo: s.pseudo,
            energy_kept: s.energy_kept,
        })
    };
    Ok(ModuleSubspace {
        in_features: mm.in_features,
        out_features: mm.out_features,
        r_max: mm.r_max,
        n_adapters: mm.n_adapters,
        v_a,
        v_b,
        a: side(&mm.a, sigma_a, &n.sigma_a)?,
        b: side(&mm.b, sigma_b, &n.sigma_b)?,
    })
}
