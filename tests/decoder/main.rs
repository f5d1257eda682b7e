//! Decoder LLMs (issue 26): the Llama graph built from weights ([`eigenlorax::graph::llama`]),
//! its KV cache, generation with a task per request and mixed-task batches.

mod graph;
mod support;
