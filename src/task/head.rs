//! Head application, shared by serving (`elx run`), evaluation and training: a linear
//! head's logits, softmax, log-sum-exp (for the cross-entropy) and the arg-max class.
//!
//! Every logit is `b_c + Σ_j W[c, j]·x_j` in f64, summed in feature order, so the three
//! callers agree to the last bit.

use crate::error::{Error, Result};
use faer::Mat;

/// A linear classification head on pooled features (read from a file by `Head::read` in
/// [`crate::bundle`]).
#[derive(Clone, Debug)]
pub struct Head {
    /// [classes x features]
    pub weight: Mat<f64>,
    /// `[classes]`
    pub bias: Vec<f64>,
    /// One label per class.
    pub labels: Vec<String>,
}

/// One logit: `bias + Σ_j w_j·x_j` (f64, summed in feature order).
#[inline]
pub fn logit(bias: f64, weights: impl Iterator<Item = f64>, x: &[f32]) -> f64 {
    bias + weights.zip(x).map(|(w, v)| w * f64::from(*v)).sum::<f64>()
}

/// The logits of `head` on one feature vector `x`, written into `out` (one per class).
pub fn head_logits(head: &Head, x: &[f32], out: &mut [f64]) {
    let d = head.weight.ncols();
    for (c, l) in out.iter_mut().enumerate() {
        *l = logit(head.bias[c], (0..d).map(|j| head.weight[(c, j)]), x);
    }
}

/// Numerically stable log Σ exp(logits).
pub fn log_sum_exp(logits: &[f64]) -> f64 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
}

/// The index of the largest value; ties go to the lowest index.
pub fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |b, c| if values[c] > values[b] { c } else { b })
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// A head's answer for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// W·pooled + b.
    pub logits: Vec<f64>,
    /// softmax(logits).
    pub probs: Vec<f64>,
    /// Index of the largest probability.
    pub class: usize,
    /// Its label.
    pub label: String,
}

/// Applies a classification head: logits = W·pooled + b, softmax, arg-max label. A feature
/// count that does not match the head's is an error naming both.
pub fn apply_head(head: &Head, pooled: &[f32]) -> Result<Prediction> {
    let (classes, features) = (head.weight.nrows(), head.weight.ncols());
    if features != pooled.len() {
        return Err(Error::Usage(format!(
            "the task's head takes {features} features but the pooled model output has {}; check --pooling",
            pooled.len()
        )));
    }
    if head.bias.len() != classes || head.labels.len() != classes || classes == 0 {
        return Err(Error::Usage(format!(
            "the task's head is inconsistent: {classes} weight rows, {} biases, {} labels",
            head.bias.len(),
            head.labels.len()
        )));
    }
    let mut logits = vec![0.0; classes];
    head_logits(head, pooled, &mut logits);
    if let Some(l) = logits.iter().find(|l| !l.is_finite()) {
        return Err(Error::Numeric(format!(
            "the task's head gives the logit {l}: expected finite logits (the pooled output or the head's weights are out of range)"
        )));
    }
    let probs = softmax(&logits);
    let class = argmax(&probs);
    Ok(Prediction {
        label: head.labels[class].clone(),
        logits,
        probs,
        class,
    })
}

/// Classification quality on one labelled set.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Share of examples whose arg-max class is the label.
    pub accuracy: f64,
    /// Mean softmax cross-entropy (natural log).
    pub cross_entropy: f64,
    /// Number of examples.
    pub examples: usize,
}

/// Accuracy and mean cross-entropy of `head` on pooled `features` [n x d] with class indices
/// `labels` (indices into `head.labels`).
pub fn head_metrics(head: &Head, features: &[f32], d: usize, labels: &[usize]) -> Result<Metrics> {
    let classes = head.weight.nrows();
    if head.weight.ncols() != d || head.bias.len() != classes {
        return Err(Error::Usage(format!(
            "the head takes {} features and has {} biases for {classes} classes; the features have {d}",
            head.weight.ncols(),
            head.bias.len()
        )));
    }
    if d == 0 || features.len() != labels.len() * d || labels.is_empty() {
        return Err(Error::Usage(format!(
            "expected {} labels for {} features of size {d}",
            features.len() / d.max(1),
            features.len()
        )));
    }
    if let Some(i) = labels.iter().position(|&y| y >= classes) {
        return Err(Error::Usage(format!(
            "example {i} has class {} but the head has {classes} classes",
            labels[i]
        )));
    }
    let (mut ce, mut correct) = (0.0, 0usize);
    let mut logits = vec![0.0f64; classes];
    for (x, &y) in features.chunks_exact(d).zip(labels) {
        head_logits(head, x, &mut logits);
        ce += log_sum_exp(&logits) - logits[y];
        correct += usize::from(argmax(&logits) == y);
    }
    let n = labels.len();
    Ok(Metrics {
        accuracy: correct as f64 / n as f64,
        cross_entropy: ce / n as f64,
        examples: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_gives_softmax_and_label() {
        let head = Head {
            weight: Mat::from_fn(2, 3, |i, j| if i == 0 { 1.0 } else { j as f64 }),
            bias: vec![0.5, -1.0],
            labels: vec!["neg".into(), "pos".into()],
        };
        let p = apply_head(&head, &[1.0, 2.0, 3.0]).unwrap();
        // logits: [6 + 0.5, 0 + 2 + 6 - 1] = [6.5, 7]
        assert!((p.logits[0] - 6.5).abs() < 1e-12 && (p.logits[1] - 7.0).abs() < 1e-12);
        let e = (-0.5f64).exp();
        assert!((p.probs[1] - 1.0 / (1.0 + e)).abs() < 1e-12);
        assert_eq!(p.label, "pos");
        assert!(
            apply_head(&head, &[1.0, 2.0])
                .unwrap_err()
                .to_string()
                .contains("3 features")
        );
    }
}
