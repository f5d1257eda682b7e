//! Safetensors files, read through a memory map with every header field checked against the
//! file's real size, and written atomically.
//!
//! Shared infrastructure (like [`crate::util`]): every stage stores its tensors this way.
//!
//! The header is parsed here rather than by the `safetensors` crate so that every failure
//! becomes an [`Error::BadInput`] naming the file and the tensor, and so that nothing is
//! allocated from a header field before it has been checked against the file size.
//!
//! Where things are: reading ([`TensorFile`], `file.rs`) with its header parser
//! (`header.rs`), writing all at once ([`write()`], [`TensorOut`], `write.rs`) or tensor by
//! tensor through a spool on disk ([`SpoolWriter`], `spool.rs`).
//!
//! [`Error::BadInput`]: crate::Error::BadInput

mod file;
mod header;
mod spool;
#[cfg(test)]
mod tests;
mod write;

pub use file::{MemTensor, TensorBytes, TensorFile};
pub use spool::SpoolWriter;
pub use write::{TensorOut, write};

use faer::Mat;

/// Largest header we accept. Real headers are a few hundred KB even for thousands of
/// tensors; a bigger one is corrupt or hostile, and refusing it bounds the JSON parse.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Most tensors a file may hold. Real adapters and checkpoint shards hold a few thousand at
/// most; the bound keeps the work per header entry bounded for a hostile header of millions
/// of empty tensors (it used to take 13.6 s and 2.35 GB before a refusal).
pub const MAX_TENSORS: usize = 1 << 16;

/// Element types we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary64.
    F64,
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
    /// Signed 8-bit integer.
    I8,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I8 => 1,
        }
    }

    /// The safetensors name ("F32", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I8 => "I8",
        }
    }

    /// Parses a safetensors dtype name we can convert; `None` for any other.
    pub fn from_name(name: &str) -> Option<Dtype> {
        match name {
            "F64" => Some(Dtype::F64),
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            "I8" => Some(Dtype::I8),
            _ => None,
        }
    }
}

/// Element size of every dtype the safetensors format defines, so that byte ranges of
/// tensors we cannot convert (e.g. an I64 buffer among the extras) are still validated.
pub(super) fn any_dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Dtype and shape of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Storage type.
    pub dtype: Dtype,
    /// Shape, outermost first (row-major).
    pub shape: Vec<usize>,
}

/// Builds a faer matrix from `rows*cols` row-major values (the caller checked the length).
pub(crate) fn mat_from_row_major(rows: usize, cols: usize, values: &[f64]) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| {
        values.get(i * cols + j).copied().unwrap_or(0.0)
    })
}
