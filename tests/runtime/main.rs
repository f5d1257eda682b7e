//! Stage 4, the runtime: binding, patching, the engines, tokenizer and imported models (the
//! counting-allocator test stays its own binary, `tests/runtime_alloc.rs`).
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.
//!
//! The tiny BERT and imported-model suites (`tinybert`, `import_hf`) are written once and run
//! on every engine: tract always, ONNX Runtime with the `ort` feature (which then needs
//! `ORT_DYLIB_PATH`, see tools/install_onnxruntime.sh; never a skip). `on_each_backend!`
//! makes one test per engine of each check, `<check>::tract` and `<check>::ort`.

#[path = "../support/mod.rs"]
mod support;

/// One `#[test]` per engine for each `check(backend: Backend)` named: a module named after the
/// check with a test `tract` and, with the `ort` feature, a test `ort` (ONNX Runtime on the
/// CPU).
macro_rules! on_each_backend {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn tract() {
                super::$check(eigenlorax::serve::Backend::Tract);
            }

            #[cfg(feature = "ort")]
            #[test]
            fn ort() {
                crate::support::ort::require_ort();
                super::$check(eigenlorax::serve::Backend::Ort(
                    eigenlorax::serve::ExecutionProvider::Cpu,
                ));
            }
        }
    )*};
}

mod cli_bind;
mod errors;
mod hardening;
mod import_hf;
mod patch;
mod remap;
mod session;
mod tinybert;
mod tokenizer_parity;
mod tract;
