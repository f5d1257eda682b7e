//! A pure-Rust [`ForwardModel`] for tests and examples: a tiny two-layer network whose two
//! linear layers are adapted in EigenLoRAx form, y = W0·x + V_B·(α_B·(α_A·(V_A·x))).
//!
//! It computes in f64 and hands out f32 features, like an inference engine would.

use super::{CoeffLayout, ForwardModel};
use crate::error::{Error, Result};
use crate::util::GaussianRng;

/// One adapted linear layer [out x in] with its fixed subspace.
#[derive(Clone, Debug)]
struct Layer {
    inp: usize,
    out: usize,
    w0: Vec<f64>, // [out x in]
    va: Vec<f64>, // [K_A x in], orthonormal rows
    vb: Vec<f64>, // [out x K_B], orthonormal columns (stored row-major)
}

/// A tiny adapted MLP: features = L2(tanh(L1(x))), over a fixed set of random inputs.
#[derive(Clone, Debug)]
pub struct TinyModel {
    inputs: Vec<f64>, // [n x d_in]
    d_in: usize,
    layers: [Layer; 2],
    layout: Vec<CoeffLayout>,
    /// Scratch (reused across calls).
    buf: Vec<f64>,
}

fn orthonormal_rows(rng: &mut GaussianRng, k: usize, n: usize) -> Vec<f64> {
    // Gram–Schmidt, twice, on Gaussian rows (k ≤ n).
    let mut v: Vec<f64> = (0..k * n).map(|_| rng.next_normal()).collect();
    for i in 0..k {
        for _ in 0..2 {
            for j in 0..i {
                let dot: f64 = (0..n).map(|t| v[i * n + t] * v[j * n + t]).sum();
                for t in 0..n {
                    v[i * n + t] -= dot * v[j * n + t];
                }
            }
        }
        let norm = (0..n)
            .map(|t| v[i * n + t] * v[i * n + t])
            .sum::<f64>()
            .sqrt();
        for t in 0..n {
            v[i * n + t] /= norm;
        }
    }
    v
}

impl TinyModel {
    /// A model over `n` random inputs of size `d_in`, hidden width `hidden`, feature size
    /// `d_out`, subspaces of size `k` on both sides and maximum rank `r_max`.
    pub fn new(
        seed: u64,
        n: usize,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        k: usize,
        r_max: usize,
    ) -> Self {
        let mut rng = GaussianRng::new(seed);
        let inputs = (0..n * d_in).map(|_| rng.next_normal()).collect();
        let mut layer = |inp: usize, out: usize| {
            let scale = 1.0 / (inp as f64).sqrt();
            let w0 = (0..out * inp).map(|_| rng.next_normal() * scale).collect();
            let va = orthonormal_rows(&mut rng, k, inp);
            let vbt = orthonormal_rows(&mut rng, k, out); // [K_B x out]
            let mut vb = vec![0.0; out * k];
            for c in 0..k {
                for r in 0..out {
                    vb[r * k + c] = vbt[c * out + r];
                }
            }
            Layer {
                inp,
                out,
                w0,
                va,
                vb,
            }
        };
        let layers = [layer(d_in, hidden), layer(hidden, d_out)];
        let layout = vec![
            CoeffLayout {
                name: "l1".into(),
                k_a: k,
                k_b: k,
                r: r_max,
            },
            CoeffLayout {
                name: "l2".into(),
                k_a: k,
                k_b: k,
                r: r_max,
            },
        ];
        Self {
            inputs,
            d_in,
            layers,
            layout,
            buf: Vec::new(),
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.layers[1].out
    }

    /// Features of one example in f64 (for building synthetic targets).
    pub fn features_f64(&mut self, id: usize, params: &[f32]) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        self.features(&[id], params, &mut out)?;
        Ok(out.iter().map(|v| f64::from(*v)).collect())
    }
}

/// y = W0·x + V_B·(α_B·(α_A·(V_A·x))); `a` is α_A [r x K_A], `b` is α_B [K_B x r].
fn apply(l: &Layer, x: &[f64], a: &[f32], b: &[f32], r: usize, y: &mut [f64]) {
    let (ka, kb) = (l.va.len() / l.inp, l.vb.len() / l.out);
    let u: Vec<f64> = (0..ka)
        .map(|i| (0..l.inp).map(|j| l.va[i * l.inp + j] * x[j]).sum())
        .collect();
    let t: Vec<f64> = (0..r)
        .map(|i| (0..ka).map(|j| f64::from(a[i * ka + j]) * u[j]).sum())
        .collect();
    let s: Vec<f64> = (0..kb)
        .map(|i| (0..r).map(|j| f64::from(b[i * r + j]) * t[j]).sum())
        .collect();
    for (o, yo) in y.iter_mut().enumerate() {
        let base: f64 = (0..l.inp).map(|j| l.w0[o * l.inp + j] * x[j]).sum();
        let delta: f64 = (0..kb).map(|c| l.vb[o * kb + c] * s[c]).sum();
        *yo = base + delta;
    }
}

impl ForwardModel for TinyModel {
    fn layout(&self) -> &[CoeffLayout] {
        &self.layout
    }

    fn num_examples(&self) -> usize {
        self.inputs.len() / self.d_in
    }

    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize> {
        let need: usize = self.layout.iter().map(CoeffLayout::len).sum();
        if params.len() != need {
            return Err(Error::Usage(format!(
                "tiny model: {} coefficient values, expected {need}",
                params.len()
            )));
        }
        let (h, d) = (self.layers[0].out, self.layers[1].out);
        out.clear();
        self.buf.resize(h + d, 0.0);
        let mut off = 0;
        let mut split = [(0, 0, 0); 2];
        for (i, l) in self.layout.iter().enumerate() {
            split[i] = (off, off + l.r * l.k_a, l.r);
            off += l.len();
        }
        for &id in batch {
            let x = self
                .inputs
                .get(id * self.d_in..(id + 1) * self.d_in)
                .ok_or_else(|| Error::Usage(format!("tiny model: no example {id}")))?;
            let (hid, feat) = self.buf.split_at_mut(h);
            let (a0, b0, r0) = split[0];
            apply(
                &self.layers[0],
                x,
                &params[a0..b0],
                &params[b0..split[1].0],
                r0,
                hid,
            );
            hid.iter_mut().for_each(|v| *v = v.tanh());
            let (a1, b1, r1) = split[1];
            apply(
                &self.layers[1],
                hid,
                &params[a1..b1],
                &params[b1..],
                r1,
                feat,
            );
            out.extend(feat.iter().map(|v| *v as f32));
        }
        Ok(d)
    }
}
