//! The PEFT writer: what it writes reads back as the same ΔW (scale folded = identity), with
//! per-module ranks carried by rank_pattern/alpha_pattern.

use crate::support::adapter_fixtures as fixtures;

use eigenlorax::adapter::peft::{self, PeftWriteOptions};
use eigenlorax::adapter::{Adapter, LoraModule};
use eigenlorax::tensorfile::Dtype;
use fixtures::*;
use std::collections::BTreeMap;

fn module(r: usize, inp: usize, out: usize, seed: u64) -> LoraModule {
    let p = Pair::random(r, inp, out, seed, Dtype::F64);
    LoraModule {
        a: faer::Mat::from_fn(r, inp, |i, j| p.a.at(i, j)),
        b: faer::Mat::from_fn(out, r, |i, j| p.b.at(i, j)),
    }
}

fn modules() -> BTreeMap<String, LoraModule> {
    let mut m = BTreeMap::new();
    m.insert(
        "bert.encoder.layer.0.attention.self.query".to_string(),
        module(4, 16, 16, 1),
    );
    m.insert(
        "bert.encoder.layer.0.attention.self.value".to_string(),
        module(4, 16, 8, 2),
    );
    m.insert(
        "bert.encoder.layer.1.attention.self.query".to_string(),
        module(2, 16, 16, 3),
    );
    m.insert(
        "bert.encoder.layer.1.attention.self.value".to_string(),
        module(6, 16, 8, 4),
    );
    m
}

#[test]
fn write_then_read_gives_same_delta() {
    let tmp = TmpDir::new("write");
    let mods = modules();
    for (dtype, tol) in [(Dtype::F64, 0.0), (Dtype::F32, 1e-7)] {
        let dir = tmp.join(dtype.name());
        let opts = PeftWriteOptions {
            base_model: Some("tiny-bert".into()),
            fan_in_fan_out: false,
            dtype,
            pass_through: None,
        };
        peft::write(&dir, &mods, &opts).unwrap();
        let ad = Adapter::open(&dir).unwrap();
        assert_eq!(ad.base_model.as_deref(), Some("tiny-bert"));
        assert_eq!(ad.modules.len(), 4);
        assert!(ad.extras.is_empty());
        // Config: default rank = the most common one (4), the others in the patterns with alpha = r.
        assert_eq!(ad.config["r"], 4);
        assert_eq!(ad.config["lora_alpha"], 4);
        assert_eq!(
            ad.config["target_modules"],
            serde_json::json!(["query", "value"])
        );
        let rp = ad.config["rank_pattern"].as_object().unwrap();
        assert_eq!(rp.len(), 2);
        assert_eq!(rp[r"bert\.encoder\.layer\.1\.attention\.self\.query"], 2);
        assert_eq!(
            ad.config["alpha_pattern"][r"bert\.encoder\.layer\.1\.attention\.self\.value"],
            6
        );
        for (name, m) in &mods {
            let info = &ad.modules[name];
            assert_eq!(info.scale, 1.0, "{name}");
            assert_eq!(info.rank, m.rank());
            let back = ad.load_module(name).unwrap();
            let e = rel_err(&loaded_delta(&back), &loaded_delta(m));
            assert!(e <= tol, "{dtype:?} {name}: {e}");
            if dtype == Dtype::F64 {
                assert_eq!(back.a, m.a, "F64 round trip must be bitwise");
                assert_eq!(back.b, m.b);
            }
        }
    }
}

#[test]
fn padding_to_uniform_rank_keeps_every_delta() {
    let tmp = TmpDir::new("write-pad");
    let padded = peft::pad_to_uniform_rank(&modules());
    for (name, m) in &modules() {
        let p = &padded[name];
        assert_eq!((p.rank(), p.b.ncols()), (6, 6), "{name}");
        assert_eq!(
            loaded_delta(p),
            loaded_delta(m),
            "{name}: ΔW must be identical"
        );
    }
    let dir = tmp.join("padded");
    peft::write(
        &dir,
        &padded,
        &PeftWriteOptions {
            dtype: Dtype::F64,
            ..Default::default()
        },
    )
    .unwrap();
    let ad = Adapter::open(&dir).unwrap();
    assert_eq!(ad.config["r"], 6);
    assert_eq!(ad.config["rank_pattern"], serde_json::json!({}));
    for (name, m) in &modules() {
        assert_eq!(
            loaded_delta(&ad.load_module(name).unwrap()),
            loaded_delta(m),
            "{name}"
        );
    }
}

#[test]
fn uniform_ranks_write_no_patterns_and_flags_survive() {
    let tmp = TmpDir::new("write-uniform");
    let mut mods = BTreeMap::new();
    mods.insert("h.0.attn.c_attn".to_string(), module(3, 8, 24, 5));
    mods.insert("h.1.attn.c_attn".to_string(), module(3, 8, 24, 6));
    mods.insert("h.1.attn.to_out.0".to_string(), module(3, 8, 8, 7));
    let dir = tmp.join("gpt2");
    let opts = PeftWriteOptions {
        base_model: None,
        fan_in_fan_out: true,
        dtype: Dtype::BF16,
        pass_through: None,
    };
    peft::write(&dir, &mods, &opts).unwrap();
    let ad = Adapter::open(&dir).unwrap();
    assert!(ad.fan_in_fan_out);
    assert_eq!(ad.config["rank_pattern"], serde_json::json!({}));
    // A bare index leaf keeps its parent, so it selects only `to_out.0` children.
    assert_eq!(
        ad.config["target_modules"],
        serde_json::json!(["c_attn", "to_out.0"])
    );
    assert_eq!(ad.base_model, None);
    let back = ad.load_module("h.1.attn.c_attn").unwrap();
    let want = &mods["h.1.attn.c_attn"];
    for i in 0..3 {
        for j in 0..8 {
            assert_eq!(
                back.a[(i, j)],
                half::bf16::from_f64(want.a[(i, j)]).to_f64()
            );
        }
    }
    // Bad requests are refused without leaving files behind.
    let bad = tmp.join("bad");
    let opts = PeftWriteOptions {
        dtype: Dtype::I8,
        ..Default::default()
    };
    assert!(peft::write(&bad, &mods, &opts).is_err());
    let mut broken = BTreeMap::new();
    broken.insert(
        "x".to_string(),
        LoraModule {
            a: faer::Mat::zeros(2, 4),
            b: faer::Mat::zeros(4, 3),
        },
    );
    assert!(peft::write(&bad, &broken, &PeftWriteOptions::default()).is_err());
    assert!(!bad.join("adapter_config.json").exists());
}

/// Writes a folder for `tools/check_peft_load.py` (PEFT itself loading our output). Run with
/// `ELX_PEFT_FIXTURE_DIR=/tmp/x cargo test --test adapter_write -- --ignored`; it checks its own
/// read-back, the Python script checks PEFT's.
#[test]
#[ignore]
fn write_fixture_for_peft_check() {
    let Some(dir) = std::env::var_os("ELX_PEFT_FIXTURE_DIR") else {
        panic!("set ELX_PEFT_FIXTURE_DIR");
    };
    let dir = std::path::PathBuf::from(dir);
    // Tiny BERT (hidden 16, 2 layers): ranks 4, 4, 2, 6 so rank_pattern is exercised.
    let mut mods = BTreeMap::new();
    for (i, (name, r)) in [
        ("bert.encoder.layer.0.attention.self.query", 4),
        ("bert.encoder.layer.0.attention.self.value", 4),
        ("bert.encoder.layer.1.attention.self.query", 2),
        ("bert.encoder.layer.1.attention.self.value", 6),
    ]
    .into_iter()
    .enumerate()
    {
        mods.insert(name.to_string(), module(r, 16, 16, 100 + i as u64));
    }
    peft::write(&dir, &mods, &PeftWriteOptions::default()).unwrap();
    let ad = Adapter::open(&dir).unwrap();
    for (name, m) in &mods {
        let e = rel_err(
            &loaded_delta(&ad.load_module(name).unwrap()),
            &loaded_delta(m),
        );
        assert!(e <= 1e-7, "{name}: {e}");
    }
}
