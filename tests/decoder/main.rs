//! Decoder LLMs (issue 26): the Llama graph built from weights ([`eigenlorax::graph::llama`]),
//! its KV cache, generation with a task per request and mixed-task batches.

#[path = "../support/bundle.rs"]
mod bundle_support;
#[path = "../support/fd.rs"]
mod fd_support;
mod generate;
#[path = "../support/gguf.rs"]
mod gguf_support;
mod graph;
mod lm_finetune;
mod loo_lm;
#[path = "../support/lora_pool.rs"]
mod lora_pool;
#[cfg(feature = "ort")]
mod ort;
mod quantized;
mod reference;
mod score;
mod smollm2;
mod support;
mod train;
