//! Any bytes as text through the tiny BERT's tokenizer, with the ids checked against the
//! table of the model's `input_ids` (the embedding Gather's rows, found by
//! `graph::check::index_limits` as a loaded engine does); the same bytes as raw i64 ids in a
//! [rows, seq] batch through the id check (a named error or Ok, never a panic).
#![no_main]
use eigenlorax::runtime::IndexLimit;
use eigenlorax::runtime::check::index_limits;
use eigenlorax::runtime::input::TextEncoder;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn encoder() -> &'static (TextEncoder, IndexLimit) {
    static E: OnceLock<(TextEncoder, IndexLimit)> = OnceLock::new();
    E.get_or_init(|| {
        let enc = TextEncoder::from_file(
            &fuzz_support::repo().join("tests/ort_support/tokenizer.json"),
            Some(32),
        )
        .expect("the tiny tokenizer loads");
        let (model, _) = eigenlorax::runtime::read_model(
            &fuzz_support::repo().join("models/fixtures/tiny-bert/model.onnx"),
        )
        .expect("the tiny BERT loads");
        let limit = index_limits(&model, &["input_ids".to_string()])
            .pop()
            .flatten()
            .expect("input_ids indexes the word embeddings");
        assert_eq!(limit.rows, 200, "the tiny BERT has 200 token embeddings");
        (enc, limit)
    })
}

fuzz_target!(|data: &[u8]| {
    let (enc, limit) = encoder();
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = enc.ids(&text) {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let shape = [1, ids.len()];
        assert!(
            limit.check("input_ids", &shape, &ids).is_ok(),
            "the tokenizer's ids must lie in the vocabulary: {ids:?}"
        );
    }
    let raw: Vec<i64> = data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let rows = usize::from(data.first().copied().unwrap_or(1)).clamp(1, 4);
    let shape = [rows, raw.len() / rows];
    let n = shape[0] * shape[1];
    let _ = limit.check("input_ids", &shape, &raw[..n]);
});
