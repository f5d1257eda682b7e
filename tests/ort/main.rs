//! The ONNX Runtime backend (feature `ort`): the runtime, inputs, finetuning and the CLI
//! against tract. One test binary for the backend; shared helpers in `support`. Each module
//! skips itself without the feature. The tiny BERT and imported-model suites run on every
//! engine from `tests/runtime` (`tinybert`, `import_hf`).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod finetune;
mod input;
mod runtime;
