//! The finetuner on the tract runtime, end to end on the committed tiny BERT: a bundle from
//! task0..4, (a) the backend's pooled features give the same logits as a served task, and
//! (b) training the held-out task5's coefficients lowers its training cross-entropy below a
//! head-only run with the same budget.
#![cfg(feature = "tract")]

use crate::support::tinybert as tinybert_support;

use eigenlorax::bundle::{CoeffFile, Head, Provenance};
use eigenlorax::eval::layout_params;
use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::finetune::{FinetuneConfig, Finetuner, ForwardModel, Objective};
use eigenlorax::serve::backend::tract::TractBackend;
use eigenlorax::serve::backend::tract::{Runtime, TValue, Tensor};
use eigenlorax::serve::input::apply_head;
use eigenlorax::subspace::project;
use eigenlorax::task::{Pooling, pool};
use std::collections::BTreeMap;
use std::sync::Arc;
use tinybert_support::{SEQ, bound_bundle, data, fixture, task5_training, tmpdir};

#[test]
fn backend_features_match_the_served_task() {
    let dir = tmpdir("ft-tract-parity");
    let (bundle, adapters) = bound_bundle(&dir);
    let base = fixture("tiny-bert/model.onnx");
    let mut modules = BTreeMap::new();
    for m in adapters[0].module_names() {
        let lm = adapters[0].load_module(m).expect("module");
        modules.insert(m.to_string(), project(&lm, &bundle.subspace.modules[m]));
    }
    let head = Head::read(&fixture("adapters/task0/head.safetensors")).expect("head");
    let c = CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: "task0".into(),
        provenance: Provenance::Projected,
        modules,
        head: Some(head.clone()),
    };
    let rt = Arc::new(Runtime::load(&base, &bundle).expect("runtime"));
    let t0 = rt.insert_task(&c).expect("task");

    // The served path (as `elx run` does it): run, mean-pool with the mask, apply the head.
    let (ex, _) = data(0, "test");
    let n = 8;
    let ids: Vec<i64> = ex[..n].iter().flat_map(|e| e.input_ids.clone()).collect();
    let mask: Vec<i64> = ex[..n]
        .iter()
        .flat_map(|e| e.attention_mask.clone())
        .collect();
    let inputs: [TValue; 2] = [
        Tensor::from_shape(&[n, SEQ], &ids).expect("ids").into(),
        Tensor::from_shape(&[n, SEQ], &mask).expect("mask").into(),
    ];
    let o = rt.run(&inputs, t0).expect("run");
    let hidden: Vec<f32> = o[0]
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect();
    let pooled = pool(&hidden, o[0].shape(), Some(&mask), Pooling::Mean).expect("pool");
    let served: Vec<Vec<f64>> = pooled
        .iter()
        .map(|p| apply_head(&head, p).expect("head").logits)
        .collect();

    // The finetuning path: the same coefficients as a flat parameter vector.
    let backend = TractBackend::new(Arc::clone(&rt)).expect("backend");
    let mut model = SequenceModel::new(backend, ex[..n].to_vec(), 0, Some(SEQ)).expect("model");
    let params = layout_params(model.layout(), &c.modules).expect("params");
    let batch: Vec<usize> = (0..n).collect();
    let mut feats = Vec::new();
    let mut logits_of = |params: &[f32]| -> Vec<Vec<f64>> {
        let d = model
            .features(&batch, params, &mut feats)
            .expect("features");
        feats
            .chunks_exact(d)
            .map(|f| apply_head(&head, f).expect("head").logits)
            .collect()
    };
    let trained = logits_of(&params);
    // Twice: the second call overwrites the private task in place; it must not go stale.
    let zero = logits_of(&vec![0.0; params.len()]);
    let again = logits_of(&params);
    let diff = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let d = diff(&trained, &served);
    let d_again = diff(&again, &served);
    let moved = diff(&zero, &served);
    println!(
        "backend vs served logits: {d:e} (again: {d_again:e}); zero coeffs move them by {moved:e}"
    );
    assert!(
        d <= 1e-5,
        "backend logits differ from the served task by {d}"
    );
    assert!(d_again <= 1e-5, "second write differs by {d_again}");
    assert!(moved > 1e-3, "task0's coefficients must matter: {moved}");
    // Three writes, all in place: the engine had released the tensors after each run.
    assert_eq!(model.backend().reallocations(), 0);
}

#[test]
fn finetuning_task5_beats_head_only() {
    let dir = tmpdir("ft-tract-train");
    let (bundle, _) = bound_bundle(&dir);
    let rt = Arc::new(Runtime::load(&fixture("tiny-bert/model.onnx"), &bundle).expect("rt"));
    let (ex, train, cfg) = task5_training(11, 60);
    let run = |cfg: FinetuneConfig| -> (f64, f64, u64) {
        let backend = TractBackend::new(Arc::clone(&rt)).expect("backend");
        let model = SequenceModel::new(backend, ex.clone(), 0, Some(SEQ)).expect("model");
        let mut ft = Finetuner::new(
            model,
            cfg,
            Objective::Classify { classes: 2 },
            train.clone(),
            None,
        )
        .expect("finetuner");
        let start = ft.evaluate(&train).expect("eval").loss;
        for _ in 0..ft.config().max_steps {
            let b = ft.next_batch();
            ft.step(&b).expect("step");
        }
        let end = ft.evaluate(&train).expect("eval");
        (start, end.loss, ft.forward_passes())
    };
    let t = std::time::Instant::now();
    // Head only over the base model: zero-shot mode with α_B = 0 keeps ΔW = 0.
    let (h0, head_only, _) = run(FinetuneConfig {
        zero_shot: true,
        zero_shot_b_std: 0.0,
        ..cfg.clone()
    });
    let (f0, full, passes) = run(cfg);
    println!(
        "task5 train CE: start {f0:.4} (head-only start {h0:.4}); after 60 steps head-only {head_only:.4}, coefficients+head {full:.4} ({passes} forward passes, {:.1}s both runs)",
        t.elapsed().as_secs_f64()
    );
    assert!((f0 - 2f64.ln()).abs() < 1e-9 && (h0 - 2f64.ln()).abs() < 1e-9);
    assert!(head_only < h0, "the head alone must learn something");
    assert!(
        full < head_only,
        "training the coefficients ({full}) must beat the head alone ({head_only})"
    );
}
