//! Stage 4: the device runtime.
//!
//! The base ONNX model stays as exported; a bundle's binding (resolved once on the host by
//! [`bind`]) says which MatMul/Gemm each module is. [`patch`] rewrites the graph once so that
//! every bound module computes `Y + ((X·V_Aᵀ)·alpha_Aᵀ)·alpha_Bᵀ·V_Bᵀ`, with the coefficients
//! as plain graph inputs; [`store`] keeps every loaded task's coefficients as ready-made f32
//! tensors. A task swap is then handing the engine other input tensors: nothing is rebuilt.
//!
//! * [`engine`]: [`Engine`], the one backend-neutral engine (tract | ort behind it).
//! * [`hidden`]: the hidden-state backend the finetuner trains through.
//! * [`bind`]: resolve modules to graph nodes (`elx bind`).
//! * [`patch`]: the one graph patch shared by every backend.
//! * [`store`]: thread-safe store of prepared task coefficients.
//! * `tract` (feature `tract`): the pure-Rust CPU backend.
//! * [`import_hf`]: the ONNX graph of a BERT encoder built from a HF checkpoint (`elx import-hf`).
//! * [`onnx`]: small helpers over the ONNX protobuf types in [`pb`].
//! * [`input`]: text (tokenizer.json), .npy and safetensors inputs, pooling, heads.
//! * [`ort`]: the ONNX Runtime backend (feature `ort`) and the execution-provider choice.

pub mod bind;
pub mod engine;
pub mod hidden;
pub mod import_hf;
pub mod input;
pub mod onnx;
pub mod onnx_pb;
pub mod ort;
pub mod patch;
pub mod store;
#[cfg(feature = "tract")]
pub mod tract;

/// The ONNX protobuf types (vendored, prost-generated).
pub use onnx_pb as pb;
/// An ONNX model.
pub use onnx_pb::ModelProto;

pub use bind::{bind, bind_file};
pub use engine::{Backend, Engine, HiddenState};
pub use import_hf::{BertConfig, ImportedModel, import_hf, import_hf_file};
pub use onnx::read_model;
pub use patch::{
    CoeffInput, PatchForm, PatchedModel, load_base, patch, patch_file, patch_owned,
    patch_owned_with, patch_with,
};
pub use store::{CoeffTensor, Task, TaskData, TaskId, TaskStore};
