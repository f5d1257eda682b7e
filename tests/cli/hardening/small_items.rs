//! The smaller items of issues 13 and 29, each refused with a named error or escaped.

use super::{bound_tiny_bert, elx, finetune_args, fixture, named_error, p, rows, write_npy_i64};
use crate::support::bundle::temp_dir;
use std::path::{Path, PathBuf};

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

/// `elx demo` on a generation family (issue 27) refuses a broken checkout by name, before it
/// installs or imports the decoder: no held-out task, a task without its subspace, a subspace
/// that is not a bundle, a task without data, and a --tasks name no family has.
#[test]
fn demo_refuses_a_broken_generation_family_by_name() {
    let dir = temp_dir("cli-demo-gen");
    let family = dir.join("gen");
    let demo = family.join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    let out = dir.join("out");
    let run = |want: &[&str], extra: &[&Path]| {
        let mut args = vec![p("demo"), p("--workload"), &family, p("-o"), &out];
        args.extend_from_slice(extra);
        named_error(&args, want);
    };
    run(&["demo", "expected <task>/ folders"], &[]);
    let task = demo.join("t0");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("adapter_config.json"), "{}").unwrap();
    run(
        &["t0.others.elxb", "subspace of the tasks other than t0"],
        &[],
    );
    let bundle = demo.join("t0.others.elxb");
    std::fs::write(&bundle, b"not a bundle").unwrap();
    run(&["t0.others.elxb"], &[]);
    let tasks: Vec<PathBuf> = (0..5)
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect();
    let mut args: Vec<&Path> = vec![p("extract")];
    args.extend(tasks.iter().map(|t| t.as_path()));
    args.extend([p("--k"), p("2"), p("-o"), bundle.as_path()]);
    assert!(elx(&args).status.success());
    run(
        &[
            "gen/data/t0/train.jsonl",
            "train pairs of the demo's task t0",
        ],
        &[],
    );
    run(&["no task `t9`"], &[p("--tasks"), p("t9")]);
    assert!(!out.join("results.json").exists());
}
