//! # eigenlorax
//!
//! EigenLoRAx at the edge. LoRA adapters trained on one base model are recycled into a
//! per-module principal subspace; any task then becomes a few KB of coefficients in it.
//!
//! Data flows one way through the stages below (see `DESIGN.md` in the shared folder):
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
//!   builds the base model.
//! * [`serve`]: the task store and one [`runtime::Engine`] over tract (default) or ONNX
//!   Runtime (the `ort` feature). [`runtime`] re-exports both under one path.
//! * [`finetune`]: train a new task's coefficients and head on the device, forward passes only.
//! * [`eval`]: measurements over the whole pipeline (leave-one-out on a labelled workload).
//!
//! A later stage may use an earlier one, never the reverse.

#![warn(missing_docs)]

pub mod adapter;
pub mod bundle;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod graph;
pub mod linalg;
pub mod runtime;
pub mod serve;
pub mod subspace;
pub mod task;
pub mod tensorfile;
pub mod util;

pub use error::{Error, Result};
