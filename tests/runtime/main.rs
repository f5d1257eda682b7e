//! Stage 4, the runtime: binding, patching, the tract engine, tokenizer and imported models
//! (the counting-allocator test stays its own binary, `tests/runtime_alloc.rs`).
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

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
