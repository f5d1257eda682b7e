//! The loss part of a training graph and its derivative, written out by hand: masked mean
//! pooling of the last hidden state, a linear head, weighted softmax cross-entropy; then
//! d loss / d (head weight, head bias, hidden state).

use super::emit::Emitter;
use crate::graph::onnx::{FLOAT, attr_int};

/// Graph input: the head's weights [classes x d].
pub const HEAD_WEIGHT: &str = "head_weight";
/// Graph input: the head's biases [classes].
pub const HEAD_BIAS: &str = "head_bias";
/// Graph input: target distribution per example [batch x classes] (one-hot for labels).
pub const TARGETS: &str = "targets";
/// Graph input: weight of each example's cross-entropy [batch] (1/batch for the mean).
pub const EXAMPLE_WEIGHTS: &str = "example_weights";
/// Graph output: Σ_i w_i · CE_i, shape [1].
pub const LOSS: &str = "loss";
/// Graph output: the pooled features [batch x d].
pub const POOLED: &str = "pooled";

/// What a training graph's loss computes from the model output it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Objective {
    /// The output (a last hidden state [batch, seq, d]) pooled over the mask, a linear head
    /// ([`HEAD_WEIGHT`], [`HEAD_BIAS`]), weighted cross-entropy against [`TARGETS`].
    PooledHead,
    /// The output (logits [batch, seq, vocab]) at each position scored against
    /// [`TOKEN_TARGETS`] (the next token): Σ w · (−log p), the weights [`TOKEN_WEIGHTS`]
    /// (non-zero on an answer's tokens). No head.
    NextToken,
}

/// Graph input: the token each position should predict [batch x seq] (int64; any valid id
/// where the weight is 0).
pub const TOKEN_TARGETS: &str = "token_targets";
/// Graph input: the weight of each position's cross-entropy [batch x seq].
pub const TOKEN_WEIGHTS: &str = "token_weights";

/// The output holding d loss / d `input`.
pub fn grad_name(input: &str) -> String {
    format!("grad:{input}")
}

/// Shapes the loss part works with.
pub struct LossShape {
    /// Examples per run.
    pub batch: usize,
    /// Tokens per example.
    pub seq: usize,
    /// Hidden width d.
    pub dim: usize,
}

/// Emits the loss on `hidden` [batch, seq, d] pooled over the int64 `mask` [batch, seq], its
/// outputs ([`LOSS`], [`POOLED`], and the head's gradients), and returns the name of
/// d loss / d hidden.
pub fn emit(e: &mut Emitter, hidden: &str, mask: &str, s: &LossShape) -> String {
    let (b, q, d) = (s.batch, s.seq, s.dim);
    let maskf = e.op("Cast", &[mask], vec![attr_int("to", i64::from(FLOAT))]);
    let mask3 = e.reshape(&maskf, &[b, q, 1]);
    let count3 = e.reduce_sum(&mask3, &[1], true);
    let count2 = e.reshape(&count3, &[b, 1]);
    // An all-padding row would divide by zero; it then pools to zeros.
    let one = e.scalar(1.0);
    let count = e.op("Max", &[&count2, &one], vec![]);
    let masked = e.mul(hidden, &mask3);
    let summed = e.reduce_sum(&masked, &[1], false);
    e.op_into("Div", &[&summed, &count], POOLED, vec![]);

    let logits = e.op(
        "Gemm",
        &[POOLED, HEAD_WEIGHT, HEAD_BIAS],
        vec![attr_int("transB", 1)],
    );
    let logp = e.op("LogSoftmax", &[&logits], vec![attr_int("axis", 1)]);
    let tl = e.mul(TARGETS, &logp);
    let per_example = e.reduce_sum(&tl, &[1], false);
    let weighted = e.mul(&per_example, EXAMPLE_WEIGHTS);
    let total = e.reduce_sum(&weighted, &[0], true);
    e.op_into("Neg", &[&total], LOSS, vec![]);

    // d/dlogits of −Σ_c t_c log softmax_c = softmax · Σ_c t_c − t, times the example weight.
    let p = e.op("Exp", &[&logp], vec![]);
    let tsum = e.reduce_sum(TARGETS, &[1], true);
    let pt = e.mul(&p, &tsum);
    let dl = e.op("Sub", &[&pt, TARGETS], vec![]);
    let w2 = e.reshape(EXAMPLE_WEIGHTS, &[b, 1]);
    let dlogits = e.mul(&dl, &w2);
    e.op_into(
        "Gemm",
        &[&dlogits, POOLED],
        &grad_name(HEAD_WEIGHT),
        vec![attr_int("transA", 1)],
    );
    let db = e.reduce_sum(&dlogits, &[0], false);
    e.op_into("Identity", &[&db], &grad_name(HEAD_BIAS), vec![]);
    let dpooled = e.op("MatMul", &[&dlogits, HEAD_WEIGHT], vec![]);
    let dsummed = e.op("Div", &[&dpooled, &count], vec![]);
    let d3 = e.reshape(&dsummed, &[b, 1, d]);
    e.mul(&d3, &mask3)
}

/// Emits the next-token loss ([`Objective::NextToken`]) on `logits` [batch, seq, vocab] into
/// [`LOSS`] and returns the name of d loss / d logits:
/// loss = −Σ_{b,s} w_{b,s} · log softmax(logits_{b,s})[t_{b,s}], and
/// d loss / d logits_{b,s} = w_{b,s} · (softmax(logits_{b,s}) − onehot(t_{b,s})).
pub fn emit_next_token(
    e: &mut Emitter,
    logits: &str,
    batch: usize,
    seq: usize,
    vocab: usize,
) -> String {
    let logp = e.op("LogSoftmax", &[logits], vec![attr_int("axis", 2)]);
    // The one-hot targets, built in the graph: ids 0..vocab compared with each target.
    let ids: Vec<i64> = (0..vocab as i64).collect();
    let range = e.ints(&[vocab], &ids);
    let t3 = e.reshape(TOKEN_TARGETS, &[batch, seq, 1]);
    let hit = e.op("Equal", &[&range, &t3], vec![]);
    let onehot = e.op("Cast", &[&hit], vec![attr_int("to", i64::from(FLOAT))]);
    let picked = e.mul(&onehot, &logp);
    let logp_target = e.reduce_sum(&picked, &[2], false);
    let weighted = e.mul(&logp_target, TOKEN_WEIGHTS);
    let total = e.reduce_sum(&weighted, &[0, 1], false);
    let total1 = e.reshape(&total, &[1]);
    e.op_into("Neg", &[&total1], LOSS, vec![]);

    let p = e.op("Exp", &[&logp], vec![]);
    let diff = e.op("Sub", &[&p, &onehot], vec![]);
    let w3 = e.reshape(TOKEN_WEIGHTS, &[batch, seq, 1]);
    e.mul(&diff, &w3)
}
