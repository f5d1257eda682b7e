//! `elx import-hf`: the ONNX graph built natively from a HF BERT checkpoint, run on every
//! engine against torch's outputs and bound to bundles by name (with both engines built, also
//! ONNX Runtime against tract on padded batches of several shapes), and refusing bad input
//! with errors that name the file and the tensor.
#![cfg(feature = "tract")]

use crate::support::minilm as minilm_support;

use eigenlorax::Error;
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, StorageDtype, WeightLayout};
use eigenlorax::graph::onnx::{encode_model, f32_data};
use eigenlorax::graph::{ModelProto, bind_file, import_hf, import_hf_file};
use eigenlorax::serve::backend::tract::{from_tract, to_tract};
use eigenlorax::serve::input::{Batch, InputTensor, OutputTensor, TensorData};
use eigenlorax::serve::{Backend, Engine};
use eigenlorax::subspace::{ExtractOptions, KRule, extract, project};
use minilm_support::repo;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

on_each_backend!(
    tiny_bert_import_matches_torch_and_binds_by_name,
    minilm_import_matches_torch_reference_and_binds_all_modules,
);

/// The inputs of every imported graph, in its order.
const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

fn tiny() -> PathBuf {
    repo().join("models/fixtures/tiny-bert")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-importhf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// A short name of the engine, for temporary folders (the engines' tests run side by side).
fn tag(backend: Backend) -> &'static str {
    match backend {
        Backend::Tract => "tract",
        Backend::Ort(_) => "ort",
    }
}

/// The named tensors of a safetensors file as (shape, raw i64 or f32 values).
struct Ref {
    bytes: Vec<u8>,
}

impl Ref {
    fn open(p: &Path) -> Ref {
        Ref {
            bytes: std::fs::read(p).expect("reference"),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("safetensors")
    }
    fn shape(&self, n: &str) -> Vec<usize> {
        self.st().tensor(n).expect(n).shape().to_vec()
    }
    fn i64s(&self, n: &str) -> Vec<i64> {
        self.st()
            .tensor(n)
            .expect(n)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect()
    }
    fn f32s(&self, n: &str) -> Vec<f32> {
        self.st()
            .tensor(n)
            .expect(n)
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Attention-mask mean pooling, computed here independently of the graph.
fn mean_pool(h: &[f32], mask: &[i64], rows: usize, seq: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * d];
    for r in 0..rows {
        let mut n = 0f32;
        for s in 0..seq {
            let m = mask[r * seq + s] as f32;
            n += m;
            for j in 0..d {
                out[r * d + j] += h[(r * seq + s) * d + j] * m;
            }
        }
        for j in 0..d {
            out[r * d + j] /= n.max(1e-9);
        }
    }
    out
}

/// The imported graph's three inputs, of `shape`.
fn batch(ids: &[i64], mask: &[i64], types: &[i64], shape: [usize; 2]) -> Batch {
    Batch {
        tensors: INPUTS
            .iter()
            .zip([ids, mask, types])
            .map(|(n, v)| InputTensor {
                name: n.to_string(),
                shape: shape.to_vec(),
                data: TensorData::I64(v.to_vec()),
            })
            .collect(),
        rows: shape[0],
        mask: Some(mask.to_vec()),
    }
}

/// Runs the unpatched model on `backend`: on tract with both axes left symbolic, on ONNX
/// Runtime as a session of the model.
fn unpatched(backend: Backend, model: &ModelProto, batch: &Batch) -> Vec<OutputTensor> {
    match backend {
        Backend::Tract => {
            let bytes = encode_model(model);
            let plan = tract_onnx::onnx()
                .model_for_read(&mut bytes.as_slice())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .expect("tract optimizes the imported graph with symbolic batch and sequence");
            let inputs = to_tract(&batch.tensors.iter().collect::<Vec<_>>()).expect("inputs");
            let o = plan.run(inputs.into()).expect("tract run");
            let names: Vec<String> = model
                .graph
                .as_ref()
                .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
                .unwrap_or_default();
            from_tract(&names, &o).expect("outputs")
        }
        #[cfg(feature = "ort")]
        Backend::Ort(ep) => {
            let names = INPUTS.map(String::from);
            let ort = eigenlorax::serve::backend::ort::OrtModel::new(model, &names, ep)
                .expect("ONNX Runtime session");
            ort.run(&batch.tensors).expect("ort run")
        }
        #[cfg(not(feature = "ort"))]
        Backend::Ort(_) => unreachable!("ONNX Runtime is not built in"),
    }
}

/// Extracts a bundle from `adapters` (K per side = `k`) and binds it to `base` by name.
fn bound_bundle(
    adapters: &[Adapter],
    k: usize,
    base: &Path,
    dir: &Path,
) -> (Bundle, eigenlorax::bundle::Binding) {
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(k),
        k_rule_b: KRule::Fixed(k),
        ..Default::default()
    };
    let sub = extract(adapters, &options, &|_, _, _| {}).expect("extract");
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let bundle = Bundle::read(&unbound).expect("read bundle");
    let binding = bind_file(base, &bundle, None).expect("bind by name, no map");
    for (m, mb) in &binding.modules {
        // Rule 1: the initializer named after the module feeds the MatMul directly.
        assert_eq!(mb.weight, format!("{m}.weight"));
        assert_eq!(mb.layout, WeightLayout::InOut, "{m}");
        assert_eq!(mb.output, format!("/{}/Add", m.replace('.', "/")), "{m}");
    }
    let bound = dir.join("bound.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    (Bundle::read(&bound).expect("read bound"), binding)
}

/// The names of the engine's inputs.
fn input_names(engine: &Engine) -> Vec<String> {
    engine
        .specs()
        .expect("specs")
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

fn tiny_bert_import_matches_torch_and_binds_by_name(backend: Backend) {
    let dir = tmpdir(&format!("tiny-{}", tag(backend)));
    let base = dir.join("base.onnx");
    let m = import_hf_file(&tiny(), &base).expect("import the fixture");
    assert_eq!(
        (m.config.hidden, m.config.layers, m.config.heads),
        (32, 2, 4)
    );
    assert_eq!(
        (m.config.intermediate, m.config.vocab, m.config.max_position),
        (64, 200, 32)
    );
    let g = m.model.graph.as_ref().expect("graph");
    let ins: Vec<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let outs: Vec<&str> = g.output.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(ins, INPUTS);
    assert_eq!(outs, ["last_hidden_state", "sentence_embedding"]);

    let r = Ref::open(&tiny().join("expected_outputs.safetensors"));
    let (ids, mask) = (r.i64s("input_ids"), r.i64s("attention_mask"));
    let [rows, seq] = <[usize; 2]>::try_from(r.shape("input_ids")).expect("2-D");
    assert!(mask.contains(&0), "the reference must include padding");
    let want = r.f32s("base.last_hidden_state");
    let inputs = batch(&ids, &mask, &vec![0; ids.len()], [rows, seq]);
    let o = unpatched(backend, &m.model, &inputs);
    assert_eq!(o.len(), 2);
    let (h, pooled) = (&o[0].data, &o[1].data);
    let want_pool = mean_pool(&want, &mask, rows, seq, 32);
    let dh = max_abs_diff(h, &want);
    let dp = max_abs_diff(pooled, &want_pool);
    println!(
        "tiny-bert imported on {} vs torch: last_hidden_state {dh:e}, sentence_embedding {dp:e}",
        backend.name()
    );
    assert!(dh <= 1e-4, "last_hidden_state differs from torch by {dh}");
    assert!(
        dp <= 1e-4,
        "sentence_embedding differs from torch's mean pool by {dp}"
    );

    // Bind the six fixture adapters by name and run task0 against torch + PEFT.
    let adapters: Vec<Adapter> = (0..6)
        .map(|i| {
            Adapter::open(&repo().join(format!("models/fixtures/adapters/task{i}")))
                .expect("adapter")
        })
        .collect();
    let (bundle, binding) = bound_bundle(&adapters, 24, &base, &dir);
    assert_eq!(binding.modules.len(), 4);
    let mut modules = BTreeMap::new();
    for name in adapters[0].module_names() {
        let lm = adapters[0].load_module(name).expect("module");
        modules.insert(
            name.to_string(),
            project(&lm, &bundle.subspace.modules[name]),
        );
    }
    let c = CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: "task0".into(),
        provenance: Provenance::Projected,
        modules,
        head: None,
    };
    let engine = Engine::load(&base, &bundle, backend).expect("engine");
    assert_eq!(input_names(&engine), INPUTS);
    let t0 = engine.insert_task(&c).expect("task0");
    let zero = engine
        .insert_task(&CoeffFile {
            modules: BTreeMap::new(),
            task: "base".into(),
            ..c.clone()
        })
        .expect("zero task");
    let got0 = engine
        .run(&inputs, t0)
        .expect("run task0")
        .swap_remove(0)
        .data;
    let gotz = engine
        .run(&inputs, zero)
        .expect("run base")
        .swap_remove(0)
        .data;
    let want0 = r.f32s("task0.last_hidden_state");
    let d0 = max_abs_diff(&got0, &want0);
    let dz = max_abs_diff(&gotz, &want);
    let moved = max_abs_diff(&want0, &want);
    println!(
        "patched imported graph: task0 vs torch PEFT {d0:e} (the adapter moves outputs by {moved:e}); zero task vs torch base {dz:e}"
    );
    assert!(moved > 1e-2);
    assert!(
        d0 <= 1e-4,
        "patched task0 differs from torch + PEFT by {d0}"
    );
    assert!(dz <= 1e-4, "patched base differs from torch by {dz}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn minilm_import_matches_torch_reference_and_binds_all_modules(backend: Backend) {
    let Some(mdir) =
        minilm_support::minilm_dir("minilm_import_matches_torch_reference_and_binds_all_modules")
    else {
        return;
    };
    let dir = tmpdir(&format!("minilm-{}", tag(backend)));
    let base = dir.join("minilm.onnx");
    let m = import_hf_file(&mdir, &base).expect("import MiniLM");
    let c = &m.config;
    assert_eq!(
        (c.hidden, c.layers, c.heads, c.intermediate, c.vocab),
        (384, 6, 12, 1536, 30522)
    );

    let r = Ref::open(&repo().join("models/minilm/reference/import_hf.safetensors"));
    let [rows, seq] = <[usize; 2]>::try_from(r.shape("input_ids")).expect("2-D");
    let (ids, mask, types) = (
        r.i64s("input_ids"),
        r.i64s("attention_mask"),
        r.i64s("token_type_ids"),
    );
    assert!(mask.contains(&0), "the reference must include padding");
    let inputs = batch(&ids, &mask, &types, [rows, seq]);
    let o = unpatched(backend, &m.model, &inputs);
    assert_eq!(o.len(), 2);
    let (h, pooled) = (&o[0].data, &o[1].data);
    let dh = max_abs_diff(h, &r.f32s("last_hidden_state"));
    let dp = max_abs_diff(pooled, &r.f32s("sentence_embedding"));
    println!(
        "MiniLM imported on {} vs torch ({rows} sentences x {seq} tokens): last_hidden_state {dh:e}, sentence_embedding {dp:e}",
        backend.name()
    );
    assert!(dh <= 1e-4, "last_hidden_state differs from torch by {dh}");
    assert!(dp <= 1e-4, "sentence_embedding differs from torch by {dp}");

    // A bundle from the six committed MiniLM adapters binds all 12 modules by name.
    let tasks = [
        "sentiment",
        "subjectivity",
        "convention2012",
        "debate2016",
        "name_gender",
        "language_id",
    ];
    let adapters: Vec<Adapter> = tasks
        .iter()
        .map(|t| {
            Adapter::open(&repo().join(format!("models/minilm/adapters/{t}"))).expect("adapter")
        })
        .collect();
    let (bundle, binding) = bound_bundle(&adapters, 8, &base, &dir);
    assert_eq!(binding.modules.len(), 12);
    // A patched run with zero coefficients equals the unpatched graph.
    let engine = Engine::load(&base, &bundle, backend).expect("engine");
    let zero = engine
        .insert_task(&CoeffFile {
            subspace_id: bundle.manifest.subspace_id.clone(),
            task: "base".into(),
            provenance: Provenance::Projected,
            modules: BTreeMap::new(),
            head: None,
        })
        .expect("zero task");
    let o = engine.run(&inputs, zero).expect("patched run");
    let dz = max_abs_diff(&o[0].data, h);
    println!("patched MiniLM, zero coefficients vs unpatched: {dz:e}");
    assert!(dz <= 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inputs of `rows` x `seq`: ids spread over the vocabulary, each row padded after its own
/// length, token type 1 on the second half of the real tokens when `types` is set.
#[cfg(feature = "ort")]
fn spread_inputs(rows: usize, seq: usize, vocab: i64, types: bool) -> Batch {
    let mut ids = vec![0i64; rows * seq];
    let mut mask = vec![0i64; rows * seq];
    let mut tt = vec![0i64; rows * seq];
    for r in 0..rows {
        let len = seq - (r * 3) % seq.max(1);
        for s in 0..len.max(1) {
            let k = r * seq + s;
            ids[k] = 1 + (k as i64 * 7919) % (vocab - 1);
            mask[k] = 1;
            tt[k] = i64::from(types && s >= len / 2);
        }
    }
    batch(&ids, &mask, &tt, [rows, seq])
}

/// The largest difference between ONNX Runtime and tract on the unpatched `model`, over
/// padded batches of each of `shapes`.
#[cfg(feature = "ort")]
fn ort_vs_tract(model: &ModelProto, vocab: i64, types: bool, shapes: &[[usize; 2]]) -> f32 {
    let ort = Backend::Ort(eigenlorax::serve::ExecutionProvider::Cpu);
    let mut worst = 0f32;
    for &[rows, seq] in shapes {
        let inputs = spread_inputs(rows, seq, vocab, types);
        let o = unpatched(ort, model, &inputs);
        let t = unpatched(Backend::Tract, model, &inputs);
        let names: Vec<&str> = o.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["last_hidden_state", "sentence_embedding"]);
        assert_eq!(o[0].shape, [rows, seq, o[0].shape[2]]);
        assert_eq!(o[1].shape, [rows, o[0].shape[2]]);
        for (out, tv) in o.iter().zip(&t) {
            let d = max_abs_diff(&out.data, &tv.data);
            println!("{rows}x{seq} {}: max |ort - tract| = {d:e}", out.name);
            worst = worst.max(d);
        }
    }
    worst
}

#[cfg(feature = "ort")]
#[test]
fn ort_runs_imported_tiny_bert_like_tract() {
    crate::support::ort::require_ort();
    let m = import_hf(&tiny()).expect("import");
    // The fixture has one token type.
    let d = ort_vs_tract(&m.model, 200, false, &[[1, 5], [3, 16], [4, 32]]);
    assert!(d <= 1e-5, "ONNX Runtime and tract differ by {d}");
}

#[cfg(feature = "ort")]
#[test]
fn ort_runs_imported_minilm_like_tract() {
    crate::support::ort::require_ort();
    let Some(dir) = minilm_support::minilm_dir("ort_runs_imported_minilm_like_tract") else {
        return;
    };
    let m = import_hf(&dir).expect("import MiniLM");
    let d = ort_vs_tract(&m.model, 30522, true, &[[1, 9], [4, 40]]);
    assert!(d <= 1e-4, "ONNX Runtime and tract differ by {d}");
}

// ---- bad input ----

fn copy_fixture(tag: &str) -> PathBuf {
    let d = tmpdir(tag);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(f), d.join(f)).expect("copy");
    }
    d
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("cfg")).expect("json");
    f(v.as_object_mut().expect("object"));
    std::fs::write(&p, serde_json::to_vec(&v).expect("json")).expect("write");
}

/// Rewrites the fixture's model.safetensors through `f(name, dtype, shape, bytes)`, which
/// returns the entry to write (or None to drop it).
type Entry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);
fn edit_weights(dir: &Path, f: impl Fn(Entry) -> Option<Entry>) {
    let bytes = std::fs::read(tiny().join("model.safetensors")).expect("weights");
    let st = SafeTensors::deserialize(&bytes).expect("st");
    let mut out: Vec<Entry> = Vec::new();
    for (n, t) in st.tensors() {
        if let Some(e) = f((n.clone(), t.dtype(), t.shape().to_vec(), t.data().to_vec())) {
            out.push(e);
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write st");
}

fn import_err(dir: &Path) -> String {
    match import_hf(dir) {
        Ok(_) => panic!("expected an error importing {}", dir.display()),
        Err(e @ Error::BadInput { .. }) => e.to_string(),
        Err(other) => panic!("expected BadInput, got {other}"),
    }
}

/// A config edit for one bad-config case.
type ConfigEdit = Box<dyn Fn(&mut serde_json::Map<String, serde_json::Value>)>;

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let cases: [(&str, ConfigEdit, &str); 6] = [
        (
            "missing",
            Box::new(|c| {
                c.remove("hidden_size");
            }),
            "hidden_size",
        ),
        (
            "gpt2",
            Box::new(|c| {
                c.insert("model_type".into(), "gpt2".into());
            }),
            "model_type",
        ),
        (
            "relu",
            Box::new(|c| {
                c.insert("hidden_act".into(), "relu".into());
            }),
            "hidden_act",
        ),
        (
            "relpos",
            Box::new(|c| {
                c.insert("position_embedding_type".into(), "relative_key".into());
            }),
            "position_embedding_type",
        ),
        (
            "heads",
            Box::new(|c| {
                c.insert("num_attention_heads".into(), 5.into());
            }),
            "num_attention_heads",
        ),
        (
            "neg",
            Box::new(|c| {
                c.insert("num_hidden_layers".into(), (-1).into());
            }),
            "num_hidden_layers",
        ),
    ];
    for (tag, f, field) in cases {
        let d = copy_fixture(tag);
        edit_config(&d, f);
        let e = import_err(&d);
        println!("{tag}: {e}");
        assert!(e.contains("config.json") && e.contains(field), "{tag}: {e}");
        let _ = std::fs::remove_dir_all(&d);
    }
    let d = copy_fixture("notjson");
    std::fs::write(d.join("config.json"), b"{ not json").expect("write");
    assert!(import_err(&d).contains("config.json"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_weights_are_refused_naming_file_and_tensor() {
    // A config that disagrees with the weights: vocab 201 vs [200, 32].
    let d = copy_fixture("vocab");
    edit_config(&d, |c| {
        c.insert("vocab_size".into(), 201.into());
    });
    let e = import_err(&d);
    println!("{e}");
    assert!(
        e.contains("model.safetensors")
            && e.contains("embeddings.word_embeddings.weight")
            && e.contains("[201, 32]"),
        "{e}"
    );

    // A tensor of the wrong shape.
    let d2 = copy_fixture("shape");
    edit_weights(&d2, |(n, dt, s, b)| {
        if n == "encoder.layer.1.intermediate.dense.weight" {
            Some((n, dt, vec![32, 64], b)) // transposed: [64, 32] expected
        } else {
            Some((n, dt, s, b))
        }
    });
    let e = import_err(&d2);
    println!("{e}");
    assert!(
        e.contains("model.safetensors")
            && e.contains("encoder.layer.1.intermediate.dense.weight")
            && e.contains("[64, 32]"),
        "{e}"
    );

    // A missing tensor.
    let d3 = copy_fixture("missing");
    edit_weights(&d3, |e| {
        (e.0 != "encoder.layer.0.attention.self.value.bias").then_some(e)
    });
    let e = import_err(&d3);
    assert!(
        e.contains("encoder.layer.0.attention.self.value.bias"),
        "{e}"
    );

    // A non-float tensor.
    let d4 = copy_fixture("dtype");
    edit_weights(&d4, |(n, dt, s, b)| {
        if n == "embeddings.LayerNorm.bias" {
            Some((n, safetensors::Dtype::I32, s, b))
        } else {
            Some((n, dt, s, b))
        }
    });
    let e = import_err(&d4);
    assert!(
        e.contains("embeddings.LayerNorm.bias") && e.contains("I32"),
        "{e}"
    );

    // A NaN weight.
    let d5 = copy_fixture("nan");
    edit_weights(&d5, |(n, dt, s, mut b)| {
        if n == "encoder.layer.0.output.dense.weight" {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((n, dt, s, b))
    });
    let e = import_err(&d5);
    assert!(
        e.contains("encoder.layer.0.output.dense.weight") && e.contains("NaN"),
        "{e}"
    );

    // A truncated file, and no weights at all.
    let d6 = copy_fixture("trunc");
    let b = std::fs::read(d6.join("model.safetensors")).expect("read");
    std::fs::write(d6.join("model.safetensors"), &b[..b.len() / 2]).expect("write");
    assert!(import_err(&d6).contains("model.safetensors"));
    std::fs::remove_file(d6.join("model.safetensors")).expect("rm");
    assert!(import_err(&d6).contains("model.safetensors"));
    for d in [d, d2, d3, d4, d5, d6] {
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn bert_prefix_and_half_precision_checkpoints_import() {
    let plain = import_hf(&tiny()).expect("import");
    let init = |m: &ModelProto, n: &str| -> Vec<f32> {
        let g = m.graph.as_ref().expect("graph");
        let t = g.initializer.iter().find(|t| t.name == n).expect(n);
        f32_data(t, Path::new("x")).expect("f32")
    };
    // BertForSequenceClassification-style keys (`bert.` prefix).
    let d = copy_fixture("prefix");
    edit_weights(&d, |(n, dt, s, b)| Some((format!("bert.{n}"), dt, s, b)));
    let prefixed = import_hf(&d).expect("import with bert. prefix");
    assert_eq!(encode_model(&prefixed.model), encode_model(&plain.model));

    // BF16 weights: every initializer equals the f32 weight truncated to bf16.
    let d2 = copy_fixture("bf16");
    edit_weights(&d2, |(n, _, s, b)| {
        let h: Vec<u8> = b.chunks_exact(4).flat_map(|c| [c[2], c[3]]).collect();
        Some((n, safetensors::Dtype::BF16, s, h))
    });
    let half = import_hf(&d2).expect("import bf16");
    let name = "encoder.layer.0.attention.self.query.weight";
    let want: Vec<f32> = init(&plain.model, name)
        .iter()
        .map(|v| f32::from_bits(v.to_bits() & 0xffff_0000))
        .collect();
    assert_eq!(init(&half.model, name), want);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&d2);
}

/// A config.json with fewer layers than the checkpoint used to drop the last layer's weights
/// silently (issue 13); now the first dropped tensor is named.
#[test]
fn weights_the_config_does_not_account_for_are_refused() {
    let d = copy_fixture("fewer-layers");
    edit_config(&d, |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    let e = import_err(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("encoder.layer.1.")
            && e.contains("num_hidden_layers"),
        "{e}"
    );
}
