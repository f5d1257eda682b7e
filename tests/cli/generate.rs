//! `elx import-gguf` and `elx generate` on the tiny Llama fixture (tests/fixtures/tiny_llama):
//! the folder it writes, the streamed text and its JSON lines against the library's tokens,
//! stop strings, the chat template, and refused arguments.

use eigenlorax::serve::Backend;
use eigenlorax::serve::generate::{GenerateOptions, Generator, PromptTokenizer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

fn imported(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elx-cli-gen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama/tiny_llama.gguf");
    let out = ok(&elx(&[
        "import-gguf",
        gguf.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]));
    assert!(
        out.contains("Llama decoder: 2 layers, hidden 64, 4 heads (2 key/value heads, width 16)"),
        "{out}"
    );
    assert!(
        out.contains("bos <|im_start|> (1), eos <|im_end|> (2)"),
        "{out}"
    );
    for f in [
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    dir
}

#[test]
fn generate_streams_the_librarys_greedy_tokens_as_text_and_json_and_stops_where_asked() {
    let dir = imported("stream");
    let d = dir.to_str().unwrap();
    let prompt = "hello world";
    let json = ok(&elx(&[
        "generate",
        "--model",
        d,
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
        "--json",
        "--threads",
        "1",
    ]));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let last = lines.last().expect("lines");
    let tokens: Vec<u32> = lines
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .map(|i| i as u32)
        .collect();
    // The library, in process, on the same prompt.
    let tok = PromptTokenizer::open(&dir.join("tokenizer.json")).expect("tokenizer");
    let (g, base) = Generator::load_base(&dir.join("model.onnx"), Backend::Tract).expect("load");
    let ids = tok.encode(prompt, true).expect("encode");
    let mut want = Vec::new();
    let fin = g
        .generate(
            base,
            &ids,
            &GenerateOptions {
                max_tokens: 12,
                stop_tokens: vec![2],
                ..Default::default()
            },
            &mut |t| {
                want.push(t.id);
                true
            },
        )
        .expect("generate");
    assert_eq!(tokens, want);
    assert_eq!(last["finish"], fin.name());
    for l in &lines {
        if let Some(lp) = l["logprob"].as_f64() {
            assert!(lp <= 0.0 && lp.is_finite(), "{l}");
        }
    }
    // Plain text is the JSON pieces put together.
    let text: String = lines.iter().filter_map(|l| l["text"].as_str()).collect();
    let plain = ok(&elx(&[
        "generate",
        "--model",
        d,
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
    ]));
    // Control characters (a random model writes some) are escaped, newlines and tabs kept.
    let shown: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    assert_eq!(plain, format!("{shown}\n"));
    assert_eq!(text, tok.decode(&want).expect("decode"));

    // A stop string taken from the middle of the output: the text ends right before it.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let cut = elx(&[
            "generate",
            "--model",
            d,
            "--prompt",
            prompt,
            "--max-tokens",
            "12",
            "--stop",
            &stop,
            "--json",
        ]);
        let cut = ok(&cut);
        let got: String = cut
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter_map(|l| l["text"].as_str().map(str::to_string))
            .collect();
        let at = text.find(&stop).expect("stop in text");
        assert_eq!(got, text[..at]);
        assert!(cut.trim_end().ends_with(r#"{"finish":"stop"}"#), "{cut}");
    }
}

#[test]
fn generate_with_q4_0_weights_gives_the_librarys_q4_0_tokens() {
    let dir = imported("q40");
    let d = dir.to_str().unwrap();
    let prompt = "hello world";
    let args = |w: &str| {
        elx(&[
            "generate",
            "--model",
            d,
            "--prompt",
            prompt,
            "--max-tokens",
            "8",
            "--json",
            "--threads",
            "1",
            "--weights",
            w,
        ])
    };
    let ids_of = |out: &str| -> Vec<u32> {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter_map(|l| l["id"].as_u64())
            .map(|i| i as u32)
            .collect()
    };
    let got = ids_of(&ok(&args("q4_0")));
    let tok = PromptTokenizer::open(&dir.join("tokenizer.json")).expect("tokenizer");
    let (g, base) = Generator::load_base_with(
        &dir.join("model.onnx"),
        Backend::Tract,
        eigenlorax::serve::backend::WeightFormat::Q4_0,
    )
    .expect("load");
    let mut want = Vec::new();
    g.generate(
        base,
        &tok.encode(prompt, true).expect("encode"),
        &GenerateOptions {
            max_tokens: 8,
            stop_tokens: vec![2],
            ..Default::default()
        },
        &mut |t| {
            want.push(t.id);
            true
        },
    )
    .expect("generate");
    assert_eq!(got, want);

    let bad = args("q8");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("q8") && err.contains("q4_0"), "{err}");
}

#[test]
fn generate_renders_the_chat_template_and_refuses_bad_arguments_by_name() {
    let dir = imported("chat");
    let d = dir.to_str().unwrap();
    let chat = ok(&elx(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hi",
        "--chat",
        "--system",
        "be brief",
        "--max-tokens",
        "4",
        "--json",
    ]));
    let plain = ok(&elx(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hi",
        "--max-tokens",
        "4",
        "--json",
    ]));
    assert_ne!(chat, plain, "the template changes the prompt");
    for (args, want) in [
        (
            vec!["--temperature=-1"],
            "expected a finite temperature >= 0, found -1",
        ),
        (vec!["--top-p=0"], "expected top-p in (0, 1], found 0"),
        (vec!["--task", "t.elxc"], "--bundle"),
    ] {
        let mut a = vec!["generate", "--model", d, "--prompt", "hi"];
        a.extend(args);
        let o = elx(&a);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{err}");
    }
    let missing = dir.join("nothing");
    let o = elx(&[
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("nothing") && err.contains("expected the decoder's ONNX model"),
        "{err}"
    );
    // A folder without a tokenizer.
    std::fs::remove_file(dir.join("tokenizer.json")).expect("rm");
    let o = elx(&["generate", "--model", d, "--prompt", "hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("expected a tokenizer.json beside the model"),
        "{err}"
    );
}

#[test]
fn import_hf_builds_the_decoder_graph_of_a_llama_folder() {
    let dir = std::env::temp_dir().join(format!("elx-cli-hf-llama-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama");
    let out = dir.join("model.onnx");
    let o = ok(&elx(&[
        "import-hf",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(o.contains("Llama decoder: 2 layers, hidden 64"), "{o}");
    assert!(
        dir.join("config.json").is_file(),
        "config.json copied beside it"
    );
    // The same graph as the library builds from the folder, byte for byte.
    let lib = eigenlorax::graph::llama::import_hf(&src).expect("import");
    let bytes = std::fs::read(&out).expect("read");
    assert_eq!(bytes, eigenlorax::graph::onnx::encode_model(&lib.model));
}
