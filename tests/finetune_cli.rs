//! `elx finetune` end to end on the tiny BERT: JSONL written from the task5 data fixture,
//! a bundle of task0..4; the `.elxc` it writes is served by `elx run`, whose predictions on
//! the validation rows reproduce the validation loss and accuracy the command reported.
//! Bad data (empty file, unknown validation label, too-long example) gets a clear error.
#![cfg(feature = "tract")]

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, CoeffFile, Provenance, StorageDtype};
use eigenlorax::runtime::bind_file;
use eigenlorax::subspace::{ExtractOptions, KRule, extract};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SEQ: usize = 16;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

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

/// (rows of input_ids [SEQ], labels) of a split of a data fixture.
fn data(task: usize, split: &str) -> (Vec<Vec<i64>>, Vec<i64>) {
    let bytes = std::fs::read(fixture(&format!("data/task{task}.safetensors"))).expect("data");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect()
    };
    let ids = i64s(&format!("{split}.input_ids"));
    let labels = i64s(&format!("{split}.labels"));
    (ids.chunks_exact(SEQ).map(<[i64]>::to_vec).collect(), labels)
}

/// JSONL lines with the padding (id 0) stripped.
fn write_jsonl(path: &Path, rows: &[Vec<i64>], labels: &[i64]) {
    let mut s = String::new();
    for (r, l) in rows.iter().zip(labels) {
        let ids: Vec<i64> = r.iter().copied().filter(|&t| t != 0).collect();
        s.push_str(&serde_json::json!({"input_ids": ids, "label": l}).to_string());
        s.push('\n');
    }
    std::fs::write(path, s).expect("write jsonl");
}

fn bound_bundle(dir: &Path) -> PathBuf {
    let adapters: Vec<Adapter> = (0..5)
        .map(|i| Adapter::open(&fixture(&format!("adapters/task{i}"))).expect("adapter"))
        .collect();
    let options = ExtractOptions {
        k_rule_a: KRule::Fixed(20),
        k_rule_b: KRule::Fixed(20),
        ..Default::default()
    };
    let sub = extract(&adapters, &options, &|_, _, _| {}).expect("extract");
    let unbound = dir.join("unbound.elxb");
    Bundle::write(&unbound, &sub, &[], StorageDtype::F32, None).expect("write bundle");
    let bundle = Bundle::read(&unbound).expect("read bundle");
    let binding = bind_file(&fixture("tiny-bert/model.onnx"), &bundle, None).expect("bind");
    let bound = dir.join("bound.elxb");
    bundle
        .with_binding(Some(&binding), &bound)
        .expect("bind bundle");
    bound
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
    let dir = std::env::temp_dir().join(format!("elx-ft-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
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
