//! Stage 4a: graph surgery on the base ONNX model, done once (on the host or at load).
//!
//! The base ONNX model stays as exported; a bundle's binding (resolved once on the host by
//! [`bind`]) says which MatMul/Gemm each module is. [`patch`] rewrites the graph once so that
//! every bound module computes `Y + ((X·V_Aᵀ)·alpha_Aᵀ)·alpha_Bᵀ·V_Bᵀ`, with the coefficients
//! as plain graph inputs.
//!
//! * [`bind`]: resolve modules to graph nodes (`elx bind`).
//! * [`check`]: what the model accepts, checked before an engine sees it (bound nodes,
//!   loadable constants, token ids within the embedding table).
//! * [`patch`]: the one graph patch shared by every backend.
//! * [`grad`]: training graphs (forward, loss and exact gradients of the coefficients).
//! * [`import_hf`]: the ONNX graph of a BERT encoder built from a HF checkpoint (`elx import-hf`).
//! * [`llama`]: the ONNX graph of a Llama-family decoder with a KV cache, built from a GGUF
//!   file or a HF folder (`elx import-gguf`).
//! * [`onnx`]: small helpers over the ONNX protobuf types in [`pb`].

pub mod bind;
pub mod check;
pub mod grad;
pub mod import_hf;
pub mod llama;
pub mod onnx;
pub mod onnx_pb;
pub mod patch;

/// The ONNX protobuf types (vendored, prost-generated).
pub use onnx_pb as pb;
/// An ONNX model.
pub use onnx_pb::ModelProto;

pub use bind::{bind, bind_file};
pub use check::{IndexLimit, check_model, index_limits};
pub use import_hf::{BertConfig, ImportedModel, import_hf, import_hf_file};
pub use onnx::read_model;
pub use patch::{
    CoeffInput, PatchForm, PatchedModel, load_base, patch, patch_file, patch_owned,
    patch_owned_with, patch_with,
};
