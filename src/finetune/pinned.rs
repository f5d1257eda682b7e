//! A [`ForwardModel`] whose coefficients are pinned at given values.
//!
//! The head-only recipe ([`super::recipe::fit_head_only`]) fits a head on top of the
//! coefficients the finetuner holds fixed, which are zero (the base model). Wrapping a model
//! here fits the same head on top of any coefficients instead, e.g. an adapter projected into
//! a subspace: every call is answered with the pinned values, whatever the finetuner asks.
//! Wrap a [`super::cache::CachedFeatures`] model, so the pinned features are computed once.

use super::{CoeffLayout, ForwardModel};
use crate::error::Result;
use crate::task::layout::check_params;

/// `M` with its coefficient values fixed at construction.
pub struct PinnedCoefficients<M> {
    inner: M,
    params: Vec<f32>,
}

impl<M: ForwardModel> PinnedCoefficients<M> {
    /// Pins `inner` at `params` (its flat layout; checked against it).
    pub fn new(inner: M, params: Vec<f32>) -> Result<Self> {
        check_params(inner.layout(), &params)?;
        Ok(Self { inner, params })
    }

    /// The wrapped model.
    pub fn inner(&mut self) -> &mut M {
        &mut self.inner
    }
}

impl<M: ForwardModel> ForwardModel for PinnedCoefficients<M> {
    fn layout(&self) -> &[CoeffLayout] {
        self.inner.layout()
    }

    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }

    /// The features under the pinned values; `params` is ignored. No exact gradients: the
    /// coefficients do not move.
    fn features(&mut self, batch: &[usize], _params: &[f32], out: &mut Vec<f32>) -> Result<usize> {
        self.inner.features(batch, &self.params, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::testing::TinyModel;

    #[test]
    fn answers_with_the_pinned_values_whatever_is_asked() {
        let mut plain = TinyModel::new(7, 12, 5, 6, 4, 3, 2);
        let n: usize = plain.layout().iter().map(|l| l.len()).sum();
        let pinned_at: Vec<f32> = (0..n).map(|i| 0.01 * i as f32 - 0.2).collect();
        let mut pinned =
            PinnedCoefficients::new(TinyModel::new(7, 12, 5, 6, 4, 3, 2), pinned_at.clone())
                .unwrap();
        let (mut a, mut b, mut z) = (Vec::new(), Vec::new(), Vec::new());
        plain.features(&[0, 4, 6], &pinned_at, &mut a).unwrap();
        pinned.features(&[0, 4, 6], &vec![0.0; n], &mut b).unwrap();
        assert_eq!(a, b);
        // The pinned values matter: the base model's features differ.
        plain.features(&[0, 4, 6], &vec![0.0; n], &mut z).unwrap();
        assert!(a.iter().zip(&z).any(|(x, y)| (x - y).abs() > 1e-4));
        assert!(
            PinnedCoefficients::new(TinyModel::new(7, 12, 5, 6, 4, 3, 2), vec![0.0; n + 1])
                .is_err()
        );
    }
}
