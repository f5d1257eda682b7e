//! # eigenlorax
//!
//! EigenLoRAx at the edge. LoRA adapters trained on one base model are recycled into a
//! per-module principal subspace; any task then becomes a few KB of coefficients in it.
//!
//! Data flows one way through the stages below (`docs/ARCHITECTURE.md` draws them, with the
//! engine trait, the model-family interface and the file formats):
//!
//! ```text
//! (task) -> adapter -> subspace -> bundle -> graph -> serve -> finetune  (-> eval)
//! ```
//!
//! * [`adapter`]: read HF PEFT and kohya/diffusers LoRA files into a normalized form
//!   (scale folded in, canonical module names).
//! * [`subspace`]: exact per-module principal subspaces (Algorithm 1 of the paper), K rules,
//!   pseudo-PCs, projection of adapters onto a subspace and reconstruction errors.
//! * [`bundle`]: the `.elxb` bundle and `.elxc` coefficient files (safetensors + JSON manifest),
//!   quantization, atomic writes.
//! * [`task`]: per-task math shared by serving, training and evaluation (coefficients and
//!   their layout, pooling, head); below every stage.
//! * [`graph`]: bind a bundle to a base ONNX model and patch the graph once; `import_hf`
//!   builds the base model; `grad` builds the training graphs.
//! * [`serve`]: the task store and one [`serve::Engine`] over an engine trait
//!   ([`serve::backend`]: tract by default, ONNX Runtime with the `ort` feature, one folder
//!   each).
//! * [`finetune`]: train a new task's coefficients and head on the device: exact gradients
//!   through training graphs run on the serving engine, or zeroth-order estimates from
//!   forward passes.
//! * [`eval`]: measurements over the whole pipeline (leave-one-out on a labelled workload).
//!
//! A later stage may use an earlier one, never the reverse.
//!
//! Every type has one public path: the module of the stage that defines it. Graph surgery
//! (bind, patch, import, ONNX protobuf) is under [`graph`]; engines, tasks, inputs and the
//! finetuner's hidden-state view under [`serve`] (an engine's own types under
//! `serve::backend::{tract, ort}`). There is no `runtime` module any more.

#![warn(missing_docs)]

pub mod adapter;
pub mod bundle;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod gguf;
pub mod graph;
pub mod linalg;
pub mod serve;
pub mod subspace;
pub mod task;
pub mod tensorfile;
pub mod util;

pub use error::{Error, Result};
