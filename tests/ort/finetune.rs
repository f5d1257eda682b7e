//! The finetuner on ONNX Runtime (CPU provider), against the same finetuner on tract, on the
//! committed tiny BERT with a bundle from task0..4: (a) the ORT backend's pooled features
//! equal tract's for the same coefficients, (b) training task5 through ORT follows tract's run
//! with the same seed and lowers the loss, and (c) `elx finetune --backend ort` writes a task
//! that `elx run` serves with the validation accuracy it reported.
#![cfg(all(feature = "ort", feature = "tract"))]

use crate::support::ort as ort_support;
use crate::support::tinybert as tinybert_support;

use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::finetune::{FinetuneConfig, Finetuner, ForwardModel, Objective, Split};
use eigenlorax::serve::ExecutionProvider;
use eigenlorax::serve::backend::ort::OrtBackend;
use eigenlorax::serve::backend::ort::OrtRuntime;
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::serve::backend::tract::TractBackend;
use eigenlorax::util::GaussianRng;
use ort_support::require_ort;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tinybert_support::{bound_bundle, data, model, rows, task5_training, tmpdir, write_jsonl};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn ort_backend_features_equal_tract() {
    require_ort();
    let dir = tmpdir("ort-ft-parity");
    let (bundle, _) = bound_bundle(&dir);
    let tract_rt = Arc::new(Runtime::load(&model(), &bundle).expect("tract runtime"));
    let ort_rt =
        Arc::new(OrtRuntime::load(&model(), &bundle, ExecutionProvider::Cpu).expect("ort runtime"));
    let (ex, _) = data(5, "test");
    let n = 12;
    let mut on_tract = SequenceModel::new(
        TractBackend::new(tract_rt).expect("tract backend"),
        ex[..n].to_vec(),
        0,
        None,
    )
    .expect("model");
    let mut on_ort = SequenceModel::new(
        OrtBackend::new(ort_rt).expect("ort backend"),
        ex[..n].to_vec(),
        0,
        None,
    )
    .expect("model");
    assert_eq!(on_tract.layout(), on_ort.layout());
    let len: usize = on_ort.layout().iter().map(|l| l.len()).sum();
    let mut rng = GaussianRng::new(7);
    let params: Vec<f32> = (0..len).map(|_| (0.5 * rng.next_normal()) as f32).collect();
    let zero = vec![0f32; len];
    let batch: Vec<usize> = (0..n).collect();
    let (mut a, mut b, mut z) = (Vec::new(), Vec::new(), Vec::new());
    let d = on_tract.features(&batch, &params, &mut a).expect("tract");
    assert_eq!(on_ort.features(&batch, &params, &mut b).expect("ort"), d);
    on_ort.features(&batch, &zero, &mut z).expect("ort zero");
    let diff = max_abs_diff(&a, &b);
    let moved = max_abs_diff(&b, &z);
    // Written in place: a second call with other values must not see stale coefficients.
    let mut again = Vec::new();
    on_ort
        .features(&batch, &params, &mut again)
        .expect("ort again");
    println!(
        "pooled features [{n} x {d}]: ORT vs tract {diff:e}; coefficients move them by {moved:e}"
    );
    assert!(diff <= 1e-5, "ORT and tract features differ by {diff}");
    assert!(moved > 1e-2, "the coefficients must matter: {moved}");
    assert_eq!(again, b);
}

#[test]
fn training_through_ort_follows_tract() {
    require_ort();
    let dir = tmpdir("ort-ft-train");
    let (bundle, _) = bound_bundle(&dir);
    let (ex, train, cfg) = task5_training(3, 20);
    fn train_on<M: ForwardModel>(m: M, cfg: &FinetuneConfig, train: &Split) -> (f64, Vec<f64>) {
        let mut ft = Finetuner::new(
            m,
            cfg.clone(),
            Objective::Classify { classes: 2 },
            train.clone(),
            None,
        )
        .expect("finetuner");
        let start = ft.evaluate(train).expect("eval").loss;
        let mut losses = Vec::new();
        for _ in 0..cfg.max_steps {
            let b = ft.next_batch();
            losses.push(ft.step(&b).expect("step").loss);
        }
        losses.push(ft.evaluate(train).expect("eval").loss);
        (start, losses)
    }
    let tract_rt = Arc::new(Runtime::load(&model(), &bundle).expect("tract runtime"));
    let ort_rt =
        Arc::new(OrtRuntime::load(&model(), &bundle, ExecutionProvider::Cpu).expect("ort runtime"));
    let on_tract = SequenceModel::new(TractBackend::new(tract_rt).expect("b"), ex.clone(), 0, None)
        .expect("model");
    let on_ort =
        SequenceModel::new(OrtBackend::new(ort_rt).expect("b"), ex, 0, None).expect("model");
    let (s_t, l_t) = train_on(on_tract, &cfg, &train);
    let (s_o, l_o) = train_on(on_ort, &cfg, &train);
    let worst = l_t
        .iter()
        .zip(&l_o)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let (end_t, end_o) = (l_t[l_t.len() - 1], l_o[l_o.len() - 1]);
    println!(
        "train CE: start {s_o:.5}; after {} steps tract {end_t:.5}, ORT {end_o:.5}; worst per-step loss gap {worst:e}",
        cfg.max_steps
    );
    assert!((s_t - s_o).abs() < 1e-9);
    // The same seeded directions and batches: the runs differ only by float rounding, which
    // SPSA's 1/eps amplifies a little at each step.
    assert!(worst < 1e-3, "ORT's run drifted from tract's by {worst}");
    assert!(
        end_o < s_o - 0.02,
        "training through ORT must lower the loss: {s_o} -> {end_o}"
    );
}

/// `elx finetune --backend ort` end to end: it trains, reports, and writes a finetuned task
/// with a head that the tract runtime serves; `--ep` without `--backend ort` is refused.
#[test]
fn elx_finetune_on_ort_writes_a_served_task() {
    require_ort();
    let dir = tmpdir("ort-ft-cli");
    let _ = bound_bundle(&dir);
    let bound = dir.join("bound.elxb");
    let (train_rows, train_labels) = rows(5, "train");
    let (test_rows, test_labels) = rows(5, "test");
    let (train, val) = (dir.join("train.jsonl"), dir.join("val.jsonl"));
    write_jsonl(&train, &train_rows, &train_labels);
    write_jsonl(&val, &test_rows[..32], &test_labels[..32]);
    let out = dir.join("task5.elxc");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(["finetune", "--backend", "ort", "--model"])
        .arg(model())
        .args([
            "--bundle",
            &s(&bound),
            "--train",
            &s(&train),
            "--val",
            &s(&val),
        ])
        .args([
            "-o",
            &s(&out),
            "--r",
            "2",
            "--steps",
            "30",
            "--eval-every",
            "10",
            "--lr",
            "1e-2",
            "--head-lr",
            "5e-2",
            // Task5 sits at chance on validation: a warmed-up head would stay the best point.
            "--head-warmup",
            "0",
        ])
        .output()
        .expect("elx runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "elx finetune --backend ort: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{stdout}");
    let loss_after = |prefix: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("`{prefix}` in the summary:\n{stdout}"))
    };
    // The head starts at zero (CE = ln 2); the saved state is the best validation point.
    let (train_loss, val_loss) = (loss_after("train: loss "), loss_after("validation: loss "));
    assert!(train_loss < 2f64.ln() - 0.01, "training loss {train_loss}");
    assert!(val_loss.is_finite());
    let coeffs = eigenlorax::bundle::CoeffFile::read(&out).expect("task file");
    assert_eq!(coeffs.provenance, eigenlorax::bundle::Provenance::Finetuned);
    assert_eq!(coeffs.head.as_ref().map(|h| h.bias.len()), Some(2));
    let bundle = eigenlorax::bundle::Bundle::read(&bound).expect("bundle");
    let rt = Runtime::load(&model(), &bundle).expect("tract runtime");
    rt.load_task(&out)
        .expect("tract serves the ORT-trained task");

    // Mismatched flags are refused with a clear message.
    let bad = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(["finetune", "--ep", "cuda", "--model"])
        .arg(model())
        .args(["--bundle", &s(&bound), "--train", &s(&train), "-o"])
        .arg(dir.join("x.elxc"))
        .output()
        .expect("elx runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ep applies to --backend ort"));
    assert!(!dir.join("x.elxc").exists());
}
