//! `elx leave-one-out` on the tiny Llama with four synthetic adapters of shared structure:
//! every row equals what the independent CLI path gives for the same thing (`elx score` of
//! the base model, `elx project` + `elx score` of the recycled projection), the trained rows'
//! curves start at the base model's validation NLL, the in-context prompt is the template's
//! rendering of the earlier turns, and bad input is refused by name.

use super::lm_finetune::{decoder_folder, elx};
use crate::lora_pool;
use eigenlorax::eval::loo::Base;
use eigenlorax::eval::loo_lm::{self, LmLooConfig, LmMethod, LmTaskSpec, Recycled};
use eigenlorax::graph::llama;
use std::path::{Path, PathBuf};

/// The chat template's frame of one user turn (SmolLM2's, which the tiny Llama carries).
const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn rendered(user: &str) -> String {
    format!("{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// A family of four tasks (t0..t3) under `root`: adapters/<task>/ from one pool of shared
/// structure, data/<task>/{train,validation,test}.jsonl with rendered prompts.
fn family(root: &Path) -> (PathBuf, PathBuf) {
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama/tiny_llama.gguf");
    let cfg = llama::import_gguf(&gguf).expect("gguf").config;
    let modules = super::support::adapted_modules(&cfg);
    let modules: Vec<(&str, usize, usize)> = modules
        .iter()
        .map(|(n, i, o)| (n.as_str(), *i, *o))
        .collect();
    let (adapters, workload) = (root.join("adapters"), root.join("workload"));
    let pool = lora_pool::write(&root.join("pool"), &modules, 11, 0, 4, 2);
    for (t, path) in pool.iter().enumerate() {
        let task = format!("t{t}");
        std::fs::create_dir_all(&adapters).unwrap();
        std::fs::rename(path, adapters.join(&task)).unwrap();
        let data = workload.join("data").join(&task);
        std::fs::create_dir_all(&data).unwrap();
        let answers = ["stop", "go", "wait", "red"];
        for (split, n, from) in [("train", 6, 0), ("validation", 3, 50), ("test", 3, 90)] {
            let lines: Vec<String> = (from..from + n)
                .map(|i| {
                    serde_json::json!({
                        "prompt": rendered(&format!("light {i} t{t}")),
                        "answer": answers[(i + t) % answers.len()],
                    })
                    .to_string()
                })
                .collect();
            std::fs::write(data.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
        }
    }
    (adapters, workload)
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

/// The `--json` summary line of `elx score`: (rouge_l, nll).
fn score(args: &[&str]) -> (f64, f64) {
    let mut a = vec!["score", "--json"];
    a.extend_from_slice(args);
    let (ok, out, err) = elx(&a);
    assert!(ok, "{err}");
    let last: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("summary")).expect("json");
    (
        last["rouge_l"].as_f64().unwrap(),
        last["nll"].as_f64().unwrap(),
    )
}

/// The row of `method` at the energy rule's K.
fn row<'a>(rows: &'a [serde_json::Value], method: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["method"] == method && r["fixed_k"].is_null())
        .unwrap_or_else(|| panic!("no {method} row in {rows:?}"))
}

/// The row of `method` at K per side of the K sweep.
fn swept<'a>(rows: &'a [serde_json::Value], method: &str, k: u64) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["method"] == method && r["fixed_k"] == k)
        .unwrap_or_else(|| panic!("no {method} row at K = {k} in {rows:?}"))
}

#[test]
fn leave_one_out_rows_equal_their_independent_paths() {
    let (model, _) = decoder_folder("loo");
    let dir = model.parent().unwrap().to_path_buf();
    let (adapters, workload) = family(&dir);
    let out = dir.join("out");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    // A host LoRA run's metrics, as tools/workload/train_wordnet_gen.py writes them.
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("t0")).unwrap();
    std::fs::write(
        host.join("t0/metrics.json"),
        r#"{"val_curve": [[0, 7.5], [1, 7.2], [2, 7.1]], "recipe": {"train_n": 4}}"#,
    )
    .unwrap();
    let (ok, stdout, err) = elx(&[
        "leave-one-out",
        "--model",
        &s(&dir),
        "--adapters",
        &s(&adapters),
        "--workload",
        &s(&workload),
        "--tasks",
        "t0",
        "--few-shot",
        "4",
        "--in-context",
        "2",
        "--test",
        "3",
        "--max-tokens",
        "4",
        "--max-steps",
        "4",
        "--lr",
        "2e-2",
        "--host-curves",
        &s(&host),
        "--k-sweep",
        "1,2",
        "-o",
        &s(&out),
    ]);
    println!("{stdout}{err}");
    let svg = std::fs::read_to_string(out.join("curves-t0.svg")).expect("convergence plot");
    for label in [
        "recycled, 4 pairs",
        "random basis, 4 pairs",
        "LoRA (host), 4 pairs",
    ] {
        assert!(svg.contains(label), "{label}");
    }
    assert!(ok, "{err}");
    assert!(
        stdout.contains("Share of the base -> own-LoRA gap"),
        "{stdout}"
    );
    // The few-shot comparison, judged against the host curve (lowest 7.1 at step 2).
    assert!(
        stdout.contains("4 pairs: recycled beats the random basis on test NLL on ")
            && stdout.contains("lowest validation NLL in fewer steps on ")
            && !stdout.contains("no host LoRA curves"),
        "{stdout}"
    );
    // `elx leave-one-out-report` of the run's results.json prints the same summary and
    // few-shot comparison: the file holds everything the run reported.
    let report_dir = dir.join("report");
    let (ok, report, err) = elx(&[
        "leave-one-out-report",
        &s(&out.join("results.json")),
        "--host-curves",
        &s(&host),
        "-o",
        &s(&report_dir),
    ]);
    assert!(ok, "{err}");
    let tail = |text: &str| {
        let from = text.find("Share of the base").expect("summary");
        let to = text[from..]
            .find("\nwrote ")
            .map_or(text.len(), |i| from + i);
        text[from..to].to_string()
    };
    assert_eq!(tail(&report), tail(&stdout));
    assert!(report_dir.join("curves-t0.svg").is_file());
    let results = json_of(&out.join("results.json"));
    let task = &results["tasks"][0];
    assert_eq!(task["task"], "t0");
    assert_eq!(task["sources"], 3);
    let rows = task["rows"].as_array().expect("rows");
    for m in [
        "base",
        "in_context",
        "own_lora",
        "projected",
        "mean_only",
        "random_projected",
        "finetuned",
        "random_basis",
    ] {
        let r = row(rows, m);
        let p = out.join("t0").join(format!(
            "{}.predictions.jsonl",
            match m {
                "finetuned" => "finetuned-n4".to_string(),
                "random_basis" => "random-basis-n4".to_string(),
                other => other.replace('_', "-"),
            }
        ));
        let lines = std::fs::read_to_string(&p).expect("predictions");
        assert_eq!(lines.lines().count(), 3, "{}", p.display());
        assert!(r["nll"].as_f64().unwrap().is_finite(), "{m}: {r}");
    }
    // The pool shares its structure: the others' subspace holds more of t0 than chance.
    let (captured, random) = (
        task["captured"].as_f64().unwrap(),
        task["random_captured"].as_f64().unwrap(),
    );
    assert!(
        captured > random && captured <= 1.0 && random >= 0.0,
        "{captured} {random}"
    );

    // The base row (zero coefficients of the own-LoRA bundle) is the model without a bundle.
    let test = workload.join("data/t0/test.jsonl");
    let flags = ["--max-tokens", "4"];
    let (rl, nll) = score(&[&["--model", &s(&dir), "--data", &s(&test)][..], &flags].concat());
    let base = row(rows, "base");
    assert_eq!(base["rouge_l"].as_f64().unwrap(), rl);
    assert!(
        (base["nll"].as_f64().unwrap() - nll).abs() < 1e-5,
        "{base} vs {nll}"
    );

    // The recycled row is `elx project` of the adapter into the bundle the run wrote, scored.
    let recycled = out.join("t0/recycled.elxb");
    let projected = dir.join("t0.elxc");
    let (ok, _, err) = elx(&[
        "project",
        &s(&adapters.join("t0")),
        "--bundle",
        &s(&recycled),
        "-o",
        &s(&projected),
    ]);
    assert!(ok, "{err}");
    let (rl, nll) = score(
        &[
            &[
                "--model",
                &s(&dir),
                "--bundle",
                &s(&recycled),
                "--task",
                &s(&projected),
                "--data",
                &s(&test),
            ][..],
            &flags,
        ]
        .concat(),
    );
    let r = row(rows, "projected");
    assert_eq!(r["rouge_l"].as_f64().unwrap(), rl);
    assert!(
        (r["nll"].as_f64().unwrap() - nll).abs() < 1e-5,
        "{r} vs {nll}"
    );
    assert!(r["parameters"].as_u64().unwrap() > 0);
    assert!(
        r["parameters"].as_u64() < row(rows, "own_lora")["parameters"].as_u64(),
        "fewer numbers than the LoRA"
    );

    // The K sweep: each K is its own extraction, and its row is again `elx project` into the
    // bundle it wrote, scored. The top-K subspaces are nested, so the capture grows with K.
    let sweep = task["k_sweep"].as_array().expect("k_sweep");
    assert_eq!(sweep.len(), 2);
    let cap = |i: usize, f: &str| sweep[i][f].as_f64().unwrap();
    assert_eq!(
        (sweep[0]["k"].as_u64(), sweep[1]["k"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(
        cap(0, "captured") <= cap(1, "captured") + 1e-12 && cap(1, "captured") <= captured + 1e-12,
        "{sweep:?}"
    );
    let modules = task["k_sweep"][0]["k_total"].as_u64().unwrap();
    assert_eq!(
        task["k_sweep"][1]["k_total"].as_u64(),
        Some(2 * modules),
        "2 per side"
    );
    let k1 = out.join("t0/recycled-k1.elxb");
    let projected_k1 = dir.join("t0-k1.elxc");
    let (ok, _, err) = elx(&[
        "project",
        &s(&adapters.join("t0")),
        "--bundle",
        &s(&k1),
        "-o",
        &s(&projected_k1),
    ]);
    assert!(ok, "{err}");
    let (rl, nll) = score(
        &[
            &[
                "--model",
                &s(&dir),
                "--bundle",
                &s(&k1),
                "--task",
                &s(&projected_k1),
                "--data",
                &s(&test),
            ][..],
            &flags,
        ]
        .concat(),
    );
    let r1 = swept(rows, "projected", 1);
    assert_eq!(r1["rouge_l"].as_f64().unwrap(), rl);
    assert!(
        (r1["nll"].as_f64().unwrap() - nll).abs() < 1e-5,
        "{r1} vs {nll}"
    );
    for m in ["projected", "random_projected"] {
        let (p1, p2) = (
            swept(rows, m, 1)["parameters"].as_u64().unwrap(),
            swept(rows, m, 2)["parameters"].as_u64().unwrap(),
        );
        assert_eq!(p2, 2 * p1, "{m}: coefficients scale with K");
        let stem = m.replace('_', "-");
        for k in [1, 2] {
            let p = out.join(format!("t0/{stem}-k{k}.predictions.jsonl"));
            let lines = std::fs::read_to_string(&p).expect("predictions");
            assert_eq!(lines.lines().count(), 3, "{}", p.display());
        }
    }
    assert!(
        stdout.contains("zero-shot: recycled subspace, K = 2"),
        "{stdout}"
    );

    // The held-out task against a subspace read from a bundle (what `elx demo` commits,
    // the other adapters absent): the same rows as extracting it here, no mean row.
    let others = eigenlorax::bundle::Bundle::read(&recycled).expect("bundle");
    let spec = LmTaskSpec {
        name: "t0".into(),
        adapter: adapters.join("t0"),
        train: workload.join("data/t0/train.jsonl"),
        validation: workload.join("data/t0/validation.jsonl"),
        test: test.clone(),
        max_tokens: 4,
    };
    let cfg = LmLooConfig {
        model: dir.clone(),
        chat: false,
        extract: Default::default(),
        in_context: 2,
        test_examples: 3,
        few_shot: Vec::new(),
        k_sweep: Vec::new(),
        lm: Default::default(),
        random_seed: 0,
        backend: eigenlorax::serve::Backend::Tract,
        threads: 2,
        out_dir: dir.join("from-bundle"),
    };
    let base_model = Base::open(&dir.join("model.onnx")).expect("base");
    let quiet = |_: &str| {};
    let r = loo_lm::run_held_out(&cfg, &base_model, &spec, Recycled::Bundle(&others), &quiet)
        .expect("held out of a bundle");
    assert_eq!(r.sources, 3, "the bundle's sources");
    assert!(r.row(LmMethod::MeanOnly).is_none());
    for (m, name) in [
        (LmMethod::Base, "base"),
        (LmMethod::InContext, "in_context"),
        (LmMethod::OwnLora, "own_lora"),
        (LmMethod::Projected, "projected"),
        (LmMethod::RandomProjected, "random_projected"),
    ] {
        let (got, want) = (r.row(m).expect("row"), row(rows, name));
        assert_eq!(got.rouge_l, want["rouge_l"].as_f64().unwrap(), "{name}");
        // The bundle's bases are the f32 copy of the extracted f64 ones.
        assert!(
            (got.nll - want["nll"].as_f64().unwrap()).abs() < 1e-5,
            "{name}"
        );
    }
    assert!((r.captured - captured).abs() < 1e-5);
    // The same through `elx leave-one-out --others-bundle`: the rows of the library's run.
    let cli_out = dir.join("from-bundle-cli");
    let (ok, _, err) = elx(&[
        "leave-one-out",
        "--model",
        &s(&dir),
        "--adapters",
        &s(&adapters),
        "--workload",
        &s(&workload),
        "--others-bundle",
        &s(&recycled),
        "--tasks",
        "t0",
        "--no-few-shot",
        "--in-context",
        "2",
        "--test",
        "3",
        "--max-tokens",
        "4",
        "-o",
        &s(&cli_out),
    ]);
    assert!(ok, "{err}");
    let cli = json_of(&cli_out.join("results.json"));
    let cli_rows = cli["tasks"][0]["rows"].as_array().expect("rows");
    assert_eq!(cli["tasks"][0]["sources"], 3);
    for m in [
        LmMethod::Base,
        LmMethod::OwnLora,
        LmMethod::Projected,
        LmMethod::RandomProjected,
    ] {
        let want = r.row(m).expect("row");
        let name = serde_json::to_value(m).unwrap();
        let got = row(cli_rows, name.as_str().unwrap());
        assert_eq!(got["rouge_l"].as_f64().unwrap(), want.rouge_l, "{m:?}");
        assert!(
            (got["nll"].as_f64().unwrap() - want.nll).abs() < 1e-9,
            "{m:?}"
        );
    }
    let mut sweeping = cfg.clone();
    sweeping.k_sweep = vec![1];
    let err = loo_lm::run_held_out(
        &sweeping,
        &base_model,
        &spec,
        Recycled::Bundle(&others),
        &quiet,
    )
    .expect_err("a K sweep needs the adapters");
    assert!(
        err.to_string().contains("K sweep") && err.to_string().contains("recycled.elxb"),
        "{err}"
    );

    // Trained rows start from the base model (α_B = 0): step 0 of the curve is the base
    // model's validation NLL, and the kept coefficients are at least as good.
    let val = workload.join("data/t0/validation.jsonl");
    let (_, base_val) = score(&[&["--model", &s(&dir), "--data", &s(&val)][..], &flags].concat());
    for m in ["finetuned", "random_basis"] {
        let r = row(rows, m);
        let curve = r["curve"].as_array().expect("curve");
        assert_eq!(curve[0]["step"], 0);
        let start = curve[0]["val_nll"].as_f64().unwrap();
        assert!(
            (start - base_val).abs() < 1e-4,
            "{m}: {start} vs {base_val}"
        );
        let best = curve
            .iter()
            .map(|p| p["val_nll"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        assert!(best <= start, "{m}");
        assert_eq!(r["train_examples"], 4);
    }

    // The in-context prompt: the first two training pairs as earlier turns, then the question.
    let prompt = std::fs::read_to_string(out.join("t0/in-context.prompt.txt")).expect("prompt");
    let want = format!(
        "{SYSTEM}<|im_start|>user\nlight 0 t0<|im_end|>\n<|im_start|>assistant\nstop<|im_end|>\n\
         <|im_start|>user\nlight 1 t0<|im_end|>\n<|im_start|>assistant\ngo<|im_end|>\n\
         <|im_start|>user\nlight 90 t0<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(prompt, want);
}

#[test]
fn leave_one_out_refuses_bad_input_by_name() {
    let (model, _) = decoder_folder("loo-bad");
    let dir = model.parent().unwrap().to_path_buf();
    let (adapters, workload) = family(&dir);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "leave-one-out".to_string(),
            "--model".into(),
            s(&dir),
            "--adapters".into(),
            s(&adapters),
            "--workload".into(),
            s(&workload),
            "--max-tokens".into(),
            "2".into(),
            "-o".into(),
            s(&dir.join("out")),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        let r: Vec<&str> = a.iter().map(String::as_str).collect();
        elx(&r)
    };
    let (ok, _, err) = run(&["--tasks", "t9"]);
    assert!(
        !ok && err.contains("t9") && err.contains("no adapter"),
        "{err}"
    );
    let (ok, _, err) = run(&["--tasks", "t1", "--few-shot", "7"]);
    assert!(
        !ok && err.contains("train.jsonl") && err.contains("at least 7"),
        "{err}"
    );
    let (ok, _, err) = run(&["--tasks", "t1", "--max-tokens-for", "_x"]);
    assert!(!ok && err.contains("SUFFIX=N"), "{err}");
    // --others-bundle: one held-out task, and a bundle that does not hold its adapter.
    let own = dir.join("own.elxb");
    let (ok, _, err) = elx(&[
        "extract",
        &s(&adapters.join("t1")),
        "--k",
        "1",
        "-o",
        &s(&own),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["--tasks", "t0,t1", "--others-bundle", &s(&own)]);
    assert!(
        !ok && err.contains("--others-bundle") && err.contains("found 2"),
        "{err}"
    );
    let (ok, _, err) = run(&["--tasks", "t1", "--others-bundle", &s(&own)]);
    assert!(
        !ok && err.contains("own.elxb") && err.contains("held-out task t1"),
        "{err}"
    );
    // A bad host metrics file, refused before any row is computed.
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("t1")).unwrap();
    std::fs::write(host.join("t1/metrics.json"), "{\"val_curve\": [[0, 7.5]]}").unwrap();
    let (ok, out, err) = run(&["--tasks", "t1", "--host-curves", host.to_str().unwrap()]);
    assert!(
        !ok && err.contains("t1/metrics.json") && err.contains("recipe.train_n"),
        "{err}"
    );
    assert!(!out.contains("t1: base model"), "{out}");
    // A prompt the template did not render cannot be turned into earlier turns.
    let test = workload.join("data/t1/test.jsonl");
    std::fs::write(&test, "{\"prompt\": \"plain\", \"answer\": \"go\"}\n").unwrap();
    let (ok, _, err) = run(&["--tasks", "t1", "--no-few-shot", "--in-context", "1"]);
    assert!(
        !ok && err.contains("test.jsonl")
            && err.contains("line 1")
            && err.contains("chat template"),
        "{err}"
    );
}
