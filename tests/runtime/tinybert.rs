//! End to end on the committed tiny BERT (torch legacy ONNX export) and its six PEFT task
//! adapters: extract a subspace that spans all six, write/read the bundle, bind it to the ONNX
//! graph (bias-anchored rule: the exporter renamed the weights), project task0 into it, and
//! run the patched graph on tract against torch's own outputs with the PEFT adapter active.
#![cfg(feature = "tract")]

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, StorageDtype, WeightLayout};
use eigenlorax::graph::bind_file;
use eigenlorax::serve::backend::tract::Runtime;
use eigenlorax::subspace::{ExtractOptions, KRule, extract, project};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

const FIX: &str = "models/fixtures";

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIX).join(p)
}

fn expected() -> (Vec<i64>, Vec<i64>, Vec<f32>, Vec<f32>) {
    let bytes =
        std::fs::read(fixture("tiny-bert/expected_outputs.safetensors")).expect("read expected");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect()
    };
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect()
    };
    (
        i64s("input_ids"),
        i64s("attention_mask"),
        f32s("base.last_hidden_state"),
        f32s("task0.last_hidden_state"),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiny_bert_patched_matches_torch_peft() {
    let dir = std::env::temp_dir().join(format!("elx-rt-tinybert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let adapters: Vec<Adapter> = (0..6)
        .map(|i| Adapter::open(&fixture(&format!("adapters/task{i}"))).expect("adapter"))
        .collect();
    // 6 adapters x r=4 = 24 directions per side: the subspace spans every adapter exactly.
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(24),
        k_rule_b: KRule::Fixed(24),
        ..Default::default()
    };
    let sub = extract(&adapters, &options, &|_, _, _| {}).expect("extract");
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let bundle = Bundle::read(&unbound).expect("read bundle");

    let base = fixture("tiny-bert/model.onnx");
    let binding = bind_file(&base, &bundle, None).expect("bind");
    assert_eq!(binding.modules.len(), 4);
    for (m, mb) in &binding.modules {
        assert_eq!(mb.layout, WeightLayout::InOut, "{m}");
        assert!(mb.weight.starts_with("onnx::MatMul_"), "{m}: {}", mb.weight);
        println!(
            "{m} -> node {} weight {} output {}",
            mb.node, mb.weight, mb.output
        );
    }
    let bound = dir.join("bound.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    let bundle = Bundle::read(&bound).expect("read bound bundle");
    assert_eq!(bundle.manifest.binding.as_ref(), Some(&binding));

    // task0 projected into the subspace, through a coefficient file.
    let mut modules = BTreeMap::new();
    for m in adapters[0].module_names() {
        let lm = adapters[0].load_module(m).expect("module");
        modules.insert(m.to_string(), project(&lm, &bundle.subspace.modules[m]));
    }
    let c = CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: "task0".into(),
        provenance: Provenance::Projected,
        modules,
        head: None,
    };
    let cf = dir.join("task0.elxc");
    c.write(&cf).expect("write coeffs");

    let rt = Runtime::load(&base, &bundle).expect("runtime");
    assert_eq!(rt.input_names(), ["input_ids", "attention_mask"]);
    let t0 = rt.load_task(&cf).expect("load task");
    let zero = rt
        .insert_task(&CoeffFile {
            modules: BTreeMap::new(),
            task: "base".into(),
            ..c.clone()
        })
        .expect("zero task");

    let (ids, mask, want_base, want_t0) = expected();
    let inputs: [TValue; 2] = [
        Tensor::from_shape(&[2, 16], &ids).expect("ids").into(),
        Tensor::from_shape(&[2, 16], &mask).expect("mask").into(),
    ];
    let out = |id| -> Vec<f32> {
        let o = rt.run(&inputs, id).expect("run");
        o[0].to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect()
    };
    let got_t0 = out(t0);
    let got_zero = out(zero);

    // The unpatched graph on tract, for the zero-coefficient identity.
    let bytes = std::fs::read(&base).expect("model");
    let plain = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|m| {
            m.with_input_fact(0, InferenceFact::dt_shape(i64::datum_type(), [2usize, 16]))
        })
        .and_then(|m| {
            m.with_input_fact(1, InferenceFact::dt_shape(i64::datum_type(), [2usize, 16]))
        })
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("plain");
    let o = plain
        .run(inputs.iter().cloned().collect())
        .expect("plain run");
    let tract_base: Vec<f32> = o[0]
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect();

    let d_zero = max_abs_diff(&got_zero, &tract_base);
    let d_base = max_abs_diff(&got_zero, &want_base);
    let d_t0 = max_abs_diff(&got_t0, &want_t0);
    let moved = max_abs_diff(&want_t0, &want_base);
    println!("zero coeffs vs unpatched (tract): {d_zero:e}");
    println!("zero coeffs vs torch base:        {d_base:e}");
    println!("task0 coeffs vs torch PEFT task0: {d_t0:e}  (task0 moves outputs by {moved:e})");
    assert!(
        d_zero <= 1e-6,
        "zero coefficients changed the output by {d_zero}"
    );
    assert!(
        d_base <= 1e-4,
        "patched base differs from torch by {d_base}"
    );
    assert!(
        moved > 1e-2,
        "the adapter must change the output for this test to mean anything"
    );
    assert!(
        d_t0 <= 1e-4,
        "patched task0 differs from torch+PEFT by {d_t0}"
    );
    // A mixed batch: row 0 with task0, row 1 with the base model, against torch's rows.
    let mixed = rt.run_mixed(&inputs, &[t0, zero]).expect("mixed");
    let mixed: Vec<f32> = mixed[0]
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect();
    let row = 16 * 32;
    let d_mixed = max_abs_diff(&mixed[..row], &want_t0[..row])
        .max(max_abs_diff(&mixed[row..], &want_base[row..]));
    println!("mixed [task0, base] vs torch rows:  {d_mixed:e}");
    assert!(
        d_mixed <= 1e-4,
        "mixed batch differs from torch by {d_mixed}"
    );
    // tract cannot optimize this export with batch and sequence both symbolic: the runtime
    // says so and builds per-shape plans.
    assert!(!rt.is_shape_generic());
}

/// The runtime does not keep the base model in memory: a later per-shape plan re-reads the
/// file, so a shape seen before keeps running with its plan, while a new shape after the file
/// was replaced is refused with the hash error (never a plan built from another model).
#[test]
fn later_plans_reread_the_base_and_check_its_hash() {
    let dir = std::env::temp_dir().join(format!("elx-rt-reread-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let adapters: Vec<Adapter> = (0..2)
        .map(|i| Adapter::open(&fixture(&format!("adapters/task{i}"))).expect("adapter"))
        .collect();
    let sub = extract(&adapters, &ExtractOptions::default(), &|_, _, _| {}).expect("extract");
    let p = dir.join("b.elxb");
    Bundle::write(&p, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let mut bundle = Bundle::read(&p).expect("read bundle");
    let base = dir.join("model.onnx");
    std::fs::copy(fixture("tiny-bert/model.onnx"), &base).expect("copy model");
    bundle.manifest.binding = Some(bind_file(&base, &bundle, None).expect("bind"));
    let rt = Runtime::load(&base, &bundle).expect("runtime");
    let zero = rt
        .insert_task(&CoeffFile {
            subspace_id: bundle.manifest.subspace_id.clone(),
            task: "base".into(),
            provenance: Provenance::ZeroShot,
            modules: BTreeMap::new(),
            head: None,
        })
        .expect("zero task");
    let (ids, mask, want_base, _) = expected();
    let inputs: [TValue; 2] = [
        Tensor::from_shape(&[2, 16], &ids).expect("ids").into(),
        Tensor::from_shape(&[2, 16], &mask).expect("mask").into(),
    ];
    let flat = |o: &TVec<TValue>| -> Vec<f32> {
        o[0].to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect()
    };
    let first = flat(&rt.run(&inputs, zero).expect("first run"));
    assert!(max_abs_diff(&first, &want_base) <= 1e-4);

    // Replace the file with a different (valid) model: same graph, another doc string.
    let (mut m, _) = eigenlorax::graph::read_model(&base).expect("read model");
    m.doc_string = "changed after load".into();
    std::fs::write(&base, eigenlorax::graph::onnx::encode_model(&m)).expect("rewrite");

    let again = flat(&rt.run(&inputs, zero).expect("cached plan"));
    assert_eq!(again, first, "the cached plan must not change");
    let one: [TValue; 2] = [
        Tensor::from_shape(&[1, 16], &ids[..16])
            .expect("ids")
            .into(),
        Tensor::from_shape(&[1, 16], &mask[..16])
            .expect("mask")
            .into(),
    ];
    let err = rt
        .run(&one, zero)
        .expect_err("a new plan from a replaced file");
    let msg = err.to_string();
    assert!(
        msg.contains("SHA-256") && msg.contains("model.onnx"),
        "expected the hash error naming the file, got: {msg}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
