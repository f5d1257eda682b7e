//! A [`ForwardModel`] wrapper that remembers each example's features while the coefficient
//! values stay the same.
//!
//! Head-only and zero-shot training never change the coefficients, so after one pass over
//! the data every further step is pure head arithmetic: on a device this turns an epoch of
//! forward passes per step into none. When the coefficients do change (SPSA training), the
//! cache notices the new values and starts over, so wrapping a model is always safe; it then
//! costs one comparison of the parameter vector per call.

use super::{CoeffLayout, ForwardModel};
use crate::error::Result;

/// Caches the features of `M` per example id for the last parameter values seen.
pub struct CachedFeatures<M> {
    inner: M,
    params: Vec<f32>,
    dim: usize,
    /// [num_examples x dim], valid where `filled` is set.
    feats: Vec<f32>,
    filled: Vec<bool>,
    missing: Vec<usize>,
    fresh: Vec<f32>,
    hits: u64,
    misses: u64,
}

impl<M: ForwardModel> CachedFeatures<M> {
    /// Wraps `inner`; nothing is computed until the first call.
    pub fn new(inner: M) -> Self {
        let n = inner.num_examples();
        Self {
            inner,
            params: Vec::new(),
            dim: 0,
            feats: Vec::new(),
            filled: vec![false; n],
            missing: Vec::new(),
            fresh: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The wrapped model.
    pub fn inner(&mut self) -> &mut M {
        &mut self.inner
    }

    /// Unwraps the model.
    pub fn into_inner(self) -> M {
        self.inner
    }

    /// Examples served from the cache and examples that went through the model.
    pub fn hits_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

impl<M: ForwardModel> ForwardModel for CachedFeatures<M> {
    fn layout(&self) -> &[CoeffLayout] {
        self.inner.layout()
    }

    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }

    fn has_exact_gradients(&self) -> bool {
        self.inner.has_exact_gradients()
    }

    // Gradients are never cached: the coefficients change at every step that asks for them.
    fn loss_grad(
        &mut self,
        batch: &[usize],
        query: &super::GradQuery<'_>,
        out: &mut super::Gradients,
    ) -> Result<()> {
        self.inner.loss_grad(batch, query, out)
    }

    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize> {
        // Bit equality: a changed value, however small, is a different model.
        let same = self.params.len() == params.len()
            && self
                .params
                .iter()
                .zip(params)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            self.params.clear();
            self.params.extend_from_slice(params);
            self.filled.iter_mut().for_each(|f| *f = false);
        }
        self.missing.clear();
        for &id in batch {
            match self.filled.get(id) {
                Some(false) if !self.missing.contains(&id) => self.missing.push(id),
                Some(_) => {}
                // Let the model report the bad id in its own words.
                None => return self.inner.features(batch, params, out),
            }
        }
        if !self.missing.is_empty() {
            let d = self
                .inner
                .features(&self.missing, params, &mut self.fresh)?;
            if self.dim != d {
                self.dim = d;
                self.feats = vec![0.0; self.filled.len() * d];
                self.filled.iter_mut().for_each(|f| *f = false);
            }
            for (k, &id) in self.missing.iter().enumerate() {
                self.feats[id * d..(id + 1) * d].copy_from_slice(&self.fresh[k * d..(k + 1) * d]);
                self.filled[id] = true;
            }
        }
        self.misses += self.missing.len() as u64;
        self.hits += (batch.len() - self.missing.len()) as u64;
        let d = self.dim;
        out.clear();
        for &id in batch {
            out.extend_from_slice(&self.feats[id * d..(id + 1) * d]);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::testing::TinyModel;

    #[test]
    fn serves_the_same_features_and_starts_over_on_new_params() {
        let mut plain = TinyModel::new(7, 12, 5, 6, 4, 3, 2);
        let mut cached = CachedFeatures::new(TinyModel::new(7, 12, 5, 6, 4, 3, 2));
        let n: usize = plain.layout().iter().map(|l| l.len()).sum();
        let p0 = vec![0.1f32; n];
        let mut p1 = p0.clone();
        p1[0] = 0.2;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (batch, p) in [
            (&[0usize, 3, 5][..], &p0),
            (&[3, 5, 1][..], &p0),
            (&[1, 3][..], &p1),
            (&[3, 3, 0][..], &p1),
        ] {
            let da = plain.features(batch, p, &mut a).unwrap();
            let db = cached.features(batch, p, &mut b).unwrap();
            assert_eq!((da, &a), (db, &b));
        }
        // Misses 3 + 1 under p0, then 2 + 1 under p1 (the cache started over); hits 2 + 2.
        assert_eq!(cached.hits_misses(), (4, 7));
        assert!(cached.features(&[99], &p1, &mut b).is_err());
    }
}
