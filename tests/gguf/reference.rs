//! The real SmolLM2-135M-Instruct GGUF and the hand-built files read by gguf-py
//! (`tools/gguf_reference.py`) and by this reader, compared.

use crate::support;
use crate::tensors::typed_tensors;
use crate::with_metadata;
use eigenlorax::gguf::{Array, GgmlType, Gguf, Value, permute_qk, unpermute_qk};
use std::path::Path;

/// The real model and gguf-py, or `None` when either is missing outside CI.
fn real(test: &str) -> Option<(std::path::PathBuf, String, String)> {
    let model = support::smollm2_gguf(test)?;
    let (py, pythonpath) = support::gguf_py(test)?;
    Some((model, py, pythonpath))
}

/// Runs tools/gguf_reference.py on `specs`: its JSON, and each spec's values.
fn reference(
    model: &Path,
    py: &str,
    pythonpath: &str,
    specs: &[String],
    tag: &str,
) -> (serde_json::Value, Vec<Vec<f32>>) {
    let dir = std::env::temp_dir().join(format!("elx-gguf-ref-{}-{tag}", std::process::id()));
    let out = std::process::Command::new(py)
        .arg(support::repo().join("tools/gguf_reference.py"))
        .arg(model)
        .arg(&dir)
        .args(specs)
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("run tools/gguf_reference.py");
    assert!(
        out.status.success(),
        "tools/gguf_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let values = (0..specs.len())
        .map(|i| {
            let b = std::fs::read(dir.join(format!("{i}.f32"))).unwrap();
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    (json, values)
}

fn json_of(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(*x as f64),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => {
            let head: Vec<serde_json::Value> = match a {
                Array::U8(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I8(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U16(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I16(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U32(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I32(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::U64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::I64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::F32(v) => v.iter().take(8).map(|x| json!(*x as f64)).collect(),
                Array::F64(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::Bool(v) => v.iter().take(8).map(|x| json!(x)).collect(),
                Array::String(v) => v.iter().take(8).map(|x| json!(x)).collect(),
            };
            let ty = match a.type_name() {
                "u8" => "uint8",
                "i8" => "int8",
                "u16" => "uint16",
                "i16" => "int16",
                "u32" => "uint32",
                "i32" => "int32",
                "u64" => "uint64",
                "i64" => "int64",
                "f32" => "float32",
                "f64" => "float64",
                other => other,
            };
            json!({"type": ty, "len": a.len(), "head": head})
        }
    }
}

#[test]
fn smollm2_metadata_and_tensor_infos_match_gguf_py() {
    let Some((model, py, pythonpath)) = real("smollm2_metadata_and_tensor_infos_match_gguf_py")
    else {
        return;
    };
    let g = Gguf::open(&model).unwrap_or_else(|e| panic!("{e}"));
    let (r, _) = reference(&model, &py, &pythonpath, &[], "meta");
    assert_eq!(r["version"], g.version());
    assert_eq!(r["alignment"], g.alignment());
    assert_eq!(r["data_offset"], g.data_offset());
    let meta = r["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), g.metadata().len());
    for (k, v) in g.metadata() {
        assert_eq!(meta[k], json_of(v), "metadata key {k}");
    }
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), g.tensors().len());
    for (want, t) in tensors.iter().zip(g.tensors()) {
        assert_eq!(want["name"], t.name.as_str());
        assert_eq!(want["type"], t.ggml_type.name(), "{}", t.name);
        assert_eq!(want["dims"], serde_json::json!(t.dims), "{}", t.name);
        assert_eq!(
            want["offset"],
            t.file_range().start as u64 - g.data_offset(),
            "{}",
            t.name
        );
    }

    // The architecture, as read (SmolLM2-135M: llama, 30 layers, 9 heads, 3 KV heads).
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    let arch = [
        ("llama.block_count", 30),
        ("llama.context_length", 8192),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.rope.dimension_count", 64),
        ("llama.vocab_size", 49152),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("general.file_type", 3),
    ];
    for (k, v) in arch {
        assert_eq!(g.u32(k).unwrap(), v, "{k}");
    }
    assert_eq!(g.f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.strings("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(g.i32s("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert!(
        g.str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>")
    );
    let count = |ty| g.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.ggml_type, emb.shape()),
        (GgmlType::Q8_0, vec![49152, 576])
    );
    assert!(g.tensor("output.weight").is_none(), "tied embeddings");
    assert_eq!(
        g.tensor("blk.0.attn_k.weight").unwrap().shape(),
        vec![192, 576]
    );
}

#[test]
fn smollm2_tensors_dequantize_like_gguf_py() {
    let Some((model, py, pythonpath)) = real("smollm2_tensors_dequantize_like_gguf_py") else {
        return;
    };
    let g = Gguf::open(&model).unwrap_or_else(|e| panic!("{e}"));
    let specs: Vec<String> = [
        "token_embd.weight",
        "token_embd.weight:0:4",
        "token_embd.weight:12345:3",
        "token_embd.weight:49150:2",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.7.attn_output.weight",
        "blk.15.ffn_gate.weight",
        "blk.29.ffn_down.weight",
        "blk.29.ffn_up.weight",
        "blk.0.attn_norm.weight",
        "blk.29.ffn_norm.weight",
        "output_norm.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_, want) = reference(&model, &py, &pythonpath, &specs, "values");
    let mut worst = 0f32;
    for (spec, want) in specs.iter().zip(&want) {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap();
        let got = match (parts.next(), parts.next()) {
            (Some(a), Some(b)) => g
                .dequantize_rows(name, a.parse().unwrap(), b.parse().unwrap())
                .unwrap(),
            _ => g.dequantize(name).unwrap(),
        };
        assert_eq!(got.len(), want.len(), "{spec}");
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{spec} ({}): {} values, max |Rust - gguf-py| = {diff:e}",
            g.tensor(name).unwrap().ggml_type.name(),
            got.len()
        );
        assert!(diff <= 1e-6, "{spec}: max abs diff {diff} > 1e-6");
        worst = worst.max(diff);
    }
    eprintln!("worst max abs diff vs gguf-py: {worst:e}");

    // q and k un-permute to the Hugging Face layout and permute back bit for bit.
    let heads = g.u32("llama.attention.head_count").unwrap() as usize;
    let kv_heads = g.u32("llama.attention.head_count_kv").unwrap() as usize;
    for (name, n_head) in [
        ("blk.0.attn_q.weight", heads),
        ("blk.0.attn_k.weight", kv_heads),
    ] {
        let t = g.tensor(name).unwrap();
        let shape = [t.shape()[0], t.shape()[1]];
        let w = g.dequantize(name).unwrap();
        let hf = unpermute_qk(&w, shape, n_head).unwrap();
        assert_eq!(permute_qk(&hf, shape, n_head).unwrap(), w, "{name}");
    }
}

/// The hand-built files through gguf-py too: every metadata type as gguf-py reads it, and the
/// types the real model lacks (F16, BF16, Q4_0) dequantized the same, bit for bit.
#[test]
fn hand_built_files_read_like_gguf_py() {
    let Some((py, pythonpath)) = support::gguf_py("hand_built_files_read_like_gguf_py") else {
        return;
    };
    let (w, expected) = typed_tensors(64);
    let w = with_metadata(w);
    let path = std::env::temp_dir().join(format!("elx-gguf-hand-{}.gguf", std::process::id()));
    std::fs::write(&path, w.bytes()).unwrap();
    let g = Gguf::open(&path).unwrap();
    let specs: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    let (r, values) = reference(&path, &py, &pythonpath, &specs, "hand");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r["alignment"], 64);
    assert_eq!(r["data_offset"], g.data_offset());
    let meta = r["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), g.metadata().len());
    for (k, v) in g.metadata() {
        let mut ours = json_of(v);
        if matches!(v, Value::Array(a) if a.is_empty()) && meta[k]["type"].is_null() {
            // An empty array: gguf-py keeps no element type.
            ours["type"] = serde_json::Value::Null;
        }
        assert_eq!(meta[k], ours, "metadata key {k}");
    }
    for ((name, want), theirs) in expected.iter().zip(&values) {
        let ours = g.dequantize(name).unwrap();
        assert_eq!(&ours, want, "{name}");
        let same = ours
            .iter()
            .zip(theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && ours.len() == theirs.len(),
            "{name}: ours {ours:?}, gguf-py {theirs:?}"
        );
    }
}
