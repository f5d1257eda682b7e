//! `elx finetune --objective lm` on the tiny Llama imported from its GGUF (tokenizer, chat
//! template and end token beside it) with a random subspace bound: the run lowers the
//! validation NLL of the answers, and the task it writes, served through the inference path
//! (KV cache, coefficients as a task), gives the validation NLL the run reported for it.
//! Bad data and flags that belong to classification are refused by name.

use super::support::fixture_for;
use eigenlorax::finetune::lm::read_prompt_answers;
use eigenlorax::graph::llama;
use eigenlorax::serve::Backend;
use eigenlorax::serve::generate::Generator;
use eigenlorax::serve::generate::text::PromptTokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn elx(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("run elx");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The tiny Llama's folder (import-gguf's files, a random subspace bound) and its bundle.
pub fn decoder_folder(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("elx-lm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama/tiny_llama.gguf");
    llama::files::import_gguf_dir(&gguf, &dir).expect("import");
    let m = llama::import_gguf(&gguf).expect("gguf");
    fixture_for(&dir, &m);
    (dir.join("model.onnx"), dir.join("bound.elxb"))
}

/// A task the base model does not know: the colour named in the prompt decides the answer.
pub fn write_pairs(path: &Path, n: usize, offset: usize) {
    let lines: Vec<String> = (offset..offset + n)
        .map(|i| {
            let (colour, answer) = if i % 2 == 0 {
                ("red", "stop")
            } else {
                ("green", "go")
            };
            serde_json::json!({"prompt": format!("light {i} is {colour}; say"), "answer": answer})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write data");
}

fn value_after(out: &str, key: &str) -> f64 {
    let at = out
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {out}"))
        + key.len();
    out[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {out}"))
}

#[test]
fn lm_finetuning_lowers_the_answer_nll_and_serves_what_it_reported() {
    let (model, bundle) = decoder_folder("fit");
    let dir = model.parent().unwrap().to_path_buf();
    let (train, val, task) = (
        dir.join("train.jsonl"),
        dir.join("val.jsonl"),
        dir.join("t.elxc"),
    );
    write_pairs(&train, 24, 0);
    write_pairs(&val, 8, 100);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (ok, out, err) = elx(&[
        "finetune",
        "--objective",
        "lm",
        "--model",
        &s(&model),
        "--bundle",
        &s(&bundle),
        "--train",
        &s(&train),
        "--val",
        &s(&val),
        "-o",
        &s(&task),
        "--steps",
        "30",
        "--lr",
        "2e-2",
        "--seed",
        "3",
    ]);
    println!("{out}{err}");
    assert!(ok, "{err}");
    let best = value_after(&out, "validation NLL per answer token");
    let base = value_after(&out, "(base model");
    assert!(best < 0.8 * base, "NLL {best} vs base {base}");
    assert!(
        err.contains("validation NLL"),
        "one line per evaluation: {err}"
    );

    // The written task on the inference path: the mean NLL of the validation answers' tokens
    // (the end token included) is what the run reported for the kept coefficients.
    let tok = PromptTokenizer::open(&dir.join("tokenizer.json")).expect("tokenizer");
    let pairs = read_prompt_answers(&val, &tok, None, 2, 8192).expect("pairs");
    let b = eigenlorax::bundle::Bundle::read(&bundle).expect("bundle");
    let g = Generator::load(&model, &b, Backend::Tract).expect("generator");
    let id = g
        .engine()
        .insert_task(&eigenlorax::bundle::CoeffFile::read(&task).expect("task"))
        .expect("insert");
    let (mut sum, mut n) = (0.0, 0);
    for p in &pairs {
        let ids: Vec<u32> = p.prompt.iter().chain(&p.answer).copied().collect();
        let nll = g.token_nll(id, &ids).expect("nll");
        sum += nll[nll.len() - p.answer.len()..].iter().sum::<f64>();
        n += p.answer.len();
    }
    let served = sum / n as f64;
    println!("served validation NLL {served:.6}, reported {best}");
    assert!((served - best).abs() < 2e-4, "{served} vs {best}");
}

#[test]
fn lm_finetuning_refuses_bad_data_and_classification_flags_by_name() {
    let (model, bundle) = decoder_folder("bad");
    let dir = model.parent().unwrap().to_path_buf();
    let (train, val, task) = (
        dir.join("train.jsonl"),
        dir.join("val.jsonl"),
        dir.join("t.elxc"),
    );
    write_pairs(&train, 4, 0);
    write_pairs(&val, 2, 100);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = ["finetune", "--objective", "lm", "--model"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend([
            s(&model),
            "--bundle".into(),
            s(&bundle),
            "--train".into(),
            s(&train),
        ]);
        a.extend(["-o".into(), s(&task)]);
        a.extend(extra.iter().map(|x| x.to_string()));
        let r: Vec<&str> = a.iter().map(String::as_str).collect();
        elx(&r)
    };
    let (ok, _, err) = base(&[]);
    assert!(!ok && err.contains("--val"), "{err}");
    let (ok, _, err) = base(&["--val", &s(&val), "--grad", "spsa"]);
    assert!(
        !ok && err.contains("--grad spsa") && err.contains("classify"),
        "{err}"
    );
    std::fs::write(
        &val,
        "{\"prompt\": \"hi\", \"answer\": \"ok\"}\n{\"prompt\": 3, \"answer\": \"x\"}\n",
    )
    .expect("write");
    let (ok, _, err) = base(&["--val", &s(&val)]);
    assert!(
        !ok && err.contains("val.jsonl") && err.contains("line 2") && err.contains("`prompt`"),
        "{err}"
    );
    std::fs::write(&val, "{\"prompt\": \"hi\"}\n").expect("write");
    let (ok, _, err) = base(&["--val", &s(&val)]);
    assert!(
        !ok && err.contains("line 1") && err.contains("`answer`"),
        "{err}"
    );
    assert!(!task.exists(), "nothing written on an error");
}

/// Validation on the serving engine (a forward pass) gives the training graphs' validation
/// NLL, before and after training, whatever the threads; a run validated either way takes
/// the same steps and keeps the same coefficients. A batch of rows of different lengths
/// scores each row as it scores alone.
#[test]
fn serving_validation_equals_the_training_graphs() {
    use eigenlorax::finetune::lm::{LmConfig, LmTrainer, Validation};
    let (model, bundle) = decoder_folder("serving-val");
    let dir = model.parent().unwrap().to_path_buf();
    let (train, val) = (dir.join("train.jsonl"), dir.join("val.jsonl"));
    write_pairs(&train, 16, 0);
    write_pairs(&val, 19, 100);
    let tok = PromptTokenizer::open(&dir.join("tokenizer.json")).expect("tokenizer");
    let read = |p: &Path| read_prompt_answers(p, &tok, None, 2, 8192).expect("pairs");
    let (train, val) = (read(&train), read(&val));
    let b = eigenlorax::bundle::Bundle::read(&bundle).expect("bundle");
    let g = Generator::load(&model, &b, Backend::Tract).expect("generator");

    // Rows of different lengths in one call, each as alone.
    let base = g
        .engine()
        .insert_task(&eigenlorax::bundle::CoeffFile::base(
            &b.manifest.subspace_id,
        ))
        .expect("base task");
    let seqs: Vec<Vec<u32>> = val[..5]
        .iter()
        .map(|p| [&p.prompt[..], &p.answer[..], &p.answer[..(val.len() % 3)]].concat())
        .collect();
    let rows: Vec<_> = seqs.iter().map(|s| (base, &s[..])).collect();
    let batch = g.token_nll_batch(&rows).expect("batch");
    for (s, got) in seqs.iter().zip(&batch) {
        let alone = g.token_nll(base, s).expect("alone");
        assert_eq!(got.len(), alone.len());
        let diff = got
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-5, "batched row differs from alone by {diff}");
    }

    let cfg = |threads| LmConfig {
        lr: 2e-2,
        seed: 5,
        max_steps: 6,
        eval_every: Some(2),
        threads,
        ..LmConfig::default()
    };
    let new = |threads| {
        LmTrainer::new(g.engine(), train.clone(), val.clone(), cfg(threads)).expect("trainer")
    };
    let mut graphs = new(1);
    let start = graphs.validation_nll().expect("graphs");
    let served = new(1)
        .validation_nll_with(Validation::Serving(&g))
        .expect("serving");
    let served2 = new(2)
        .validation_nll_with(Validation::Serving(&g))
        .expect("serving, 2 threads");
    println!("start: training graphs {start:.7}, serving {served:.7} (2 threads {served2:.7})");
    assert!((start - served).abs() < 1e-4 * start, "{start} vs {served}");
    assert_eq!(
        served.to_bits(),
        served2.to_bits(),
        "threads change the value"
    );

    let (mut a, mut b2) = (Vec::new(), Vec::new());
    let ra = graphs
        .fit(&mut |e| a.push(e.clone()))
        .expect("fit on graphs");
    let mut serving = new(1);
    let rb = serving
        .fit_with(Validation::Serving(&g), &mut |e| b2.push(e.clone()))
        .expect("fit on serving");
    println!("{ra:?}\n{rb:?}");
    assert!(
        ra.best_val_nll < 0.9 * ra.start_val_nll,
        "training did not lower the NLL: {ra:?}"
    );
    assert_eq!((ra.steps, ra.best_step), (rb.steps, rb.best_step));
    assert!((ra.best_val_nll - rb.best_val_nll).abs() < 1e-4 * ra.best_val_nll);
    assert_eq!(graphs.params(), serving.params());
    // The task inserted for an evaluation is unloaded after it.
    assert_eq!(g.engine().task_ids(), vec![base]);
}
