//! Helpers shared by the test binaries, one module per concern. The stage binaries
//! (`tests/<stage>/main.rs`: cli, runtime, finetune, decoder, ...) declare `mod support;`; a
//! single-file test pulls in the module it needs with `#[path = "support/<name>.rs"]`.

#![allow(dead_code)]

pub mod adapter_fixtures;
pub mod bundle;
pub mod fd;
pub mod grad;
pub mod lora_pool;
pub mod minilm;
pub mod ort;
pub mod runtime;
pub mod subspace;
pub mod tinybert;
