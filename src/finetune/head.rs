//! A linear classification head on pooled features, with its exact softmax cross-entropy
//! gradient.
//!
//! With logits z = W·x + b, p = softmax(z) and one-hot targets y, the mean cross-entropy over
//! n examples has the closed-form gradient
//!
//! ```text
//! dW = (P − Y)ᵀ·X / n      db = Σ (p − y) / n
//! ```
//!
//! plus `l2 · W` when an L2 penalty (l2/2)·‖W‖² is asked for (the bias is not penalised).

use crate::error::{Error, Result};
use crate::task::head::{argmax, log_sum_exp, logit};

/// A linear head W `[classes x dim]` (row-major) and b `[classes]`, stored in one vector
/// `[W..., b...]` so that one optimizer state covers both.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    classes: usize,
    dim: usize,
    params: Vec<f64>,
    logits: Vec<f64>,
}

/// Loss and accuracy counts of a head over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeadLoss {
    /// Mean cross-entropy (plus the L2 term when asked for).
    pub loss: f64,
    /// Mean cross-entropy alone.
    pub cross_entropy: f64,
    /// Examples whose arg-max logit is the label.
    pub correct: usize,
}

impl LinearHead {
    /// An all-zero head (uniform predictions). The problem in the head is convex, so zero is a
    /// safe start and adds no seed dependence.
    pub fn zeros(classes: usize, dim: usize) -> Self {
        Self {
            classes,
            dim,
            params: vec![0.0; classes * dim + classes],
            logits: vec![0.0; classes],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All parameters, `[W (row-major) ..., b ...]`.
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// All parameters, mutable.
    pub fn params_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    /// W [classes x dim], row-major.
    pub fn weight(&self) -> &[f64] {
        &self.params[..self.classes * self.dim]
    }

    /// b `[classes]`.
    pub fn bias(&self) -> &[f64] {
        &self.params[self.classes * self.dim..]
    }

    /// Mean loss over the batch and, when `grad` is given, its exact gradient written into it
    /// (same layout as [`params`](Self::params)).
    ///
    /// `features` is [n x dim] row-major; `labels[i] < classes`.
    pub fn loss_grad(
        &mut self,
        features: &[f32],
        labels: &[usize],
        l2: f64,
        mut grad: Option<&mut [f64]>,
    ) -> Result<HeadLoss> {
        let (c, d, n) = (self.classes, self.dim, labels.len());
        if n == 0 || features.len() != n * d {
            return Err(Error::Usage(format!(
                "head: {} feature values for {n} examples of dimension {d}",
                features.len()
            )));
        }
        if let Some(g) = grad.as_deref_mut() {
            if g.len() != self.params.len() {
                return Err(Error::Usage(
                    "head: gradient buffer of the wrong size".into(),
                ));
            }
            g.iter_mut().for_each(|v| *v = 0.0);
        }
        let inv_n = 1.0 / n as f64;
        let (mut ce, mut correct) = (0.0, 0);
        let (w, b) = self.params.split_at(c * d);
        for (i, &y) in labels.iter().enumerate() {
            if y >= c {
                return Err(Error::Usage(format!(
                    "head: label {y} out of range for {c} classes"
                )));
            }
            let x = &features[i * d..(i + 1) * d];
            for k in 0..c {
                self.logits[k] = logit(b[k], w[k * d..(k + 1) * d].iter().copied(), x);
            }
            // Stable log-sum-exp; ties in arg-max resolve to the lowest class.
            let (lse, best) = (log_sum_exp(&self.logits), argmax(&self.logits));
            ce += (lse - self.logits[y]) * inv_n;
            correct += usize::from(best == y);
            if let Some(g) = grad.as_deref_mut() {
                let (gw, gb) = g.split_at_mut(c * d);
                for k in 0..c {
                    let p = (self.logits[k] - lse).exp();
                    let r = (p - if k == y { 1.0 } else { 0.0 }) * inv_n;
                    gb[k] += r;
                    for (gwj, xj) in gw[k * d..(k + 1) * d].iter_mut().zip(x) {
                        *gwj += r * f64::from(*xj);
                    }
                }
            }
        }
        let mut loss = ce;
        if l2 > 0.0 {
            loss += 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>();
            if let Some(g) = grad {
                for (gw, wv) in g[..c * d].iter_mut().zip(w) {
                    *gw += l2 * wv;
                }
            }
        }
        Ok(HeadLoss {
            loss,
            cross_entropy: ce,
            correct,
        })
    }
}
