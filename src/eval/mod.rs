//! Stage 6: evaluating the whole pipeline on a labelled workload.
//!
//! This stage only consumes the others (adapter -> subspace -> bundle -> runtime -> finetune)
//! and never feeds them: it holds the measurements a user needs to decide whether recycled
//! adapters help on their tasks.
//!
//! * [`capture`]: how much of an adapter's ΔW a subspace holds, beside a random subspace of the
//!   same size (the control of DESIGN.md, "What honest numbers look like").
//! * [`head_metrics`]: accuracy and cross-entropy of a fixed head on pooled features.
//! * [`layout_params`]: fixed coefficients laid out as a [`ForwardModel`] parameter vector.
//! * [`diagnostics`]: will recycling pay? Held-out capture vs chance, the spectrum vs a
//!   Gaussian null, mean / basis split, capture vs N, and a one-line verdict.
//! * `loo` (feature `tract`): the leave-one-out experiment behind `elx demo`.
//!
//! [`ForwardModel`]: crate::finetune::ForwardModel

pub mod diagnostics;
#[cfg(feature = "tract")]
pub mod loo;

use crate::adapter::Adapter;
use crate::bundle::Head;
use crate::error::{Error, Result};
use crate::finetune::CoeffLayout;
use crate::linalg;
use crate::subspace::{self, Coefficients, Subspace};
use std::collections::BTreeMap;

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
        for (c, l) in logits.iter_mut().enumerate() {
            *l = head.bias[c]
                + x.iter()
                    .enumerate()
                    .map(|(j, v)| head.weight[(c, j)] * f64::from(*v))
                    .sum::<f64>();
        }
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        ce += lse - logits[y];
        // Ties go to the lowest class, as argmax does everywhere else in the crate.
        let best = (0..classes).fold(0, |b, c| if logits[c] > logits[b] { c } else { b });
        correct += usize::from(best == y);
    }
    let n = labels.len();
    Ok(Metrics {
        accuracy: correct as f64 / n as f64,
        cross_entropy: ce / n as f64,
        examples: n,
    })
}

/// Lays fixed coefficients out as the parameter vector of a model with `layout` (per module:
/// α_A [r x K_A] then α_B [K_B x r], row-major, r the layout's rank). Coefficients of a
/// smaller rank are padded with zeros; modules without coefficients stay zero.
pub fn layout_params(
    layout: &[CoeffLayout],
    coeffs: &BTreeMap<String, Coefficients>,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(layout.iter().map(CoeffLayout::len).sum());
    for l in layout {
        let start = out.len();
        out.resize(start + l.len(), 0.0);
        let Some(c) = coeffs.get(&l.name) else {
            continue;
        };
        let r = c.alpha_a.nrows();
        if r > l.r
            || c.alpha_a.ncols() != l.k_a
            || c.alpha_b.nrows() != l.k_b
            || c.alpha_b.ncols() != r
        {
            return Err(Error::Usage(format!(
                "module {}: coefficients α_A {}x{}, α_B {}x{} do not fit K_A = {}, K_B = {}, r <= {}",
                l.name,
                c.alpha_a.nrows(),
                c.alpha_a.ncols(),
                c.alpha_b.nrows(),
                c.alpha_b.ncols(),
                l.k_a,
                l.k_b,
                l.r
            )));
        }
        let (a, b) = out[start..].split_at_mut(l.r * l.k_a);
        for i in 0..r {
            for k in 0..l.k_a {
                a[i * l.k_a + k] = c.alpha_a[(i, k)] as f32;
            }
        }
        for k in 0..l.k_b {
            for i in 0..r {
                b[k * l.r + i] = c.alpha_b[(k, i)] as f32;
            }
        }
    }
    Ok(out)
}

/// How much of one adapter a subspace holds, weighted by each module's ||ΔW||².
#[derive(Clone, Debug)]
pub struct Capture {
    /// The adapter's least-squares coefficients in the subspace, per module.
    pub coefficients: BTreeMap<String, Coefficients>,
    /// Σ (K_A + K_B) over the modules.
    pub k_total: usize,
    /// Σ r·(K_A + K_B): numbers in the coefficient file.
    pub coeff_params: usize,
    /// Σ r·(in + out): numbers in the LoRA adapter.
    pub lora_params: usize,
    /// Share of Σ||ΔW||² inside the subspace (energy-weighted over modules).
    pub captured: f64,
    /// The same for the random control.
    pub random_captured: f64,
    /// ||ΔW - ΔŴ||_F / ||ΔW||_F over all modules (energy-weighted root mean square).
    pub error: f64,
    /// The same for the random control.
    pub random_error: f64,
}

/// Projects every module of `adapter` that `space` (and `random`, a control of the same size)
/// holds, and measures the captured share of ΔW and the reconstruction error of both.
pub fn capture(adapter: &Adapter, space: &Subspace, random: &Subspace) -> Result<Capture> {
    let mut m = Capture {
        coefficients: BTreeMap::new(),
        k_total: 0,
        coeff_params: 0,
        lora_params: 0,
        captured: 0.0,
        random_captured: 0.0,
        error: 0.0,
        random_error: 0.0,
    };
    let (mut total, mut err2, mut rerr2) = (0.0, 0.0, 0.0);
    for name in adapter.modules.keys() {
        let (Some(s), Some(r)) = (space.modules.get(name), random.modules.get(name)) else {
            continue;
        };
        let lora = adapter.load_module(name)?;
        let energy = linalg::lowrank_frob(lora.b.as_ref(), lora.a.as_ref()).powi(2);
        let c = subspace::try_project(&lora, s)?;
        let e = subspace::relative_error(&lora, &subspace::try_reconstruct(&c, s)?);
        let rc = subspace::try_project(&lora, r)?;
        let re = subspace::relative_error(&lora, &subspace::try_reconstruct(&rc, r)?);
        total += energy;
        m.captured += subspace::captured_energy(&lora, s) * energy;
        m.random_captured += subspace::captured_energy(&lora, r) * energy;
        err2 += e * e * energy;
        rerr2 += re * re * energy;
        m.k_total += s.a.k_total() + s.b.k_total();
        m.coeff_params += lora.rank() * (s.a.k_total() + s.b.k_total());
        m.lora_params += lora.rank() * (lora.in_features() + lora.out_features());
        m.coefficients.insert(name.clone(), c);
    }
    if total > 0.0 {
        m.captured /= total;
        m.random_captured /= total;
        m.error = (err2 / total).sqrt();
        m.random_error = (rerr2 / total).sqrt();
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn head_metrics_match_a_hand_computation() {
        let head = Head {
            weight: Mat::from_fn(2, 2, |i, j| if i == j { 1.0 } else { 0.0 }),
            bias: vec![0.0, 0.5],
            labels: vec!["a".into(), "b".into()],
        };
        // logits (2, 0.5) and (0, 1.5): both argmax correct for labels 0 and 1.
        let m = head_metrics(&head, &[2.0, 0.0, 0.0, 1.0], 2, &[0, 1]).unwrap();
        let ce0 = (2f64.exp() + 0.5f64.exp()).ln() - 2.0;
        let ce1 = (1.0 + 1.5f64.exp()).ln() - 1.5;
        assert!((m.cross_entropy - (ce0 + ce1) / 2.0).abs() < 1e-12);
        assert_eq!((m.accuracy, m.examples), (1.0, 2));
        let m = head_metrics(&head, &[2.0, 0.0], 2, &[1]).unwrap();
        assert_eq!(m.accuracy, 0.0);
        assert!(head_metrics(&head, &[2.0, 0.0], 2, &[2]).is_err());
        assert!(head_metrics(&head, &[2.0, 0.0, 1.0], 3, &[0]).is_err());
    }

    #[test]
    fn layout_params_pad_to_the_model_rank() {
        let layout = vec![
            CoeffLayout {
                name: "m".into(),
                k_a: 2,
                k_b: 3,
                r: 2,
            },
            CoeffLayout {
                name: "absent".into(),
                k_a: 1,
                k_b: 1,
                r: 1,
            },
        ];
        let mut c = BTreeMap::new();
        c.insert(
            "m".to_string(),
            Coefficients {
                alpha_a: Mat::from_fn(1, 2, |_, k| 1.0 + k as f64),
                alpha_b: Mat::from_fn(3, 1, |k, _| 10.0 + k as f64),
            },
        );
        let p = layout_params(&layout, &c).unwrap();
        assert_eq!(
            p,
            [
                1.0, 2.0, 0.0, 0.0, 10.0, 0.0, 11.0, 0.0, 12.0, 0.0, 0.0, 0.0
            ]
        );
        c.get_mut("m").unwrap().alpha_b = Mat::zeros(2, 1);
        assert!(layout_params(&layout, &c).is_err());
    }
}
