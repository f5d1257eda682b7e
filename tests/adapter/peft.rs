//! HF PEFT folders: scale folding (plain, rslora, rank/alpha patterns), key conventions,
//! dtypes, shapes, extras and bad inputs. Every fixture is written here with known values and
//! the loaded ΔW = B'·A' is compared with s·B·A computed independently.

use crate::support::adapter_fixtures as fixtures;

use eigenlorax::adapter::{Adapter, AdapterFormat};
use eigenlorax::tensorfile::{Dtype, TensorOut};
use fixtures::*;
use serde_json::json;

const P: &str = "base_model.model.";

fn lora_keys(module: &str) -> (String, String) {
    (
        format!("{P}{module}.lora_A.weight"),
        format!("{P}{module}.lora_B.weight"),
    )
}

/// Writes `modules` (name, pair) with `config`; returns the folder.
fn folder(
    tmp: &TmpDir,
    tag: &str,
    config: serde_json::Value,
    modules: &[(&str, &Pair)],
    dtype: Dtype,
) -> std::path::PathBuf {
    let dir = tmp.sub(tag);
    let mut t = Vec::new();
    for (name, p) in modules {
        let (a, b) = lora_keys(name);
        t.push(p.a.tensor(&a, dtype));
        t.push(p.b.tensor(&b, dtype));
    }
    write_peft(&dir, &config, t);
    dir
}

fn check_delta(ad: &Adapter, name: &str, pair: &Pair, s: f64) {
    let info = &ad.modules[name];
    assert!(
        (info.scale - s).abs() <= 1e-15 * s.abs(),
        "{name}: scale {} vs {s}",
        info.scale
    );
    let m = ad.load_module(name).unwrap();
    let e = rel_err(&loaded_delta(&m), &pair.delta(s));
    assert!(e <= 1e-12, "{name}: relative error {e}");
    // Folding is symmetric: A' = √s·A exactly up to one rounding.
    let a = Dense::from_mat(m.a.as_ref());
    assert!(
        rel_err(&a, &pair.a.scaled(s.sqrt())) <= 1e-15,
        "{name}: A' is not √s·A"
    );
}

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
