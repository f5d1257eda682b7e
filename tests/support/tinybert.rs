//! Shared fixtures of the tests on the committed tiny BERT (models/fixtures): paths, a bundle
//! extracted from adapters task0..4 and bound to the model, and the tasks' tokenized data.
#![allow(dead_code)]

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, StorageDtype};
use eigenlorax::finetune::data::Example;
use eigenlorax::finetune::{FinetuneConfig, Split};
use eigenlorax::graph::bind_file;
use eigenlorax::subspace::{ExtractOptions, KRule, extract};
use std::path::{Path, PathBuf};

/// Sequence length of the data fixtures (rows padded with id 0).
pub const SEQ: usize = 16;

/// A path under models/fixtures.
pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

/// The tiny BERT model.
pub fn model() -> PathBuf {
    fixture("tiny-bert/model.onnx")
}

/// A fresh temporary directory for one test.
pub fn tmpdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A bundle from task0..4 (K = 20 per side: their whole span), written to `dir` and bound to
/// the tiny BERT; returns it with the five adapters.
pub fn bound_bundle(dir: &Path) -> (Bundle, Vec<Adapter>) {
    let adapters: Vec<Adapter> = (0..5)
        .map(|i| Adapter::open(&fixture(&format!("adapters/task{i}"))).expect("adapter"))
        .collect();
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(20),
        k_rule_b: KRule::Fixed(20),
        ..Default::default()
    };
    let sub = extract(&adapters, &options, &|_, _, _| {}).expect("extract");
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let bundle = Bundle::read(&unbound).expect("read bundle");
    let binding = bind_file(&model(), &bundle, None).expect("bind");
    let bound = dir.join("bound.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    (Bundle::read(&bound).expect("read bound"), adapters)
}

/// `split.input_ids` rows and `split.labels` of a task's data fixture, as raw rows.
pub fn rows(task: usize, split: &str) -> (Vec<Vec<i64>>, Vec<i64>) {
    let bytes = std::fs::read(fixture(&format!("data/task{task}.safetensors"))).expect("data");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect()
    };
    let ids = i64s(&format!("{split}.input_ids"));
    (
        ids.chunks_exact(SEQ).map(<[i64]>::to_vec).collect(),
        i64s(&format!("{split}.labels")),
    )
}

/// The same data as finetuning examples (pad id 0 -> mask 0) and class indices.
pub fn data(task: usize, split: &str) -> (Vec<Example>, Vec<usize>) {
    let (rows, labels) = rows(task, split);
    let ex = rows
        .into_iter()
        .map(|row| Example {
            attention_mask: row.iter().map(|&t| i64::from(t != 0)).collect(),
            input_ids: row,
        })
        .collect();
    (ex, labels.iter().map(|&l| l as usize).collect())
}

/// Writes rows (padding id 0 dropped) and labels as pre-tokenized JSONL lines
/// `{"input_ids": [...], "label": ...}`, the input of `elx finetune`.
pub fn write_jsonl(path: &Path, rows: &[Vec<i64>], labels: &[i64]) {
    let mut s = String::new();
    for (r, l) in rows.iter().zip(labels) {
        let ids: Vec<i64> = r.iter().copied().filter(|&t| t != 0).collect();
        s.push_str(&format!("{{\"input_ids\": {ids:?}, \"label\": {l}}}\n"));
    }
    std::fs::write(path, s).expect("write jsonl");
}

/// Task 5's training split, and the short recipe the training tests share (rank 4, 4
/// directions, batches of 16, no evaluation or early stop).
pub fn task5_training(seed: u64, max_steps: u64) -> (Vec<Example>, Split, FinetuneConfig) {
    let (ex, labels) = data(5, "train");
    let train = Split {
        ids: (0..ex.len()).collect(),
        labels,
    };
    let cfg = FinetuneConfig {
        rank: 4,
        seed,
        directions: 4,
        batch_size: 16,
        max_steps,
        eval_every: 1000,
        early_stop_patience: 0,
        lr: 1e-2,
        head_lr: 2e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    (ex, train, cfg)
}
