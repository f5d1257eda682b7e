//! `elx finetune`'s guards (issue 29): a learning rate that would diverge is refused, a
//! warm head is kept, labels are escaped, and a resume on other data or flags is refused.

use super::{bound_tiny_bert, finetune_args, fixture, rows, run_elx};
use crate::support::bundle::temp_dir;

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
