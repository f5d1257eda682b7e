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
        (300, &[][..], "id 300 at [2]", "example 1:"),
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
    let (mut m, _) = eigenlorax::runtime::read_model(&model).unwrap();
    let g = m.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "embeddings.LayerNorm.weight")
        .unwrap();
    let n = t.dims.iter().product::<i64>() as usize;
    *t = eigenlorax::runtime::onnx::tensor_f32(&t.name.clone(), &[n], &vec![1e38; n]);
    let extreme = dir.join("extreme.onnx");
    std::fs::write(&extreme, eigenlorax::runtime::onnx::encode_model(&m)).unwrap();
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
