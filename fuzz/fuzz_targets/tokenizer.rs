//! Any bytes as text through the tiny BERT's tokenizer, with the ids checked against the
//! vocabulary of its model.
#![no_main]
use eigenlorax::runtime::input::TextEncoder;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn encoder() -> &'static TextEncoder {
    static E: OnceLock<TextEncoder> = OnceLock::new();
    E.get_or_init(|| {
        TextEncoder::from_file(
            &fuzz_support::repo().join("tests/ort_support/tokenizer.json"),
            Some(32),
        )
        .expect("the tiny tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = encoder().ids(&text) {
        // The tiny BERT has 200 token embeddings.
        assert!(ids.iter().all(|&i| i < 200), "id outside the vocabulary: {ids:?}");
    }
});
