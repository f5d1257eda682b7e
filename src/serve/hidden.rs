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

    /// Last hidden state [batch x seq x d] (row-major) of the padded token ids and attention
    /// mask [batch x seq], with the coefficient values `params` (layout of
    /// [`crate::finetune::ForwardModel::features`]); written into `out` (cleared first). Returns d.
    fn hidden(
        &mut self,
        input_ids: &[i64],
        attention_mask: &[i64],
        batch: usize,
        seq: usize,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize>;
}

/// Checks the token inputs of [`HiddenStateBackend::hidden`]: `batch` x `seq` of each.
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
