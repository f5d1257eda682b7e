//! The graph `elx import-hf` builds runs on ONNX Runtime and equals tract: on the tiny-BERT
//! fixture (padded batch, both token types) and on MiniLM when its package is installed.
#![cfg(all(feature = "ort", feature = "tract"))]

use crate::support::minilm as minilm_support;
use crate::support::ort as ort_support;

use eigenlorax::graph::onnx::encode_model;
use eigenlorax::graph::{ModelProto, import_hf};
use eigenlorax::serve::ExecutionProvider;
use eigenlorax::serve::backend::ort::OrtModel;
use eigenlorax::serve::input::{InputTensor, TensorData};
use ort_support::{max_abs_diff, require_ort};
use std::path::Path;
use tract_onnx::prelude::*;

/// Inputs of `rows` x `seq`: ids spread over the vocabulary, each row padded after its own
/// length, token type 1 on the second half of the real tokens when `types` is set.
fn inputs(rows: usize, seq: usize, vocab: i64, types: bool) -> [Vec<i64>; 3] {
    let mut ids = vec![0i64; rows * seq];
    let mut mask = vec![0i64; rows * seq];
    let mut tt = vec![0i64; rows * seq];
    for r in 0..rows {
        let len = seq - (r * 3) % seq.max(1);
        for s in 0..len.max(1) {
            let k = r * seq + s;
            ids[k] = 1 + (k as i64 * 7919) % (vocab - 1);
            mask[k] = 1;
            tt[k] = i64::from(types && s >= len / 2);
        }
    }
    [ids, mask, tt]
}

fn compare(model: &ModelProto, vocab: i64, types: bool, shapes: &[[usize; 2]]) -> f32 {
    let names = ["input_ids", "attention_mask", "token_type_ids"].map(String::from);
    let ort = OrtModel::new(model, &names, ExecutionProvider::Cpu).expect("ONNX Runtime session");
    assert_eq!(
        ort.output_names(),
        ["last_hidden_state", "sentence_embedding"]
    );
    let bytes = encode_model(model);
    let tract = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract plan");
    let mut worst = 0f32;
    for &[rows, seq] in shapes {
        let data = inputs(rows, seq, vocab, types);
        let feeds: Vec<InputTensor> = names
            .iter()
            .zip(&data)
            .map(|(n, v)| InputTensor {
                name: n.clone(),
                shape: vec![rows, seq],
                data: TensorData::I64(v.clone()),
            })
            .collect();
        let o = ort.run(&feeds).expect("ort run");
        let t = tract
            .run(
                data.iter()
                    .map(|v| Tensor::from_shape(&[rows, seq], v).expect("in").into())
                    .collect(),
            )
            .expect("tract run");
        assert_eq!(o[0].shape, [rows, seq, o[0].shape[2]]);
        assert_eq!(o[1].shape, [rows, o[0].shape[2]]);
        for (k, out) in o.iter().enumerate() {
            let tv: Vec<f32> = t[k]
                .to_plain_array_view::<f32>()
                .expect("f32")
                .iter()
                .copied()
                .collect();
            let d = max_abs_diff(&out.data, &tv);
            println!("{rows}x{seq} {}: max |ort - tract| = {d:e}", out.name);
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn ort_runs_imported_tiny_bert_like_tract() {
    require_ort();
    let m = import_hf(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/tiny-bert"))
        .expect("import");
    // The fixture has one token type.
    let d = compare(&m.model, 200, false, &[[1, 5], [3, 16], [4, 32]]);
    assert!(d <= 1e-5, "ONNX Runtime and tract differ by {d}");
}

#[test]
fn ort_runs_imported_minilm_like_tract() {
    require_ort();
    let Some(dir) = minilm_support::minilm_dir("ort_runs_imported_minilm_like_tract") else {
        return;
    };
    let m = import_hf(&dir).expect("import MiniLM");
    let d = compare(&m.model, 30522, true, &[[1, 9], [4, 40]]);
    assert!(d <= 1e-4, "ONNX Runtime and tract differ by {d}");
}
