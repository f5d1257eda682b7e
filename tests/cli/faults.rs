//! Faults while writing (issue 13): `kill -9` at any moment of `extract`, `project`, `bind`
//! and a `finetune` writing checkpoints leaves the old output intact or the new one complete;
//! a full disk (simulated with RLIMIT_FSIZE) is a named error that leaves the old file intact
//! and no temporary file behind.
#![cfg(unix)]

use crate::support::bundle::temp_dir;
use eigenlorax::bundle::{Bundle, CoeffFile};
use eigenlorax::finetune::checkpoint::{Checkpoint, TENSORS};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(p)
}

fn elx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_elx"))
}

fn ok(c: &mut Command) {
    let o = c.output().expect("elx runs");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn adapters(ids: &[usize]) -> Vec<PathBuf> {
    ids.iter()
        .map(|i| fixture(&format!("adapters/task{i}")))
        .collect()
}

/// A checkpoint read whole: its SHA-256 covers every byte of its state.
fn checkpoint_complete(p: &Path) -> bool {
    let Ok(bytes) = std::fs::read(p) else {
        return false;
    };
    let Ok(st) = safetensors::SafeTensors::deserialize(&bytes) else {
        return false;
    };
    let mut sizes = [0usize; 8];
    for (i, n) in TENSORS.iter().enumerate() {
        match st.tensor(n) {
            Ok(t) => sizes[i] = t.shape().first().copied().unwrap_or(0),
            Err(_) => return false,
        }
    }
    Checkpoint::read(p, &sizes).is_ok()
}

/// An output file and the check that it is a complete file of its kind.
type Output<'a> = (&'a Path, &'a dyn Fn(&Path) -> bool);

/// Runs `cmd` to completion once (timing it), then again `kills` times, each killed with
/// SIGKILL at a different fraction of that time; after each kill every file of `outputs` is
/// either `old` (same bytes) or passes `complete`. Returns how many kills hit a running
/// process.
fn kill_at_every_moment(
    mut cmd: impl FnMut() -> Command,
    outputs: &[Output<'_>],
    kills: u32,
) -> u32 {
    let olds: Vec<Vec<u8>> = outputs
        .iter()
        .map(|(p, _)| std::fs::read(p).expect("old output"))
        .collect();
    let t0 = Instant::now();
    ok(&mut cmd());
    let full = t0.elapsed();
    for ((p, complete), old) in outputs.iter().zip(&olds) {
        assert!(complete(p), "{} complete after a full run", p.display());
        std::fs::write(p, old).expect("restore old");
    }
    let mut hit = 0;
    for k in 0..kills {
        let mut child = cmd().spawn().expect("spawn");
        std::thread::sleep(full.mul_f64(f64::from(k) / f64::from(kills)));
        if child.try_wait().expect("wait").is_none() {
            hit += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        for ((p, complete), old) in outputs.iter().zip(&olds) {
            let now = std::fs::read(p).unwrap_or_default();
            assert!(
                &now == old || complete(p),
                "kill {k}/{kills} ({:?} into a {full:?} run) left {} neither old nor complete",
                full.mul_f64(f64::from(k) / f64::from(kills)),
                p.display()
            );
            std::fs::write(p, old).expect("restore old");
        }
    }
    hit
}

/// `elx extract` of `tasks` to `b`, `elx bind` of it to `bound`, `elx project` of task 4 to `c`.
fn write_bundle_bound_and_task(tasks: &[usize], model: &Path, b: &Path, bound: &Path, c: &Path) {
    ok(elx().arg("extract").args(adapters(tasks)).arg("-o").arg(b));
    ok(elx()
        .arg("bind")
        .arg(b)
        .arg("--base")
        .arg(model)
        .arg("-o")
        .arg(bound));
    ok(elx()
        .args(["project"])
        .arg(fixture("adapters/task4"))
        .arg("--bundle")
        .arg(b)
        .arg("-o")
        .arg(c));
}

#[test]
fn kill_9_during_writes_leaves_the_old_file_or_a_complete_new_one() {
    let dir = temp_dir("cli-kill9");
    let model = fixture("tiny-bert/model.onnx");
    let (b, bound, c, ck, ft) = (
        dir.join("b.elxb"),
        dir.join("bound.elxb"),
        dir.join("c.elxc"),
        dir.join("ck"),
        dir.join("ft.elxc"),
    );
    // Old outputs, each a valid file of its kind (other content than the new one).
    write_bundle_bound_and_task(&[0, 1, 2], &model, &b, &bound, &c);
    let bundle_ok = |p: &Path| Bundle::read(p).is_ok();
    let coeffs_ok = |p: &Path| CoeffFile::read(p).is_ok();
    let mut hits = Vec::new();

    hits.push(kill_at_every_moment(
        || {
            let mut c = elx();
            c.arg("extract")
                .args(adapters(&[0, 1, 2, 3, 4]))
                .arg("--pseudo")
                .arg("4")
                .arg("-o")
                .arg(&b);
            c
        },
        &[(&b, &bundle_ok)],
        8,
    ));
    // The bundle the remaining commands use: the five adapters.
    write_bundle_bound_and_task(&[0, 1, 2, 3, 4], &model, &b, &bound, &c);
    hits.push(kill_at_every_moment(
        || {
            let mut cmd = elx();
            cmd.arg("project")
                .arg(fixture("adapters/task5"))
                .arg("--bundle")
                .arg(&b)
                .arg("-o")
                .arg(&c);
            cmd
        },
        &[(&c, &coeffs_ok)],
        8,
    ));
    hits.push(kill_at_every_moment(
        || {
            let mut cmd = elx();
            cmd.arg("bind")
                .arg(&b)
                .arg("--base")
                .arg(&model)
                .arg("-o")
                .arg(&bound);
            cmd
        },
        &[(&bound, &bundle_ok)],
        8,
    ));
    // finetune writing a checkpoint at every step, then its coefficient file.
    let train = dir.join("train.jsonl");
    let lines: String = (0..16)
        .map(|i| {
            format!(
                "{{\"input_ids\": [2, {}, {}, 3], \"label\": {}}}\n",
                10 + i,
                40 + i,
                i % 2
            )
        })
        .collect();
    std::fs::write(&train, lines).expect("train");
    let finetune = |steps: &str| {
        let mut cmd = elx();
        cmd.arg("finetune")
            .arg("--model")
            .arg(&model)
            .arg("--bundle")
            .arg(&bound)
            .arg("--train")
            .arg(&train)
            .args([
                "--steps",
                steps,
                "--batch-size",
                "4",
                "--checkpoint-every",
                "1",
                "--checkpoint",
            ])
            .arg(&ck)
            .arg("-o")
            .arg(&ft);
        cmd
    };
    ok(&mut finetune("3"));
    let ck_ok = |p: &Path| checkpoint_complete(p);
    hits.push(kill_at_every_moment(
        || finetune("24"),
        &[(&ck, &ck_ok), (&ft, &coeffs_ok)],
        10,
    ));
    println!("kills that hit a running process (extract, project, bind, finetune): {hits:?}");
    for (what, h) in ["extract", "project", "bind", "finetune"].iter().zip(&hits) {
        assert!(*h >= 2, "{what}: only {h} kills hit a running process");
    }
    // No temporary file survives the next successful write.
    write_bundle_bound_and_task(&[0, 1, 2], &model, &b, &bound, &c);
    ok(&mut finetune("2"));
    let temps: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_is_a_named_error_and_the_old_file_stays() {
    let dir = temp_dir("cli-full-disk");
    let model = fixture("tiny-bert/model.onnx");
    let (b, bound, c) = (
        dir.join("b.elxb"),
        dir.join("bound.elxb"),
        dir.join("c.elxc"),
    );
    write_bundle_bound_and_task(&[0, 1, 2], &model, &b, &bound, &c);
    // Files may not grow past 512 bytes (`ulimit -f 1`: 512-byte blocks); SIGXFSZ ignored, so a
    // write past it fails with EFBIG as on a full disk instead of killing the process.
    let limited = |args: &[&std::ffi::OsStr]| {
        let o = Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_elx"))
            .args(args)
            .output()
            .expect("sh runs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let cases: Vec<(PathBuf, Vec<std::ffi::OsString>)> = vec![
        (b.clone(), {
            let mut a: Vec<std::ffi::OsString> = vec!["extract".into()];
            a.extend(adapters(&[0, 1, 2, 3, 4]).into_iter().map(Into::into));
            a.extend(["-o".into(), b.clone().into()]);
            a
        }),
        (
            bound.clone(),
            vec![
                "bind".into(),
                b.clone().into(),
                "--base".into(),
                model.clone().into(),
                "-o".into(),
                bound.clone().into(),
            ],
        ),
        (
            c.clone(),
            vec![
                "project".into(),
                fixture("adapters/task5").into(),
                "--bundle".into(),
                b.clone().into(),
                "-o".into(),
                c.clone().into(),
            ],
        ),
    ];
    for (out, args) in cases {
        let old = std::fs::read(&out).expect("old");
        assert!(
            old.len() > 512,
            "{} must exceed the limit to test it",
            out.display()
        );
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, err) = limited(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&out.display().to_string()) && err.contains("File too large"),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read(&out).expect("old"),
            old,
            "{} changed",
            out.display()
        );
    }
    let temps: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `elx args` with stdout (and, when `stderr_full`, stderr) on /dev/full.
fn on_dev_full(args: &[&Path], stderr_full: bool) -> std::process::Output {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let mut c = elx();
    c.args(args).stdout(full());
    if stderr_full {
        c.stderr(full());
    }
    c.output().expect("elx runs")
}

/// Issue 29, case 3: a full disk under stdout (`> /dev/full`) is an error naming `<stdout>`
/// with status 1 in every subcommand, never a panic (101); with stderr full too
/// (`2>/dev/full`), the status stays 1 (the message is lost, not the status).
#[test]
fn a_full_stdout_or_stderr_is_status_1_not_a_panic() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full here; skipped");
        return;
    }
    let dir = temp_dir("cli-devfull");
    let p = |s: &'static str| Path::new(s);
    let bundle = dir.join("b.elxb");
    let srcs = adapters(&[0, 1, 2, 3, 4]);
    let mut extract: Vec<&Path> = vec![p("extract")];
    extract.extend(srcs.iter().map(PathBuf::as_path));
    extract.extend([p("-o"), bundle.as_path()]);
    // extract itself, onto a full stdout: the bundle is written, then the report fails.
    let o = on_dev_full(&extract, false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(bundle.exists());
    let model = fixture("tiny-bert/model.onnx");
    let (bound, coeffs, rec) = (dir.join("bound.elxb"), dir.join("t5.elxc"), dir.join("rec"));
    let t5 = fixture("adapters/task5");
    let train = dir.join("train.jsonl");
    std::fs::write(
        &train,
        "{\"input_ids\": [2, 5, 3], \"label\": 0}\n{\"input_ids\": [2, 6, 3], \"label\": 1}\n",
    )
    .unwrap();
    let ft = dir.join("ft.elxc");
    let cases: Vec<Vec<&Path>> = vec![
        vec![p("inspect"), &bundle],
        vec![p("bind"), &bundle, p("--base"), &model, p("-o"), &bound],
        vec![p("project"), &t5, p("--bundle"), &bundle, p("-o"), &coeffs],
        vec![p("inspect"), &coeffs],
        vec![
            p("reconstruct"),
            &coeffs,
            p("--bundle"),
            &bundle,
            p("-o"),
            &rec,
        ],
        vec![
            p("inspect"),
            &bundle,
            p("--adapters"),
            &srcs[0],
            &srcs[1],
            &srcs[2],
            p("--held-out"),
        ],
        vec![
            p("finetune"),
            p("--model"),
            &model,
            p("--bundle"),
            &bound,
            p("--train"),
            &train,
            p("--steps"),
            p("1"),
            p("-o"),
            &ft,
        ],
    ];
    for args in &cases {
        let o = on_dev_full(args, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("<stdout>")
                && err.contains("No space left on device")
                && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        let o = on_dev_full(args, true);
        assert_eq!(o.status.code(), Some(1), "{args:?} with stderr full too");
    }
    // An error path with stderr full: status 1, not 101.
    let o = on_dev_full(&[p("inspect"), &dir.join("missing.elxb")], true);
    assert_eq!(o.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
