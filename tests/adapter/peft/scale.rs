//! Scale folding: alpha/r, rsLoRA's alpha/√r, rank and alpha patterns as PEFT matches
//! them, a negative alpha, and the config's scale kept when the weights file is named.

use super::{check_delta, folder, lora_keys};
use crate::support::adapter_fixtures as fixtures;
use eigenlorax::adapter::{Adapter, AdapterFormat};
use eigenlorax::tensorfile::Dtype;
use fixtures::*;
use serde_json::json;

#[test]
fn plain_scale_alpha_over_r() {
    let tmp = TmpDir::new("plain");
    let q = Pair::random(4, 12, 12, 1, Dtype::F32);
    let v = Pair::random(4, 12, 12, 2, Dtype::F32);
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q", "v"],
                     "base_model_name_or_path": "tiny-bert"});
    let dir = folder(
        &tmp,
        "a",
        cfg,
        &[("enc.layer.0.attn.q", &q), ("enc.layer.0.attn.v", &v)],
        Dtype::F32,
    );
    let ad = Adapter::open(&dir).unwrap();
    assert_eq!(ad.format, AdapterFormat::Peft);
    assert_eq!(ad.base_model.as_deref(), Some("tiny-bert"));
    assert_eq!(
        ad.module_names(),
        vec!["enc.layer.0.attn.q", "enc.layer.0.attn.v"]
    );
    assert!(!ad.fan_in_fan_out);
    assert!(ad.extras.is_empty());
    assert_eq!(ad.config["lora_alpha"], 8);
    assert_eq!(
        ad.sha256,
        eigenlorax::util::sha256_file(&dir.join("adapter_model.safetensors")).unwrap()
    );
    assert_eq!(ad.sha256.len(), 64);
    let info = &ad.modules["enc.layer.0.attn.q"];
    assert_eq!(
        (
            info.rank,
            info.in_features,
            info.out_features,
            info.conv_kernel
        ),
        (4, 12, 12, None)
    );
    check_delta(&ad, "enc.layer.0.attn.q", &q, 2.0);
    check_delta(&ad, "enc.layer.0.attn.v", &v, 2.0);
    // Asking for an unknown module is an error naming it.
    let e = err_msg(ad.load_module("enc.layer.9.attn.q"));
    assert!(e.contains("enc.layer.9.attn.q"), "{e}");
}

#[test]
fn rslora_scale_alpha_over_sqrt_r() {
    let tmp = TmpDir::new("rslora");
    let q = Pair::random(16, 10, 6, 3, Dtype::F32);
    let cfg = json!({"r": 16, "lora_alpha": 8, "use_rslora": true, "target_modules": ["q"]});
    let dir = folder(&tmp, "a", cfg, &[("m.q", &q)], Dtype::F32);
    let ad = Adapter::open(&dir).unwrap();
    check_delta(&ad, "m.q", &q, 2.0); // 8 / sqrt(16)
}

#[test]
fn rank_and_alpha_patterns_follow_peft() {
    let tmp = TmpDir::new("patterns");
    // Default r=4, alpha=8. rank_pattern gives layer 1's q rank 2 (first matching key wins,
    // in file order), alpha_pattern gives every v alpha 3.
    let q0 = Pair::random(4, 8, 8, 10, Dtype::F32);
    let q1 = Pair::random(2, 8, 8, 11, Dtype::F32);
    let v0 = Pair::random(4, 8, 8, 12, Dtype::F32);
    let v1 = Pair::random(6, 8, 8, 13, Dtype::F32);
    let cfg_text = r#"{
        "r": 4, "lora_alpha": 8, "target_modules": ["q", "v"],
        "rank_pattern": {"layer\\.1\\.q": 2, "q": 7, "layer.1.v": 6},
        "alpha_pattern": {"v": 3, "layer\\.1\\.v": 100}
    }"#;
    let dir = tmp.sub("a");
    let mut t = Vec::new();
    for (name, p) in [
        ("layer.0.q", &q0),
        ("layer.1.q", &q1),
        ("layer.0.v", &v0),
        ("layer.1.v", &v1),
    ] {
        let (a, b) = lora_keys(name);
        t.push(p.a.tensor(&a, Dtype::F32));
        t.push(p.b.tensor(&b, Dtype::F32));
    }
    write_peft(&dir, &json!({}), t);
    std::fs::write(dir.join("adapter_config.json"), cfg_text).unwrap();
    // "q": 7 also matches layer.0.q (whose A has rank 4): PEFT would build rank 7, so the file
    // disagrees with its config and must be refused, naming the tensor and the key.
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("layer.0.q.lora_A.weight")
            && e.contains("expected rank 7")
            && e.contains("rank_pattern key `q`"),
        "{e}"
    );

    // Without the "q" key: layer.0.q falls back to r=4.
    let cfg_text = cfg_text.replace(r#""q": 7, "#, "");
    std::fs::write(dir.join("adapter_config.json"), cfg_text).unwrap();
    let ad = Adapter::open(&dir).unwrap();
    assert_eq!(ad.modules["layer.0.q"].rank, 4);
    assert_eq!(ad.modules["layer.1.q"].rank, 2);
    assert_eq!(ad.modules["layer.1.v"].rank, 6);
    check_delta(&ad, "layer.0.q", &q0, 8.0 / 4.0);
    check_delta(&ad, "layer.1.q", &q1, 8.0 / 2.0); // rank from pattern, default alpha
    check_delta(&ad, "layer.0.v", &v0, 3.0 / 4.0); // alpha from pattern
    check_delta(&ad, "layer.1.v", &v1, 3.0 / 6.0); // "v" comes first in alpha_pattern and wins

    // PEFT's key match is `(.*\.)?(key)$`: "ayer.1.q" is not a dot-separated suffix.
    let dir2 = tmp.sub("b");
    let cfg = json!({"r": 4, "lora_alpha": 4, "rank_pattern": {"ayer\\.1\\.q": 2}});
    let (a, b) = lora_keys("layer.1.q");
    write_peft(
        &dir2,
        &cfg,
        vec![q1.a.tensor(&a, Dtype::F32), q1.b.tensor(&b, Dtype::F32)],
    );
    let e = err_msg(Adapter::open(&dir2));
    assert!(
        e.contains("expected rank 4 (r in adapter_config.json), found rank 2"),
        "{e}"
    );
}

#[test]
fn rslora_with_rank_pattern() {
    let tmp = TmpDir::new("rs-pattern");
    let q = Pair::random(9, 5, 7, 20, Dtype::F32);
    let cfg = json!({"r": 4, "lora_alpha": 6, "use_rslora": true, "rank_pattern": {"q": 9}, "alpha_pattern": {"q": 12}});
    let dir = folder(&tmp, "a", cfg, &[("x.q", &q)], Dtype::F32);
    check_delta(&Adapter::open(&dir).unwrap(), "x.q", &q, 12.0 / 3.0);
}

#[test]
fn negative_alpha_folds_with_sign_on_a() {
    let tmp = TmpDir::new("neg");
    let q = Pair::random(2, 5, 3, 120, Dtype::F32);
    let dir = folder(
        &tmp,
        "a",
        json!({"r": 2, "lora_alpha": -8}),
        &[("x", &q)],
        Dtype::F32,
    );
    let ad = Adapter::open(&dir).unwrap();
    let m = ad.load_module("x").unwrap();
    assert!(rel_err(&loaded_delta(&m), &q.delta(-4.0)) <= 1e-12);
    assert!(rel_err(&Dense::from_mat(m.b.as_ref()), &q.b.scaled(2.0)) <= 1e-15);
}

#[test]
fn weights_file_named_directly_keeps_the_config_scale() {
    let tmp = TmpDir::new("direct");
    let q = Pair::random(4, 6, 6, 130, Dtype::F32);
    let dir = folder(
        &tmp,
        "a",
        json!({"r": 4, "lora_alpha": 16}),
        &[("x.q", &q)],
        Dtype::F32,
    );
    let ad = Adapter::open(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(ad.format, AdapterFormat::Peft);
    check_delta(&ad, "x.q", &q, 4.0);
}
