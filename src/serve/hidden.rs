//! The hidden-state backend the finetuner trains through: an engine runs the patched graph
//! with trial coefficient values and returns the last hidden state; [`crate::finetune::seq`]
//! batches, pads and pools around it. One implementation per engine, in the engine's own
//! folder of [`crate::serve::backend`], chosen behind [`crate::serve::Engine::hidden_state`].

use crate::error::{Error, Result};
use crate::task::CoeffLayout;

/// An inference engine whose adaptable inputs are the per-module coefficients.
pub trait HiddenStateBackend {
    /// Module layout (see [`crate::finetune::ForwardModel::layout`]).
    fn layout(&self) -> &[CoeffLayout];

    /// Last hidden state [batch x seq x d] (row-major) of the padded `tokens`, with the
    /// coefficient values `params` (layout of [`crate::finetune::ForwardModel::features`]);
    /// written into `out` (cleared first). Returns d.
    fn hidden(
        &mut self,
        tokens: TokenBatch<'_>,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize>;
}

/// Padded token rows: `batch` x `seq` ids and attention mask, row-major, checked to agree.
#[derive(Clone, Copy, Debug)]
pub struct TokenBatch<'a> {
    ids: &'a [i64],
    mask: &'a [i64],
    batch: usize,
    seq: usize,
}

impl<'a> TokenBatch<'a> {
    /// `ids` and `mask` as `batch` rows of `seq`; an error when either has another length.
    pub fn new(ids: &'a [i64], mask: &'a [i64], batch: usize, seq: usize) -> Result<Self> {
        check_tokens(ids, mask, batch, seq)?;
        Ok(TokenBatch {
            ids,
            mask,
            batch,
            seq,
        })
    }

    /// Token ids [batch x seq].
    pub fn ids(&self) -> &'a [i64] {
        self.ids
    }

    /// Attention mask [batch x seq] (1 = token, 0 = padding).
    pub fn mask(&self) -> &'a [i64] {
        self.mask
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per row.
    pub fn seq(&self) -> usize {
        self.seq
    }
}

/// Checks token inputs: `batch` x `seq` of each.
pub(crate) fn check_tokens(ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<()> {
    if ids.len() != batch * seq || mask.len() != batch * seq {
        return Err(Error::Usage(format!(
            "expected {batch}x{seq} token ids and mask values, found {} and {}",
            ids.len(),
            mask.len()
        )));
    }
    Ok(())
}

/// The width d of a last hidden state of shape [batch, seq, d] read from output `output`.
pub fn hidden_width(shape: &[usize], batch: usize, seq: usize, output: &str) -> Result<usize> {
    match *shape {
        [b, s, d] if b == batch && s == seq => Ok(d),
        _ => Err(Error::Usage(format!(
            "expected a last hidden state [{batch}, {seq}, d] from output {output}, found shape {shape:?}"
        ))),
    }
}
