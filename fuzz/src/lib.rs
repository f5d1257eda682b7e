//! The fuzz targets' bodies, one function per parser, and their scratch-file helpers.
//!
//! One home for two drivers: the libFuzzer binaries of `fuzz_targets/` (nightly + ASan,
//! `tools/fuzz.sh`) call these functions, and the stable test suite replays every committed
//! corpus and regression input through the same functions (`tests/fuzz_replay.rs`, which
//! includes this file as a module). So this file depends on nothing but the library, prost
//! and std.
//!
//! Each input is written to a per-thread scratch file (the readers memory-map real files), in
//! /dev/shm when it exists. A body may panic only where the library broke a promise: an
//! `Err` is the expected answer to bad bytes.

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Binding, Bundle, CoeffFile, Head, Manifest, StorageDtype};
use eigenlorax::finetune::checkpoint::{Checkpoint, TENSORS};
use eigenlorax::gguf::Gguf;
use eigenlorax::graph::IndexLimit;
use eigenlorax::graph::check::{check_model, index_limits};
use eigenlorax::serve::input::TextEncoder;
use eigenlorax::subspace::{ExtractOptions, extract};
use eigenlorax::tensorfile::TensorFile;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target's body: one input, no result (an `Err` inside is the expected answer to bad
/// bytes; a panic is a bug).
pub type Body = fn(&[u8]);

/// Every target: its name (the folder under `fuzz/corpus/` and `fuzz/regressions/`, and the
/// binary under `fuzz_targets/`) and its body.
pub const TARGETS: [(&str, Body); 11] = [
    ("tensorfile", tensorfile),
    ("peft", peft),
    ("kohya", kohya),
    ("bundle", bundle),
    ("coeffs", coeffs),
    ("checkpoint", checkpoint),
    ("onnx_bind", onnx_bind),
    ("npy", npy),
    ("tokenizer", tokenizer),
    ("gguf", gguf),
    ("chat_template", chat_template),
];

/// Scratch folder of this process and thread (replayed targets run on parallel test threads).
fn scratch_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    base.join(format!("elx-fuzz-{}-{thread}", std::process::id()))
}

/// A scratch path for this process, thread and `name` (the same path every call: inputs
/// overwrite).
pub fn scratch(name: &str) -> PathBuf {
    let dir = scratch_dir();
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

/// Removes this thread's scratch folder.
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

/// Writes `bytes` to the scratch file `name` and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch(name);
    std::fs::write(&p, bytes).expect("scratch write");
    p
}

/// The repository root (seed fixtures, the tiny BERT): this file is compiled from the fuzz
/// crate (`fuzz/`) and from the main crate's tests (the root).
pub fn repo() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("models/fixtures").is_dir() {
        manifest
    } else {
        manifest.join("..")
    }
}

/// Any bytes as a safetensors file: open (header checks) and read every tensor.
pub fn tensorfile(data: &[u8]) {
    let p = file("t.safetensors", data);
    if let Ok(tf) = TensorFile::open(&p) {
        for name in tf.names() {
            let _ = tf.read_f64(name);
        }
    }
}

/// A PEFT folder from one input: adapter_config.json (up to the first 0xFF byte) and
/// adapter_model.safetensors (the rest). Open, then load every module.
pub fn peft(data: &[u8]) {
    let cut = data.iter().position(|&b| b == 0xFF).unwrap_or(data.len());
    let dir = scratch("peft");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("adapter_config.json"), &data[..cut]).expect("write");
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        data.get(cut + 1..).unwrap_or(&[]),
    )
    .expect("write");
    if let Ok(a) = Adapter::open(&dir) {
        for name in a.modules.keys() {
            let _ = a.load_module(name);
        }
    }
}

/// Any bytes as a kohya/diffusers LoRA .safetensors file: open, then load every module.
pub fn kohya(data: &[u8]) {
    let p = file("lora.safetensors", data);
    if let Ok(a) = Adapter::open(&p) {
        for name in a.modules.keys() {
            let _ = a.load_module(name);
        }
    }
}

/// Any bytes as a bundle (.elxb): the full read (manifest, id, binding hash, components).
pub fn bundle(data: &[u8]) {
    let p = file("b.elxb", data);
    let _ = Bundle::read(&p);
}

/// Any bytes as a coefficient file (.elxc) and as a head file.
pub fn coeffs(data: &[u8]) {
    let p = file("c.elxc", data);
    let _ = CoeffFile::read(&p);
    let _ = Head::read(&p);
}

/// Any bytes as a finetuning checkpoint. The expected vector sizes are taken from the file's
/// own tensors where it has them (so a mutated real checkpoint gets past the size check and
/// into the state validation), else fixed ones. One that reads goes through the resume's
/// consistency checks.
pub fn checkpoint(data: &[u8]) {
    let p = file("ck.elxk", data);
    let mut sizes = [4, 6, 4, 4, 6, 6, 4, 6];
    if let Ok(tf) = TensorFile::open(&p) {
        for (s, name) in sizes.iter_mut().zip(TENSORS) {
            if let Some(i) = tf.info(name) {
                *s = i.shape.iter().product::<usize>().min(1 << 20);
            }
        }
    }
    // A checkpoint that reads (its SHA-256 matches) goes through the resume's number checks.
    if let Ok(ck) = Checkpoint::read(&p, &sizes) {
        let _ = ck.check_consistent(&p, 64, 1000, false);
    }
}

/// The manifest of a bundle of the five fixture adapters (extracted once), and its binding
/// to the tiny BERT.
fn fixture_manifest() -> &'static (Manifest, Binding) {
    static M: OnceLock<(Manifest, Binding)> = OnceLock::new();
    M.get_or_init(|| {
        let adapters: Vec<Adapter> = (0..5)
            .map(|i| {
                Adapter::open(&repo().join(format!("models/fixtures/adapters/task{i}")))
                    .expect("fixture adapter")
            })
            .collect();
        let s = extract(&adapters, &ExtractOptions::default(), &|_, _, _| {}).expect("extract");
        let p = scratch("fixture.elxb");
        let m = Bundle::write(&p, &s, &[], StorageDtype::F32, None).expect("bundle");
        let bundle = Bundle::read(&p).expect("read bundle");
        let model = repo().join("models/fixtures/tiny-bert/model.onnx");
        let binding =
            eigenlorax::graph::bind_file(&model, &bundle, None).expect("bind the tiny BERT");
        (m, binding)
    })
}

/// Any bytes as an ONNX model: decode, bind the fixture bundle's modules to it (bind runs the
/// load-time graph check on success), run the graph check against the tiny BERT's binding
/// (arbitrary graphs against a fixed binding: every bound-node and initializer rule), and
/// find the tables the graph inputs index.
pub fn onnx_bind(data: &[u8]) {
    let path = Path::new("fuzz.onnx");
    let bytes = prost::bytes::Bytes::from(data.to_vec());
    if let Ok(model) = eigenlorax::graph::onnx::decode_model(bytes, path) {
        let (m, binding) = fixture_manifest();
        let _ = eigenlorax::graph::bind(&model, "0".repeat(64), "fuzz.onnx", m, None);
        let _ = check_model(&model, m, binding, "fuzz.onnx");
        let inputs: Vec<String> = model
            .graph
            .as_ref()
            .map(|g| g.input.iter().map(|v| v.name.clone()).collect())
            .unwrap_or_default();
        let _ = index_limits(&model, &inputs);
    }
}

/// Any bytes as an .npy input tensor.
pub fn npy(data: &[u8]) {
    let _ = eigenlorax::serve::input::parse_npy(data, Path::new("x.npy"));
}

/// Any bytes as a GGUF file: open (header, metadata and tensor-info checks), read every
/// metadata value through each typed accessor, build the tokenizer from its metadata,
/// dequantize every tensor (whole and its first
/// row), and un-permute every 2-D tensor whose rows allow it (by the file's head counts and
/// by 1 and 2 heads), checking that permuting back gives the same values.
pub fn gguf(data: &[u8]) {
    let p = file("m.gguf", data);
    let Ok(g) = Gguf::open(&p) else { return };
    for (key, _) in g.metadata() {
        let _ = (g.u32(key), g.u64(key), g.i64(key), g.f32(key), g.bool(key));
        let _ = (
            g.str(key),
            g.array(key),
            g.strings(key),
            g.i32s(key),
            g.f32s(key),
        );
    }
    // (tokenizer_json itself loads what it built in the tokenizers crate before returning.)
    let _ = eigenlorax::gguf::tokenizer_json(&g);
    let mut heads = vec![1, 2];
    for key in [
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
    ] {
        if let Ok(n) = g.u32(key) {
            heads.push(n.min(1 << 16) as usize);
        }
    }
    for t in g.tensors() {
        let _ = g.dequantize_rows(&t.name, 0, 1);
        let Ok(w) = g.dequantize(&t.name) else {
            continue;
        };
        assert_eq!(w.len(), t.n_elements, "{}: dequantized length", t.name);
        let [rows, cols] = t.shape()[..] else {
            continue;
        };
        for &n in &heads {
            if let Ok(hf) = eigenlorax::gguf::unpermute_qk(&w, [rows, cols], n) {
                let back = eigenlorax::gguf::permute_qk(&hf, [rows, cols], n)
                    .expect("a shape unpermute_qk accepts is one permute_qk accepts");
                assert!(
                    back.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: permute(unpermute(w)) != w for {n} heads",
                    t.name
                );
            }
        }
    }
    // The decoder import reads the same metadata: its configuration and special tokens, and
    // (when the weights are small) the whole graph.
    let _ = eigenlorax::graph::llama::files::tokenizer_meta(&g);
    if let Ok(cfg) = eigenlorax::graph::llama::gguf::config(&g)
        && cfg.weight_count().is_some_and(|n| n <= 1 << 20)
    {
        let mut w = eigenlorax::graph::llama::gguf::GgufWeights::new(&g, &cfg);
        let _ = eigenlorax::graph::llama::build(&cfg, &mut w, "fuzz");
    }
}

/// Any bytes as a chat template and its messages: the bytes up to the first NUL are the
/// template source; the rest, split at NULs, alternate role and content (lossy UTF-8); the
/// input's first byte, when odd, asks for the generation prompt. Compile, then render.
pub fn chat_template(data: &[u8]) {
    use eigenlorax::serve::input::{ChatMessage, ChatTemplate};
    let mut parts = data.split(|&b| b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let fields: Vec<String> = parts
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let messages: Vec<ChatMessage> = fields
        .chunks(2)
        .map(|c| ChatMessage::new(c[0].clone(), c.get(1).cloned().unwrap_or_default()))
        .collect();
    let add_generation_prompt = data.first().is_some_and(|b| b % 2 == 1);
    if let Ok(t) = ChatTemplate::new(&source, "<s>", "</s>")
        && let Ok(out) = t.render(&messages, add_generation_prompt)
    {
        assert!(
            out.len() <= eigenlorax::serve::input::chat::MAX_RENDER_BYTES,
            "a rendering over the bound"
        );
    }
}

/// The tiny BERT's tokenizer and the table of its `input_ids` (the embedding Gather's rows,
/// found by `graph::check::index_limits` as a loaded engine does).
fn fixture_encoder() -> &'static (TextEncoder, IndexLimit) {
    static E: OnceLock<(TextEncoder, IndexLimit)> = OnceLock::new();
    E.get_or_init(|| {
        let enc =
            TextEncoder::from_file(&repo().join("tests/ort_support/tokenizer.json"), Some(32))
                .expect("the tiny tokenizer loads");
        let (model, _) =
            eigenlorax::graph::read_model(&repo().join("models/fixtures/tiny-bert/model.onnx"))
                .expect("the tiny BERT loads");
        let limit = index_limits(&model, &["input_ids".to_string()])
            .pop()
            .flatten()
            .expect("input_ids indexes the word embeddings");
        assert_eq!(limit.rows, 200, "the tiny BERT has 200 token embeddings");
        (enc, limit)
    })
}

/// Any bytes as text through the tiny BERT's tokenizer, with the ids checked against the
/// vocabulary's table; the same bytes as raw i64 ids in a [rows, seq] batch through the id
/// check (a named error or Ok, never a panic).
pub fn tokenizer(data: &[u8]) {
    let (enc, limit) = fixture_encoder();
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
}
