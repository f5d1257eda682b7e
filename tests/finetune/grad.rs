//! Gradient checks of the finetuner: the SPSA estimate against central finite differences
//! (statistically), and the exact head gradient against finite differences (f64).

use eigenlorax::finetune::head::LinearHead;
use eigenlorax::finetune::testing::TinyModel;
use eigenlorax::finetune::zo::{self, Direction, SpsaScratch, SpsaSettings};
use eigenlorax::finetune::{CoeffLayout, ForwardModel};
use eigenlorax::util::GaussianRng;

/// CE of a fixed head on the tiny model's features, as a function of the coefficients.
struct Problem {
    model: TinyModel,
    head: LinearHead,
    batch: Vec<usize>,
    labels: Vec<usize>,
    buf: Vec<f32>,
    feats: Vec<f32>,
}

impl Problem {
    fn new() -> (Self, Vec<f64>) {
        // rank == r_max, so the flat vector is exactly the model's input layout.
        let model = TinyModel::new(3, 8, 6, 8, 5, 3, 2);
        let n: usize = model.layout().iter().map(CoeffLayout::len).sum();
        let mut rng = GaussianRng::new(11);
        let mut head = LinearHead::zeros(3, model.dim());
        for p in head.params_mut() {
            *p = rng.next_normal();
        }
        // A point with both sides non-zero, so every coordinate has a gradient.
        let theta: Vec<f64> = (0..n).map(|_| 0.5 * rng.next_normal()).collect();
        let labels = (0..8).map(|i| i % 3).collect();
        (
            Self {
                model,
                head,
                batch: (0..8).collect(),
                labels,
                buf: vec![0.0; n],
                feats: Vec::new(),
            },
            theta,
        )
    }

    fn loss(&mut self, theta: &[f64]) -> f64 {
        for (b, t) in self.buf.iter_mut().zip(theta) {
            *b = *t as f32;
        }
        self.model
            .features(&self.batch, &self.buf, &mut self.feats)
            .unwrap();
        self.head
            .loss_grad(&self.feats, &self.labels, 0.0, None)
            .unwrap()
            .loss
    }
}

#[test]
fn spsa_mean_matches_finite_differences() {
    let (mut pb, theta) = Problem::new();
    let n = theta.len();
    // Central finite differences (the parameters go to the model in f32, so h is not tiny).
    let h = 1e-3;
    let mut fd = vec![0.0; n];
    let mut t = theta.clone();
    for i in 0..n {
        t[i] = theta[i] + h;
        let lp = pb.loss(&t);
        t[i] = theta[i] - h;
        let lm = pb.loss(&t);
        t[i] = theta[i];
        fd[i] = (lp - lm) / (2.0 * h);
    }
    let fd_norm = fd.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        fd_norm > 0.1,
        "the check point must have a real gradient ({fd_norm})"
    );

    for kind in [Direction::Rademacher, Direction::Gaussian] {
        let samples = 300;
        let dirs = 4;
        let (mut sum, mut sum_sq) = (vec![0.0; n], vec![0.0; n]);
        let mut g = vec![0.0; n];
        let mut scratch = SpsaScratch::default();
        for s in 0..samples {
            let settings = SpsaSettings {
                eps: 1e-3,
                directions: dirs,
                kind,
                seed: 5,
                step: s,
            };
            let mut loss = |p: &[f64]| Ok(pb.loss(p));
            zo::spsa_estimate(&theta, &settings, &mut scratch, &mut loss, &mut g).unwrap();
            for i in 0..n {
                sum[i] += g[i];
                sum_sq[i] += g[i] * g[i];
            }
        }
        let m = samples as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
        let mut worst = 0.0f64;
        for i in 0..n {
            let var = (sum_sq[i] / m - mean[i] * mean[i]) * m / (m - 1.0);
            let se = (var.max(0.0) / m).sqrt();
            let z = (mean[i] - fd[i]).abs() / (4.0 * se + 1e-4);
            worst = worst.max(z);
            assert!(
                (mean[i] - fd[i]).abs() < 4.0 * se + 1e-4,
                "{kind:?} coord {i}: mean {} fd {} se {se}",
                mean[i],
                fd[i]
            );
        }
        let dot: f64 = mean.iter().zip(&fd).map(|(a, b)| a * b).sum();
        let mn = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let cos = dot / (mn * fd_norm);
        eprintln!(
            "{kind:?}: {n} params, {} directions in all, cosine {cos:.4}, worst |mean-fd|/(4se+1e-4) {worst:.3}, |fd| {fd_norm:.3}",
            samples as usize * dirs
        );
        assert!(cos > 0.9, "{kind:?}: cosine {cos}");
    }
}

#[test]
fn head_gradient_equals_finite_differences() {
    let (c, d, n) = (4, 7, 9);
    let mut rng = GaussianRng::new(21);
    let feats: Vec<f32> = (0..n * d).map(|_| rng.next_normal() as f32).collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 1) % c).collect();
    let mut head = LinearHead::zeros(c, d);
    for p in head.params_mut() {
        *p = 0.7 * rng.next_normal();
    }
    for l2 in [0.0, 0.3] {
        let mut g = vec![0.0; c * d + c];
        head.loss_grad(&feats, &labels, l2, Some(&mut g)).unwrap();
        let h = 1e-5;
        let mut max_err = 0.0f64;
        let mut max_fd = 0.0f64;
        for (i, gi) in g.iter().enumerate() {
            let orig = head.params()[i];
            head.params_mut()[i] = orig + h;
            let lp = head.loss_grad(&feats, &labels, l2, None).unwrap().loss;
            head.params_mut()[i] = orig - h;
            let lm = head.loss_grad(&feats, &labels, l2, None).unwrap().loss;
            head.params_mut()[i] = orig;
            let fd = (lp - lm) / (2.0 * h);
            max_err = max_err.max((fd - gi).abs());
            max_fd = max_fd.max(fd.abs());
        }
        eprintln!("l2 {l2}: max |exact - fd| {max_err:.3e}, max |fd| {max_fd:.3}");
        assert!(max_err < 1e-6 * max_fd, "l2 {l2}: {max_err} vs {max_fd}");
    }
}

#[test]
fn head_loss_is_cross_entropy() {
    // Zero head: uniform softmax, CE = ln C exactly; one-hot-friendly head: accuracy counted.
    let mut head = LinearHead::zeros(3, 2);
    let feats = [1.0f32, 0.0, 0.0, 1.0];
    let hl = head.loss_grad(&feats, &[0, 2], 0.0, None).unwrap();
    assert!((hl.cross_entropy - 3f64.ln()).abs() < 1e-15);
    head.params_mut()[..6].copy_from_slice(&[2.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
    let hl = head.loss_grad(&feats, &[0, 2], 0.0, None).unwrap();
    assert_eq!(hl.correct, 2);
    let expect = -(2f64.exp() / (2f64.exp() + 2.0)).ln();
    assert!(
        (hl.cross_entropy - expect).abs() < 1e-14,
        "{} vs {expect}",
        hl.cross_entropy
    );
    assert!(
        head.loss_grad(&feats, &[0, 3], 0.0, None).is_err(),
        "label out of range"
    );
}
