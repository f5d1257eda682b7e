//! Exact gradients of the next-token loss (issue 27) on the tiny random Llama: the loss is the
//! inference path's negative log-likelihood of the answer tokens, the gradients equal f64
//! central differences of the training graph's forward part computed by ONNX Runtime
//! (`tools/grad_fd_reference.py`), and micro-batching and threads change nothing.

use super::fd_support::{fd_reference, rel, write_tensors};
use super::support::*;
use eigenlorax::graph::grad::{Objective, TrainingShape};
use eigenlorax::serve::family::Decoder;
use eigenlorax::serve::generate::Generator;
use eigenlorax::serve::hidden::TokenBatch;
use eigenlorax::serve::train::{ExactGradient, Gradients};
use eigenlorax::serve::{Backend, Engine};
use eigenlorax::task::layout_params;

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("elx-dec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Three rows right-padded to 10 tokens (lengths 10, 7, 4), each ending with an answer of 3,
/// 2 and 2 tokens; targets are the next tokens, weights 1 / 7 on the positions that predict
/// an answer token.
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub targets: Vec<i64>,
    pub weights: Vec<f32>,
    rows: Vec<Vec<i64>>,
    answers: Vec<usize>,
}

pub const SEQ: usize = 10;

pub fn batch() -> Batch {
    let rows: Vec<Vec<i64>> = vec![
        vec![1, 5, 9, 13, 2, 7, 40, 41, 8, 3],
        vec![4, 4, 6, 20, 21, 22, 30],
        vec![11, 12, 13, 14],
    ];
    let answers = vec![3, 2, 2];
    let total: usize = answers.iter().sum();
    let (mut ids, mut mask) = (vec![0; 3 * SEQ], vec![0; 3 * SEQ]);
    let (mut targets, mut weights) = (vec![0; 3 * SEQ], vec![0f32; 3 * SEQ]);
    for (r, (row, &ans)) in rows.iter().zip(&answers).enumerate() {
        for (s, &t) in row.iter().enumerate() {
            ids[r * SEQ + s] = t;
            mask[r * SEQ + s] = 1;
            if s + 1 < row.len() {
                targets[r * SEQ + s] = row[s + 1];
                if s + 1 >= row.len() - ans {
                    weights[r * SEQ + s] = 1.0 / total as f32;
                }
            }
        }
    }
    Batch {
        ids,
        mask,
        targets,
        weights,
        rows,
        answers,
    }
}

#[test]
fn next_token_gradients_match_f64_finite_differences_and_the_inference_nll() {
    let dir = temp("lm-grad");
    // Tied: the head reads the embedding, which the coefficients never reach.
    let f = fixture(&dir, true);
    let engine = Engine::load(&f.model, &f.bundle, Backend::Tract).expect("engine");
    let family = Decoder::from_specs(engine.specs().expect("specs"), engine.output_names())
        .expect("decoder");
    let mut g = ExactGradient::for_family(&engine, &family).expect("exact gradients");
    let (on, all) = g.differentiated_nodes();
    assert!(on > 0 && on < all, "{on} of {all} nodes differentiated");
    let c = coeffs(&f.bundle, 5, "t", 0.4);
    let params = layout_params(g.layout(), &c.modules).expect("params");
    let b = batch();
    let mut out = Gradients::default();
    g.next_token_loss_grad(
        TokenBatch::new(&b.ids, &b.mask, 3, SEQ).unwrap(),
        &params,
        &b.targets,
        &b.weights,
        &mut out,
    )
    .expect("loss and gradients");
    assert!(out.loss.is_finite() && out.loss > 0.0);
    assert!(out.params.iter().any(|&x| x != 0.0));

    // The loss is the mean NLL of the answer tokens on the inference path (the patched graph
    // with its KV cache, the coefficients as a task).
    let generator = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator");
    let task = generator.engine().insert_task(&c).expect("task");
    let (mut nll, mut n) = (0.0, 0);
    for (row, &ans) in b.rows.iter().zip(&b.answers) {
        let toks: Vec<u32> = row.iter().map(|&t| t as u32).collect();
        let per_token = generator.token_nll(task, &toks).expect("nll");
        nll += per_token[per_token.len() - ans..].iter().sum::<f64>();
        n += ans;
    }
    let nll = nll / n as f64;
    assert!(
        ((out.loss - nll) / nll).abs() < 1e-5,
        "training loss {} vs inference NLL {nll}",
        out.loss
    );

    // Micro-batches of one row on three threads: the same sums in the same order.
    let mut one = ExactGradient::for_family(&engine, &family)
        .expect("exact gradients")
        .with_micro_batch(1)
        .with_threads(3);
    let mut o1 = Gradients::default();
    one.next_token_loss_grad(
        TokenBatch::new(&b.ids, &b.mask, 3, SEQ).unwrap(),
        &params,
        &b.targets,
        &b.weights,
        &mut o1,
    )
    .expect("micro-batched");
    let e = rel(
        &o1.params.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        &out.params.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
    );
    assert!(e < 1e-5, "micro-batched gradients differ by {e:.2e}");

    // The f64 reference on one training graph holding the whole batch.
    let shape = TrainingShape {
        batch: 3,
        seq: SEQ,
        classes: 0,
    };
    let graph = g.training_graph(&shape).expect("graph").clone();
    assert_eq!(graph.objective, Objective::NextToken);
    let model = dir.join("training.onnx");
    let standalone = g.standalone_model(&shape).expect("standalone");
    std::fs::write(&model, eigenlorax::graph::onnx::encode_model(&standalone)).expect("write");
    let layout = g.layout().to_vec();
    let mut coeff_tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut ours: Vec<(String, Vec<f32>)> = Vec::new();
    let mut at = 0;
    for (l, ci) in layout.iter().zip(&graph.coeff_inputs) {
        for (values, dst) in [(&params, Some(&mut coeff_tensors)), (&out.params, None)] {
            let (a, bb) = values[at..at + l.len()].split_at(l.r * l.k_a);
            let mut a_t = vec![0f32; l.k_a * l.r];
            eigenlorax::task::write_alpha_a_t(l, a, &mut a_t);
            let mut b_t = vec![0f32; l.r * l.k_b];
            eigenlorax::task::write_alpha_b_t(l, bb, &mut b_t);
            match dst {
                Some(d) => {
                    d.push((ci.alpha_a.clone(), vec![1, l.k_a, l.r], a_t));
                    d.push((ci.alpha_b.clone(), vec![1, l.r, l.k_b], b_t));
                }
                None => {
                    ours.push((ci.alpha_a.clone(), a_t));
                    ours.push((ci.alpha_b.clone(), b_t));
                }
            }
        }
        at += l.len();
    }
    let empty: Vec<f32> = Vec::new();
    let pasts: Vec<String> = (0..f.cfg.layers)
        .flat_map(|l| {
            [
                eigenlorax::graph::llama::past_key(l),
                eigenlorax::graph::llama::past_value(l),
            ]
        })
        .collect();
    let mut f32s: Vec<(&str, Vec<usize>, &[f32])> = coeff_tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    for p in &pasts {
        f32s.push((p, vec![3, f.cfg.kv_heads, 0, f.cfg.head_dim], &empty));
    }
    f32s.push(("token_weights", vec![3, SEQ], &b.weights));
    let positions: Vec<i64> = (0..3).flat_map(|_| 0..SEQ as i64).collect();
    let i64s = [
        ("input_ids", vec![3, SEQ], b.ids.as_slice()),
        ("attention_mask", vec![3, SEQ], b.mask.as_slice()),
        ("position_ids", vec![3, SEQ], positions.as_slice()),
        ("token_targets", vec![3, SEQ], b.targets.as_slice()),
        ("logits_positions", vec![SEQ], &positions[..SEQ]),
    ];
    let inputs = dir.join("inputs.safetensors");
    write_tensors(&inputs, &f32s, &i64s);
    let reference = fd_reference(&model, &inputs, &dir.join("fd.safetensors"));
    let loss_ref = reference["loss"][0];
    assert!(
        ((out.loss - loss_ref) / loss_ref).abs() < 1e-5,
        "loss {} vs f64 {loss_ref}",
        out.loss
    );
    let mut worst: f64 = 0.0;
    for (name, gv) in &ours {
        let r = &reference[&format!("grad:{name}")];
        let e = rel(&gv.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), r);
        assert!(
            e <= 1e-4,
            "{name}: relative error {e:.2e} against f64 central differences"
        );
        worst = worst.max(e);
    }
    eprintln!(
        "worst relative error {worst:.2e} over {} tensors",
        ours.len()
    );
}

/// The loss and gradients of [`batch`] under the coefficients of task seed 5 on `backend`.
pub fn gradients_on(f: &Fixture, backend: Backend) -> Gradients {
    let engine = Engine::load(&f.model, &f.bundle, backend).expect("engine");
    let family = Decoder::from_specs(engine.specs().expect("specs"), engine.output_names())
        .expect("decoder");
    let mut g = ExactGradient::for_family(&engine, &family).expect("exact gradients");
    let params =
        layout_params(g.layout(), &coeffs(&f.bundle, 5, "t", 0.4).modules).expect("params");
    let b = batch();
    let mut out = Gradients::default();
    g.next_token_loss_grad(
        TokenBatch::new(&b.ids, &b.mask, 3, SEQ).unwrap(),
        &params,
        &b.targets,
        &b.weights,
        &mut out,
    )
    .expect("loss and gradients");
    out
}
