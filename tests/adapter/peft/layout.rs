//! Key conventions (base_layer, adapter names, extras), `target_modules` as a regex,
//! half-precision values, ranks and shapes that differ, conv modules.

use super::{P, check_delta, folder, lora_keys};
use crate::support::adapter_fixtures as fixtures;
use eigenlorax::adapter::Adapter;
use eigenlorax::tensorfile::{Dtype, TensorOut};
use fixtures::*;
use serde_json::json;

#[test]
fn target_modules_regex_string() {
    let tmp = TmpDir::new("target");
    let q = Pair::random(2, 6, 6, 30, Dtype::F32);
    let cfg = json!({"r": 2, "lora_alpha": 2, "target_modules": r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"});
    let dir = folder(
        &tmp,
        "a",
        cfg.clone(),
        &[
            ("model.layers.0.self_attn.q_proj", &q),
            ("model.layers.11.self_attn.v_proj", &q),
        ],
        Dtype::F32,
    );
    let ad = Adapter::open(&dir).unwrap();
    assert_eq!(ad.modules.len(), 2);
    check_delta(&ad, "model.layers.11.self_attn.v_proj", &q, 1.0);
    // A module the regex does not fully match is refused (PEFT would not load it).
    let dir = folder(
        &tmp,
        "b",
        cfg,
        &[("model.layers.0.self_attn.k_proj", &q)],
        Dtype::F32,
    );
    let e = err_msg(Adapter::open(&dir));
    assert!(
        e.contains("target_modules") && e.contains("model.layers.0.self_attn.k_proj"),
        "{e}"
    );
    // A list selects by dot-separated suffix.
    let cfg = json!({"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]});
    let dir = folder(
        &tmp,
        "c",
        cfg,
        &[("model.layers.0.self_attn.xq_proj", &q)],
        Dtype::F32,
    );
    assert!(err_msg(Adapter::open(&dir)).contains("xq_proj"));
}

#[test]
fn half_precision_reads_the_stored_values() {
    let tmp = TmpDir::new("half");
    for (i, dtype) in [Dtype::F16, Dtype::BF16].into_iter().enumerate() {
        let raw = Pair::random(3, 9, 5, 40 + i as u64, Dtype::F64);
        let cfg = json!({"r": 3, "lora_alpha": 3});
        let dir = folder(&tmp, dtype.name(), cfg, &[("h", &raw)], dtype);
        let ad = Adapter::open(&dir).unwrap();
        let m = ad.load_module("h").unwrap();
        let a = Dense::from_mat(m.a.as_ref());
        let want: Vec<f64> = raw.a.v.iter().map(|&x| round_to(x, dtype)).collect();
        assert_eq!(
            a.v, want,
            "{dtype:?}: A must equal the rounded values exactly (s = 1)"
        );
        // ... and differs from the unrounded ones by at most half an ulp of the format.
        let ulp = if dtype == Dtype::F16 {
            2f64.powi(-11)
        } else {
            2f64.powi(-8)
        };
        for (x, y) in a.v.iter().zip(&raw.a.v) {
            assert!((x - y).abs() <= ulp * y.abs() + 1e-7, "{x} vs {y}");
        }
        assert!(
            a.v.iter().zip(&raw.a.v).any(|(x, y)| x != y),
            "rounding should be visible"
        );
    }
}

#[test]
fn ranks_differ_between_adapters_and_gqa_shapes() {
    let tmp = TmpDir::new("gqa");
    // Grouped-query attention: v_proj maps 16 -> 4 (out != in).
    let small_v = Pair::random(2, 16, 4, 50, Dtype::F32);
    let small_q = Pair::random(2, 16, 16, 51, Dtype::F32);
    let big_v = Pair::random(8, 16, 4, 52, Dtype::F32);
    let big_q = Pair::random(8, 16, 16, 53, Dtype::F32);
    let d1 = folder(
        &tmp,
        "r2",
        json!({"r": 2, "lora_alpha": 4}),
        &[("l.q_proj", &small_q), ("l.v_proj", &small_v)],
        Dtype::F32,
    );
    let d2 = folder(
        &tmp,
        "r8",
        json!({"r": 8, "lora_alpha": 4}),
        &[("l.q_proj", &big_q), ("l.v_proj", &big_v)],
        Dtype::BF16,
    );
    let a1 = Adapter::open(&d1).unwrap();
    let a2 = Adapter::open(&d2).unwrap();
    let v1 = &a1.modules["l.v_proj"];
    assert_eq!((v1.rank, v1.in_features, v1.out_features), (2, 16, 4));
    let v2 = &a2.modules["l.v_proj"];
    assert_eq!((v2.rank, v2.in_features, v2.out_features), (8, 16, 4));
    check_delta(&a1, "l.v_proj", &small_v, 2.0);
    let m = a2.load_module("l.v_proj").unwrap();
    assert_eq!((m.rank(), m.in_features(), m.out_features()), (8, 16, 4));
    let stored = Pair {
        a: Dense {
            v: big_v
                .a
                .v
                .iter()
                .map(|&x| round_to(x, Dtype::BF16))
                .collect(),
            ..big_v.a.clone()
        },
        b: Dense {
            v: big_v
                .b
                .v
                .iter()
                .map(|&x| round_to(x, Dtype::BF16))
                .collect(),
            ..big_v.b.clone()
        },
    };
    assert!(rel_err(&loaded_delta(&m), &stored.delta(0.5)) <= 1e-12);
}

#[test]
fn key_conventions_base_layer_adapter_name_extras() {
    let tmp = TmpDir::new("keys");
    let q = Pair::random(2, 4, 4, 60, Dtype::F32);
    let v = Pair::random(2, 4, 4, 61, Dtype::F32);
    let dir = tmp.sub("a");
    let t = vec![
        q.a.tensor(
            &format!("{P}enc.q.base_layer.lora_A.default.weight"),
            Dtype::F32,
        ),
        q.b.tensor(
            &format!("{P}enc.q.base_layer.lora_B.default.weight"),
            Dtype::F32,
        ),
        v.a.tensor(&format!("{P}enc.v.lora_A.default.weight"), Dtype::F32),
        v.b.tensor(&format!("{P}enc.v.lora_B.default.weight"), Dtype::F32),
        TensorOut::from_f64(
            format!("{P}classifier.modules_to_save.default.weight"),
            Dtype::F32,
            vec![3, 4],
            &[0.1; 12],
        ),
        TensorOut::from_f64(
            format!("{P}classifier.bias"),
            Dtype::BF16,
            vec![3],
            &[0.0; 3],
        ),
        TensorOut::from_f64(
            format!("{P}enc.q.base_layer.weight"),
            Dtype::F16,
            vec![4, 4],
            &[0.0; 16],
        ),
    ];
    write_peft(
        &dir,
        &json!({"r": 2, "lora_alpha": 2, "target_modules": ["q", "v"], "modules_to_save": ["classifier"], "fan_in_fan_out": true}),
        t,
    );
    let ad = Adapter::open(&dir).unwrap();
    assert!(ad.fan_in_fan_out);
    assert_eq!(ad.module_names(), vec!["enc.q", "enc.v"]);
    assert_eq!(
        ad.modules["enc.q"].a_key,
        format!("{P}enc.q.base_layer.lora_A.default.weight")
    );
    check_delta(&ad, "enc.q", &q, 1.0);
    check_delta(&ad, "enc.v", &v, 1.0);
    let extras: Vec<(&str, &[usize], &str)> = ad
        .extras
        .iter()
        .map(|e| (e.key.as_str(), e.shape.as_slice(), e.dtype.as_str()))
        .collect();
    assert_eq!(
        extras,
        vec![
            ("base_model.model.classifier.bias", &[3usize][..], "BF16"),
            (
                "base_model.model.classifier.modules_to_save.default.weight",
                &[3, 4][..],
                "F32"
            ),
            (
                "base_model.model.enc.q.base_layer.weight",
                &[4, 4][..],
                "F16"
            ),
        ]
    );

    // Two adapter names in one file are refused.
    let dir = tmp.sub("b");
    let t = vec![
        q.a.tensor(&format!("{P}enc.q.lora_A.default.weight"), Dtype::F32),
        q.b.tensor(&format!("{P}enc.q.lora_B.default.weight"), Dtype::F32),
        v.a.tensor(&format!("{P}enc.v.lora_A.other.weight"), Dtype::F32),
        v.b.tensor(&format!("{P}enc.v.lora_B.other.weight"), Dtype::F32),
    ];
    write_peft(&dir, &json!({"r": 2, "lora_alpha": 2}), t);
    let e = err_msg(Adapter::open(&dir));
    assert!(e.contains("default") && e.contains("other"), "{e}");
}

#[test]
fn conv_modules_are_flattened() {
    let tmp = TmpDir::new("conv");
    // PEFT Conv2d LoRA: A [r, in, 3, 3], B [out, r, 1, 1].
    let p = Pair::random(2, 3 * 9, 5, 70, Dtype::F32);
    let dir = tmp.sub("a");
    let (a, b) = lora_keys("unet.conv");
    write_peft(
        &dir,
        &json!({"r": 2, "lora_alpha": 1}),
        vec![
            p.a.tensor_shaped(&a, Dtype::F32, vec![2, 3, 3, 3]),
            p.b.tensor_shaped(&b, Dtype::F32, vec![5, 2, 1, 1]),
        ],
    );
    let ad = Adapter::open(&dir).unwrap();
    let info = &ad.modules["unet.conv"];
    assert_eq!(
        (
            info.rank,
            info.in_features,
            info.out_features,
            info.conv_kernel
        ),
        (2, 27, 5, Some([3, 3]))
    );
    check_delta(&ad, "unet.conv", &p, 0.5);
}
