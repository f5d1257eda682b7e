//! `elx leave-one-out-report`: runs split by task and size merge back into one report, the
//! few-shot clauses are counted against the random basis and the host LoRA, and runs that
//! cannot be merged are refused by name.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn elx(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn row(method: &str, n: usize, rouge_l: f64, nll: f64, curve: &[(u64, f64)]) -> Value {
    let curve: Vec<Value> = curve
        .iter()
        .enumerate()
        // serde_json writes the step-0 training loss (NaN) as null: the reader must take it.
        .map(|(i, &(step, v))| json!({"step": step, "val_nll": v, "train_loss": if i == 0 { Value::Null } else { json!(0.5) }}))
        .collect();
    json!({
        "method": method, "train_examples": n, "parameters": 100, "file_bytes": 1000,
        "rouge_l": rouge_l, "exact_match": rouge_l, "nll": nll, "train_seconds": 1.0,
        "score_seconds": 1.0, "curve": curve, "best_step": 0, "fixed_k": null,
    })
}

/// A task's fixed rows (base 0.0 / 4.0, own LoRA 0.5 / 1.0) and the given trained rows.
fn task(name: &str, trained: Vec<Value>) -> Value {
    let mut rows = vec![
        row("base", 0, 0.0, 4.0, &[]),
        row("own_lora", 0, 0.5, 1.0, &[]),
        row("projected", 0, 0.25, 2.0, &[]),
    ];
    rows.extend(trained);
    json!({
        "task": name, "sources": 29, "k_a": 10, "k_b": 8, "captured": 0.2,
        "random_captured": 0.05, "mean_only_captured": 0.0, "k_sweep": [], "rows": rows,
        "seconds": 10.0,
    })
}

fn results(dir: &Path, name: &str, tasks: Vec<Value>, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let file = json!({
        "tasks": tasks, "min_gap": 0.1, "energy": 0.9, "seed": seed, "lr": 0.004,
        "in_context": 3, "k_sweep": [],
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    path
}

fn host(dir: &Path, task: &str, n: u64, curve: &[(u64, f64)]) {
    std::fs::create_dir_all(dir.join(task)).unwrap();
    let m = json!({"recipe": {"train_n": n}, "val_curve": curve});
    std::fs::write(dir.join(task).join("metrics.json"), m.to_string()).unwrap();
}

#[test]
fn runs_split_by_task_and_size_merge_into_one_report() {
    let dir = crate::support::bundle::temp_dir("loo-report");
    // Task a at 16 pairs in one run and at 64 in another; task b at 64 alone.
    let a16 = results(
        &dir,
        "a16.json",
        vec![task(
            "a",
            vec![
                row("finetuned", 16, 0.3, 1.8, &[(0, 4.0), (2, 2.0), (4, 1.5)]),
                row(
                    "random_basis",
                    16,
                    0.2,
                    1.9,
                    &[(0, 4.0), (2, 2.4), (4, 1.7)],
                ),
            ],
        )],
        0,
    );
    let a64 = results(
        &dir,
        "a64.json",
        vec![task(
            "a",
            vec![
                row("finetuned", 64, 0.4, 1.6, &[(0, 4.0), (8, 1.3), (16, 1.2)]),
                row("random_basis", 64, 0.3, 1.5, &[(0, 4.0), (8, 1.4)]),
            ],
        )],
        0,
    );
    let b64 = results(
        &dir,
        "b64.json",
        vec![task(
            "b",
            vec![
                row("finetuned", 64, 0.35, 1.4, &[(0, 4.0), (8, 1.6), (16, 1.1)]),
                row("random_basis", 64, 0.3, 1.7, &[(0, 4.0), (8, 1.5)]),
            ],
        )],
        0,
    );
    let hosts = dir.join("host64");
    // a's LoRA: lowest 1.25 at step 16; recycled is at 1.2 by step 16: not sooner.
    host(&hosts, "a", 64, &[(0, 4.0), (8, 1.35), (16, 1.25)]);
    // b's LoRA: lowest 1.3 at step 24; recycled is at 1.1 by step 16: sooner.
    host(&hosts, "b", 64, &[(0, 4.0), (8, 1.7), (16, 1.4), (24, 1.3)]);
    let out = dir.join("out");
    let (ok, stdout, stderr) = elx(&[
        "leave-one-out-report",
        a16.to_str().unwrap(),
        a64.to_str().unwrap(),
        b64.to_str().unwrap(),
        "--host-curves",
        hosts.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // 16 pairs: a beats random (1.8 < 1.9), no host curve at 16.
    assert!(
        stdout.contains(
            "16 pairs: recycled beats the random basis on test NLL on 1 of 1 tasks; reaches the \
             host LoRA's lowest validation NLL in fewer steps on - (no host LoRA curves)"
        ),
        "{stdout}"
    );
    // 64 pairs: b beats random (1.4 < 1.7), a does not (1.6 > 1.5); b reaches its LoRA sooner.
    assert!(
        stdout.contains(
            "64 pairs: recycled beats the random basis on test NLL on 1 of 2 tasks; reaches the \
             host LoRA's lowest validation NLL in fewer steps on 1 of 2"
        ),
        "{stdout}"
    );
    // The zero-shot share: (4.0 - 2.0) / (4.0 - 1.0) of the NLL gap, half the Rouge-L gap.
    assert!(
        stdout.contains("50.0%") && stdout.contains("66.7%"),
        "{stdout}"
    );
    for f in ["curves-a.svg", "curves-b.svg", "curves-mean.svg"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.contains("<svg") && text.contains("LoRA (host)"), "{f}");
    }
    let merged: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let tasks = merged["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let sizes: Vec<(String, u64)> = tasks[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["train_examples"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("base", 0),
        ("own_lora", 0),
        ("projected", 0),
        ("finetuned", 16),
        ("finetuned", 64),
        ("random_basis", 16),
        ("random_basis", 64),
    ];
    assert_eq!(
        sizes,
        expected
            .iter()
            .map(|&(m, n)| (m.to_string(), n))
            .collect::<Vec<_>>()
    );
    // The step-0 training loss stays null (NaN) through the merge.
    assert!(tasks[0]["rows"][3]["curve"][0]["train_loss"].is_null());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_that_cannot_be_merged_are_refused_by_name() {
    let dir = crate::support::bundle::temp_dir("loo-report-bad");
    let trained = || {
        vec![
            row("finetuned", 16, 0.3, 1.8, &[(0, 4.0), (2, 2.0)]),
            row("random_basis", 16, 0.2, 1.9, &[(0, 4.0), (2, 2.4)]),
        ]
    };
    let good = results(&dir, "good.json", vec![task("a", trained())], 0);
    let other_seed = results(&dir, "seed1.json", vec![task("a", vec![])], 1);
    let mut changed = task("a", vec![]);
    changed["rows"][0]["nll"] = json!(3.5);
    let changed = results(&dir, "changed.json", vec![changed], 0);
    let not_results = dir.join("metrics.json");
    std::fs::write(&not_results, "{\"val_curve\": []}").unwrap();
    let bad_host = dir.join("host");
    std::fs::create_dir_all(bad_host.join("a")).unwrap();
    std::fs::write(
        bad_host.join("a").join("metrics.json"),
        "{\"recipe\": {}, \"val_curve\": [[0, 4.0]]}",
    )
    .unwrap();
    let out = dir.join("out");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    for (args, expected) in [
        (
            vec![p(&good), p(&other_seed)],
            vec!["seed1.json", "settings of"],
        ),
        (
            vec![p(&good), p(&changed)],
            vec!["changed.json", "base model", "differs"],
        ),
        (
            vec![p(&not_results)],
            vec!["metrics.json", "results.json of `elx leave-one-out`"],
        ),
        (
            vec![p(&good), "--host-curves".into(), p(&bad_host)],
            vec!["metrics.json", "recipe.train_n"],
        ),
    ] {
        let mut argv = vec!["leave-one-out-report".to_string()];
        argv.extend(args);
        argv.extend(["-o".to_string(), p(&out)]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (ok, _, stderr) = elx(&argv);
        assert!(!ok, "{argv:?} succeeded");
        for e in expected {
            assert!(stderr.contains(e), "{argv:?}: expected `{e}` in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
