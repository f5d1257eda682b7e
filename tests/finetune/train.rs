//! Training behaviour of the finetuner on the pure-Rust tiny model: the loss falls on a
//! separable task, the coefficients alone fit a regression target through the loss callback,
//! zero-shot trains the head only, a resumed run is bit-identical, and bad data is refused.

use eigenlorax::bundle::{CoeffFile, Provenance};
use eigenlorax::finetune::testing::TinyModel;
use eigenlorax::finetune::{
    CoeffLayout, Event, FinetuneConfig, Finetuner, ForwardModel, Objective, Split,
};
use eigenlorax::util::GaussianRng;
use std::path::PathBuf;

const N: usize = 160;

fn model() -> TinyModel {
    TinyModel::new(7, N, 6, 12, 6, 4, 4)
}

/// Coefficients at rank `r` padded into the model's rank-4 layout.
fn target_params(m: &TinyModel, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = GaussianRng::new(seed);
    let n: usize = m.layout().iter().map(CoeffLayout::len).sum();
    (0..n).map(|_| (scale * rng.next_normal()) as f32).collect()
}

/// Three classes from a linear teacher on the features of the model adapted by a hidden
/// coefficient vector: separable by construction.
fn task() -> (Split, Split) {
    let mut m = model();
    let star = target_params(&m, 99, 0.6);
    let mut rng = GaussianRng::new(5);
    let d = m.dim();
    let teacher: Vec<f64> = (0..3 * d).map(|_| rng.next_normal()).collect();
    let labels: Vec<usize> = (0..N)
        .map(|i| {
            let f = m.features_f64(i, &star).unwrap();
            let s: Vec<f64> = (0..3)
                .map(|k| (0..d).map(|j| teacher[k * d + j] * f[j]).sum())
                .collect();
            (0..3).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap()
        })
        .collect();
    let train = Split {
        ids: (0..120).collect(),
        labels: labels[..120].to_vec(),
    };
    let val = Split {
        ids: (120..N).collect(),
        labels: labels[120..].to_vec(),
    };
    (train, val)
}

fn cfg() -> FinetuneConfig {
    FinetuneConfig {
        rank: 2,
        seed: 3,
        lr: 1e-2,
        head_lr: 5e-2,
        batch_size: 32,
        directions: 4,
        max_steps: 200,
        eval_every: 20,
        early_stop_patience: 0,
        ..FinetuneConfig::default()
    }
}

#[test]
fn loss_falls_on_a_separable_task() {
    let (train, val) = task();
    let mut ft = Finetuner::new(
        model(),
        cfg(),
        Objective::Classify { classes: 3 },
        train,
        Some(val.clone()),
    )
    .unwrap();
    let before = ft.evaluate(&val).unwrap();
    let theta0 = ft.params().to_vec();
    let report = ft.fit(&mut |_| {}).unwrap();
    let after = ft.evaluate(&val).unwrap();
    let (ce0, ce1) = (before.cross_entropy.unwrap(), after.cross_entropy.unwrap());
    let acc = after.accuracy.unwrap();
    let moved = ft
        .params()
        .iter()
        .zip(&theta0)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    eprintln!(
        "separable: val CE {ce0:.4} -> {ce1:.4}, val acc {:.3} -> {acc:.3}, steps {}, forward passes {}, best step {}, |Δθ| {moved:.3}",
        before.accuracy.unwrap(),
        report.steps,
        report.forward_passes,
        report.best_step
    );
    assert!((ce0 - 3f64.ln()).abs() < 1e-12, "zero head starts at ln 3");
    assert!(ce1 < 0.5 * ce0, "CE {ce0} -> {ce1}");
    assert!(acc > 0.9, "accuracy {acc}");
    assert!(moved > 1e-2, "coefficients trained too");
    // 2·D + 1 passes per step plus evaluations (one pass per 64 validation examples).
    assert_eq!(
        report.forward_passes,
        200 * 9 + (200 / 20) + 1,
        "2D+1 per step, 1 per evaluation, 1 before fit"
    );
}

#[test]
fn coefficients_alone_fit_a_regression_target() {
    // A custom loss on raw features: the squared distance to the features of a hidden
    // rank-2 coefficient vector. There is no head; only SPSA moves the coefficients.
    let mut m = model();
    let d = m.dim();
    let mut star = vec![0.0f32; m.layout().iter().map(CoeffLayout::len).sum()];
    // Rank-2 truth inside the rank-4 layout: rows 0..2 of alpha_A and columns 0..2 of alpha_B.
    let mut rng = GaussianRng::new(42);
    let mut off = 0;
    for l in m.layout().to_vec() {
        for i in 0..2 {
            for j in 0..l.k_a {
                star[off + i * l.k_a + j] = (0.5 * rng.next_normal()) as f32;
            }
        }
        let b = off + l.r * l.k_a;
        for i in 0..l.k_b {
            for j in 0..2 {
                star[b + i * l.r + j] = (0.5 * rng.next_normal()) as f32;
            }
        }
        off += l.len();
    }
    let targets: Vec<f64> = (0..N)
        .flat_map(|i| m.features_f64(i, &star).unwrap())
        .collect();
    let loss = move |f: &[f32], ids: &[usize]| -> f64 {
        let mut s = 0.0;
        for (k, &id) in ids.iter().enumerate() {
            for j in 0..d {
                s += (f64::from(f[k * d + j]) - targets[id * d + j]).powi(2);
            }
        }
        s / ids.len() as f64
    };
    let all = Split {
        ids: (0..N).collect(),
        labels: vec![],
    };
    let c = FinetuneConfig {
        lr: 2e-2,
        weight_decay: 0.0,
        max_steps: 300,
        eval_every: 50,
        ..cfg()
    };
    let mut ft = Finetuner::new(
        model(),
        c,
        Objective::Custom(Box::new(loss)),
        all.clone(),
        None,
    )
    .unwrap();
    let l0 = ft.evaluate(&all).unwrap().loss;
    ft.fit(&mut |_| {}).unwrap();
    let l1 = ft.evaluate(&all).unwrap().loss;
    eprintln!(
        "regression: MSE {l0:.4} -> {l1:.4} ({:.1}%)",
        100.0 * l1 / l0
    );
    assert!(ft.head().is_none());
    assert!(l1 < 0.5 * l0, "MSE {l0} -> {l1}");
}

#[test]
fn zero_shot_trains_the_head_only() {
    let (train, val) = task();
    let c = FinetuneConfig {
        zero_shot: true,
        max_steps: 60,
        ..cfg()
    };
    let mut ft = Finetuner::new(
        model(),
        c,
        Objective::Classify { classes: 3 },
        train,
        Some(val.clone()),
    )
    .unwrap();
    let theta0 = ft.params().to_vec();
    assert!(
        theta0.iter().filter(|v| **v != 0.0).count() == theta0.len(),
        "both sides random"
    );
    let report = ft.fit(&mut |_| {}).unwrap();
    assert_eq!(ft.params(), &theta0[..], "coefficients fixed");
    assert_eq!(
        report.forward_passes,
        60 + 3,
        "one pass per step, one per evaluation"
    );
    let e = ft.evaluate(&val).unwrap();
    assert!(e.cross_entropy.unwrap() < 3f64.ln(), "head learned: {e:?}");
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let cf = ft.to_coeff_file("sub", "t", &labels).unwrap();
    assert_eq!(cf.provenance, Provenance::ZeroShot);
    let l1 = &cf.modules["l1"];
    assert_eq!(
        (
            l1.alpha_a.nrows(),
            l1.alpha_a.ncols(),
            l1.alpha_b.nrows(),
            l1.alpha_b.ncols()
        ),
        (2, 4, 4, 2)
    );
    // alpha_A row-major first in the flat vector, then alpha_B [K_B x r].
    assert_eq!(l1.alpha_a[(1, 2)], theta0[4 + 2]);
    assert_eq!(l1.alpha_b[(3, 1)], theta0[8 + 3 * 2 + 1]);
    let h = cf.head.unwrap();
    assert_eq!(
        (h.weight.nrows(), h.weight.ncols(), h.bias.len()),
        (3, 6, 3)
    );
    assert!(
        ft.to_coeff_file("sub", "t", &labels[..2]).is_err(),
        "label count checked"
    );

    // The .elxc round trip (stored in f32).
    let dir = tmp("save");
    let path = dir.join("task.elxc");
    ft.save(&path, "sub", "t", &labels).unwrap();
    let back = CoeffFile::read(&path).unwrap();
    assert_eq!(
        (back.subspace_id.as_str(), back.task.as_str()),
        ("sub", "t")
    );
    assert_eq!(back.provenance, Provenance::ZeroShot);
    let b1 = &back.modules["l1"];
    assert_eq!(b1.alpha_b[(3, 1)], f64::from(theta0[8 + 3 * 2 + 1] as f32));
    let bh = back.head.unwrap();
    assert_eq!(bh.labels, labels);
    assert_eq!(bh.weight[(2, 5)], f64::from(h.weight[(2, 5)] as f32));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elx-ft-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn resume_is_bit_identical() {
    let (train, val) = task();
    let dir = tmp("resume");
    let c = FinetuneConfig {
        max_steps: 60,
        eval_every: 10,
        checkpoint_every: 10,
        early_stop_patience: 3,
        batch_size: 25, // 120 is not a multiple: epochs drop a remainder and wrap mid-run
        checkpoint_path: Some(dir.join("ck.safetensors")),
        ..cfg()
    };
    let run = |c: FinetuneConfig, resume: Option<&PathBuf>, keep: Option<u64>| {
        let mut ft = Finetuner::new(
            model(),
            c,
            Objective::Classify { classes: 3 },
            train.clone(),
            Some(val.clone()),
        )
        .unwrap();
        if let Some(p) = resume {
            ft.resume(p).unwrap();
        }
        let ck = dir.join("ck.safetensors");
        let mut log = Vec::new();
        let report = ft
            .fit(&mut |e| {
                if let Event::Checkpoint(s) = e
                    && Some(*s) == keep
                {
                    std::fs::copy(&ck, dir.join("mid.safetensors")).unwrap();
                }
                if let Event::Eval { metric, .. } = e {
                    log.push(metric.to_bits());
                }
            })
            .unwrap();
        let e = ft.evaluate(&val).unwrap();
        (
            ft.params().to_vec(),
            ft.head().unwrap().params().to_vec(),
            report,
            e,
            log,
        )
    };
    let (p_full, h_full, r_full, e_full, log_full) = run(c.clone(), None, Some(30));
    let mid = dir.join("mid.safetensors");
    let (p_res, h_res, r_res, e_res, log_res) = run(c.clone(), Some(&mid), None);
    eprintln!(
        "resume: full run {} steps, {} passes, best step {}, val CE {:.6}; resumed from step 30: identical bits {}",
        r_full.steps,
        r_full.forward_passes,
        r_full.best_step,
        e_full.loss,
        p_full
            .iter()
            .zip(&p_res)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&p_full), bits(&p_res));
    assert_eq!(bits(&h_full), bits(&h_res));
    assert_eq!(r_full, r_res);
    assert_eq!(e_full.loss.to_bits(), e_res.loss.to_bits());
    assert_eq!(
        log_full[3..],
        log_res[..],
        "evaluations after step 30 identical"
    );
    assert!(p_full.iter().any(|v| *v != 0.0));

    // A checkpoint of another run (other seed) is refused, naming the file.
    let other = FinetuneConfig {
        seed: 4,
        ..c.clone()
    };
    let mut ft = Finetuner::new(
        model(),
        other,
        Objective::Classify { classes: 3 },
        train.clone(),
        Some(val.clone()),
    )
    .unwrap();
    let err = ft.resume(&mid).unwrap_err().to_string();
    assert!(
        err.contains("mid.safetensors") && err.contains("`seed`: checkpoint 3, this run 4"),
        "{err}"
    );
    // A truncated checkpoint is an error, not a panic.
    let bytes = std::fs::read(&mid).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut ft = Finetuner::new(
        model(),
        c,
        Objective::Classify { classes: 3 },
        train,
        Some(val),
    )
    .unwrap();
    assert!(ft.resume(&cut).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_data_and_settings_are_refused() {
    let (train, val) = task();
    let mk = |c: FinetuneConfig, t: Split, v: Option<Split>| {
        Finetuner::new(model(), c, Objective::Classify { classes: 3 }, t, v)
            .err()
            .map(|e| e.to_string())
    };
    let e = mk(cfg(), Split::default(), None).unwrap();
    assert!(e.contains("training split is empty"), "{e}");
    let mut bad_val = val.clone();
    bad_val.labels[2] = 5;
    let e = mk(cfg(), train.clone(), Some(bad_val)).unwrap();
    assert!(
        e.contains("validation example 2") && e.contains("label 5") && e.contains("3 classes"),
        "{e}"
    );
    let e = mk(FinetuneConfig { rank: 5, ..cfg() }, train.clone(), None).unwrap();
    assert!(e.contains("rank 5") && e.contains("1..=4"), "{e}");
    let e = mk(FinetuneConfig { rank: 0, ..cfg() }, train.clone(), None).unwrap();
    assert!(e.contains("rank 0"), "{e}");
    let mut far = train.clone();
    far.ids[0] = N;
    let e = mk(cfg(), far, None).unwrap();
    assert!(e.contains("holds 160 examples"), "{e}");
    let e = mk(
        FinetuneConfig {
            directions: 0,
            ..cfg()
        },
        train.clone(),
        None,
    )
    .unwrap();
    assert!(e.contains("direction"), "{e}");
    let mut ft = Finetuner::new(
        model(),
        cfg(),
        Objective::Classify { classes: 3 },
        train,
        None,
    )
    .unwrap();
    assert!(
        ft.step(&[0, 500]).is_err(),
        "batch position beyond the split"
    );
    assert!(ft.step(&[]).is_err());
}

/// The task with validation labels shifted by one class: they disagree with training.
fn anti_task() -> (Split, Split) {
    let (train, val) = task();
    let anti = Split {
        ids: val.ids.clone(),
        labels: val.labels.iter().map(|y| (y + 1) % 3).collect(),
    };
    (train, anti)
}

#[test]
fn early_stopping_restores_the_best_parameters() {
    // Validation labels that disagree with training (shifted by one class): fitting the
    // training set makes the validation loss rise, so early stopping must fire and hand back
    // the parameters of the best evaluation.
    let (train, anti) = anti_task();
    let c = FinetuneConfig {
        max_steps: 400,
        eval_every: 10,
        early_stop_patience: 3,
        ..cfg()
    };
    let mut ft = Finetuner::new(
        model(),
        c,
        Objective::Classify { classes: 3 },
        train,
        Some(anti.clone()),
    )
    .unwrap();
    let mut metrics = Vec::new();
    let mut lrs = Vec::new();
    let report = ft
        .fit(&mut |e| match e {
            Event::Eval { metric, .. } => metrics.push(*metric),
            Event::Step(s) => lrs.push(s.lr),
            _ => {}
        })
        .unwrap();
    let best = metrics.iter().cloned().fold(f64::INFINITY, f64::min);
    let last = ft.evaluate(&anti).unwrap().loss;
    eprintln!(
        "early stop: stopped at step {} of 400, best step {}, best val CE {best:.4}, last eval {:.4}, lr {:.1e} -> {:.1e}",
        report.steps,
        report.best_step,
        metrics.last().unwrap(),
        lrs[0],
        lrs.last().unwrap()
    );
    assert!(report.stopped_early && report.steps < 400);
    assert_eq!(
        report.steps,
        report.best_step + 30,
        "three evaluations without improvement"
    );
    assert_eq!(report.best_metric.to_bits(), best.to_bits());
    assert_eq!(
        last.to_bits(),
        best.to_bits(),
        "restored parameters reproduce the best evaluation"
    );
    // Warm-up: 6% of 400 steps = 24 steps from lr/24 up to the peak.
    assert_eq!(lrs[0], 1e-2 / 24.0);
    assert_eq!(lrs[23], 1e-2);
}

#[test]
fn eval_at_start_lets_the_starting_point_compete() {
    // With `eval_at_start`, the parameters training started from are evaluated at step 0 and
    // can be the ones restored: the result is never worse on validation than the start.
    let (train, anti) = anti_task();
    let c = FinetuneConfig {
        max_steps: 200,
        eval_every: 10,
        early_stop_patience: 3,
        eval_at_start: true,
        ..cfg()
    };
    let mut ft = Finetuner::new(
        model(),
        c,
        Objective::Classify { classes: 3 },
        train,
        Some(anti.clone()),
    )
    .unwrap();
    let start = ft.evaluate(&anti).unwrap().loss;
    let mut evals = Vec::new();
    let report = ft
        .fit(&mut |e| {
            if let Event::Eval { step, metric, .. } = e {
                evals.push((*step, *metric));
            }
        })
        .unwrap();
    assert_eq!(evals[0], (0, start), "first evaluation before any step");
    assert!(report.best_metric <= start);
    let restored = ft.evaluate(&anti).unwrap().loss;
    assert_eq!(restored.to_bits(), report.best_metric.to_bits());
    eprintln!(
        "eval_at_start: start {start:.4}, best {:.4} at step {}, stopped at {}",
        report.best_metric, report.best_step, report.steps
    );
}

/// A checkpoint is covered by the SHA-256 of its state, and a resume checks every number:
/// a NaN schedule multiplier, an Inf in the best head or a best loss "measured" at step 0
/// are refused even when the hash was recomputed to match (issue 13: they resumed silently).
#[test]
fn a_corrupt_or_inconsistent_checkpoint_is_refused() {
    use eigenlorax::finetune::checkpoint::{Checkpoint, HASH_KEY, STATE_KEY};
    let (train, val) = task();
    let dir = tmp("ck-corrupt");
    let ck = dir.join("ck.safetensors");
    let c = FinetuneConfig {
        max_steps: 20,
        eval_every: 10,
        checkpoint_every: 10,
        checkpoint_path: Some(ck.clone()),
        ..cfg()
    };
    let finetuner = || {
        Finetuner::new(
            model(),
            c.clone(),
            Objective::Classify { classes: 3 },
            train.clone(),
            Some(val.clone()),
        )
        .unwrap()
    };
    finetuner().fit(&mut |_| {}).unwrap();
    // The run's own checkpoint (step 20) resumes.
    finetuner()
        .resume(&ck)
        .expect("the written checkpoint resumes");
    let sizes = {
        let bytes = std::fs::read(&ck).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut s = [0usize; 8];
        for (i, n) in eigenlorax::finetune::checkpoint::TENSORS.iter().enumerate() {
            s[i] = st.tensor(n).unwrap().shape()[0];
        }
        s
    };
    let good = Checkpoint::read(&ck, &sizes).expect("read");

    // A flipped bit in a vector, the file otherwise intact: the hash refuses it.
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    let flipped = dir.join("flipped.safetensors");
    std::fs::write(&flipped, &bytes).unwrap();
    let e = finetuner().resume(&flipped).unwrap_err().to_string();
    assert!(
        e.contains("flipped.safetensors") && e.contains(HASH_KEY) && e.contains("modified"),
        "{e}"
    );

    // Forged states, written with a matching hash.
    let forged = |name: &str, edit: &dyn Fn(&mut Checkpoint)| -> String {
        let mut k = good.clone();
        edit(&mut k);
        let p = dir.join(name);
        k.write(&p).unwrap();
        finetuner().resume(&p).unwrap_err().to_string()
    };
    let e = forged("nan-mult", &|k| {
        k.scalars.sched_multiplier = f64::NAN.to_bits()
    });
    assert!(e.contains("sched_multiplier") && e.contains("NaN"), "{e}");
    let e = forged("inf-head", &|k| k.tensors[7][0] = f64::INFINITY);
    assert!(e.contains("best_head") && e.contains("inf at 0"), "{e}");
    let e = forged("best-at-0", &|k| {
        k.scalars.early_best = 0f64.to_bits();
        k.scalars.early_best_step = 0;
    });
    assert!(e.contains("early_best") && e.contains("at step 0"), "{e}");
    let e = forged("neg-v", &|k| k.tensors[3][0] = -1.0);
    assert!(e.contains("adam_theta_v"), "{e}");
    let e = forged("old-version", &|k| k.scalars.version = 1);
    assert!(e.contains(STATE_KEY) || e.contains("version"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 29: a run that diverges stops at the step it does, naming the tensor, before any
/// file is written from it; decay settings that would flip the weights are refused up front.
#[test]
fn a_diverging_run_is_an_error_before_any_file() {
    let (train, _) = task();
    let dir = std::env::temp_dir().join(format!("elx-diverge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = dir.join("ck.elxk");
    // No weight decay, a head rate of 1e30: Adam moves each weight by ~1e30 in one step,
    // far beyond what logits in float32 can carry (sqrt(f32::MAX) / dim).
    for zero_shot in [false, true] {
        let c = FinetuneConfig {
            head_lr: 1e30,
            weight_decay: 0.0,
            zero_shot,
            checkpoint_every: 1,
            checkpoint_path: Some(ck.clone()),
            max_steps: 4,
            ..cfg()
        };
        let mut ft = Finetuner::new(
            model(),
            c,
            Objective::Classify { classes: 3 },
            train.clone(),
            None,
        )
        .unwrap();
        let e = ft.fit(&mut |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("training diverged at step 1") && e.contains("head.weight"),
            "{e}"
        );
        assert!(
            !ck.exists(),
            "a checkpoint was written from a diverged state"
        );
        assert!(ft.check_trained().is_err());
        assert!(
            ft.to_coeff_file("sub", "t", &["a".into(), "b".into(), "c".into()])
                .is_err()
        );
    }
    // lr x weight decay >= 1: refused before the first step, naming both.
    for (lr, head_lr) in [(20.0, 1e-2), (1e-2, 1e8)] {
        let c = FinetuneConfig {
            lr,
            head_lr,
            weight_decay: 0.1,
            ..cfg()
        };
        let e = Finetuner::new(
            model(),
            c,
            Objective::Classify { classes: 3 },
            train.clone(),
            None,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.contains("weight decay") && e.contains("below 1"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 29: values finite in f64 but beyond float32 (the file stores f32) are refused by the
/// writer instead of becoming `inf` in the file.
#[test]
fn a_task_file_never_holds_an_infinity() {
    let (train, _) = task();
    let mut ft = Finetuner::new(
        model(),
        cfg(),
        Objective::Classify { classes: 3 },
        train,
        None,
    )
    .unwrap();
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let mut cf = ft.to_coeff_file("sub", "t", &labels).unwrap();
    cf.head.as_mut().unwrap().weight[(0, 0)] = -1e39;
    let p = std::env::temp_dir().join(format!("elx-inf-{}.elxc", std::process::id()));
    let e = cf.write(&p).unwrap_err().to_string();
    assert!(e.contains("head") && e.contains("float32"), "{e}");
    assert!(!p.exists());
    let _ = ft.model();
}

/// Issue 29: without a validation split there is nothing to measure before the first step,
/// so a run that evaluates its start does not record a best loss of 0 at step 0 (which kept
/// the untrained, all-zero head).
#[test]
fn without_validation_the_start_is_not_a_best_of_zero() {
    let (train, _) = task();
    let c = FinetuneConfig {
        eval_at_start: true,
        zero_shot: true,
        max_steps: 20,
        eval_every: 10,
        ..cfg()
    };
    let mut ft =
        Finetuner::new(model(), c, Objective::Classify { classes: 3 }, train, None).unwrap();
    let r = ft.fit(&mut |_| {}).unwrap();
    assert!(r.best_step >= 10 && r.best_metric > 0.0, "{r:?}");
    assert!(ft.head().unwrap().weight().iter().any(|w| *w != 0.0));
}
