//! Exact-gradient test inputs on the tiny BERT: a batch of task-0 data with random
//! coefficients and head, shared by the tract and ONNX Runtime gradient checks.

use super::tinybert::{SEQ, data};
use eigenlorax::serve::train::{ExactGradient, Gradients};
use eigenlorax::task::CoeffLayout;
use eigenlorax::util::GaussianRng;

/// Tokens kept in the short rows of [`case`].
pub const SHORT: usize = 5;

/// A batch of the task-0 data with random coefficients (both sides non-zero) and head.
pub struct Case {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub batch: usize,
    pub params: Vec<f32>,
    pub head_w: Vec<f32>,
    pub head_b: Vec<f32>,
    pub targets: Vec<f32>,
    pub weights: Vec<f32>,
}

pub fn case(layout: &[CoeffLayout], dim: usize, seed: u64) -> Case {
    let (ex, labels) = data(0, "train");
    let batch = 6;
    let mut ids: Vec<i64> = ex[..batch]
        .iter()
        .flat_map(|e| e.input_ids.clone())
        .collect();
    let mut mask: Vec<i64> = ex[..batch]
        .iter()
        .flat_map(|e| e.attention_mask.clone())
        .collect();
    // Rows 0, 2 and 4 cut to 5 tokens: the training-graph runs then take the rows out of
    // order (sorted by length) and cut the short ones' padding, which must not show.
    for row in [0, 2, 4] {
        for p in row * SEQ + SHORT..(row + 1) * SEQ {
            ids[p] = 0;
            mask[p] = 0;
        }
    }
    let mut rng = GaussianRng::new(seed);
    let n: usize = layout.iter().map(CoeffLayout::len).sum();
    let params = (0..n).map(|_| 0.5 * rng.next_normal() as f32).collect();
    let classes = 2;
    let head_w = (0..classes * dim)
        .map(|_| rng.next_normal() as f32)
        .collect();
    let head_b = (0..classes)
        .map(|_| 0.1 * rng.next_normal() as f32)
        .collect();
    let mut targets = vec![0f32; batch * classes];
    for (i, &y) in labels[..batch].iter().enumerate() {
        targets[i * classes + y] = 1.0;
    }
    // Unequal example weights, so the weighting is checked too.
    let weights = (0..batch).map(|i| (1 + i) as f32 / 21.0).collect();
    Case {
        ids,
        mask,
        batch,
        params,
        head_w,
        head_b,
        targets,
        weights,
    }
}

pub fn gradients(g: &mut ExactGradient, c: &Case) -> Gradients {
    let mut out = Gradients::default();
    g.loss_grad(
        &c.ids, &c.mask, c.batch, SEQ, &c.params, &c.head_w, &c.head_b, &c.targets, &c.weights,
        &mut out,
    )
    .expect("loss_grad");
    out
}
