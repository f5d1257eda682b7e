//! GGUF files (llama.cpp's model format), read through a memory map with every count, length,
//! offset and shape checked against the file's real size before anything is allocated from
//! it, and their tensors dequantized to f32.
//!
//! The tokenizer stored in the metadata becomes an HF `tokenizer.json` in [`tokenizer_json`].
//!
//! Shared infrastructure like [`crate::tensorfile`] (which reads safetensors): no stage
//! depends on it yet. Versions 2 and 3 of the format are read (version 1 used 32-bit counts
//! and is refused). Metadata values of every GGUF type are kept, arrays included (arrays of
//! arrays are refused: no model uses them); tensors of any ggml type with a known block
//! layout are located and checked, and those of [`GgmlType::SUPPORTED`] (F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1) are dequantized. Every failure is an [`Error::BadInput`] naming the file,
//! the metadata key or tensor, and what was expected.
//!
//! Shapes: GGUF stores a tensor's dimensions innermost first (`ne[0]` is the row length);
//! [`GgufTensor::dims`] keeps that order and [`GgufTensor::shape`] gives the row-major shape,
//! outermost first, as everywhere else in this crate.
//!
//! Where things are: the file and its accessors (`file.rs`), the header parser (`header.rs`),
//! metadata values and their typed reads (`metadata.rs`), tensor infos and their data
//! (`tensor.rs`), the ggml block types (`quant.rs`) and the tokenizer (`tokenizer.rs`).
//!
//! [`Error::BadInput`]: crate::Error::BadInput

mod file;
mod header;
mod metadata;
mod quant;
mod tensor;
mod tokenizer;

pub use file::Gguf;
pub use metadata::{Array, Value};
pub use quant::{GgmlType, dequantize, permute_qk, unpermute_qk};
pub use tensor::GgufTensor;
pub use tokenizer::{byte_to_char, tokenizer_json};

/// Most metadata keys a file may hold (real models have a few dozen).
pub const MAX_KEYS: u64 = 1 << 16;
/// Most tensors a file may hold (real models have a few hundred to a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Longest metadata key or tensor name, in bytes.
pub const MAX_NAME_BYTES: u64 = 1 << 16;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
