//! An output that is one of the inputs (`-o`, `--plot`) is refused before anything is
//! written, and the input is left intact.

use super::{elx, fixture, p};
use crate::support::bundle::temp_dir;
use std::path::{Path, PathBuf};

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
