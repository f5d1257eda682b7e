//! Model families: what a kind of model takes as inputs, what a request keeps between two
//! calls, and what the training loss reads. The engines ([`crate::serve::backend`]) and the
//! patch ([`crate::graph::patch`]) know nothing of families: every adapted MatMul gets the
//! same low-rank side branch whatever the model. A family is the part that differs.
//!
//! * [`Encoder`]: today's only family: a BERT-like encoder whose last hidden state is pooled
//!   and fed to a linear head; a request keeps nothing between calls.
//!
//! * [`Decoder`]: a causal LM ([`crate::graph::llama`]) keeping its KV cache between calls;
//!   served by [`crate::serve::generate`].
//!
//! The decoder is the second implementation of [`ModelFamily`], in its own file beside
//! `encoder.rs`:
//!
//! * **inputs** ([`ModelFamily::feeds`]): `input_ids`, `attention_mask`, `position_ids` and
//!   one `past_key_values.*` pair per layer (a new [`TokenFeed`] variant each for positions
//!   and past state);
//! * **request state** ([`ModelFamily::carry`]): the `present.*` outputs of one call become
//!   the `past_key_values.*` inputs of the next: the KV cache, kept by the request's
//!   [`crate::serve::engine::Session`], one per request, so requests on different tasks never
//!   share a cache;
//! * **loss** ([`ModelFamily::loss_reads`]): the logits output, read at the answer tokens
//!   (next-token cross-entropy) instead of a pooled hidden state and a head.
//!
//! See `docs/ARCHITECTURE.md` for the files a second family adds.

pub mod decoder;
pub mod encoder;

pub use decoder::Decoder;
pub use encoder::Encoder;

use crate::error::Result;
use crate::serve::input::{InputTensor, OutputTensor};

/// Where one of a model's inputs gets its values, for the engines that feed token inputs
/// themselves (the finetuner's hidden-state views, the training graphs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFeed {
    /// `input_ids`: the padded token ids.
    Ids,
    /// `attention_mask`: 1 on tokens, 0 on padding.
    Mask,
    /// `token_type_ids`: all zeros (single-segment inputs).
    Zeros,
}

/// What the training loss reads from a model of a family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossReads {
    /// The graph output the loss is computed from (an encoder: the last hidden state).
    pub output: String,
    /// The input whose values mark the positions the loss reads (an encoder: the attention
    /// mask the hidden state is pooled over).
    pub mask: String,
}

/// One kind of model served with a subspace bundle. See the module documentation.
pub trait ModelFamily: Send + Sync + std::fmt::Debug {
    /// The family's name, for messages (`encoder`).
    fn name(&self) -> &'static str;

    /// Which inputs a graph of this family takes: where each of the base model's inputs
    /// (`inputs`, in order) gets its values. An input the family does not feed is an error
    /// naming it.
    fn feeds(&self, inputs: &[&str]) -> Result<Vec<TokenFeed>>;

    /// What a request keeps between two calls: the tensors, taken from the `outputs` of one
    /// call, that are fed back as inputs of the next (an encoder: none).
    fn carry(&self, outputs: &[OutputTensor]) -> Vec<InputTensor>;

    /// What the training loss reads, given the model's outputs in order.
    fn loss_reads(&self, outputs: &[String]) -> Result<LossReads>;
}
