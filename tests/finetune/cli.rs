//! `elx finetune` end to end on the tiny BERT: JSONL written from the task5 data fixture,
//! a bundle of task0..4; the `.elxc` it writes is served by `elx run`, whose predictions on
//! the validation rows reproduce the validation loss and accuracy the command reported.
//! Bad data (empty file, unknown validation label, too-long example) gets a clear error.
#![cfg(feature = "tract")]

use crate::support::tinybert as tinybert_support;

use eigenlorax::bundle::{CoeffFile, Provenance};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tinybert_support::{SEQ, fixture, rows as data, tmpdir, write_jsonl};

fn elx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("run elx")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The tiny-BERT bundle of task0..4, bound; its path.
fn bound_bundle(dir: &Path) -> PathBuf {
    tinybert_support::bound_bundle(dir);
    dir.join("bound.elxb")
}

/// The number after `key` in `s` (e.g. "loss 0.6931").
fn number_after(s: &str, key: &str) -> f64 {
    let at = s.find(key).unwrap_or_else(|| panic!("no {key:?} in {s}")) + key.len();
    s[at..]
        .trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {s}"))
}

#[test]
fn finetune_writes_a_task_that_elx_run_serves() {
    let dir = tmpdir("ft-cli");
    let bundle = bound_bundle(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let (train_rows, train_labels) = data(5, "train");
    let (test_rows, test_labels) = data(5, "test");
    let (val_rows, val_labels) = (&test_rows[..48], &test_labels[..48]);
    let train = dir.join("train.jsonl");
    let val = dir.join("val.jsonl");
    write_jsonl(&train, &train_rows, &train_labels);
    write_jsonl(&val, val_rows, val_labels);
    let out = dir.join("task5.elxc");
    let p = |x: &Path| x.to_str().expect("utf8").to_string();
    let (model_s, bundle_s, train_s, val_s, out_s) =
        (p(&model), p(&bundle), p(&train), p(&val), p(&out));
    let base = [
        "finetune", "--model", &model_s, "--bundle", &bundle_s, "--train", &train_s,
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--val",
        &val_s,
        "--steps",
        "20",
        "--directions",
        "2",
        "--eval-every",
        "10",
        "--seed",
        "3",
        "-o",
        &out_s,
    ]);
    let o = elx(&args);
    let (stdout, stderr) = text(&o);
    println!("{stdout}{stderr}");
    assert!(o.status.success(), "elx finetune failed: {stderr}");
    let val_line = &stdout[stdout.find("validation:").expect("a validation line")..];
    let val_loss = number_after(val_line, "validation: loss");
    let val_acc = number_after(val_line, "accuracy");
    let c = CoeffFile::read(&out).expect("read the written task");
    assert_eq!(c.provenance, Provenance::Finetuned);
    assert_eq!(c.task, "task5");
    let head = c.head.as_ref().expect("head");
    assert_eq!(head.labels, ["0", "1"]);
    assert_eq!(c.modules.len(), 4);

    // Serve it on the validation rows (padded to 16 again) and recompute the figures.
    let ids: Vec<i64> = val_rows.iter().flatten().copied().collect();
    let mask: Vec<i64> = ids.iter().map(|&t| i64::from(t != 0)).collect();
    let bytes = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (bi, bm) = (bytes(&ids), bytes(&mask));
    let shape = vec![val_rows.len(), SEQ];
    let views = vec![
        (
            "input_ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.clone(), &bi)
                .expect("view"),
        ),
        (
            "attention_mask",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape, &bm)
                .expect("view"),
        ),
    ];
    let input = dir.join("val.safetensors");
    safetensors::serialize_to_file(views, None, &input).expect("write input");
    let o = elx(&[
        "run",
        "--model",
        &model_s,
        "--bundle",
        &bundle_s,
        "--task",
        &out_s,
        "--input",
        &p(&input),
        "--json",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "elx run failed: {stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("probs").is_some())
        .collect();
    assert_eq!(rows.len(), val_rows.len(), "{stdout}");
    let (mut ce, mut correct) = (0.0, 0usize);
    for (r, l) in rows.iter().zip(val_labels) {
        let lab = l.to_string();
        let pr = r["probs"][&lab].as_f64().expect("prob");
        ce -= pr.ln();
        correct += usize::from(r["label"] == lab.as_str());
    }
    let n = rows.len() as f64;
    let (ce, acc) = (ce / n, 100.0 * correct as f64 / n);
    println!(
        "served: loss {ce:.7}, accuracy {acc:.2}%; reported: {val_loss}, {val_acc}% (|diff| {:.1e})",
        (ce - val_loss).abs()
    );
    assert!(
        (ce - val_loss).abs() < 1e-5,
        "served loss {ce} vs reported {val_loss}"
    );
    assert!(
        (acc - val_acc).abs() < 0.1,
        "served accuracy {acc} vs reported {val_acc}"
    );

    // The same examples as text through a tokenizer.json (a word-level vocabulary "t<id>"
    // -> id, no special tokens added): the run must write the very same coefficients.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..200)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, tok.to_string()).expect("write tokenizer");
    let as_text = |path: &Path, rows: &[Vec<i64>], labels: &[i64]| {
        let mut s = String::new();
        for (r, l) in rows.iter().zip(labels) {
            let words: Vec<String> = r
                .iter()
                .filter(|&&t| t != 0)
                .map(|t| format!("t{t}"))
                .collect();
            s.push_str(&serde_json::json!({"text": words.join(" "), "label": l}).to_string());
            s.push('\n');
        }
        std::fs::write(path, s).expect("write text jsonl");
    };
    let (train_t, val_t, out_t, tok_s) = (
        dir.join("train_text.jsonl"),
        dir.join("val_text.jsonl"),
        dir.join("task5_text.elxc"),
        p(&tok_path),
    );
    as_text(&train_t, &train_rows, &train_labels);
    as_text(&val_t, val_rows, val_labels);
    let (train_ts, val_ts, out_ts) = (p(&train_t), p(&val_t), p(&out_t));
    let mut a: Vec<&str> = args.clone();
    for (from, to) in [(&train_s, &train_ts), (&val_s, &val_ts), (&out_s, &out_ts)] {
        let i = a.iter().position(|x| x == from).expect("arg");
        a[i] = to;
    }
    a.extend(["--tokenizer", &tok_s, "--max-length", "32"]);
    let o = elx(&a);
    assert!(o.status.success(), "text finetune failed: {}", text(&o).1);
    let ct = CoeffFile::read(&out_t).expect("read text task");
    let worst = c
        .modules
        .iter()
        .map(|(m, x)| {
            let y = &ct.modules[m];
            (&x.alpha_a - &y.alpha_a)
                .norm_max()
                .max((&x.alpha_b - &y.alpha_b).norm_max())
        })
        .fold(0.0, f64::max);
    assert_eq!(worst, 0.0, "text and pre-tokenized runs differ by {worst}");
    let (h, ht) = (
        c.head.as_ref().expect("head"),
        ct.head.as_ref().expect("head"),
    );
    assert_eq!((&h.weight - &ht.weight).norm_max(), 0.0);
    assert_eq!(
        (h.bias.clone(), h.labels.clone()),
        (ht.bias.clone(), ht.labels.clone())
    );

    // A text too long for the model: refused (saying it was not truncated), or cut with
    // --truncate and a warning that counts it.
    let long_t = dir.join("long_text.jsonl");
    let words: Vec<String> = (1..=40).map(|i| format!("t{i}")).collect();
    std::fs::write(
        &long_t,
        format!(
            "{}\n",
            serde_json::json!({"text": words.join(" "), "label": 0})
        ),
    )
    .expect("write");
    let long_ts = p(&long_t);
    let mut a = base.to_vec();
    a.extend([
        "--tokenizer",
        &tok_s,
        "--max-length",
        "32",
        "--val",
        &long_ts,
        "-o",
        &out_ts,
    ]);
    let (_, e) = text(&elx(&a));
    assert!(
        e.contains("longer than the 32 tokens") && e.contains("not truncated"),
        "{e}"
    );
    a.extend(["--truncate", "--steps", "1"]);
    let o = elx(&a);
    let (_, e) = text(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("1 of 1 examples were longer than 32 tokens and were truncated"),
        "{e}"
    );

    // Bad data.
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").expect("write");
    let mut a = base.to_vec();
    let empty_s = p(&empty);
    a[6] = &empty_s;
    a.extend(["-o", &out_s]);
    let (_, e) = text(&elx(&a));
    assert!(e.contains("empty file") && e.contains("empty.jsonl"), "{e}");

    let odd = dir.join("odd.jsonl");
    std::fs::write(&odd, "{\"input_ids\": [1, 5, 2], \"label\": 7}\n").expect("write");
    let odd_s = p(&odd);
    let mut a = base.to_vec();
    a.extend(["--val", &odd_s, "-o", &out_s]);
    let (_, e) = text(&elx(&a));
    assert!(
        e.contains("label \"7\" does not occur") && e.contains("line 1"),
        "{e}"
    );

    let long = dir.join("long.jsonl");
    let ids: Vec<i64> = (1..=40).collect();
    std::fs::write(
        &long,
        format!("{}\n", serde_json::json!({"input_ids": ids, "label": 0})),
    )
    .expect("write");
    let long_s = p(&long);
    let mut a = base.to_vec();
    a.extend(["--val", &long_s, "--max-length", "32", "-o", &out_s]);
    let (_, e) = text(&elx(&a));
    assert!(e.contains("40 tokens") && e.contains("at most 32"), "{e}");
}

/// Bitwise equality of two task files' coefficients and heads.
fn same_task(a: &CoeffFile, b: &CoeffFile) -> bool {
    let coeffs = a.modules.len() == b.modules.len()
        && a.modules.iter().all(|(m, x)| {
            b.modules.get(m).is_some_and(|y| {
                (&x.alpha_a - &y.alpha_a).norm_max() == 0.0
                    && (&x.alpha_b - &y.alpha_b).norm_max() == 0.0
            })
        });
    let heads = match (&a.head, &b.head) {
        (Some(h), Some(g)) => (&h.weight - &g.weight).norm_max() == 0.0 && h.bias == g.bias,
        _ => false,
    };
    coeffs && heads
}

/// `--checkpoint`/`--pause-after`/`--resume` through the CLI: a 20-step run paused at steps
/// 8 and 13 and resumed twice writes the very file an uninterrupted run writes. `--zero-shot` trains the head only: its random
/// subspace coefficients are the same after 1 step and after 20, and nonzero.
#[test]
fn resume_and_zero_shot_through_the_cli() {
    let dir = tmpdir("ft-cli-resume");
    let bundle = bound_bundle(&dir);
    let (train_rows, train_labels) = data(5, "train");
    let (test_rows, test_labels) = data(5, "test");
    let (train, val) = (dir.join("train.jsonl"), dir.join("val.jsonl"));
    write_jsonl(&train, &train_rows, &train_labels);
    write_jsonl(&val, &test_rows[..32], &test_labels[..32]);
    let p = |x: &Path| x.to_str().expect("utf8").to_string();
    let (model_s, bundle_s, train_s, val_s) = (
        p(&fixture("tiny-bert/model.onnx")),
        p(&bundle),
        p(&train),
        p(&val),
    );
    let run = |extra: &[&str]| -> String {
        let mut a = vec![
            "finetune",
            "--model",
            &model_s,
            "--bundle",
            &bundle_s,
            "--train",
            &train_s,
            "--val",
            &val_s,
            "--r",
            "2",
            "--directions",
            "2",
            "--eval-every",
            "5",
            "--seed",
            "9",
            // Head and coefficients from the start: with the default head warm-up, 20 steps
            // at the small fine-tuning head lr keep the warm-up's head as the best point.
            "--head-warmup",
            "0",
        ];
        a.extend(extra);
        let o = elx(&a);
        let (out, err) = text(&o);
        assert!(o.status.success(), "elx {a:?}: {err}");
        out + &err
    };
    let (whole, part, resumed) = (
        dir.join("whole.elxc"),
        dir.join("part.elxc"),
        dir.join("resumed.elxc"),
    );
    let ck = dir.join("run.ckpt");
    let (whole_s, part_s, resumed_s, ck_s) = (p(&whole), p(&part), p(&resumed), p(&ck));
    run(&["--steps", "20", "-o", &whole_s]);
    let log = run(&[
        "--steps",
        "20",
        "--checkpoint",
        &ck_s,
        "--pause-after",
        "8",
        "-o",
        &part_s,
    ]);
    assert!(log.contains("paused at step 8 of 20"), "{log}");
    assert!(!part.exists(), "a paused run writes no task file yet");
    let log = run(&[
        "--steps",
        "20",
        "--checkpoint",
        &ck_s,
        "--resume",
        &ck_s,
        "--pause-after",
        "5",
        "-o",
        &part_s,
    ]);
    assert!(log.contains("paused at step 13 of 20"), "{log}");
    run(&["--steps", "20", "--resume", &ck_s, "-o", &resumed_s]);
    run(&["--steps", "10", "-o", &part_s]);
    let read = |f: &Path| CoeffFile::read(f).expect("task file");
    let (w, pt, r) = (read(&whole), read(&part), read(&resumed));
    assert!(
        same_task(&w, &r),
        "a resumed run must write the uninterrupted run's file"
    );
    assert!(!same_task(&w, &pt), "10 more steps must change something");

    let (zs1, zs20) = (dir.join("zs1.elxc"), dir.join("zs20.elxc"));
    let (zs1_s, zs20_s) = (p(&zs1), p(&zs20));
    let log = run(&["--zero-shot", "--steps", "1", "-o", &zs1_s]);
    assert!(log.contains("zero-shot"), "{log}");
    run(&["--zero-shot", "--steps", "20", "-o", &zs20_s]);
    let (a, b) = (read(&zs1), read(&zs20));
    let mut biggest = 0f64;
    for (m, x) in &a.modules {
        let y = &b.modules[m];
        assert_eq!(
            (&x.alpha_a - &y.alpha_a).norm_max(),
            0.0,
            "{m}: alpha_A trained"
        );
        assert_eq!(
            (&x.alpha_b - &y.alpha_b).norm_max(),
            0.0,
            "{m}: alpha_B trained"
        );
        biggest = biggest.max(x.alpha_a.norm_max()).max(x.alpha_b.norm_max());
    }
    assert!(biggest > 0.0, "zero-shot coefficients are random, not zero");
    let (h1, h20) = (a.head.expect("head"), b.head.expect("head"));
    assert!(
        (&h1.weight - &h20.weight).norm_max() > 0.0,
        "the head must train"
    );
}
