//! The leave-one-out experiment behind `elx demo`, end to end on the committed tiny BERT
//! (six fixture adapters with heads, pre-tokenized data): every row it reports must be what
//! serving the written files gives, and the head-only row must cost one engine pass per
//! example (its features are cached).
#![cfg(feature = "tract")]

#[cfg(feature = "ort")]
#[path = "support/ort.rs"]
mod ort_support;
#[path = "support/tinybert.rs"]
mod tinybert_support;

use eigenlorax::bundle::CoeffFile;
use eigenlorax::eval::head_metrics;
use eigenlorax::eval::loo::{self, LooConfig, Method, TaskSpec};
use eigenlorax::finetune::{FinetuneConfig, GradMode};
use eigenlorax::serve::Backend;
use eigenlorax::serve::backend::tract::{Runtime, TValue, Tensor};
use eigenlorax::subspace::{ExtractOptions, KRule};
use eigenlorax::task::{Pooling, pool};
use std::path::Path;
use tinybert_support::{SEQ, fixture, rows, write_jsonl};

/// Writes `split` of a data fixture as pre-tokenized JSONL (pad id 0 -> dropped).
fn jsonl(task: usize, split: &str, out: &Path) {
    let (rows, labels) = rows(task, split);
    write_jsonl(out, &rows, &labels);
}

/// Test CE and accuracy of a written `.elxc` on the first `n_test` test examples, served as
/// `elx run` does: one run per example,
/// masked mean pooling, the file's head.
fn served(rt: &Runtime, elxc: &Path, test: &Path, n_test: usize) -> (f64, f64) {
    let task = rt.load_task(elxc).expect("load task");
    let coeffs = CoeffFile::read(elxc).expect("read elxc");
    let head = coeffs.head.expect("head");
    let (mut feats, mut labels) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(test)
        .expect("test")
        .lines()
        .take(n_test)
    {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let ids: Vec<i64> = serde_json::from_value(v["input_ids"].clone()).expect("ids");
        labels.push(v["label"].as_u64().expect("label") as usize);
        let n = ids.len();
        let mask = vec![1i64; n];
        let t = |d: &[i64]| TValue::from(Tensor::from_shape(&[1, n], d).expect("tensor"));
        let inputs: Vec<TValue> = rt
            .input_names()
            .iter()
            .map(|name| match name.as_str() {
                "input_ids" => t(&ids),
                "attention_mask" => t(&mask),
                _ => t(&vec![0; n]),
            })
            .collect();
        let out = rt.run(&inputs, task).expect("run");
        let hidden: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect();
        let pooled = pool(&hidden, out[0].shape(), Some(&mask), Pooling::Mean).expect("pool");
        feats.extend(pooled.into_iter().flatten());
    }
    let d = head.weight.ncols();
    let m = head_metrics(&head, &feats, d, &labels).expect("metrics");
    (m.cross_entropy, m.accuracy)
}

/// The six fixture tasks with their data written as JSONL under `dir`.
fn fixture_tasks(dir: &Path) -> Vec<TaskSpec> {
    (0..6)
        .map(|i| {
            let (train, test) = (
                dir.join(format!("task{i}.train.jsonl")),
                dir.join(format!("task{i}.test.jsonl")),
            );
            jsonl(i, "train", &train);
            jsonl(i, "test", &test);
            TaskSpec {
                name: format!("task{i}"),
                adapter: fixture(&format!("adapters/task{i}")),
                head: fixture(&format!("adapters/task{i}/head.safetensors")),
                train,
                test,
            }
        })
        .collect()
}

/// The leave-one-out settings of these tests (small: 20 training steps, 40 head steps).
fn config(dir: &Path, engine: Backend, grad: GradMode) -> LooConfig {
    LooConfig {
        base: fixture("tiny-bert/model.onnx"),
        tokenizer: None,
        max_length: SEQ,
        extract: ExtractOptions {
            k_rule_a: KRule::Energy(0.9),
            k_rule_b: KRule::Energy(0.9),
            ..Default::default()
        },
        train_examples: 48,
        few_shot: vec![48, 16],
        val_examples: 16,
        test_examples: 96,
        finetune: FinetuneConfig {
            rank: 2,
            max_steps: 20,
            directions: 2,
            batch_size: 16,
            eval_every: 10,
            grad,
            ..FinetuneConfig::default()
        },
        head_steps: 40,
        random_seed: 3,
        out_dir: dir.join("out"),
        serve_engine: Backend::Tract,
        train_engine: engine,
        finetune_head_lr: Some(1e-3),
        warm_start_head: true,
        start_competes: true,
    }
}

/// The trained rows with exact gradients (the default): training runs the training graph,
/// not the forward passes counted here.
#[test]
fn leave_one_out_rows_are_what_serving_gives() {
    leave_one_out_on(Backend::Tract, "tract", GradMode::Exact);
}

/// The same with SPSA, whose forward passes are counted.
#[test]
fn leave_one_out_rows_with_spsa() {
    leave_one_out_on(Backend::Tract, "tract-spsa", GradMode::Spsa);
}

/// The same with the two trained rows trained through ONNX Runtime (CPU), exact gradients:
/// still what tract serves from the written files.
#[cfg(feature = "ort")]
#[test]
fn leave_one_out_trained_on_onnx_runtime() {
    ort_support::require_ort();
    leave_one_out_on(
        Backend::Ort(eigenlorax::serve::ExecutionProvider::Cpu),
        "ort",
        GradMode::Exact,
    );
}

fn leave_one_out_on(engine: Backend, tag: &str, grad: GradMode) {
    let dir = std::env::temp_dir().join(format!("elx-eval-loo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let tasks = fixture_tasks(&dir);
    let cfg = config(&dir, engine, grad);
    let base = loo::Base::open(&cfg.base).expect("base");
    let r = loo::run_task(&cfg, &base, &tasks, 5, &mut |_| {}).expect("leave-one-out");
    let methods: Vec<Method> = r.methods.iter().map(|m| m.method).collect();
    // The fixtures have no head_only.safetensors, so no full-training-set head row.
    assert_eq!(
        methods,
        [
            Method::HeadOnly,
            Method::OwnLora,
            Method::Projected,
            Method::MeanOnly,
            Method::RandomProjected,
            Method::ProjectedRefit,
            Method::MeanOnlyRefit,
            Method::RandomProjectedRefit,
        ]
    );
    assert!((0.0..=1.0).contains(&r.captured) && (0.0..=1.0).contains(&r.random_captured));
    assert!((0.0..=1.0).contains(&r.mean_only_captured));
    // Few-shot sizes ascending, each trained on its own prefix.
    let sizes: Vec<usize> = r.few_shot.iter().map(|f| f.examples).collect();
    assert_eq!(sizes, [16, 48]);
    for f in &r.few_shot {
        assert_eq!(f.head_only.train_examples, f.examples);
        assert_eq!(f.finetuned.train_examples, f.examples);
        assert_eq!(f.random_basis.train_examples, f.examples);
    }
    let last = r.few_shot.last().expect("sizes");
    let row = |m: Method| match m {
        Method::HeadOnly => &last.head_only,
        Method::Finetuned => &last.finetuned,
        Method::RandomBasis => &last.random_basis,
        m => r.row(m).expect("row"),
    };
    // Without the full-data head, zero-shot gaps start from the head refit on the device.
    assert_eq!(
        r.reference_ce,
        r.row(Method::HeadOnly).expect("head").test.cross_entropy
    );
    let lora = row(Method::OwnLora).test.cross_entropy;
    let projected = row(Method::Projected).test.cross_entropy;
    if let Some(g) = r.zero_shot_gap(Method::Projected) {
        assert!((g - (r.reference_ce - projected) / (r.reference_ce - lora)).abs() < 1e-12);
    } else {
        assert!(r.reference_ce <= lora);
    }
    assert_eq!(loo::gap_recovered(1.0, 0.5, 0.75), Some(0.5));

    // Head refit rows: the reference is the head-only recipe on the training examples over
    // the base model, which is the few-shot head-only row of the same size (another bundle at
    // zero coefficients computes the same features), and refit rows start their gap from it.
    let refit_base = r.row(Method::HeadOnly).expect("refit reference");
    assert_eq!(refit_base.train_examples, 48);
    assert!(
        (refit_base.test.cross_entropy - last.head_only.test.cross_entropy).abs() < 1e-6,
        "{} vs {}",
        refit_base.test.cross_entropy,
        last.head_only.test.cross_entropy
    );
    let refit = r.row(Method::ProjectedRefit).expect("refit row");
    if let Some(g) = r.zero_shot_gap(Method::ProjectedRefit) {
        let from = refit_base.test.cross_entropy;
        assert!((g - (from - refit.test.cross_entropy) / (from - lora)).abs() < 1e-12);
    } else {
        assert!(refit_base.test.cross_entropy <= lora);
    }
    // A refit costs one pass per training and validation example; the test features are
    // the ones the row with the adapter's own head computed.
    for m in [
        Method::ProjectedRefit,
        Method::MeanOnlyRefit,
        Method::RandomProjectedRefit,
    ] {
        assert_eq!(r.row(m).expect("row").engine_examples, 48 + 16, "{m:?}");
    }
    // The refit head is trained, not the adapter's own one: it differs from it.
    assert!(
        (refit.test.cross_entropy - projected).abs() > 1e-6,
        "refit CE {} equals the own head's {projected}",
        refit.test.cross_entropy
    );
    assert_eq!(loo::gap_recovered(0.5, 0.5, 0.4), None);

    // Head only: one engine pass per training/validation example of the first size, then
    // cached features (the larger size adds its new examples only).
    assert_eq!(r.few_shot[0].head_only.engine_examples, 16 + 16);
    assert_eq!(row(Method::HeadOnly).engine_examples, 48 - 16);
    // SPSA rows: (2·directions + 1) batches per step, plus validation passes. Exact rows:
    // the training graph does the steps, forward passes only evaluate (at most 2 + 2
    // evaluations of the 16 validation examples, and the test set).
    let ft = row(Method::Finetuned);
    match grad {
        GradMode::Spsa => assert!(ft.engine_examples >= 20 * 5 * 16, "{}", ft.engine_examples),
        GradMode::Exact => assert!(ft.engine_examples < 20 * 16, "{}", ft.engine_examples),
    }

    // Every trained or projected row is what serving its written file gives.
    let out = cfg.out_dir.join("task5");
    let recycled = eigenlorax::bundle::Bundle::read(&out.join("recycled.elxb")).expect("bundle");
    let rt = Runtime::load(&cfg.base, &recycled).expect("runtime");
    for (m, file) in [
        (Method::HeadOnly, "head-only-n48.elxc"),
        (Method::Projected, "projected.elxc"),
        (Method::ProjectedRefit, "projected-refit.elxc"),
        (Method::Finetuned, "finetuned-n48.elxc"),
    ] {
        let (ce, acc) = served(&rt, &out.join(file), &tasks[5].test, cfg.test_examples);
        let row = row(m);
        assert!(
            (ce - row.test.cross_entropy).abs() < 1e-5,
            "{m:?}: served CE {ce} vs reported {}",
            row.test.cross_entropy
        );
        assert_eq!(acc, row.test.accuracy, "{m:?}");
        assert_eq!(
            row.file_bytes,
            std::fs::metadata(out.join(file)).expect("file").len()
        );
    }
    let random = eigenlorax::bundle::Bundle::read(&out.join("random.elxb")).expect("bundle");
    let rt = Runtime::load(&cfg.base, &random).expect("runtime");
    let (ce, _) = served(
        &rt,
        &out.join("random-basis-n48.elxc"),
        &tasks[5].test,
        cfg.test_examples,
    );
    assert!((ce - row(Method::RandomBasis).test.cross_entropy).abs() < 1e-5);
    let (ce, _) = served(
        &rt,
        &out.join("random-projected.elxc"),
        &tasks[5].test,
        cfg.test_examples,
    );
    assert!((ce - row(Method::RandomProjected).test.cross_entropy).abs() < 1e-5);
    let (ce, _) = served(
        &rt,
        &out.join("random-projected-refit.elxc"),
        &tasks[5].test,
        cfg.test_examples,
    );
    assert!((ce - row(Method::RandomProjectedRefit).test.cross_entropy).abs() < 1e-5);
    let mean = eigenlorax::bundle::Bundle::read(&out.join("mean-only.elxb")).expect("bundle");
    assert!(
        mean.subspace
            .modules
            .values()
            .all(|m| m.v_a.nrows() == 1 && m.v_b.ncols() == 1)
    );
    let rt_mean = Runtime::load(&cfg.base, &mean).expect("runtime");
    let (ce, _) = served(
        &rt_mean,
        &out.join("mean-only.elxc"),
        &tasks[5].test,
        cfg.test_examples,
    );
    assert!((ce - row(Method::MeanOnly).test.cross_entropy).abs() < 1e-5);
    let (ce, _) = served(
        &rt_mean,
        &out.join("mean-only-refit.elxc"),
        &tasks[5].test,
        cfg.test_examples,
    );
    assert!((ce - row(Method::MeanOnlyRefit).test.cross_entropy).abs() < 1e-5);
    // The coefficient rows carry r·(K_A + K_B) numbers per module and a head.
    let head_params = row(Method::HeadOnly).trainable;
    assert_eq!(
        row(Method::Finetuned).trainable,
        2 * (r.k_a + r.k_b) + head_params
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// In-sample serving: every fixture task from one bundle of all six adapters. Near energy 1
/// the bundle holds every adapter, so each task served from it is its own LoRA (patched ==
/// exact, task by task, which also checks that the tasks evaluated side by side come back
/// in order); lower energies keep fewer directions and less of each ΔW.
#[test]
fn in_sample_serving_matches_each_lora_near_full_energy() {
    let dir = std::env::temp_dir().join(format!("elx-eval-in-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let tasks = fixture_tasks(&dir);
    let cfg = config(&dir, Backend::Tract, GradMode::Exact);
    let base = loo::Base::open(&cfg.base).expect("base");
    let rows = loo::in_sample(&cfg, &base, &tasks, &[0.5, 0.999999], 64, &dir, &mut |_| {})
        .expect("in-sample");
    assert_eq!(rows.len(), 2);
    assert!(rows[0].k_total < rows[1].k_total);
    let lora_bytes: u64 = (0..6)
        .map(|i| {
            let a = eigenlorax::adapter::Adapter::open(&fixture(&format!("adapters/task{i}")))
                .expect("adapter");
            a.modules
                .values()
                .map(|m| (4 * m.rank * (m.in_features + m.out_features)) as u64)
                .sum::<u64>()
        })
        .sum();
    for row in &rows {
        assert_eq!(row.lora_bytes, lora_bytes);
        let names: Vec<&str> = row.tasks.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(
            names,
            ["task0", "task1", "task2", "task3", "task4", "task5"]
        );
    }
    let ces: Vec<f64> = rows[1].tasks.iter().map(|t| t.lora.cross_entropy).collect();
    assert!(
        ces.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3),
        "{ces:?}"
    );
    for (low, full) in rows[0].tasks.iter().zip(&rows[1].tasks) {
        assert!(
            full.captured > 0.999 && low.captured < full.captured,
            "{}",
            full.task
        );
        assert!(
            (full.served.cross_entropy - full.lora.cross_entropy).abs() < 1e-4,
            "{}: served {} vs own LoRA {}",
            full.task,
            full.served.cross_entropy,
            full.lora.cross_entropy
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
