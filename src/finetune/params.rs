//! The trainable vector against the model's buffer: where each module's rank-r coefficients
//! sit in the f64 parameters and in the model's rank-r_model f32 input, the copy between
//! them, and the checked forward pass the losses are computed from.

use super::ForwardModel;
use crate::error::{Error, Result};

/// Where one module's coefficients sit in the trainable vector and in the model's buffer.
#[derive(Clone, Debug)]
pub(super) struct Block {
    pub(super) name: String,
    pub(super) k_a: usize,
    pub(super) k_b: usize,
    pub(super) r_model: usize,
    pub(super) theta: usize,
    pub(super) buf: usize,
}

/// Copies the trainable rank-r coefficients into the model's rank-r_model f32 buffer (the
/// padding stays zero from construction).
pub(super) fn write_params(blocks: &[Block], rank: usize, theta: &[f64], buf: &mut [f32]) {
    for b in blocks {
        let a_len = rank * b.k_a;
        for (dst, src) in buf[b.buf..b.buf + a_len]
            .iter_mut()
            .zip(&theta[b.theta..b.theta + a_len])
        {
            *dst = *src as f32;
        }
        let bb = b.buf + b.r_model * b.k_a;
        let tb = b.theta + a_len;
        for i in 0..b.k_b {
            for j in 0..rank {
                buf[bb + i * b.r_model + j] = theta[tb + i * rank + j] as f32;
            }
        }
    }
}

/// The forward state the loss needs, borrowed field by field so the SPSA closure can hold it
/// while the optimizer state is borrowed elsewhere.
pub(super) struct Forward<'a, M> {
    pub(super) model: &'a mut M,
    pub(super) blocks: &'a [Block],
    pub(super) rank: usize,
    pub(super) buf: &'a mut Vec<f32>,
    pub(super) feats: &'a mut Vec<f32>,
    pub(super) dim: usize,
    pub(super) passes: &'a mut u64,
}

impl<M: ForwardModel> Forward<'_, M> {
    pub(super) fn run(&mut self, ids: &[usize], theta: &[f64]) -> Result<()> {
        write_params(self.blocks, self.rank, theta, self.buf);
        let d = self.model.features(ids, self.buf, self.feats)?;
        *self.passes += 1;
        if d != self.dim || self.feats.len() != ids.len() * d {
            return Err(Error::Usage(format!(
                "model returned {} feature values of dimension {d} for {} examples (expected dimension {})",
                self.feats.len(),
                ids.len(),
                self.dim
            )));
        }
        if let Some(i) = self.feats.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "model returned a non-finite feature at index {i}"
            )));
        }
        Ok(())
    }
}
