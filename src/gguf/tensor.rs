//! Tensors: their infos, validated against the file at open, and their data, raw or
//! dequantized to f32 (whole, or a range of rows).

use super::{GgmlType, Gguf, dequantize, quant};
use crate::error::{Error, Result};

/// One tensor's info, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// Its name ("blk.0.attn_q.weight").
    pub name: String,
    /// Its ggml type.
    pub ggml_type: GgmlType,
    /// Dimensions as stored: innermost (`ne[0]`, the row length) first.
    pub dims: Vec<usize>,
    /// Number of elements (the product of `dims`).
    pub n_elements: usize,
    /// Absolute byte range in the file.
    pub(super) start: usize,
    pub(super) end: usize,
}

impl GgufTensor {
    /// Row-major shape, outermost first (`dims` reversed): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Bytes the tensor takes in the file.
    pub fn n_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Absolute byte range of its data in the file.
    pub fn file_range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }

    /// Elements per row (`ne[0]`; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of every dimension but the first).
    pub fn n_rows(&self) -> usize {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }
}

impl Gguf {
    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn entry(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor(name).ok_or_else(|| {
            Error::bad_tensor(
                &self.path,
                name,
                "expected this tensor in the file, found none",
            )
        })
    }

    /// The raw bytes of tensor `name` in ggml's layout, and its info.
    pub fn raw(&self, name: &str) -> Result<(&GgufTensor, &[u8])> {
        let t = self.entry(name)?;
        let bytes = self.bytes.get(t.start..t.end).ok_or_else(|| {
            Error::bad_tensor(&self.path, name, "expected its bytes inside the file")
        })?;
        Ok((t, bytes))
    }

    /// Tensor `name` dequantized to f32, in storage order (row-major for
    /// [`GgufTensor::shape`]). Errors name the file and tensor: absent, a type outside
    /// [`GgmlType::SUPPORTED`], or a non-finite value.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.entry(name)?;
        self.dequantize_rows(name, 0, t.n_rows())
    }

    /// Rows `first..first + n` of tensor `name` (a row is `ne[0]` elements, e.g. one token's
    /// embedding), dequantized to f32; same errors as [`Gguf::dequantize`], plus rows out of
    /// range.
    pub fn dequantize_rows(&self, name: &str, first: usize, n: usize) -> Result<Vec<f32>> {
        let (t, bytes) = self.raw(name)?;
        let bad = |m: String| Error::bad_tensor(&self.path, name, m);
        if !t.ggml_type.is_supported() {
            return Err(bad(format!(
                "expected a tensor type that can be dequantized ({}), found {}",
                quant::supported_list(),
                t.ggml_type.name()
            )));
        }
        let rows = t.n_rows();
        if first.checked_add(n).is_none_or(|e| e > rows) {
            return Err(bad(format!(
                "expected rows {first}..{first}+{n} within its {rows} rows"
            )));
        }
        let row_len = t.row_len();
        // Checked at open: whole blocks per row, whole tensor inside the file.
        let row_bytes = t
            .ggml_type
            .bytes_for(row_len)
            .ok_or_else(|| Error::Internal(format!("{name}: row size unchecked")))?;
        let slice = bytes
            .get(first * row_bytes..(first + n) * row_bytes)
            .ok_or_else(|| Error::Internal(format!("{name}: row range unchecked")))?;
        let values = dequantize(t.ggml_type, slice, n * row_len)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "expected finite values, found {} at index {}",
                values[i],
                first * row_len + i
            )));
        }
        Ok(values)
    }
}
