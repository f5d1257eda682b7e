//! The committed fuzz corpus `fuzz/corpus/gguf/`, written from the hand-built files.

use crate::support::{self, Rng, Writer, q4_0_block, q4_1_block, q8_0_block};
use crate::tensors::typed_tensors;
use crate::{parse, with_metadata};
use eigenlorax::gguf::{Array, Value};

/// Writes the committed fuzz corpus `fuzz/corpus/gguf/` (hand-made valid files of at most
/// 4 KiB): `cargo test --test gguf -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes fuzz/corpus/gguf/"]
fn write_fuzz_corpus() {
    let dir = support::repo().join("fuzz/corpus/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let v2 = Writer {
        version: 2,
        ..Writer::default()
    };
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("metadata-v3", with_metadata(Writer::default()).bytes()),
        ("metadata-v2", with_metadata(v2).bytes()),
        ("tensors-align32", typed_tensors(32).0.bytes()),
        ("tensors-align64", typed_tensors(64).0.bytes()),
        ("tensors-align1", typed_tensors(1).0.bytes()),
    ];
    // A tiny llama-shaped file: q [8 rows x 32] with 2 heads, k [4 x 32] with 1 KV head.
    let mut rng = Rng(7);
    let q4_1: Vec<u8> = (0..8)
        .flat_map(|_| {
            let c: [u8; 32] = std::array::from_fn(|_| (rng.next() % 16) as u8);
            q4_1_block(0.125, -1.0, &c)
        })
        .collect();
    let q8: Vec<u8> = (0..4)
        .flat_map(|_| {
            let c: [i8; 32] = std::array::from_fn(|_| rng.next() as i8);
            q8_0_block(0.01, &c)
        })
        .collect();
    let q4_0: Vec<u8> = (0..4)
        .flat_map(|_| {
            let c: [u8; 32] = std::array::from_fn(|_| (rng.next() % 16) as u8);
            q4_0_block(0.5, &c)
        })
        .collect();
    let llama = Writer::default()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(1))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["<s>".into(), "a".into(), "b".into()])),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 1, 1])),
        )
        .tensor("token_embd.weight", &[32, 4], 8, q8)
        .tensor("blk.0.attn_q.weight", &[32, 8], 3, q4_1)
        .tensor("blk.0.attn_k.weight", &[32, 4], 2, q4_0)
        .tensor(
            "blk.0.attn_norm.weight",
            &[4],
            0,
            [1.0f32, 0.5, 2.0, -1.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )
        .tensor("blk.0.ffn_down.weight", &[32, 1], 6, vec![0; 22]);
    files.push(("llama-tiny", llama.bytes()));
    for (name, bytes) in files {
        assert!(bytes.len() <= 4096, "{name}: {} bytes", bytes.len());
        parse(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
