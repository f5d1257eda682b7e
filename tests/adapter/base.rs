//! Base-model identity (issue 28): adapters grouped by `base_model_name_or_path`, module names
//! and shapes; a mix refused with every group named; a PEFT weights file without its config
//! refused with the fix spelled out.

use crate::support::adapter_fixtures as fixtures;

use eigenlorax::adapter::Adapter;
use eigenlorax::adapter::base::{fingerprint, group_by_base, refuse_mixed};
use eigenlorax::tensorfile::{self, Dtype};
use fixtures::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A PEFT folder on base `base` (None: no name) with modules (name, in, out), rank 2.
fn peft(tmp: &TmpDir, tag: &str, base: Option<&str>, modules: &[(&str, usize, usize)]) -> PathBuf {
    let dir = tmp.sub(tag);
    let mut t = Vec::new();
    for (i, (name, inp, out)) in modules.iter().enumerate() {
        let p = Pair::random(2, *inp, *out, 10 + i as u64, Dtype::F32);
        t.push(p.a.tensor(
            &format!("base_model.model.{name}.lora_A.weight"),
            Dtype::F32,
        ));
        t.push(p.b.tensor(
            &format!("base_model.model.{name}.lora_B.weight"),
            Dtype::F32,
        ));
    }
    let cfg =
        json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": base});
    write_peft(&dir, &cfg, t);
    dir
}

/// A kohya file (no base name) with modules (name, in, out).
fn kohya(tmp: &TmpDir, tag: &str, modules: &[(&str, usize, usize)]) -> PathBuf {
    let path = tmp.join(&format!("{tag}.safetensors"));
    let mut t = Vec::new();
    for (i, (name, inp, out)) in modules.iter().enumerate() {
        let p = Pair::random(2, *inp, *out, 20 + i as u64, Dtype::F32);
        t.push(p.a.tensor(&format!("{name}.lora_down.weight"), Dtype::F32));
        t.push(p.b.tensor(&format!("{name}.lora_up.weight"), Dtype::F32));
    }
    tensorfile::write(&path, t, BTreeMap::new()).unwrap();
    path
}

const GPT2: [(&str, usize, usize); 2] = [
    ("transformer.h.0.attn.c_attn", 16, 48),
    ("transformer.h.1.attn.c_attn", 16, 48),
];
const BERT: [(&str, usize, usize); 2] = [
    ("distilbert.transformer.layer.0.attention.q_lin", 16, 16),
    ("distilbert.transformer.layer.0.attention.v_lin", 16, 16),
];

fn open(paths: &[&PathBuf]) -> Vec<Adapter> {
    paths.iter().map(|p| Adapter::open(p).unwrap()).collect()
}

#[test]
fn one_base_is_one_group_and_a_mix_is_refused_naming_both_groups() {
    let tmp = TmpDir::new("base-groups");
    let g1 = peft(&tmp, "g1", Some("gpt2"), &GPT2);
    // Trailing slash and spaces are the same name; a subset of the modules is the same base.
    let g2 = peft(&tmp, "g2", Some(" gpt2/"), &GPT2[..1]);
    let d1 = peft(&tmp, "d1", Some("distilbert-base-uncased"), &BERT);
    let same = group_by_base(&open(&[&g1, &g2]));
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(same[0].name.as_deref(), Some("gpt2"));
    assert_eq!(same[0].members, [0, 1]);
    assert!(refuse_mixed(&open(&[&g1, &g2]), "--allow-mixed-bases").is_ok());

    let mixed = open(&[&g1, &d1, &g2]);
    let groups = group_by_base(&mixed);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].members, [0, 2]);
    assert_eq!(groups[1].members, [1]);
    let err = refuse_mixed(&mixed, "--allow-mixed-bases")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected adapters of one base model, found 2 groups"),
        "{err}"
    );
    assert!(err.contains("base `gpt2` (2 adapters:"), "{err}");
    assert!(err.contains(&g1.display().to_string()), "{err}");
    assert!(
        err.contains("base `distilbert-base-uncased` (1 adapter:"),
        "{err}"
    );
    assert!(
        err.contains("`transformer.h.0.attn.c_attn` 16 -> 48"),
        "{err}"
    );
    assert!(err.contains("pass --allow-mixed-bases"), "{err}");
    // GPT-2 and DistilBERT share no module: no hint that the names might be one model.
    assert!(!err.contains("agree in name and shape"), "{err}");
    // Two names of one model: modules agree wherever they meet, and the message says so.
    let alias = peft(&tmp, "alias", Some("openai-community/gpt2"), &GPT2);
    let err = refuse_mixed(&open(&[&g1, &alias]), "--allow-mixed-bases")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(their modules agree in name and shape wherever they meet: if these names are one model, pass --allow-mixed-bases)"),
        "{err}"
    );
}

#[test]
fn unnamed_adapters_join_the_base_their_module_shapes_fit() {
    let tmp = TmpDir::new("base-unnamed");
    let g1 = peft(&tmp, "g1", Some("gpt2"), &GPT2);
    // kohya file with a GPT-2 module at GPT-2's shape: joins gpt2.
    let k_fit = kohya(&tmp, "kfit", &GPT2[1..]);
    // An unnamed PEFT adapter with the same module name at another shape: another base.
    let other = peft(
        &tmp,
        "other",
        None,
        &[("transformer.h.0.attn.c_attn", 32, 96)],
    );
    // A kohya file sharing no module with anyone: its own group.
    let alone = kohya(&tmp, "alone", &[("lora_unet_mid_block_proj_in", 8, 8)]);
    let groups = group_by_base(&open(&[&g1, &k_fit, &other, &alone]));
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(groups[0].members, [0, 1]);
    assert_eq!(groups[1].members, [2]);
    assert_eq!(groups[1].name, None);
    assert_eq!(groups[2].members, [3]);
    let err = refuse_mixed(&open(&[&g1, &other]), "--allow-mixed-bases")
        .unwrap_err()
        .to_string();
    assert!(err.contains("an unnamed base (1 adapter:"), "{err}");
    assert!(
        err.contains("`transformer.h.0.attn.c_attn` 32 -> 96"),
        "{err}"
    );
    // Two unnamed adapters bridged by a third are one base.
    let a = kohya(&tmp, "a", &[("m1", 4, 4)]);
    let b = kohya(&tmp, "b", &[("m2", 4, 4)]);
    let ab = kohya(&tmp, "ab", &[("m1", 4, 4), ("m2", 4, 4)]);
    let groups = group_by_base(&open(&[&a, &b, &ab]));
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].members, [0, 1, 2]);
}

#[test]
fn the_fingerprint_hashes_module_shapes_in_any_order() {
    let f = fingerprint([("a", 1, 2), ("b", 3, 4)]);
    assert_eq!(f, fingerprint([("b", 3, 4), ("a", 1, 2)]));
    assert_ne!(f, fingerprint([("a", 1, 2), ("b", 3, 5)]));
    assert_ne!(f, fingerprint([("a", 1, 2)]));
    assert!(
        f.starts_with("shapes-") && f.len() == "shapes-".len() + 16,
        "{f}"
    );
    let tmp = TmpDir::new("base-fp");
    let g = Adapter::open(&peft(&tmp, "g", Some("gpt2"), &GPT2)).unwrap();
    assert_eq!(
        g.fingerprint(),
        fingerprint([
            ("transformer.h.0.attn.c_attn", 16, 48),
            ("transformer.h.1.attn.c_attn", 16, 48)
        ])
    );
}

#[test]
fn a_peft_weights_file_without_its_config_is_refused_with_the_fix() {
    let tmp = TmpDir::new("base-bare-peft");
    let dir = peft(&tmp, "g", Some("gpt2"), &GPT2);
    // With its config beside it, the file reads as its PEFT folder (scale 4 / 2 = 2).
    let named = Adapter::open(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(named.format, eigenlorax::adapter::AdapterFormat::Peft);
    assert_eq!(named.modules["transformer.h.0.attn.c_attn"].scale, 2.0);
    // Copied away from it, it is refused, not read as kohya with the prefix kept.
    let bare_dir = tmp.sub("bare");
    let bare = bare_dir.join("adapter_model.safetensors");
    std::fs::copy(dir.join("adapter_model.safetensors"), &bare).unwrap();
    let err = err_msg(Adapter::open(&bare));
    assert!(
        err.contains("found PEFT keys (`base_model.model.` prefix)"),
        "{err}"
    );
    assert!(
        err.contains("no adapter_config.json beside the file"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pass the folder (`{}`)", bare_dir.display())),
        "{err}"
    );
    assert!(
        err.contains("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"),
        "{err}"
    );
}

#[test]
fn delta_norms_see_an_untrained_adapter() {
    let tmp = TmpDir::new("base-zero");
    let dir = tmp.sub("zero");
    let p = Pair::random(2, 16, 48, 1, Dtype::F32);
    let zero_b = Dense {
        rows: 48,
        cols: 2,
        v: vec![0.0; 96],
    };
    let t = vec![
        p.a.tensor("base_model.model.h.0.c_attn.lora_A.weight", Dtype::F32),
        zero_b.tensor("base_model.model.h.0.c_attn.lora_B.weight", Dtype::F32),
        p.a.tensor("base_model.model.h.1.c_attn.lora_A.weight", Dtype::F32),
        p.b.tensor("base_model.model.h.1.c_attn.lora_B.weight", Dtype::F32),
    ];
    write_peft(
        &dir,
        &json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2}),
        t,
    );
    let ad = Adapter::open(&dir).unwrap();
    let n = ad.delta_norms().unwrap();
    assert_eq!(n["h.0.c_attn"], 0.0);
    // ‖B·A‖_F against the reference product (scale 1).
    let want = p.delta(1.0).v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(
        (n["h.1.c_attn"] - want).abs() < 1e-9 * want,
        "{} vs {want}",
        n["h.1.c_attn"]
    );
    assert!(eigenlorax::subspace::is_zero_delta(
        &ad.load_module("h.0.c_attn").unwrap()
    ));
    assert!(!eigenlorax::subspace::is_zero_delta(
        &ad.load_module("h.1.c_attn").unwrap()
    ));
}
