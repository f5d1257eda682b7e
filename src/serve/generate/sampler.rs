//! Picking the next token from a row of logits: greedy (temperature 0, the lowest id among
//! equal maxima, so deterministic) or sampled from the softmax at a temperature, restricted
//! to the `top_k` most likely tokens and then to the smallest set whose probability reaches
//! `top_p`, with a seeded generator (the same seed gives the same tokens).

use crate::error::{Error, Result};
use crate::util::GaussianRng;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0: greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Seed of the sampling generator.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingOptions {
    /// Checks the values: a finite temperature ≥ 0 and `top_p` in (0, 1].
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Usage(format!(
                "expected a finite temperature >= 0, found {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Usage(format!(
                "expected top-p in (0, 1], found {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// One request's sampler (see the module documentation).
#[derive(Clone, Debug)]
pub struct Sampler {
    options: SamplingOptions,
    rng: GaussianRng,
}

/// A chosen token and the model's log-probability of it (the log-softmax of the raw logits,
/// whatever the temperature).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// The token id.
    pub id: u32,
    /// Its log-probability under the model.
    pub logprob: f32,
}

/// `log softmax(logits)[i]`, computed in f64.
pub fn logprob(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // exp in f32 (each term relative error ~1e-7, far below the f32 logits' own), summed in
    // f64: a tenth of a decode step went to f64 exp over the vocabulary.
    let sum: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
    (f64::from(logits[i] - max) - sum.ln()) as f32
}

/// The index of the largest value (the first among equals).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

impl Sampler {
    /// A sampler with `options` (checked).
    pub fn new(options: SamplingOptions) -> Result<Sampler> {
        options.check()?;
        let rng = GaussianRng::new(options.seed);
        Ok(Sampler { options, rng })
    }

    /// Picks a token from `logits` (finite, as the engine checks).
    pub fn pick(&mut self, logits: &[f32]) -> Pick {
        let id = if self.options.temperature == 0.0 {
            argmax(logits)
        } else {
            self.sample(logits)
        };
        Pick {
            id: id as u32,
            logprob: logprob(logits, id),
        }
    }

    fn sample(&mut self, logits: &[f32]) -> usize {
        let t = f64::from(self.options.temperature);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Most likely first; ties by id, so the order (and the draw) is reproducible.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.options.top_k > 0 {
            order.truncate(self.options.top_k);
        }
        let max = f64::from(logits[order[0]]);
        let mut p: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - max) / t).exp())
            .collect();
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
        if self.options.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = p
                .iter()
                .position(|&x| {
                    acc += x;
                    acc >= f64::from(self.options.top_p)
                })
                .map_or(p.len(), |i| i + 1);
            p.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = self.rng.next_uniform() * total;
        for (k, &x) in p.iter().enumerate() {
            if u < x {
                return order[k];
            }
            u -= x;
        }
        order[p.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_sampling_repeats_with_its_seed() {
        let logits = [0.5, 2.0, -1.0, 2.0, 1.9];
        let mut g = Sampler::new(SamplingOptions::default()).unwrap();
        let p = g.pick(&logits);
        assert_eq!(p.id, 1);
        let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        assert!((f64::from(p.logprob) - (2.0 - lse)).abs() < 1e-6);

        let opts = SamplingOptions {
            temperature: 0.8,
            top_k: 3,
            top_p: 1.0,
            seed: 9,
        };
        let draw = |o: &SamplingOptions| {
            let mut s = Sampler::new(o.clone()).unwrap();
            (0..200).map(|_| s.pick(&logits).id).collect::<Vec<_>>()
        };
        let a = draw(&opts);
        assert_eq!(a, draw(&opts));
        // top-k 3 keeps ids 1, 3 and 4 only, and each of them is drawn.
        assert!(a.iter().all(|&i| [1, 3, 4].contains(&i)));
        assert!([1, 3, 4].iter().all(|i| a.contains(i)));
        // top-p that the first token alone reaches: always that token.
        let only = SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.01,
            seed: 1,
        };
        assert!(draw(&only).iter().all(|&i| i == 1));
        // Frequencies follow the softmax at the temperature (3 sigma on 4000 draws).
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        })
        .unwrap();
        let n = 4000;
        let c = (0..n).filter(|_| s.pick(&logits).id == 2).count() as f64 / n as f64;
        let p2 = (-1f64).exp() / logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>();
        assert!(
            (c - p2).abs() < 3.0 * (p2 * (1.0 - p2) / n as f64).sqrt() + 1e-3,
            "{c} vs {p2}"
        );
        assert!(
            Sampler::new(SamplingOptions {
                temperature: f32::NAN,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingOptions {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
