//! Token ids outside the vocabulary are named errors in `elx run` and `elx finetune`.

use super::{bound_tiny_bert, elx, fixture, named_error, p, write_npy_i64};
use crate::support::bundle::temp_dir;
use std::path::{Path, PathBuf};

#[test]
fn token_ids_outside_the_vocabulary_are_named_errors_in_run_and_finetune() {
    let dir = temp_dir("cli-vocab");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let run = |input: &Path| {
        vec![
            p("run").to_path_buf(),
            p("--model").to_path_buf(),
            model.clone(),
            p("--bundle").to_path_buf(),
            bound.clone(),
            p("--input").to_path_buf(),
            input.to_path_buf(),
        ]
    };
    // elx run --input ids.npy: the id one past the vocabulary (200 token embeddings), a
    // negative id (used to wrap silently), and the vocabulary's last id, which runs.
    for (ids, want) in [
        ([1, 5, 200, 2], "id 200 at [0, 2]"),
        ([1, -3, 7, 2], "id -3 at [0, 1]"),
    ] {
        let npy = dir.join("ids.npy");
        write_npy_i64(&npy, &[1, 4], &ids);
        let args = run(&npy);
        let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
        named_error(&args, &["`input_ids`", want, "< 200"]);
    }
    let npy = dir.join("ok.npy");
    write_npy_i64(&npy, &[1, 4], &[1, 5, 199, 2]);
    let args = run(&npy);
    let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    let o = elx(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A tokenizer bigger than the model's vocabulary.
    let mut tok: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_support/tokenizer.json"),
        )
        .expect("tokenizer"),
    )
    .expect("json");
    tok["model"]["vocab"]["elxbig"] = serde_json::json!(250);
    let big = dir.join("big-tokenizer.json");
    std::fs::write(&big, serde_json::to_vec(&tok).expect("json")).expect("write");
    named_error(
        &[
            p("run"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--tokenizer"),
            &big,
            p("--text"),
            p("hello elxbig"),
        ],
        &["`input_ids`", "id 250", "< 200"],
    );

    // elx finetune: an id in the JSONL, and a padding id outside the vocabulary.
    let lines = |bad: i64| -> String {
        (0..8)
            .map(|i| {
                let ids: Vec<i64> = if i % 2 == 0 {
                    vec![2, 10 + i, bad, 3]
                } else {
                    vec![2, 11, 3]
                };
                format!("{{\"input_ids\": {ids:?}, \"label\": {}}}\n", i % 2)
            })
            .collect()
    };
    let (train, out) = (dir.join("train.jsonl"), dir.join("t.elxc"));
    let finetune = |extra: &[&str]| -> Vec<PathBuf> {
        let mut a: Vec<PathBuf> = ["finetune", "--model"].map(PathBuf::from).to_vec();
        a.extend([
            model.clone(),
            "--bundle".into(),
            bound.clone(),
            "--train".into(),
        ]);
        a.push(train.clone());
        a.extend(["--steps", "2", "--batch-size", "4", "-o"].map(PathBuf::from));
        a.push(out.clone());
        a.extend(extra.iter().map(PathBuf::from));
        a
    };
    // The first line holds the bad id at position 2; the padding id is named as such.
    for (bad, extra, want, which) in [
        (
            300,
            &[][..],
            "id 300 at [2]",
            "train.jsonl: example 1 (line 1):",
        ),
        (12, &["--pad-id", "999999"][..], "id 999999", "--pad-id"),
    ] {
        std::fs::write(&train, lines(bad)).expect("train");
        let a = finetune(extra);
        let a: Vec<&Path> = a.iter().map(PathBuf::as_path).collect();
        named_error(&a, &["`input_ids`", want, which, "< 200"]);
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
