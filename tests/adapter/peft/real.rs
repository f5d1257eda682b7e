//! Real PEFT output (tools/make_peft_fixture.py and friends), against PEFT's own
//! `get_delta_weight`.

use super::{P, check_delta};
use crate::support::adapter_fixtures as fixtures;
use eigenlorax::adapter::Adapter;
use eigenlorax::tensorfile::Dtype;
use fixtures::*;
use serde_json::json;

/// Real PEFT output (tools/make_peft_fixture.py, peft 0.21.2): rslora, rank_pattern,
/// alpha_pattern, modules_to_save, shapes 16->16, 16->32, 32->16. PEFT's own
/// `get_delta_weight` per module is the reference.
#[test]
fn real_peft_folder_matches_peft_delta_weight() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapter_peft_tiny");
    let ad = Adapter::open(&dir).unwrap();
    let expected =
        eigenlorax::tensorfile::TensorFile::open(&dir.join("expected_delta.safetensors")).unwrap();
    assert_eq!(ad.module_names(), expected.names());
    assert_eq!(ad.modules.len(), 11);
    let mut worst = 0.0f64;
    for name in expected.names() {
        let want = expected.read_mat(name, None).unwrap();
        let m = ad.load_module(name).unwrap();
        let e = rel_err(&loaded_delta(&m), &Dense::from_mat(want.as_ref()));
        worst = worst.max(e);
        assert!(e <= 1e-6, "{name}: {e}");
    }
    eprintln!("worst relative ΔW error vs PEFT get_delta_weight: {worst:e}");
    assert!(worst > 0.0, "f32 reference should differ in the last bits");
    // Scales: rslora alpha/sqrt(r) with the patterns applied.
    let s = |n: &str| ad.modules[n].scale;
    assert_eq!(s("bert.encoder.layer.0.attention.self.query"), 8.0 / 2.0);
    assert_eq!(
        s("bert.encoder.layer.1.attention.self.query"),
        8.0 / 2f64.sqrt()
    );
    assert_eq!(
        s("bert.encoder.layer.0.intermediate.dense"),
        8.0 / 6f64.sqrt()
    );
    assert_eq!(s("bert.encoder.layer.1.attention.self.value"), 3.0 / 2.0);
    let i = &ad.modules["bert.encoder.layer.1.intermediate.dense"];
    assert_eq!((i.rank, i.in_features, i.out_features), (6, 16, 32));
    let extras: Vec<&str> = ad.extras.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        extras,
        vec![
            "base_model.model.classifier.bias",
            "base_model.model.classifier.weight"
        ]
    );
}

/// Real PEFT GPT-2 adapter (Conv1D, fan_in_fan_out): A and B keep the [r, in] / [out, r]
/// shapes, and PEFT's get_delta_weight is the transpose of B'·A' (Conv1D stores W as [in, out]).
#[test]
fn real_peft_gpt2_fan_in_fan_out() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adapter_peft_tiny_gpt2");
    let ad = Adapter::open(&dir).unwrap();
    assert!(ad.fan_in_fan_out);
    let expected =
        eigenlorax::tensorfile::TensorFile::open(&dir.join("expected_delta.safetensors")).unwrap();
    assert_eq!(ad.module_names(), expected.names());
    let c = &ad.modules["transformer.h.0.attn.c_attn"];
    assert_eq!(
        (c.rank, c.in_features, c.out_features, c.scale),
        (4, 16, 48, 4.0)
    );
    let mlp = &ad.modules["transformer.h.1.mlp.c_proj"];
    assert_eq!((mlp.in_features, mlp.out_features), (64, 16));
    for name in expected.names() {
        let want = expected.read_mat(name, None).unwrap(); // [in, out]
        let m = ad.load_module(name).unwrap();
        let t = Dense::from_mat(want.transpose());
        let e = rel_err(&loaded_delta(&m), &t);
        assert!(e <= 1e-6, "{name}: {e}");
    }
}

/// Real PEFT 0.10.0 output with LoRA on a `modules_to_save` head
/// (tools/make_peft_head_lora_fixture.py): the classifier's LoRA is saved as
/// `classifier.lora_*`, again as `classifier.modules_to_save.lora_*`, and the frozen
/// original's (other values) as `classifier.original_module.lora_*`; the head's full weights
/// as `classifier.base_layer.*`. The reference is what PEFT applies after loading the folder
/// (merged weight minus the weight under the LoRA). The reader before this layout was handled
/// refused the folder (`classifier.modules_to_save` is not a target module).
#[test]
fn real_peft_lora_on_modules_to_save_head() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adapter_peft_head_lora");
    let ad = Adapter::open(&dir).unwrap();
    let expected =
        eigenlorax::tensorfile::TensorFile::open(&dir.join("expected_delta.safetensors")).unwrap();
    assert_eq!(
        ad.module_names(),
        vec!["bert.encoder.layer.0.attention.self.query", "classifier"]
    );
    assert_eq!(ad.module_names(), expected.names());
    let c = &ad.modules["classifier"];
    assert_eq!(
        (c.rank, c.in_features, c.out_features, c.scale),
        (4, 16, 3, 2.0)
    );
    assert_eq!(c.a_key, "base_model.model.classifier.lora_A.weight");
    assert_eq!(c.b_key, "base_model.model.classifier.lora_B.weight");
    for name in expected.names() {
        let want = Dense::from_mat(expected.read_mat(name, None).unwrap().as_ref());
        let got = loaded_delta(&ad.load_module(name).unwrap());
        let e = rel_err(&got, &want);
        assert!(e <= 1e-6, "{name}: {e}");
    }
    // The frozen original's LoRA is a different update, so taking it would have failed above;
    // check the fixture really tells the copies apart.
    let weights =
        eigenlorax::tensorfile::TensorFile::open(&dir.join("adapter_model.safetensors")).unwrap();
    let k = |s: &str| format!("{P}classifier.{s}.weight");
    let orig_b = weights
        .read_mat(&k("original_module.lora_B"), None)
        .unwrap();
    let used_b = weights.read_mat(&k("lora_B"), None).unwrap();
    assert!(
        rel_err(
            &Dense::from_mat(orig_b.as_ref()),
            &Dense::from_mat(used_b.as_ref())
        ) > 0.5
    );
    // The head's full weights, the unused copy and the original's LoRA are extras.
    let extras: Vec<&str> = ad.extras.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        extras,
        vec![
            "base_model.model.classifier.base_layer.bias",
            "base_model.model.classifier.base_layer.weight",
            "base_model.model.classifier.modules_to_save.lora_A.weight",
            "base_model.model.classifier.modules_to_save.lora_B.weight",
            "base_model.model.classifier.original_module.lora_A.weight",
            "base_model.model.classifier.original_module.lora_B.weight",
        ]
    );
}

/// The other spellings of the head copy: only `modules_to_save[.<adapter>].lora_*` keys (no
/// plain ones) are read as the head's LoRA; the `original_module` LoRA is never read.
#[test]
fn modules_to_save_copy_read_when_alone() {
    let tmp = TmpDir::new("mts_copy");
    let used = Pair::random(2, 4, 3, 70, Dtype::F32);
    let frozen = Pair::random(2, 4, 3, 71, Dtype::F32);
    let q = Pair::random(2, 4, 4, 72, Dtype::F32);
    for (tag, wrapper) in [("a", "modules_to_save.default"), ("b", "modules_to_save")] {
        let dir = tmp.sub(tag);
        let t = vec![
            q.a.tensor(&format!("{P}enc.q.lora_A.weight"), Dtype::F32),
            q.b.tensor(&format!("{P}enc.q.lora_B.weight"), Dtype::F32),
            used.a
                .tensor(&format!("{P}cls.{wrapper}.lora_A.weight"), Dtype::F32),
            used.b
                .tensor(&format!("{P}cls.{wrapper}.lora_B.weight"), Dtype::F32),
            frozen
                .a
                .tensor(&format!("{P}cls.original_module.lora_A.weight"), Dtype::F32),
            frozen
                .b
                .tensor(&format!("{P}cls.original_module.lora_B.weight"), Dtype::F32),
        ];
        write_peft(
            &dir,
            &json!({"r": 2, "lora_alpha": 4, "target_modules": ["q", "cls"], "task_type": "SEQ_CLS"}),
            t,
        );
        let ad = Adapter::open(&dir).unwrap();
        assert_eq!(ad.module_names(), vec!["cls", "enc.q"], "{tag}");
        check_delta(&ad, "cls", &used, 2.0);
        check_delta(&ad, "enc.q", &q, 2.0);
        assert_eq!(ad.extras.len(), 2, "{tag}");
        assert!(ad.extras.iter().all(|e| e.key.contains("original_module")));
    }
}
