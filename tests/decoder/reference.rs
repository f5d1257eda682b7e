//! The imported decoder against transformers (`tests/fixtures/tiny_llama`, made by
//! `tools/make_tiny_llama.py`): the GGUF (llama.cpp's Q/K row order, F16 and Q8_0 tensors),
//! its tied variant and the HF folder give transformers' logits, and greedy generation through
//! a bound bundle with zero coefficients gives its tokens.

use super::support::*;
use eigenlorax::graph::llama::{self, ImportedDecoder};
use eigenlorax::serve::Backend;
use eigenlorax::serve::generate::{GenerateOptions, Generator};
use eigenlorax::tensorfile::TensorFile;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama")
}

fn reference() -> TensorFile {
    TensorFile::open(&fixture_dir().join("reference.safetensors")).expect("reference")
}

/// An I64 tensor of the reference file (TensorFile reads floats only).
fn ints(name: &str) -> Vec<i64> {
    let bytes = std::fs::read(fixture_dir().join("reference.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).expect("tensor");
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn logits_of(m: &ImportedDecoder, prompts: &[i64]) -> Vec<f32> {
    let plan = tract_plan(&m.model);
    let cfg = &m.config;
    let empty: Vec<Vec<f32>> = vec![Vec::new(); 2 * cfg.layers];
    let mut all = Vec::new();
    for row in prompts.chunks(7) {
        let (l, _) = run_step(&plan, cfg, row, &empty, 0);
        all.extend(l);
    }
    all
}

#[test]
fn the_gguf_the_tied_gguf_and_the_hf_folder_give_transformers_logits() {
    let r = reference();
    let ids = ints("prompt_ids");
    let (_, want) = r.read_f32("logits").expect("logits");
    let (_, want_tied) = r.read_f32("tied.logits").expect("tied");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (name, m, want) in [
        (
            "gguf",
            llama::import_gguf(&fixture_dir().join("tiny_llama.gguf")).expect("gguf"),
            &want,
        ),
        (
            "tied gguf",
            llama::import_gguf(&fixture_dir().join("tiny_llama_tied.gguf")).expect("tied"),
            &want_tied,
        ),
        ("hf", llama::import_hf(&fixture_dir()).expect("hf"), &want),
    ] {
        assert_eq!(m.config.vocab, 288, "{name}");
        assert_eq!(m.config.tied_embeddings, name == "tied gguf", "{name}");
        let got = logits_of(&m, &ids);
        let d = max_abs_diff(&got, want);
        println!("{name}: max |logits - transformers| = {d:.2e} (logits up to {scale:.1})");
        assert!(d < 1e-4, "{name}: {d}");
    }
}

#[test]
fn greedy_generation_through_a_bound_bundle_with_zero_coefficients_gives_transformers_tokens() {
    let dir = std::env::temp_dir().join(format!("elx-dec-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let m = llama::import_gguf(&fixture_dir().join("tiny_llama.gguf")).expect("gguf");
    let f = fixture_for(&dir, &m);
    let g = Generator::load(&f.model, &f.bundle, Backend::Tract).expect("generator");
    let zero = coeffs(&f.bundle, 1, "base", 0.0);
    let id = g.engine().insert_task(&zero).expect("task");
    let r = reference();
    let (_, want_logits) = r.read_f32("greedy.logits").expect("logits");
    let prompt: Vec<u32> = ints("greedy.prompt_ids")
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want: Vec<u32> = ints("greedy.ids").iter().map(|&x| x as u32).collect();
    let mut got = Vec::new();
    let mut seq = g.sequence(id).expect("seq");
    g.feed(&mut [&mut seq], &[&prompt]).expect("prompt");
    let mut worst = 0f32;
    for (i, &w) in want.iter().enumerate() {
        let row = &want_logits[i * 288..(i + 1) * 288];
        worst = worst.max(max_abs_diff(seq.logits(), row));
        let t = eigenlorax::serve::generate::argmax(seq.logits()) as u32;
        got.push(t);
        // Teacher-forced on the reference's token, so one near-tie cannot derail the rest.
        g.feed(&mut [&mut seq], &[&[w]]).expect("step");
    }
    assert_eq!(got, want);
    assert!(worst < 1e-4, "{worst}");
    // And free-running generation gives the same tokens.
    let mut free = Vec::new();
    let opts = GenerateOptions {
        max_tokens: want.len(),
        ..Default::default()
    };
    g.generate(id, &prompt, &opts, &mut |t| {
        free.push(t.id);
        true
    })
    .expect("generate");
    assert_eq!(free, want);
}
