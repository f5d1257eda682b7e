//! Inputs refused with a named error: DoRA, pickled weights, missing paths, config errors
//! and bad weights.

use super::{P, folder, lora_keys};
use crate::support::adapter_fixtures as fixtures;
use eigenlorax::adapter::Adapter;
use eigenlorax::tensorfile::{Dtype, TensorOut};
use fixtures::*;
use serde_json::json;

#[test]
fn dora_is_refused() {
    let tmp = TmpDir::new("dora");
    let q = Pair::random(2, 4, 4, 80, Dtype::F32);
    let (a, b) = lora_keys("enc.q");
    let dir = tmp.sub("a");
    write_peft(
        &dir,
        &json!({"r": 2, "lora_alpha": 2}),
        vec![
            q.a.tensor(&a, Dtype::F32),
            q.b.tensor(&b, Dtype::F32),
            TensorOut::from_f64(
                format!("{P}enc.q.lora_magnitude_vector"),
                Dtype::F32,
                vec![4],
                &[1.0; 4],
            ),
        ],
    );
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("DoRA") && e.contains("lora_magnitude_vector"),
        "{e}"
    );
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"r": 2, "lora_alpha": 2, "use_dora": true}"#,
    )
    .unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("use_dora") && e.contains("adapter_config.json"),
        "{e}"
    );
    // Anything but a boolean (or null) is refused, not read as false.
    for bad in [r#""aaa""#, "1", r#""false""#] {
        std::fs::write(
            dir.join("adapter_config.json"),
            format!(r#"{{"r": 2, "lora_alpha": 2, "use_dora": {bad}}}"#),
        )
        .unwrap();
        let e = err_msg(Adapter::open(&dir));
        assert!(
            e.contains("use_dora") && e.contains("expected true or false"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn pickle_bin_is_refused_with_conversion_hint() {
    let tmp = TmpDir::new("bin");
    let dir = tmp.sub("a");
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"r": 2, "lora_alpha": 2}"#,
    )
    .unwrap();
    std::fs::write(dir.join("adapter_model.bin"), b"PK\x03\x04 not really").unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(e.contains("adapter_model.bin"), "{e}");
    assert!(e.contains("run arbitrary code"), "{e}");
    assert!(
        e.contains(
            "python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load('adapter_model.bin'), 'adapter_model.safetensors')\""
        ),
        "{e}"
    );
    // A pickle named directly is refused too.
    let e = err_msg(Adapter::open(&dir.join("adapter_model.bin")));
    assert!(e.contains("run arbitrary code"), "{e}");
}

#[test]
fn missing_paths_and_empty_folders() {
    let tmp = TmpDir::new("missing");
    let e = err_msg(Adapter::open(&tmp.join("nope")));
    assert!(e.contains("nope") && e.contains("found nothing"), "{e}");
    let dir = tmp.sub("empty");
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("adapter_config.json")
            && e.contains("adapter_model.safetensors")
            && e.contains("neither"),
        "{e}"
    );
    // Weights without config.
    let q = Pair::random(2, 4, 4, 90, Dtype::F32);
    let (a, b) = lora_keys("x");
    write_peft(
        &dir,
        &json!({}),
        vec![q.a.tensor(&a, Dtype::F32), q.b.tensor(&b, Dtype::F32)],
    );
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(e.contains("adapter_config.json"), "{e}");
}

#[test]
fn config_errors_name_the_key() {
    let tmp = TmpDir::new("config");
    let q = Pair::random(2, 4, 4, 100, Dtype::F32);
    let dir = folder(&tmp, "a", json!({"r": 2}), &[("x.q", &q)], Dtype::F32);
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("adapter_config.json")
            && e.contains("`lora_alpha`")
            && e.contains("key missing"),
        "{e}"
    );
    for (text, key) in [
        (r#"{"r": 0, "lora_alpha": 2}"#, "`r`"),
        (r#"{"r": "two", "lora_alpha": 2}"#, "`r`"),
        (
            r#"{"r": 2, "lora_alpha": 2, "use_rslora": "yes"}"#,
            "`use_rslora`",
        ),
        (
            r#"{"r": 2, "lora_alpha": 2, "rank_pattern": {"q": -1}}"#,
            "rank_pattern.q",
        ),
        (
            r#"{"r": 2, "lora_alpha": 2, "target_modules": 5}"#,
            "`target_modules`",
        ),
        (
            r#"{"r": 2, "lora_alpha": 2, "peft_type": "IA3"}"#,
            "`peft_type`",
        ),
        (
            r#"{"r": 2, "lora_alpha": 2, "rank_pattern": {"(": 2}}"#,
            "rank_pattern.(",
        ),
    ] {
        std::fs::write(dir.join("adapter_config.json"), text).unwrap();
        let e = err_msg(Adapter::open(&dir));
        assert!(
            e.contains("adapter_config.json") && e.contains(key),
            "{key}: {e}"
        );
    }
    std::fs::write(dir.join("adapter_config.json"), "{\"r\": 2,").unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("adapter_config.json") && e.contains("JSON"),
        "{e}"
    );
}

#[test]
fn bad_weights() {
    let tmp = TmpDir::new("badw");
    let q = Pair::random(2, 4, 4, 110, Dtype::F32);
    let cfg = json!({"r": 2, "lora_alpha": 2});

    // NaN / Inf: the module loads with an error naming the tensor and index.
    let mut bad = Pair {
        a: q.a.clone(),
        b: q.b.clone(),
    };
    bad.b.v[5] = f64::NAN;
    let dir = folder(&tmp, "nan", cfg.clone(), &[("x.q", &bad)], Dtype::F32);
    let ad = Adapter::open(&dir).unwrap();
    let e = err_msg(ad.load_module("x.q"));
    assert!(
        e.contains("adapter_model.safetensors")
            && e.contains("x.q.lora_B.weight")
            && e.contains("NaN at index 5"),
        "{e}"
    );
    let mut bad = Pair {
        a: q.a.clone(),
        b: q.b.clone(),
    };
    bad.a.v[3] = f64::NEG_INFINITY;
    let dir = folder(&tmp, "inf", cfg.clone(), &[("x.q", &bad)], Dtype::BF16);
    let e = err_msg(Adapter::open(&dir).unwrap().load_module("x.q"));
    assert!(
        e.contains("x.q.lora_A.weight") && e.contains("-inf at index 3"),
        "{e}"
    );

    // A/B shape mismatch: names B and what was expected.
    let dir = tmp.sub("shape");
    let (a, b) = lora_keys("x.q");
    write_peft(
        &dir,
        &cfg,
        vec![
            q.a.tensor(&a, Dtype::F32),
            Dense::random(4, 3, 1, Dtype::F32).tensor(&b, Dtype::F32),
        ],
    );
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("x.q.lora_B.weight") && e.contains("expected [out, 2]") && e.contains("[4, 3]"),
        "{e}"
    );

    // Rank disagreeing with config r.
    let dir = folder(
        &tmp,
        "rank",
        json!({"r": 3, "lora_alpha": 2}),
        &[("x.q", &q)],
        Dtype::F32,
    );
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("x.q.lora_A.weight") && e.contains("expected rank 3"),
        "{e}"
    );

    // A without B and B without A.
    let dir = tmp.sub("half");
    write_peft(&dir, &cfg, vec![q.a.tensor(&a, Dtype::F32)]);
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("x.q.lora_B.weight") && e.contains("found none"),
        "{e}"
    );
    write_peft(&dir, &cfg, vec![q.b.tensor(&b, Dtype::F32)]);
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("x.q.lora_A.weight") && e.contains("found none"),
        "{e}"
    );

    // Truncated weights file.
    let dir = folder(&tmp, "trunc", cfg.clone(), &[("x.q", &q)], Dtype::F32);
    let w = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 7]).unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("x.q.lora_B.weight"),
        "{e}"
    );

    // Oversized header length.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(&bytes[8..]);
    std::fs::write(&w, huge).unwrap();
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("header length"),
        "{e}"
    );

    // Unsupported dtype for a LoRA tensor.
    let dir = tmp.sub("i8");
    write_peft(
        &dir,
        &cfg,
        vec![q.a.tensor(&a, Dtype::I8), q.b.tensor(&b, Dtype::F32)],
    );
    // I8 is readable (it is a number), so this loads; values are the rounded ones.
    let m = Adapter::open(&dir).unwrap().load_module("x.q").unwrap();
    assert_eq!(m.a[(0, 0)], q.a.v[0].round());

    // No LoRA tensors at all.
    let dir = tmp.sub("none");
    write_peft(
        &dir,
        &cfg,
        vec![TensorOut::from_f64(
            "classifier.weight",
            Dtype::F32,
            vec![2],
            &[1.0, 2.0],
        )],
    );
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("lora_A/lora_B") && e.contains("found none"),
        "{e}"
    );
}
