//! A faithful PEFT round trip (issue 28): `elx extract` (the adapter alone, every direction
//! kept, so the projection is exact), `elx project`, `elx reconstruct`, then the independent
//! numpy check `tools/check_peft_roundtrip.py` (the reader of tools/elx_reference.py with
//! PEFT's scaling rules): the rebuilt folder has the source's task_type, fan_in_fan_out,
//! modules_to_save and target_modules, every non-LoRA tensor byte for byte, and applies the
//! same update to every layer. Needs python3 with numpy and safetensors (fails, never
//! skips, without them; CI sets PYTHONPATH=.cache/py).

use crate::support::bundle::temp_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn elx(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "elx {args:?}:\n{out}\n{err}");
    out + &err
}

fn python() -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&py)
        .args(["-c", "import numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{py}` with numpy and safetensors is required for the numpy reference: \
         pip install numpy safetensors (or set PYTHON / PYTHONPATH)"
    );
    py
}

/// Round trip of fixture `name`; returns (project + reconstruct output, reference JSON).
fn round_trip(name: &str, dir: &Path) -> (String, serde_json::Value) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures").join(name);
    let s = |p: &Path| p.display().to_string();
    let bundle = dir.join(format!("{name}.elxb"));
    let coeffs = dir.join(format!("{name}.elxc"));
    let rebuilt = dir.join(format!("{name}-rebuilt"));
    let extract = elx(&["extract", &s(&src), "-o", &s(&bundle), "--energy", "1.0"]);
    let mut printed = elx(&[
        "project",
        &s(&src),
        "--bundle",
        &s(&bundle),
        "-o",
        &s(&coeffs),
    ]);
    printed += &elx(&[
        "reconstruct",
        &s(&coeffs),
        "--bundle",
        &s(&bundle),
        "-o",
        &s(&rebuilt),
    ]);
    let o = Command::new(python())
        .arg(root.join("tools/check_peft_roundtrip.py"))
        .args([&src, &rebuilt])
        .output()
        .expect("python runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{name}: the numpy reference found differences:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        extract + &printed,
        serde_json::from_str(out.trim()).expect("one JSON line"),
    )
}

#[test]
fn classifier_head_and_modules_to_save_come_back() {
    let dir = temp_dir("cli-peft-rt-head");
    let (printed, r) = round_trip("adapter_peft_tiny", &dir);
    // extract says the head is not in the subspace; project and reconstruct count its bytes.
    assert!(
        printed.contains("2 non-LoRA tensors (204 B: base_model.model.classifier.bias, base_model.model.classifier.weight) are not part of the subspace"),
        "{printed}"
    );
    assert!(
        printed.contains("carried for reconstruct: 2 non-LoRA tensors, 204 B: base_model.model.classifier.bias [3] (12 B), base_model.model.classifier.weight [3, 16] (192 B)"),
        "{printed}"
    );
    assert!(
        printed.contains("wrote back from the source adapter: 2 non-LoRA tensors (204 B), task_type -, fan_in_fan_out false, modules_to_save [\"classifier\"]"),
        "{printed}"
    );
    assert_eq!(r["extras"], 2);
    assert_eq!(r["extra_bytes"], 204);
    assert_eq!(r["modules"], 11);
    assert!(r["max_rel_update_err"].as_f64().unwrap() < 1e-6, "{r}");
    assert_eq!(
        r["fields"]["modules_to_save"],
        serde_json::json!(["classifier"])
    );
    assert_eq!(
        r["fields"]["target_modules"],
        serde_json::json!(["value", "query", "dense"])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fan_in_fan_out_and_task_type_come_back() {
    let dir = temp_dir("cli-peft-rt-gpt2");
    let (printed, r) = round_trip("adapter_peft_tiny_gpt2", &dir);
    assert!(printed.contains("fan_in_fan_out true"), "{printed}");
    assert_eq!(r["fields"]["fan_in_fan_out"], true);
    assert_eq!(r["modules"], 6);
    assert!(r["max_rel_output_err"].as_f64().unwrap() < 1e-6, "{r}");
    // A SEQ_CLS adapter with LoRA on its head (PEFT 0.10 layout): task_type and the six
    // non-LoRA tensors (the head's base layer, the unapplied LoRA copies) come back.
    let (printed, r) = round_trip("adapter_peft_head_lora", &dir);
    assert!(printed.contains("task_type SEQ_CLS"), "{printed}");
    assert_eq!(r["fields"]["task_type"], "SEQ_CLS");
    assert_eq!(
        (r["extras"].as_u64(), r["extra_bytes"].as_u64()),
        (Some(6), Some(812))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
