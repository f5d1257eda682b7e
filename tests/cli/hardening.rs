//! Bad use of the command line (issue 13): an output that is one of the inputs is refused
//! before anything is written, and a closed stdout ends a command quietly with status 0.

use crate::support::bundle::temp_dir;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

fn elx(args: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("elx runs")
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Runs `args` expecting the clobber refusal, and checks that `victim` kept its bytes.
fn refused(args: &[&Path], victim: &Path) {
    let before = std::fs::read(victim).expect("victim");
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("is also an input"), "{args:?}: {err}");
    assert_eq!(
        std::fs::read(victim).expect("victim"),
        before,
        "{args:?} changed it"
    );
}

#[test]
fn outputs_that_are_inputs_are_refused_and_left_intact() {
    let dir = temp_dir("cli-clobber");
    // Copies, so a failure of the check cannot damage the committed fixtures.
    let adapter = dir.join("task5");
    std::fs::create_dir_all(&adapter).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
    ] {
        std::fs::copy(fixture("adapters/task5").join(f), adapter.join(f)).unwrap();
    }
    let base = dir.join("model.onnx");
    std::fs::copy(fixture("tiny-bert/model.onnx"), &base).unwrap();
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());

    let weights = adapter.join("adapter_model.safetensors");
    let head = adapter.join("head.safetensors");
    // extract -o ADAPTER/adapter_model.safetensors
    refused(
        &[
            p("extract"),
            &adapter,
            tasks[0].as_path(),
            p("-o"),
            &weights,
        ],
        &weights,
    );
    // project -o BUNDLE, and --head H -o H (through a hard link too)
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("-o"),
            &bundle,
        ],
        &bundle,
    );
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("--head"),
            &head,
            p("-o"),
            &head,
        ],
        &head,
    );
    let linked = dir.join("linked.elxb");
    std::fs::hard_link(&bundle, &linked).unwrap();
    refused(
        &[
            p("project"),
            &adapter,
            p("--bundle"),
            &bundle,
            p("-o"),
            &linked,
        ],
        &bundle,
    );
    // bind -o BASE.onnx
    refused(
        &[p("bind"), &bundle, p("--base"), &base, p("-o"), &base],
        &base,
    );
    // finetune -o TRAIN.jsonl and --checkpoint BUNDLE
    let train = dir.join("train.jsonl");
    std::fs::write(&train, "{\"input_ids\": [1, 7, 2], \"label\": 0}\n").unwrap();
    refused(
        &[
            p("finetune"),
            p("--model"),
            &base,
            p("--bundle"),
            &bundle,
            p("--train"),
            &train,
            p("-o"),
            &train,
        ],
        &train,
    );
    refused(
        &[
            p("finetune"),
            p("--model"),
            &base,
            p("--bundle"),
            &bundle,
            p("--train"),
            &train,
            p("-o"),
            &dir.join("new.elxc"),
            p("--checkpoint"),
            &bundle,
            p("--checkpoint-every"),
            p("5"),
        ],
        &bundle,
    );
    // A new output is fine.
    let o = elx(&[
        p("project"),
        &adapter,
        p("--bundle"),
        &bundle,
        p("-o"),
        &dir.join("t5.elxc"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_quietly_with_status_0() {
    let dir = temp_dir("cli-pipe");
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    // `elx inspect B --adapters ... | head -0`: the reader is gone before the first line (the
    // child is still opening files), so the first print meets a closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_elx"))
        .arg("inspect")
        .arg(&bundle)
        .arg("--adapters")
        .args(&tasks)
        .arg("--random-control")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take().expect("stdout"));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_duplicate_adapter_is_named_in_a_warning() {
    let dir = temp_dir("cli-dup");
    let (t0, t1) = (fixture("adapters/task0"), fixture("adapters/task1"));
    let copy = dir.join("task0-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(t0.join(f), copy.join(f)).unwrap();
    }
    let out = dir.join("b.elxb");
    let o = elx(&[p("extract"), &t0, &t1, &copy, p("-o"), &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is the same adapter as") && err.contains("task0-copy"),
        "{err}"
    );
    let o = elx(&[p("extract"), &t0, &t1, p("-o"), &out]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("same adapter"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bundle of task0..4 extracted and bound to the tiny BERT, in `dir`.
fn bound_tiny_bert(dir: &Path) -> PathBuf {
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    let bound = dir.join("bound.elxb");
    let model = fixture("tiny-bert/model.onnx");
    let o = elx(&[p("bind"), &bundle, p("--base"), &model, p("-o"), &bound]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bound
}

/// An int64 .npy (format 1.0) of `shape`.
fn write_npy_i64(path: &Path, shape: &[usize], values: &[i64]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut h = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write npy");
}

/// Runs `args`, expecting status 1 (not a panic's 101) and `want` in the error.
fn named_error(args: &[&Path], want: &[&str]) {
    let o = elx(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected `{w}` in: {err}");
    }
}

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

/// Small items of issue 13: `--checkpoint` alone, a rank above the bundle's r_max at project
/// time, control characters in task names and labels, `reconstruct -o` into a non-empty
/// folder, coefficients too large for a float32 run, and a model whose outputs overflow.
#[test]
fn small_items_are_refused_or_escaped() {
    use eigenlorax::adapter::peft::{self, PeftWriteOptions};
    use eigenlorax::adapter::{Adapter, LoraModule};
    use eigenlorax::bundle::CoeffFile;
    let dir = temp_dir("cli-small");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");

    // --checkpoint without --checkpoint-every or --pause-after would never be written.
    let train = dir.join("train.jsonl");
    std::fs::write(
        &train,
        "{\"input_ids\": [2, 5, 3], \"label\": 0}\n{\"input_ids\": [2, 6, 3], \"label\": 1}\n",
    )
    .unwrap();
    let (ck, out) = (dir.join("ck"), dir.join("ft.elxc"));
    named_error(
        &[
            p("finetune"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--train"),
            &train,
            p("--checkpoint"),
            &ck,
            p("-o"),
            &out,
        ],
        &["--checkpoint-every", "--pause-after"],
    );
    assert!(!out.exists() && !ck.exists());

    // A rank-8 adapter (task0 and task5 side by side) against a bundle of r_max 4.
    let (t0, t5) = (
        Adapter::open(&fixture("adapters/task0")).unwrap(),
        Adapter::open(&fixture("adapters/task5")).unwrap(),
    );
    let mut modules = std::collections::BTreeMap::new();
    for m in t0.module_names() {
        let (a, b) = (t0.load_module(m).unwrap(), t5.load_module(m).unwrap());
        let stacked_a = faer::Mat::from_fn(8, a.a.ncols(), |i, j| {
            if i < 4 { a.a[(i, j)] } else { b.a[(i - 4, j)] }
        });
        let stacked_b = faer::Mat::from_fn(a.b.nrows(), 8, |i, j| {
            if j < 4 { a.b[(i, j)] } else { b.b[(i, j - 4)] }
        });
        modules.insert(
            m.to_string(),
            LoraModule {
                a: stacked_a,
                b: stacked_b,
            },
        );
    }
    let rank8 = dir.join("rank8");
    peft::write(&rank8, &modules, &PeftWriteOptions::default()).unwrap();
    let c8 = dir.join("r8.elxc");
    named_error(
        &[p("project"), &rank8, p("--bundle"), &bound, p("-o"), &c8],
        &["rank8", "r_max", "found 8"],
    );
    assert!(!c8.exists());

    // A task name and labels with ANSI escapes are printed escaped.
    let head = dir.join("head.safetensors");
    std::fs::copy(fixture("adapters/task5/head.safetensors"), &head).unwrap();
    let c = dir.join("c.elxc");
    let o = elx(&[
        p("project"),
        &fixture("adapters/task5"),
        p("--bundle"),
        &bound,
        p("--head"),
        &head,
        p("--task"),
        p("\u{1b}[31mred\u{7}"),
        p("-o"),
        &c,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        !stdout.contains('\u{1b}') && stdout.contains("\\u{1b}[31mred\\u{7}"),
        "{stdout}"
    );
    let npy = dir.join("ids.npy");
    write_npy_i64(&npy, &[1, 4], &[1, 5, 7, 2]);
    for args in [
        vec![p("inspect"), c.as_path()],
        vec![
            p("run"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--task"),
            &c,
            p("--input"),
            &npy,
        ],
    ] {
        let o = elx(&args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !stdout.contains('\u{1b}') && stdout.contains("\\u{1b}[31mred"),
            "{args:?}: {stdout}"
        );
    }

    // reconstruct -o into a folder that is not empty: refused; with --force its stale files
    // (an old head.safetensors) are removed and the adapter written.
    let folder = dir.join("reconstructed");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("head.safetensors"), b"stale").unwrap();
    named_error(
        &[
            p("reconstruct"),
            &c,
            p("--bundle"),
            &bound,
            p("-o"),
            &folder,
        ],
        &["not empty", "head.safetensors", "--force"],
    );
    assert_eq!(
        std::fs::read(folder.join("head.safetensors")).unwrap(),
        b"stale"
    );
    let o = elx(&[
        p("reconstruct"),
        &c,
        p("--bundle"),
        &bound,
        p("-o"),
        &folder,
        p("--force"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    Adapter::open(&folder).expect("a readable adapter");

    // Coefficients far beyond what a float32 run can carry (finite, 1e30) are refused at load.
    let mut huge = CoeffFile::read(&c).unwrap();
    for co in huge.modules.values_mut() {
        co.alpha_a = co.alpha_a.clone() * faer::Scale(1e30);
    }
    let huge_path = dir.join("huge.elxc");
    huge.write(&huge_path).unwrap();
    named_error(
        &[
            p("run"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--task"),
            &huge_path,
            p("--input"),
            &npy,
        ],
        &["huge.elxc", "alpha_A", "float32"],
    );

    // A model whose weights overflow float32 in the run: no NaN label with exit 0.
    let (mut m, _) = eigenlorax::graph::read_model(&model).unwrap();
    let g = m.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "embeddings.LayerNorm.weight")
        .unwrap();
    let n = t.dims.iter().product::<i64>() as usize;
    *t = eigenlorax::graph::onnx::tensor_f32(&t.name.clone(), &[n], &vec![1e38; n]);
    let extreme = dir.join("extreme.onnx");
    std::fs::write(&extreme, eigenlorax::graph::onnx::encode_model(&m)).unwrap();
    let extreme_bound = dir.join("extreme.elxb");
    let o = elx(&[
        p("bind"),
        &dir.join("b.elxb"),
        p("--base"),
        &extreme,
        p("-o"),
        &extreme_bound,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    named_error(
        &[
            p("run"),
            p("--model"),
            &extreme,
            p("--bundle"),
            &extreme_bound,
            p("--task"),
            &c,
            p("--input"),
            &npy,
        ],
        &["output `", "finite"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight labelled pre-tokenized rows for the tiny BERT (ids < 200), labels from `label`.
fn rows(label: &dyn Fn(usize) -> String) -> String {
    (0..8)
        .map(|i| {
            let ids = if i % 2 == 0 {
                vec![2, 10 + i, 30 + i, 3]
            } else {
                vec![2, 11 + i, 3]
            };
            format!(
                "{{\"input_ids\": {ids:?}, \"label\": {}}}\n",
                serde_json::to_string(&label(i)).unwrap()
            )
        })
        .collect()
}

/// `elx finetune` on the tiny BERT and `bound`, with `extra` flags.
fn finetune_args(
    model: &Path,
    bound: &Path,
    train: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<PathBuf> {
    let mut a: Vec<PathBuf> = vec![
        "finetune".into(),
        "--model".into(),
        model.into(),
        "--bundle".into(),
        bound.into(),
        "--train".into(),
        train.into(),
        "--batch-size".into(),
        "4".into(),
        "-o".into(),
        out.into(),
    ];
    a.extend(extra.iter().map(PathBuf::from));
    a
}

fn run_elx(args: &[PathBuf]) -> std::process::Output {
    let a: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    elx(&a)
}

/// Issue 29, cases 1, 2 and 5: a learning rate that would diverge is refused before any file
/// is written; a head warm-up without --val ends with a trained head, not the untrained
/// start; labels and the task name are printed escaped.
#[test]
fn finetune_refuses_divergence_keeps_its_warm_head_and_escapes_labels() {
    let dir = temp_dir("cli-ft29");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let (train, out) = (dir.join("train.jsonl"), dir.join("t.elxc"));
    std::fs::write(&train, rows(&|i| (i % 2).to_string())).unwrap();

    // 1. --head-lr 1e8 with SPSA used to write head.weight = -inf with exit 0.
    for (flag, lr) in [("--head-lr", "1e8"), ("--head-lr", "1e2"), ("--lr", "20")] {
        let a = finetune_args(
            &model,
            &bound,
            &train,
            &out,
            &["--grad", "spsa", "--steps", "6", flag, lr],
        );
        let o = run_elx(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flag} {lr}: {err}");
        assert!(
            err.contains("weight decay") && err.contains("below 1") && !err.contains("panicked"),
            "{err}"
        );
        assert!(!out.exists(), "{flag} {lr} wrote a file");
    }

    // 2. --head-warmup without --val: the best is measured after steps, never "0.0000 at step 0".
    let a = finetune_args(
        &model,
        &bound,
        &train,
        &out,
        &["--steps", "4", "--head-warmup", "4", "--eval-every", "2"],
    );
    let o = run_elx(&a);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stdout.contains("at step 0"), "{stdout}");
    assert!(stdout.contains("best training loss"), "{stdout}");
    let c = eigenlorax::bundle::CoeffFile::read(&out).unwrap();
    let h = c.head.expect("a head");
    assert!(
        (0..h.weight.nrows()).any(|i| (0..h.weight.ncols()).any(|j| h.weight[(i, j)] != 0.0)),
        "an all-zero head was written"
    );
    std::fs::remove_file(&out).unwrap();

    // 5. Labels and the task name holding ESC and newlines are printed escaped.
    std::fs::write(
        &train,
        rows(&|i| {
            if i % 2 == 0 {
                "\u{1b}[31mred".into()
            } else {
                "line\nbreak".into()
            }
        }),
    )
    .unwrap();
    let a = finetune_args(
        &model,
        &bound,
        &train,
        &out,
        &["--steps", "2", "--task", "\u{1b}]0;title\u{7}"],
    );
    let o = run_elx(&a);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}') && !stdout.contains("line\nbreak"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\\u{1b}[31mred")
            && stdout.contains("line\\nbreak")
            && stdout.contains("\\u{1b}]0;title\\u{7}"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 29, case 6: a checkpoint is tied to its data and flags, and a resume that differs
/// is refused naming what changed.
#[test]
fn a_resume_on_other_data_or_flags_is_refused_naming_what_changed() {
    let dir = temp_dir("cli-resume29");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");
    let (train, out, ck) = (
        dir.join("train.jsonl"),
        dir.join("t.elxc"),
        dir.join("ck.elxk"),
    );
    std::fs::write(&train, rows(&|i| (i % 2).to_string())).unwrap();
    let flags = |extra: &[&str]| -> Vec<String> {
        let mut f: Vec<String> = ["--steps", "4", "--grad", "spsa"]
            .map(String::from)
            .to_vec();
        f.extend(extra.iter().map(|s| s.to_string()));
        f
    };
    let go = |extra: &[&str]| {
        let f = flags(extra);
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        run_elx(&finetune_args(&model, &bound, &train, &out, &f))
    };
    let ck_s = ck.display().to_string();
    let o = go(&["--checkpoint", &ck_s, "--pause-after", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Labels flipped, same row count.
    std::fs::write(&train, rows(&|i| ((i + 1) % 2).to_string())).unwrap();
    let o = go(&["--resume", &ck_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("what changed")
            && err.contains("`--train`")
            && err.contains("training examples or their labels"),
        "{err}"
    );
    assert!(!out.exists());
    // Back to the checkpoint's data, but --val added.
    std::fs::write(&train, rows(&|i| (i % 2).to_string())).unwrap();
    let val = dir.join("val.jsonl");
    std::fs::write(&val, rows(&|i| (i % 2).to_string())).unwrap();
    let val_s = val.display().to_string();
    let o = go(&["--resume", &ck_s, "--val", &val_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`--val`") && err.contains("validation split"),
        "{err}"
    );
    assert!(!err.contains("`--train`"), "{err}");
    // Another warm-up: a flag the finetuner does not see, named.
    let o = go(&["--resume", &ck_s, "--head-warmup", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("`--head-warmup`"), "{err}");
    // Another learning rate: named, with readable values rather than bit patterns.
    let o = go(&["--resume", &ck_s, "--lr", "0.0123"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("this run 0.0123") && !err.contains("0x"),
        "{err}"
    );
    // The same data and flags resume.
    let o = go(&["--resume", &ck_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 29, case 4: `--plot` is an output like `-o`: a plot onto the inspected bundle (or
/// an adapter's file) is refused and the bundle left intact.
#[test]
fn a_plot_onto_an_input_is_refused() {
    let dir = temp_dir("cli-plot29");
    let bundle = dir.join("b.elxb");
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    let svg = dir.join("X.svg");
    std::fs::copy(&bundle, &svg).unwrap();
    let before = std::fs::read(&svg).unwrap();
    let o = elx(&[p("inspect"), &svg, p("--plot"), &svg]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--plot") && err.contains("is also an input"),
        "{err}"
    );
    assert_eq!(std::fs::read(&svg).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 29, case 8: the smaller points. `bind` in place keeps a symlinked bundle a link;
/// `reconstruct --force` names the input it would remove; a bad id in the validation file
/// names that file, a tokenizer's padding id is blamed on the tokenizer, not on --pad-id;
/// `--directions` is bounded; a tokenizer without a length takes config.json's limit.
#[test]
fn smaller_points_of_round_2() {
    use std::os::unix::fs::symlink;
    let dir = temp_dir("cli-small29");
    let bound = bound_tiny_bert(&dir);
    let model = fixture("tiny-bert/model.onnx");

    // bind in place through a symbolic link: the link stays, its target is bound.
    let link = dir.join("link.elxb");
    symlink(dir.join("b.elxb"), &link).unwrap();
    let o = elx(&[p("bind"), &link, p("--base"), &model]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let b = eigenlorax::bundle::Bundle::read(&dir.join("b.elxb")).unwrap();
    assert!(b.manifest.binding.is_some());

    // reconstruct --force into the folder that holds its own coefficient file.
    let folder = dir.join("rec");
    std::fs::create_dir_all(&folder).unwrap();
    let c = folder.join("t5.elxc");
    let o = elx(&[
        p("project"),
        &fixture("adapters/task5"),
        p("--bundle"),
        &bound,
        p("-o"),
        &c,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    named_error(
        &[
            p("reconstruct"),
            &c,
            p("--bundle"),
            &bound,
            p("-o"),
            &folder,
            p("--force"),
        ],
        &[
            "--force would remove",
            "which is the input",
            "nothing was removed",
        ],
    );
    assert!(c.exists());

    // A bad id on line 3 of the validation file names the file and the line.
    let (train, val, out) = (
        dir.join("train.jsonl"),
        dir.join("val.jsonl"),
        dir.join("t.elxc"),
    );
    std::fs::write(&train, rows(&|i| (i % 2).to_string())).unwrap();
    let mut bad = rows(&|i| (i % 2).to_string());
    bad = bad.replacen("[2, 12, 3]", "[2, 1200, 3]", 1);
    std::fs::write(&val, bad).unwrap();
    let v = val.display().to_string();
    let a = finetune_args(&model, &bound, &train, &out, &["--steps", "2", "--val", &v]);
    let a: Vec<&Path> = a.iter().map(PathBuf::as_path).collect();
    named_error(&a, &["val.jsonl: example 2 (line 2)", "id 1200"]);

    // --directions far beyond reason is refused before any step.
    let a = finetune_args(
        &model,
        &bound,
        &train,
        &out,
        &["--grad", "spsa", "--directions", "1000000000"],
    );
    let a: Vec<&Path> = a.iter().map(PathBuf::as_path).collect();
    named_error(&a, &["1000000000 SPSA directions", "at most 4096"]);

    // A tokenizer whose padding id is outside the model's table: blamed on the tokenizer.
    let mut tok: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_support/tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    tok["padding"] = serde_json::json!({
        "strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 250, "pad_type_id": 0, "pad_token": "[PAD]"
    });
    let tok_dir = dir.join("tok");
    std::fs::create_dir_all(&tok_dir).unwrap();
    let tok_path = tok_dir.join("tokenizer.json");
    std::fs::write(&tok_path, serde_json::to_vec(&tok).unwrap()).unwrap();
    let text = dir.join("text.jsonl");
    std::fs::write(
        &text,
        "{\"text\": \"hello\", \"label\": 0}\n{\"text\": \"world\", \"label\": 1}\n",
    )
    .unwrap();
    let t = tok_path.display().to_string();
    let a = finetune_args(
        &model,
        &bound,
        &text,
        &out,
        &["--steps", "1", "--tokenizer", &t],
    );
    let a: Vec<&Path> = a.iter().map(PathBuf::as_path).collect();
    named_error(&a, &["the padding id of", "tokenizer.json", "id 250"]);
    assert!(!out.exists());

    // No length in the tokenizer files: config.json's max_position_embeddings, not 512.
    tok["padding"] = serde_json::Value::Null;
    std::fs::write(&tok_path, serde_json::to_vec(&tok).unwrap()).unwrap();
    std::fs::write(
        tok_dir.join("config.json"),
        "{\"max_position_embeddings\": 16}",
    )
    .unwrap();
    let enc = eigenlorax::serve::input::TextEncoder::from_file(&tok_path, None).unwrap();
    assert_eq!(enc.max_length(), 16);
    std::fs::write(tok_dir.join("config.json"), "{}").unwrap();
    let enc = eigenlorax::serve::input::TextEncoder::from_file(&tok_path, None).unwrap();
    assert_eq!(
        enc.max_length(),
        eigenlorax::serve::input::DEFAULT_MAX_LENGTH
    );
    let _ = std::fs::remove_dir_all(&dir);
}
