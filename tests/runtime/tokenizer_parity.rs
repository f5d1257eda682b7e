//! Tokenizer parity on the committed MiniLM test sets: the runtime's TextEncoder (the Rust
//! `tokenizers` crate on the package's tokenizer.json, its default truncation) against the
//! ids of transformers' pure-Python WordPiece tokenizer, which equal AutoTokenizer's on every
//! text (models/minilm/reference/test_tokens.safetensors, written by
//! tools/workload/tokenize_reference.py). Every text of every task must match exactly.

use crate::support::minilm as minilm_support;

use eigenlorax::serve::input::TextEncoder;
use safetensors::{Dtype, SafeTensors};

const TASKS: [&str; 6] = [
    "sentiment",
    "subjectivity",
    "convention2012",
    "debate2016",
    "name_gender",
    "language_id",
];

fn texts(task: &str) -> Vec<String> {
    let p = minilm_support::repo().join(format!("models/minilm/data/{task}/test.jsonl"));
    let s = std::fs::read_to_string(&p).expect("test set");
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl line");
            v["text"].as_str().expect("text field").to_string()
        })
        .collect()
}

#[test]
fn minilm_tokenizer_matches_python_on_every_test_text() {
    let Some(dir) =
        minilm_support::minilm_dir("minilm_tokenizer_matches_python_on_every_test_text")
    else {
        return;
    };
    let bytes = std::fs::read(
        minilm_support::repo().join("models/minilm/reference/test_tokens.safetensors"),
    )
    .expect("reference");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    let st = SafeTensors::deserialize(&bytes).expect("reference safetensors");
    let max_length: usize = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("max_length"))
        .expect("max_length metadata")
        .parse()
        .expect("max_length");
    let enc = TextEncoder::from_file(&dir.join("tokenizer.json"), None).expect("tokenizer");
    // The reference was made at the runtime's default truncation for this package.
    assert_eq!(enc.max_length(), max_length);

    let (mut n_texts, mut n_tokens, mut mismatches, mut cut) = (0usize, 0usize, 0usize, 0usize);
    for task in TASKS {
        let ids = st.tensor(&format!("{task}.ids")).expect("ids");
        let offs = st.tensor(&format!("{task}.offsets")).expect("offsets");
        assert_eq!(ids.dtype(), Dtype::U16);
        assert_eq!(offs.dtype(), Dtype::I32);
        let ids: Vec<u32> = ids
            .data()
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        let offs: Vec<usize> = offs
            .data()
            .chunks_exact(4)
            .map(|c| usize::try_from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])).expect("offset"))
            .collect();
        let texts = texts(task);
        assert_eq!(texts.len() + 1, offs.len(), "{task}: reference text count");
        assert_eq!(*offs.last().expect("offsets"), ids.len());
        let mut task_bad = 0;
        for (i, t) in texts.iter().enumerate() {
            let want = &ids[offs[i]..offs[i + 1]];
            let (got, truncated) = enc.ids_truncated(t).expect("tokenize");
            cut += usize::from(truncated);
            if got != want {
                if task_bad < 3 {
                    eprintln!("{task} #{i} {t:?}:\n  rust   {got:?}\n  python {want:?}");
                }
                task_bad += 1;
            }
        }
        println!(
            "{task:15} texts {:5}  tokens {:6}  mismatches {task_bad}",
            texts.len(),
            ids.len()
        );
        n_texts += texts.len();
        n_tokens += ids.len();
        mismatches += task_bad;
    }
    println!(
        "all tasks: texts {n_texts}, tokens {n_tokens}, truncated at {max_length}: {cut}, mismatches {mismatches}"
    );
    assert_eq!(n_texts, 5488);
    assert_eq!(
        mismatches, 0,
        "{mismatches} texts tokenize differently from Python"
    );
}
