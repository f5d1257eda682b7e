//! Adapters in the wild (issue 28), end to end: mixed base models refused by `extract` and
//! `inspect --held-out` (and accepted with --allow-mixed-bases), `project` of an adapter for
//! another base refused, `inspect DIR` describing an adapter, and zero-ΔW adapters warned
//! about by `extract`.

use crate::support::adapter_fixtures::{Dense, Pair, TmpDir, write_peft};
use eigenlorax::tensorfile::Dtype;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs elx; (exit code, stdout, stderr).
fn elx(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A PEFT folder on `base` with modules (name, in, out) of rank 2; `zero_b` writes B = 0.
fn peft(
    tmp: &TmpDir,
    tag: &str,
    base: &str,
    modules: &[(&str, usize, usize)],
    seed: u64,
    zero_b: bool,
) -> PathBuf {
    let dir = tmp.sub(tag);
    let mut t = Vec::new();
    for (i, (name, inp, out)) in modules.iter().enumerate() {
        let p = Pair::random(2, *inp, *out, seed * 100 + i as u64, Dtype::F32);
        let b = if zero_b {
            Dense {
                rows: *out,
                cols: 2,
                v: vec![0.0; out * 2],
            }
        } else {
            p.b
        };
        t.push(p.a.tensor(
            &format!("base_model.model.{name}.lora_A.weight"),
            Dtype::F32,
        ));
        t.push(b.tensor(
            &format!("base_model.model.{name}.lora_B.weight"),
            Dtype::F32,
        ));
    }
    let cfg =
        json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "base_model_name_or_path": base});
    write_peft(&dir, &cfg, t);
    dir
}

const GPT2: [(&str, usize, usize); 2] = [
    ("transformer.h.0.attn.c_attn", 16, 48),
    ("transformer.h.1.attn.c_attn", 16, 48),
];
const BERT: [(&str, usize, usize); 1] =
    [("distilbert.transformer.layer.0.attention.q_lin", 16, 16)];

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn mixed_bases_are_refused_by_extract_and_held_out_unless_allowed() {
    let tmp = TmpDir::new("cli-mixed");
    let g0 = s(&peft(&tmp, "g0", "gpt2", &GPT2, 1, false));
    let g1 = s(&peft(&tmp, "g1", "gpt2", &GPT2, 2, false));
    let d0 = s(&peft(
        &tmp,
        "d0",
        "distilbert-base-uncased",
        &BERT,
        3,
        false,
    ));
    let out = s(&tmp.join("mixed.elxb"));
    let (code, _, err) = elx(&["extract", &g0, &g1, &d0, "-o", &out, "--k", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("expected adapters of one base model, found 2 groups"),
        "{err}"
    );
    assert!(
        err.contains(&format!("base `gpt2` (2 adapters: {g0}, {g1}; 2 modules")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "base `distilbert-base-uncased` (1 adapter: {d0}; 1 module"
        )),
        "{err}"
    );
    assert!(err.contains("--allow-mixed-bases"), "{err}");
    assert!(!Path::new(&out).exists());

    let (code, stdout, err) = elx(&[
        "extract",
        &g0,
        &g1,
        &d0,
        "-o",
        &out,
        "--k",
        "2",
        "--allow-mixed-bases",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: --allow-mixed-bases: 2 base models in one subspace"),
        "{err}"
    );
    assert!(stdout.contains("3 modules from 3 adapters"), "{stdout}");
    let (code, stdout, err) = elx(&["inspect", &out]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("base:         base models `gpt2`, `distilbert-base-uncased` (mixed) (fingerprint shapes-"),
        "{stdout}"
    );

    // A mixed bundle's modules do not all bind to one model; the error names its bases.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/tiny-bert/model.onnx");
    let (code, _, err) = elx(&[
        "bind",
        &out,
        "--base",
        &s(&model),
        "-o",
        &s(&tmp.join("bound.elxb")),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("(the bundle is for base models `gpt2`, `distilbert-base-uncased` (mixed) (fingerprint shapes-"),
        "{err}"
    );
    assert!(err.contains("3 of 3 unresolved"), "{err}");

    // The same mix as a pool for --held-out.
    let (code, _, err) = elx(&["inspect", &out, "--adapters", &g0, &g1, &d0, "--held-out"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("expected adapters of one base model, found 2 groups"),
        "{err}"
    );
}

#[test]
fn project_refuses_an_adapter_for_another_base() {
    let tmp = TmpDir::new("cli-project-base");
    let g0 = s(&peft(&tmp, "g0", "gpt2", &GPT2, 1, false));
    let g1 = s(&peft(&tmp, "g1", "gpt2", &GPT2, 2, false));
    let bundle = s(&tmp.join("b.elxb"));
    let (code, _, err) = elx(&["extract", &g0, &g1, "-o", &bundle, "--k", "2"]);
    assert_eq!(code, 0, "{err}");
    // Same module names and shapes, another declared base: refused, both named.
    let medium = s(&peft(&tmp, "m", "gpt2-medium", &GPT2, 4, false));
    let out = s(&tmp.join("m.elxc"));
    let (code, _, err) = elx(&["project", &medium, "--bundle", &bundle, "-o", &out]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{medium}/adapter_config.json")),
        "{err}"
    );
    assert!(err.contains("tensor `base_model_name_or_path`"), "{err}");
    assert!(
        err.contains("expected an adapter for base model `gpt2` (fingerprint shapes-"),
        "{err}"
    );
    assert!(
        err.contains(
            "found one for `gpt2-medium`: project it into a bundle extracted from adapters of its own base model"
        ),
        "{err}"
    );
    // Same declared base, a module at another shape: refused naming the tensor and the base.
    let wide = s(&peft(
        &tmp,
        "w",
        "gpt2",
        &[("transformer.h.0.attn.c_attn", 32, 96)],
        5,
        false,
    ));
    let (code, _, err) = elx(&["project", &wide, "--bundle", &bundle, "-o", &out]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"),
        "{err}"
    );
    assert!(err.contains("expected a module with in=16 out=48"), "{err}");
    assert!(err.contains("(fingerprint shapes-"), "{err}");
    assert!(err.contains(")), found in=32 out=96"), "{err}");
    assert!(
        err.contains("found in=32 out=96 (an adapter for another base model?)"),
        "{err}"
    );
    // Bound to a model of another base (tiny BERT): refused, naming the bundle's base.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/tiny-bert/model.onnx");
    let (code, _, err) = elx(&[
        "bind",
        &bundle,
        "--base",
        &s(&model),
        "-o",
        &s(&tmp.join("bound.elxb")),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("(the bundle is for base model `gpt2` (fingerprint shapes-"),
        "{err}"
    );
    assert!(err.contains("2 of 2 unresolved"), "{err}");
    // A third adapter of the base projects.
    let g2 = s(&peft(&tmp, "g2", "gpt2/", &GPT2, 6, false));
    let (code, _, err) = elx(&["project", &g2, "--bundle", &bundle, "-o", &out]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn inspect_describes_an_adapter_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/adapter_peft_tiny_gpt2");
    let (code, out, err) = elx(&["inspect", &s(&dir)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("adapter:      {} (peft)", dir.display())),
        "{out}"
    );
    assert!(out.contains("fan_in_fan_out true"), "{out}");
    assert!(
        out.contains("base model:   - (fingerprint shapes-"),
        "{out}"
    );
    assert!(out.contains("transformer.h.0.attn.c_attn"), "{out}");
    // A head LoRA fixture carries non-LoRA tensors: listed with their bytes.
    let head = root.join("tests/fixtures/adapter_peft_head_lora");
    let (code, out, err) = elx(&["inspect", &s(&head)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("task_type SEQ_CLS"), "{out}");
    assert!(out.contains("non-LoRA tensors"), "{out}");
    assert!(
        out.contains("classifier.original_module.lora_A.weight"),
        "{out}"
    );
    // Flags for bundles are refused for an adapter.
    let (code, _, err) = elx(&["inspect", &s(&dir), "--adapters", &s(&dir)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("apply to bundles (.elxb), not adapters"),
        "{err}"
    );
}

#[test]
fn extract_and_inspect_warn_about_a_zero_delta_w() {
    let tmp = TmpDir::new("cli-zero");
    let g0 = s(&peft(&tmp, "g0", "gpt2", &GPT2, 1, false));
    let z = s(&peft(&tmp, "z", "gpt2", &GPT2, 2, true));
    let out = s(&tmp.join("b.elxb"));
    let (code, _, err) = elx(&["extract", &g0, &z, "-o", &out, "--k", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: {z}: every ΔW is zero (an untrained adapter, B = 0?): it adds nothing to the subspace"
        )),
        "{err}"
    );
    assert!(!err.contains(&format!("{g0}: every")), "{err}");
    let (code, out, err) = elx(&["inspect", &z]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0.000e0"), "{out}");
    assert!(err.contains("every ΔW is zero"), "{err}");
}
