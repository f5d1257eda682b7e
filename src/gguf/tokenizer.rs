//! The HF `tokenizer.json` of a GGUF file's byte-level BPE vocabulary (`tokenizer.ggml.model =
//! "gpt2"`: GPT-2, SmolLM, StarCoder and their kin), so the `tokenizers` crate can encode text
//! exactly as the model was trained to see it.
//!
//! What the file gives and where it goes:
//! - `tokenizer.ggml.tokens` (the vocabulary, id = index) and `tokenizer.ggml.merges` (`"a b"`,
//!   in rank order) become the BPE model. A token written outside GPT-2's byte alphabet is
//!   respelled in it from its UTF-8 bytes, as transformers' GGUF loader does.
//! - `tokenizer.ggml.token_type` (optional, llama.cpp's 1 normal, 2 unknown, 3 control,
//!   4 user-defined, 5 unused, 6 byte): control tokens become special added tokens and
//!   user-defined ones plain added tokens, so both are matched whole in the text (a control
//!   token outside the byte alphabet is left out, as transformers does: it is a mislabel).
//! - `tokenizer.ggml.pre` (optional) picks the pre-tokenizer: `default` / `gpt-2` split with
//!   GPT-2's regex; `smollm`, `starcoder`, `refact` and `codeshell` first split every digit
//!   apart (llama.cpp's `\p{N}` rule for these, and the `Digits` step of SmolLM2's own
//!   `tokenizer.json`). Any other value is refused rather than guessed: a wrong split gives
//!   wrong ids with no error.
//! - `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` are checked to be in the vocabulary;
//!   `tokenizer.ggml.add_bos_token` / `add_eos_token` become the post-processor.
//!
//! Every failure names the metadata key and what was expected.

use super::Gguf;
use crate::error::{Error, Result};
use serde_json::{Map, Value as Json, json};
use std::collections::{HashMap, HashSet};

/// llama.cpp's token type of a control token (`<|im_start|>`): a special added token.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's token type of a user-defined token (`<think>`): a plain added token.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The values of `tokenizer.ggml.pre` this module knows, and whether each splits digits apart
/// before GPT-2's regex.
const PRE_TOKENIZERS: &[(&str, bool)] = &[
    ("default", false),
    ("gpt-2", false),
    ("smollm", true),
    ("starcoder", true),
    ("refact", true),
    ("codeshell", true),
];

/// GPT-2's map from a byte to the printable character byte-level vocabularies spell it with.
pub fn byte_to_char() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        out[b as usize] = if printable {
            char::from_u32(b).expect("a byte is a char")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("256 + n < 0x200 is a char")
        };
    }
    out
}

/// An optional token id key, checked to be inside the vocabulary.
fn token_id(g: &Gguf, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let id = g.u32(key)?;
    if id as usize >= n_vocab {
        return Err(Error::bad_tensor(
            g.path(),
            key,
            format!("expected a token id below the vocabulary size {n_vocab}, found {id}"),
        ));
    }
    Ok(Some(id))
}

/// An optional bool key (absent: `default`).
fn flag(g: &Gguf, key: &str, default: bool) -> Result<bool> {
    match g.get(key) {
        None => Ok(default),
        Some(_) => g.bool(key),
    }
}

/// The HF `tokenizer.json` (as a string) for the byte-level BPE tokenizer stored in `g`,
/// already checked to load in the `tokenizers` crate.
///
/// Errors ([`Error::BadInput`] naming the key, or [`Error::Unsupported`]) for a missing or
/// malformed `tokenizer.ggml.*` key: no vocabulary, a duplicate token, a merge that is not two
/// vocabulary tokens whose concatenation is one too, a token id out of range, a
/// `token_type` array of another length, a tokenizer model other than `gpt2`, or a
/// pre-tokenizer this module does not know. A vocabulary may lack some byte characters
/// (SmolLM2's has no token for byte 0x04): those bytes are dropped when encoding, as
/// transformers and llama.cpp do with the same vocabulary.
pub fn tokenizer_json(g: &Gguf) -> Result<String> {
    let path = g.path();
    let bad = |key: &str, msg: String| Error::bad_tensor(path, key, msg);

    let model = g.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "{}: tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported",
            path.display()
        )));
    }
    let pre = match g.get("tokenizer.ggml.pre") {
        None => "default",
        Some(_) => g.str("tokenizer.ggml.pre")?,
    };
    let split_digits = PRE_TOKENIZERS
        .iter()
        .find(|(name, _)| *name == pre)
        .map(|(_, d)| *d)
        .ok_or_else(|| {
            let known: Vec<&str> = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
            Error::Unsupported(format!(
                "{}: tokenizer.ggml.pre is {pre:?}; supported: {}",
                path.display(),
                known.join(", ")
            ))
        })?;

    let tokens = g.strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(bad(
            "tokenizer.ggml.tokens",
            "expected at least one token, found an empty array".into(),
        ));
    }
    let n_vocab = tokens.len();
    if u32::try_from(n_vocab).is_err() {
        return Err(bad(
            "tokenizer.ggml.tokens",
            format!("expected at most 2^32 tokens, found {n_vocab}"),
        ));
    }
    let types: Option<&[i32]> = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(_) => Some(g.i32s("tokenizer.ggml.token_type")?),
    };
    if let Some(t) = types
        && t.len() != n_vocab
    {
        return Err(bad(
            "tokenizer.ggml.token_type",
            format!(
                "expected one type per token ({n_vocab}), found {} types",
                t.len()
            ),
        ));
    }

    let bytes = byte_to_char();
    let alphabet: HashSet<char> = bytes.iter().copied().collect();
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_owned()
        } else {
            t.bytes().map(|b| bytes[b as usize]).collect()
        }
    };
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n_vocab);
    let mut spelled: Vec<String> = Vec::with_capacity(n_vocab);
    for (id, t) in tokens.iter().enumerate() {
        let s = spell(t);
        if let Some(first) = vocab.insert(s.clone(), id as u32) {
            return Err(bad(
                "tokenizer.ggml.tokens",
                format!("expected distinct tokens, found {t:?} at ids {first} and {id}"),
            ));
        }
        spelled.push(s);
    }
    let merges = g.strings("tokenizer.ggml.merges")?;
    let mut merge_pairs: Vec<Json> = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let parts: Vec<&str> = m.split(' ').collect();
        let [a, b] = parts[..] else {
            return Err(bad(
                "tokenizer.ggml.merges",
                format!("expected merge {i} as two tokens separated by one space, found {m:?}"),
            ));
        };
        for t in [a, b, &format!("{a}{b}")] {
            if !vocab.contains_key(t) {
                return Err(bad(
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}): expected {t:?} in the vocabulary, found none"),
                ));
            }
        }
        merge_pairs.push(json!([a, b]));
    }

    let bos = token_id(g, "tokenizer.ggml.bos_token_id", n_vocab)?;
    let eos = token_id(g, "tokenizer.ggml.eos_token_id", n_vocab)?;
    token_id(g, "tokenizer.ggml.unknown_token_id", n_vocab)?;
    token_id(g, "tokenizer.ggml.padding_token_id", n_vocab)?;
    let add_bos = flag(g, "tokenizer.ggml.add_bos_token", false)?;
    let add_eos = flag(g, "tokenizer.ggml.add_eos_token", false)?;

    let mut added = Vec::new();
    for (id, (t, s)) in tokens.iter().zip(&spelled).enumerate() {
        let ty = types.map_or(1, |t| t[id]);
        let special = match ty {
            TOKEN_TYPE_CONTROL if t == s => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }

    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
    });
    let pre_tokenizer = if split_digits {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level,
        ]})
    } else {
        byte_level.clone()
    };
    if add_bos && bos.is_none() {
        return Err(bad(
            "tokenizer.ggml.bos_token_id",
            "expected a BOS id since tokenizer.ggml.add_bos_token is true, found none".into(),
        ));
    }
    if add_eos && eos.is_none() {
        return Err(bad(
            "tokenizer.ggml.eos_token_id",
            "expected an EOS id since tokenizer.ggml.add_eos_token is true, found none".into(),
        ));
    }
    let named = |id: Option<u32>| id.map(|i| (i, spelled[i as usize].as_str()));
    let post_processor = post_processor(
        named(bos.filter(|_| add_bos)),
        named(eos.filter(|_| add_eos)),
    );

    let vocab_json: Map<String, Json> = spelled
        .iter()
        .enumerate()
        .map(|(id, s)| (s.clone(), json!(id)))
        .collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_json, "merges": merge_pairs,
        },
    });
    let text = serde_json::to_string(&doc)
        .map_err(|e| Error::Internal(format!("serializing tokenizer.json: {e}")))?;
    // The crate's own loader is the final check (it rebuilds the BPE merge table).
    tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
        Error::bad_file(
            path,
            format!("the tokenizer built from tokenizer.ggml.* does not load: {e}"),
        )
    })?;
    Ok(text)
}

/// A TemplateProcessing post-processor adding `bos` before and `eos` after each sequence
/// (each an id and its token), or nothing where `None`.
fn post_processor(bos: Option<(u32, &str)>, eos: Option<(u32, &str)>) -> Json {
    let seq = |type_id: u32, which: &str| -> Vec<Json> {
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let mut v: Vec<Json> = bos.iter().map(|(_, t)| special(t)).collect();
        v.push(json!({"Sequence": {"id": which, "type_id": type_id}}));
        v.extend(eos.iter().map(|(_, t)| special(t)));
        v
    };
    let mut pair = seq(0, "A");
    pair.extend(seq(1, "B"));
    let special: Map<String, Json> = bos
        .iter()
        .chain(eos.iter())
        .map(|(id, t)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    json!({"type": "TemplateProcessing", "single": seq(0, "A"), "pair": pair, "special_tokens": special})
}
