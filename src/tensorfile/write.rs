//! Writing a safetensors file atomically from tensors in memory ([`write`], [`TensorOut`]),
//! and the header both writers share.

use super::Dtype;
use crate::error::{Error, Result};
use faer::MatRef;
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorOut {
    /// Tensor name (key in the header).
    pub name: String,
    /// Storage dtype of `data`.
    pub dtype: Dtype,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Little-endian bytes, `product(shape) * dtype.size()` long.
    pub data: Vec<u8>,
}

impl TensorOut {
    /// Converts f64 values (row-major) to `dtype`: F64/F32/F16/BF16 round to nearest; I8
    /// rounds to nearest and saturates to [-128, 127] (quantizers scale before calling).
    pub fn from_f64(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        values: &[f64],
    ) -> TensorOut {
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            Dtype::F64 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            Dtype::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&(*v as f32).to_le_bytes())),
            Dtype::F16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::f16::from_f64(*v).to_le_bytes())),
            Dtype::BF16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&half::bf16::from_f64(*v).to_le_bytes())),
            Dtype::I8 => values
                .iter()
                .for_each(|v| data.push(v.round().clamp(-128.0, 127.0) as i8 as u8)),
        }
        TensorOut {
            name: name.into(),
            dtype,
            shape,
            data,
        }
    }

    /// A matrix stored row-major with shape [rows, cols].
    pub fn from_mat(name: impl Into<String>, dtype: Dtype, m: MatRef<'_, f64>) -> TensorOut {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut values = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                values.push(m[(i, j)]);
            }
        }
        TensorOut::from_f64(name, dtype, vec![rows, cols], &values)
    }
}

/// Serializes as safetensors with `__metadata__` and writes atomically (util::write_atomic).
///
/// The header is padded with spaces so that the data starts 8-byte aligned, and tensors are
/// laid out in the order given. Duplicate names, the reserved name `__metadata__` and data
/// whose length disagrees with the shape are refused.
pub fn write(
    path: &Path,
    tensors: Vec<TensorOut>,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    for t in &tensors {
        check_out(path, t)?;
    }
    let header = header_bytes(
        path,
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.data.len())),
        metadata,
    )?;
    let size: usize = tensors.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(header.len() + size);
    out.extend_from_slice(&header);
    for t in &tensors {
        out.extend_from_slice(&t.data);
    }
    crate::util::write_atomic(path, &out)
}

/// Refuses a tensor whose data length disagrees with its shape, or the reserved name.
pub(super) fn check_out(path: &Path, t: &TensorOut) -> Result<()> {
    if t.name == "__metadata__" {
        return Err(Error::Usage(format!(
            "{}: tensor name `{}` is reserved",
            path.display(),
            t.name
        )));
    }
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let want = numel.and_then(|n| n.checked_mul(t.dtype.size()));
    if want != Some(t.data.len()) {
        return Err(Error::Usage(format!(
            "{}: tensor `{}`: shape {:?} of {} needs {:?} bytes, given {}",
            path.display(),
            t.name,
            t.shape,
            t.dtype.name(),
            want,
            t.data.len()
        )));
    }
    Ok(())
}

/// The 8-byte length plus the JSON header (padded with spaces to 8-byte alignment) of a file
/// whose tensors (name, dtype, shape, bytes) are laid out in the order given. One home for the
/// layout: [`write`] and [`SpoolWriter::finish`] give the same bytes for the same tensors.
pub(super) fn header_bytes<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], usize)>,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, len) in tensors {
        if name == "__metadata__" || header.contains_key(name) {
            return Err(Error::Usage(format!(
                "{}: tensor name `{name}` is reserved or used twice",
                path.display(),
            )));
        }
        let end = offset + len;
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Usage(format!("{}: cannot serialize header: {e}", path.display())))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    Ok(out)
}
