//! The ONNX Runtime backend (feature `ort`): the runtime, inputs, finetuning, imported
//! models and the CLI against tract. One test binary for the backend; shared helpers in
//! `support`. Each module skips itself without the feature.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod finetune;
mod import_hf;
mod input;
mod runtime;
mod tinybert;
