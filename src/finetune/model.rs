//! What the finetuner needs from a model: [`ForwardModel`] (pooled features under trial
//! coefficients, and exact gradients where the model has them) and [`GradQuery`], the values
//! those gradients are taken at.

use super::Gradients;
use crate::error::{Error, Result};
use crate::task::CoeffLayout;

/// A forward-only model whose adaptable parameters are the per-module coefficients.  This is
/// all the finetuner needs from a backend (tract, ONNX Runtime, or the pure-Rust
/// [`testing::TinyModel`](super::testing::TinyModel)). The flat parameter vector holds, per
/// module in [`layout`](Self::layout) order, α_A [r x K_A] then α_B [K_B x r], both row-major
/// (the `.elxc` orientation), with r the layout's rank. Implementations copy it into their own
/// input tensors (transposing if their graph wants [K_A x r]).
pub trait ForwardModel {
    /// Module layout, in a fixed order.
    fn layout(&self) -> &[CoeffLayout];

    /// Number of examples the model can be asked about (ids are `0..num_examples()`).
    fn num_examples(&self) -> usize;

    /// Pooled features [n x d] (row-major) of the examples `batch` under the coefficient
    /// values `params`, written into `out` (cleared first); returns d. Must be deterministic.
    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize>;

    /// Whether [`loss_grad`](Self::loss_grad) is available (exact gradients).
    fn has_exact_gradients(&self) -> bool {
        false
    }

    /// The weighted cross-entropy of a linear head on the pooled features of `batch` and its
    /// exact gradients with respect to the coefficients (in the model's flat layout) and the
    /// head, into `out` (see [`GradQuery`]). Models without exact gradients keep this default,
    /// an [`Error::Unsupported`]; the finetuner then estimates by SPSA.
    fn loss_grad(
        &mut self,
        batch: &[usize],
        query: &GradQuery<'_>,
        out: &mut Gradients,
    ) -> Result<()> {
        let _ = (batch, query, out);
        Err(Error::Unsupported(
            "this model has no exact gradients".into(),
        ))
    }
}

/// The values [`ForwardModel::loss_grad`] differentiates at.
#[derive(Clone, Copy, Debug)]
pub struct GradQuery<'a> {
    /// Coefficients in the model's flat layout ([`ForwardModel::features`]).
    pub params: &'a [f32],
    /// Head weights [classes x d], row-major.
    pub head_weight: &'a [f32],
    /// Head biases [classes].
    pub head_bias: &'a [f32],
    /// Target distribution per example [n x classes] (one-hot for labels).
    pub targets: &'a [f32],
    /// Weight of each example's cross-entropy [n] (1/n for the mean).
    pub weights: &'a [f32],
}
