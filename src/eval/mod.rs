//! Stage 6: evaluating the whole pipeline on a labelled workload.
//!
//! This stage only consumes the others (adapter -> subspace -> bundle -> runtime -> finetune)
//! and never feeds them: it holds the measurements a user needs to decide whether recycled
//! adapters help on their tasks.
//!
//! * [`capture`]: how much of an adapter's ΔW a subspace holds, beside a random subspace of the
//!   same size (the control of `docs/ARCHITECTURE.md`, "Honest numbers").
//! * [`head_metrics`]: accuracy and cross-entropy of a fixed head on pooled features.
//! * [`layout_params`]: fixed coefficients laid out as a [`ForwardModel`] parameter vector.
//! * [`projection`]: a whole adapter projected into a subspace with its error report
//!   (`elx project`, `elx inspect` and [`capture`]).
//! * [`capture_vs_chance`]: will recycling pay? Held-out capture vs chance, the spectrum vs a
//!   Gaussian null, mean / basis split, capture vs N, and a one-line verdict.
//! * [`loo`]: the leave-one-out experiment behind `elx demo`, on the engine it is given.
//! * [`loo_lm`]: the leave-one-out experiment on a family of decoder generation tasks
//!   (`elx leave-one-out`).
//! * [`generation`]: a decoder task's greedy answers scored by Rouge-L, exact match and the
//!   references' NLL (`elx score`).
//!
//! [`ForwardModel`]: crate::finetune::ForwardModel

pub mod capture_vs_chance;
pub mod generation;
pub mod loo;
pub mod loo_lm;
pub mod projection;

use crate::adapter::Adapter;
use crate::error::Result;
use crate::subspace::{Coefficients, Subspace};
pub use crate::task::{Metrics, head_metrics, layout_params};
pub use projection::{Projection, project_adapter};
use std::collections::BTreeMap;

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
    let mut p = project_adapter(adapter, space, Some(random), "the subspace")?;
    // Modules the random control lacks are left out of every figure.
    p.measures.retain(|_, mm| mm.random.is_some());
    p.modules.retain(|name, _| p.measures.contains_key(name));
    for (name, lora) in &p.loaded {
        let (Some(s), true) = (space.modules.get(name), p.measures.contains_key(name)) else {
            continue;
        };
        m.k_total += s.a.k_total() + s.b.k_total();
        m.coeff_params += lora.rank() * (s.a.k_total() + s.b.k_total());
        m.lora_params += lora.rank() * (lora.in_features() + lora.out_features());
    }
    if p.measures.values().map(|mm| mm.energy).sum::<f64>() > 0.0 {
        let ((error, captured), random) = p.combined();
        let (random_error, random_captured) = random.unwrap_or_default();
        (m.error, m.captured) = (error, captured);
        (m.random_error, m.random_captured) = (random_error, random_captured);
    }
    m.coefficients = p.modules;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Head;
    use crate::task::CoeffLayout;
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
