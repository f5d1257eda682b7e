//! Numerical correctness of the patched graph on tract, against the unpatched base model and
//! against the base model with the reconstructed ΔŴ merged into its weights.
#![cfg(feature = "tract")]

use crate::support::runtime as runtime_support;

use eigenlorax::bundle::WeightLayout;
use eigenlorax::graph::onnx;
use eigenlorax::serve::TaskId;
use eigenlorax::serve::backend::tract::{Runtime, RuntimeOptions};
use runtime_support::*;
use tract_onnx::prelude::*;

/// Runs an (unpatched) model on tract; returns its outputs as f32 vectors.
fn run_plain(model: &eigenlorax::graph::ModelProto, x: &(Vec<usize>, Vec<f32>)) -> Vec<Vec<f32>> {
    let bytes = onnx::encode_model(model);
    let plan = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract load");
    let t = Tensor::from_shape(&x.0, &x.1).expect("tensor");
    let out = plan.run(tvec![t.into()]).expect("run");
    out.iter()
        .map(|o| {
            o.to_plain_array_view::<f32>()
                .expect("f32")
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

fn outputs(v: &TVec<TValue>) -> Vec<Vec<f32>> {
    v.iter()
        .map(|o| {
            o.to_plain_array_view::<f32>()
                .expect("f32")
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

fn tv(x: &(Vec<usize>, Vec<f32>)) -> TValue {
    Tensor::from_shape(&x.0, &x.1).expect("tensor").into()
}

#[test]
fn binding_uses_every_rule() {
    let dir = temp_dir("bindrules");
    let w = Weights::random(1);
    let path = write_model(&dir, "base.onnx", &model(&w));
    let mut b = bundle(7, "sub-a");
    let binding = bind_bundle(&mut b, &path);
    let q = &binding.modules["layer.0.query"];
    assert_eq!(
        (q.node.as_str(), q.weight.as_str(), q.layout),
        ("/l0/q/MatMul", "onnx::MatMul_11", WeightLayout::InOut)
    );
    assert_eq!(
        q.output, "q_add",
        "bias-anchored module adds after the bias"
    );
    let v = &binding.modules["layer.1.value"];
    assert_eq!(
        (v.node.as_str(), v.weight.as_str(), v.layout),
        ("/l1/v/MatMul", "layer.1.value.weight", WeightLayout::OutIn)
    );
    assert_eq!(v.input, "h1");
    let m = &binding.modules["mid.proj"];
    assert_eq!(
        (m.node.as_str(), m.output.as_str(), m.layout),
        ("/mid/MatMul", "hidden", WeightLayout::InOut)
    );
    let c = &binding.modules["classifier"];
    assert_eq!(
        (c.node.as_str(), c.weight.as_str(), c.layout),
        ("/classifier/Gemm", "classifier.weight", WeightLayout::OutIn)
    );
    assert_eq!(
        binding.base_sha256,
        eigenlorax::util::sha256_file(&path).expect("hash")
    );
}

#[test]
fn zero_coefficients_reproduce_the_base_model() {
    let dir = temp_dir("zero");
    let w = Weights::random(2);
    let base = model(&w);
    let path = write_model(&dir, "base.onnx", &base);
    let mut b = bundle(8, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load(&path, &b).expect("load");
    let zero = coeffs(1, "sub-a", "zero", 3, 0.0);
    let id = rt.insert_task(&zero).expect("insert");
    let x = input(3, 2, 5);
    let got = outputs(&rt.run(&[tv(&x)], id).expect("run"));
    let want = run_plain(&base, &x);
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(&want) {
        let d = max_abs_diff(g, w);
        println!("zero coefficients: max |patched - base| = {d:e}");
        assert!(
            d <= 1e-6,
            "zero coefficients differ from the base model by {d}"
        );
    }
    // The coefficients must matter: a non-zero task changes the outputs.
    let task = rt
        .insert_task(&coeffs(2, "sub-a", "t", 4, 0.5))
        .expect("insert");
    let moved = outputs(&rt.run(&[tv(&x)], task).expect("run"));
    assert!(max_abs_diff(&moved[0], &want[0]) > 1e-3);
}

#[test]
fn patched_equals_merged_lora() {
    let dir = temp_dir("merged");
    let w = Weights::random(4);
    let path = write_model(&dir, "base.onnx", &model(&w));
    let mut b = bundle(9, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load(&path, &b).expect("load");
    let x = input(5, 3, 4);
    // Rank 4 (= r_max) and rank 2 (zero-padded by the store).
    for (seed, r) in [(11u64, R_MAX), (12, 2)] {
        let c = coeffs(seed, "sub-a", "t", r, 0.4);
        let id = rt.insert_task(&c).expect("insert");
        let got = outputs(&rt.run(&[tv(&x)], id).expect("run"));
        let mut merged = Weights::random(4);
        for (m, _, _) in MODULES {
            merged.merge(m, &delta(&b, &c, m));
        }
        let want = run_plain(&model(&merged), &x);
        for (name, (g, wv)) in ["logits", "hidden"].iter().zip(got.iter().zip(&want)) {
            let d = max_abs_diff(g, wv);
            let scale = wv.iter().fold(0f32, |a, v| a.max(v.abs()));
            println!("r={r}: {name}: max |patched - merged| = {d:e} (max |out| = {scale:.3})");
            assert!(d <= 1e-4, "{name}: patched differs from merged ΔŴ by {d}");
        }
    }
}

#[test]
fn mixed_batch_equals_per_task_runs() {
    let dir = temp_dir("mixed");
    let w = Weights::random(6);
    let path = write_model(&dir, "base.onnx", &model(&w));
    let mut b = bundle(10, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load_with(
        &path,
        &b,
        &RuntimeOptions {
            mixed_batches: vec![3],
            ..Default::default()
        },
    )
    .expect("load");
    let ids: Vec<TaskId> = (0..3)
        .map(|i| {
            rt.insert_task(&coeffs(
                20 + i,
                "sub-a",
                &format!("t{i}"),
                2 + i as usize,
                0.5,
            ))
            .expect("insert")
        })
        .collect();
    let (seq, batch) = (4, 3);
    let x = input(7, batch, seq);
    let mixed = outputs(
        &rt.run_mixed(&[tv(&x)], &[ids[2], ids[0], ids[1]])
            .expect("mixed"),
    );
    let order = [ids[2], ids[0], ids[1]];
    let row = seq * D_IN;
    let mut worst = 0f32;
    let mut singles = Vec::new();
    for (i, &t) in order.iter().enumerate() {
        let xi = (vec![1, seq, D_IN], x.1[i * row..(i + 1) * row].to_vec());
        let single = outputs(&rt.run(&[tv(&xi)], t).expect("run"));
        let (lo, lh) = (4, seq * 20);
        worst = worst.max(max_abs_diff(&mixed[0][i * lo..(i + 1) * lo], &single[0]));
        worst = worst.max(max_abs_diff(&mixed[1][i * lh..(i + 1) * lh], &single[1]));
        singles.push(outputs(
            &rt.run(&[tv(&(vec![1, seq, D_IN], x.1[..row].to_vec()))], t)
                .expect("run"),
        ));
    }
    // The same row under the three tasks gives three different results, so the comparison
    // above could tell rows apart.
    assert!(max_abs_diff(&singles[0][0], &singles[1][0]) > 1e-3);
    assert!(max_abs_diff(&singles[1][0], &singles[2][0]) > 1e-3);
    println!("mixed batch vs per-task runs: max diff {worst:e}");
    assert!(
        worst <= 1e-5,
        "mixed batch differs from per-task runs by {worst}"
    );
    // A batch size not prebuilt is built on first use.
    let x2 = input(8, 2, seq);
    let two = outputs(
        &rt.run_mixed(&[tv(&x2)], &[ids[1], ids[1]])
            .expect("mixed 2"),
    );
    let same = outputs(&rt.run(&[tv(&x2)], ids[1]).expect("run"));
    assert!(max_abs_diff(&two[0], &same[0]) <= 1e-5);
    // Row count must match the task list.
    let err = rt
        .run_mixed(&[tv(&x2)], &ids)
        .expect_err("3 tasks, 2 rows")
        .to_string();
    assert!(err.contains("expected 3 rows"), "{err}");
}

#[test]
fn threads_running_different_tasks_get_their_own_results() {
    let dir = temp_dir("threads");
    let path = write_model(&dir, "base.onnx", &model(&Weights::random(12)));
    let mut b = bundle(13, "sub-a");
    bind_bundle(&mut b, &path);
    let rt = Runtime::load(&path, &b).expect("load");
    let ids: Vec<TaskId> = (0..2)
        .map(|i| {
            rt.insert_task(&coeffs(40 + i, "sub-a", "t", 4, 0.5))
                .expect("insert")
        })
        .collect();
    let x = input(14, 2, 5);
    let seq: Vec<Vec<Vec<f32>>> = ids
        .iter()
        .map(|&t| outputs(&rt.run(&[tv(&x)], t).expect("run")))
        .collect();
    assert!(
        max_abs_diff(&seq[0][0], &seq[1][0]) > 1e-3,
        "the two tasks must differ"
    );
    let worst = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|th| {
                let (rt, ids, x, seq) = (&rt, &ids, &x, &seq);
                s.spawn(move || {
                    let mut worst = 0f32;
                    for it in 0..6 {
                        let k = (th + it) % 2;
                        let got = outputs(&rt.run(&[tv(x)], ids[k]).expect("run"));
                        for (g, w) in got.iter().zip(&seq[k]) {
                            worst = worst.max(max_abs_diff(g, w));
                        }
                    }
                    worst
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .fold(0f32, f32::max)
    });
    println!("4 threads x 2 tasks vs sequential: max diff {worst:e}");
    assert!(
        worst <= 1e-6,
        "concurrent runs differ from sequential ones by {worst}"
    );
}
