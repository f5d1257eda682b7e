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
pub use crate::graph::grad::Objective;
use crate::serve::input::{InputTensor, OutputTensor, TensorData};

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
    /// `position_ids`: 0, 1, 2, … along each row (rows start at position 0).
    Positions,
    /// `logits_positions`: 0, 1, …, seq − 1, one dimension: every position's logits (what a
    /// loss over the tokens reads).
    EveryPosition,
    /// A past key or value of length 0, `[batch, kv_heads, 0, head_dim]`: a training run
    /// reads whole sequences from an empty cache.
    EmptyCache {
        /// Key/value heads.
        kv_heads: usize,
        /// Width of one head.
        head_dim: usize,
    },
}

impl TokenFeed {
    /// The input `name` this feed gives for the padded `ids` / `mask` [batch x seq].
    pub fn input(
        &self,
        name: &str,
        ids: &[i64],
        mask: &[i64],
        batch: usize,
        seq: usize,
    ) -> InputTensor {
        let tokens = |data: Vec<i64>| InputTensor {
            name: name.to_string(),
            shape: vec![batch, seq],
            data: TensorData::I64(data),
        };
        match *self {
            TokenFeed::Ids => tokens(ids.to_vec()),
            TokenFeed::Mask => tokens(mask.to_vec()),
            TokenFeed::Zeros => tokens(vec![0; batch * seq]),
            TokenFeed::Positions => tokens((0..batch).flat_map(|_| 0..seq as i64).collect()),
            TokenFeed::EveryPosition => InputTensor {
                name: name.to_string(),
                shape: vec![seq],
                data: TensorData::I64((0..seq as i64).collect()),
            },
            TokenFeed::EmptyCache { kv_heads, head_dim } => InputTensor {
                name: name.to_string(),
                shape: vec![batch, kv_heads, 0, head_dim],
                data: TensorData::F32(Vec::new()),
            },
        }
    }
}

/// What the training loss reads from a model of a family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossReads {
    /// The graph output the loss is computed from (an encoder: the last hidden state).
    pub output: String,
    /// The input whose values mark the positions the loss reads (an encoder: the attention
    /// mask the hidden state is pooled over).
    pub mask: String,
    /// What the loss computes from `output`.
    pub objective: Objective,
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
