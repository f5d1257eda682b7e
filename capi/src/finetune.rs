//! Personalization: on-device finetuning of a new task.

use crate::error::*;
use crate::ffi::*;
use crate::runtime::*;
use eigenlorax::finetune::job::{DataSource, FinetuneJob, FinetuneSpec, Recipe, TextOptions};
use eigenlorax::finetune::{FinetuneConfig, recipe};
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Settings of a finetuning run; fill with [`elx_finetune_options_default`] (the defaults
/// of `elx finetune`) and change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxFinetuneOptions {
    /// Coefficient rank (0: the bundle's smallest r_max, as `elx finetune`).
    pub rank: u32,
    /// Total optimisation steps of the run.
    pub max_steps: u64,
    /// Seed of the initialisation, the directions and the data order.
    pub seed: u64,
    /// Peak learning rate of the coefficients.
    pub lr: f64,
    /// Peak learning rate of the head.
    pub head_lr: f64,
    /// Examples per step.
    pub batch_size: u32,
    /// SPSA directions per step.
    pub directions: u32,
    /// Steps between evaluations (early stopping after 6 without improvement).
    pub eval_every: u64,
    /// Cut texts longer than the tokenizer's maximum length instead of refusing them.
    pub truncate: bool,
}

/// Where a finetuning run stands after [`elx_finetune_fit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ElxFitReport {
    /// Steps taken in total.
    pub steps: u64,
    /// Forward passes in total (training and evaluation).
    pub forward_passes: u64,
    /// Best monitored metric so far (validation loss, else mean training loss); NaN before
    /// the first evaluation.
    pub best_metric: f64,
    /// Step at which it was measured.
    pub best_step: u64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether the run is over (max_steps reached or stopped early): the best parameters
    /// are then in place. Otherwise it is paused with its current parameters.
    pub finished: bool,
}

/// A finetuning run for a new task on a runtime's engine. Use it only on the thread that
/// created it. Free with [`elx_finetune_free`].
pub struct ElxFinetune {
    pub(crate) job: FinetuneJob,
}

/// Fills `options` with the defaults of `elx finetune`.
///
/// # Safety
/// `options` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_options_default(
    options: *mut ElxFinetuneOptions,
) -> ElxStatus {
    guard(|| {
        let d = recipe::Defaults::EXACT;
        let o = ElxFinetuneOptions {
            rank: 0,
            max_steps: d.steps,
            seed: 0,
            lr: FinetuneConfig::default().lr,
            head_lr: d.head_lr,
            batch_size: u32::try_from(d.batch_size).unwrap_or(u32::MAX),
            directions: u32::try_from(d.directions).unwrap_or(u32::MAX),
            eval_every: d.eval_every,
            truncate: false,
        };
        // SAFETY: per the contract.
        unsafe { put(options, o, "options") }
    })
}

/// `n` (text, label) pairs from C.
///
/// # Safety
/// `texts` and `labels` hold `n` NUL-terminated strings each.
pub(crate) unsafe fn labelled(
    texts: *const *const c_char,
    labels: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<(String, String)>, Fail> {
    // SAFETY: per the contract.
    let (ts, ls) = unsafe {
        (
            slice(texts, n, &format!("{what}_texts"))?,
            slice(labels, n, &format!("{what}_labels"))?,
        )
    };
    ts.iter()
        .zip(ls)
        .enumerate()
        .map(|(i, (&t, &l))| {
            // SAFETY: per the contract.
            let (t, l) = unsafe {
                (
                    text(t, &format!("{what}_texts[{i}]"))?,
                    text(l, &format!("{what}_labels[{i}]"))?,
                )
            };
            if l.is_empty() {
                return Err(invalid(format!("{what}_labels[{i}] is empty")));
            }
            Ok((t.to_string(), l.to_string()))
        })
        .collect()
}

/// Sets up finetuning of a new task on the runtime's engine from labelled texts (`n_train`
/// training pairs; `n_val` validation pairs, which may be 0 with NULL arrays), with
/// `options` (NULL: the defaults). The classes are the distinct training labels, sorted.
/// The run is not started: call [`elx_finetune_fit`]. Free with [`elx_finetune_free`].
///
/// # Safety
/// `rt` is a live runtime; the text and label arrays hold their counts of NUL-terminated
/// strings; `options` null or valid; `out` writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn elx_finetune_new_text(
    rt: *const ElxRuntime,
    train_texts: *const *const c_char,
    train_labels: *const *const c_char,
    n_train: usize,
    val_texts: *const *const c_char,
    val_labels: *const *const c_char,
    n_val: usize,
    options: *const ElxFinetuneOptions,
    out: *mut *mut ElxFinetune,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let mut o = ElxFinetuneOptions {
            rank: 0,
            max_steps: 0,
            seed: 0,
            lr: 0.0,
            head_lr: 0.0,
            batch_size: 0,
            directions: 0,
            eval_every: 0,
            truncate: false,
        };
        // SAFETY: the pointer is valid for a write.
        unsafe { elx_finetune_options_default(&mut o) };
        // SAFETY: per the contract.
        if let Some(given) = unsafe { options.as_ref() } {
            o = *given;
        }
        // SAFETY: per the contract.
        let train = unsafe { labelled(train_texts, train_labels, n_train, "train")? };
        // SAFETY: per the contract.
        let val = unsafe { labelled(val_texts, val_labels, n_val, "val")? };
        let mut classes: Vec<&str> = train.iter().map(|(_, l)| l.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() < 2 {
            return Err(invalid(format!(
                "expected at least 2 distinct training labels to train a classifier, found {classes:?}"
            )));
        }
        // Exact gradients, as `elx finetune` by default (SPSA where the graph has ops
        // without a gradient rule), without a head warm-up: head and coefficients trained
        // together on the runtime's tokenizer.
        let spec = FinetuneSpec {
            data: DataSource::Texts { train, val },
            text: TextOptions {
                truncate: o.truncate,
                ..TextOptions::default()
            },
            recipe: Recipe {
                rank: (o.rank > 0).then_some(o.rank as usize),
                steps: Some(o.max_steps),
                seed: o.seed,
                lr: Some(o.lr),
                head_lr: Some(o.head_lr),
                directions: o.directions as usize,
                batch_size: o.batch_size as usize,
                eval_every: Some(o.eval_every),
                ..Recipe::default()
            },
        };
        let job = FinetuneJob::on_runner(&spec, &rt.runner, &mut |_| Ok(()))?;
        let handle = Box::new(ElxFinetune { job });
        // SAFETY: checked above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// The finetune run behind a handle.
///
/// # Safety
/// `ft` is null or a live handle.
pub(crate) unsafe fn finetune<'a>(ft: *mut ElxFinetune) -> Result<&'a mut ElxFinetune, Fail> {
    // SAFETY: per the contract.
    unsafe { ft.as_mut() }.ok_or_else(|| null("finetune"))
}

/// Trains for up to `steps` more steps (fewer when the run ends: max_steps or early
/// stopping), then pauses. Slices add up to the uninterrupted run. `report` may be NULL.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `report` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_fit(
    ft: *mut ElxFinetune,
    steps: u64,
    report: *mut ElxFitReport,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { finetune(ft)? };
        let pause_at = h.job.steps().saturating_add(steps);
        let r = h.job.fit_until(pause_at, &mut |_| {})?;
        if !report.is_null() {
            let rep = ElxFitReport {
                steps: r.steps,
                forward_passes: r.forward_passes,
                best_metric: r.best_metric,
                best_step: r.best_step,
                stopped_early: r.stopped_early,
                finished: !r.paused,
            };
            // SAFETY: per the contract.
            unsafe { report.write(rep) };
        }
        Ok(())
    })
}

/// The validation loss (mean cross-entropy) and accuracy (either pointer may be NULL) at the
/// current parameters. `ELX_STATUS_USAGE` when no validation texts were given.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `loss`, `accuracy` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_validation_loss(
    ft: *mut ElxFinetune,
    loss: *mut f64,
    accuracy: *mut f64,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { finetune(ft)? };
        let split = h.job.validation().cloned().ok_or_else(|| {
            Fail::new(
                ElxStatus::Usage,
                "no validation texts were given to this run",
            )
        })?;
        let e = h.job.finetuner().evaluate(&split)?;
        if !loss.is_null() {
            // SAFETY: per the contract.
            unsafe { loss.write(e.loss) };
        }
        if !accuracy.is_null() {
            // SAFETY: per the contract.
            unsafe { accuracy.write(e.accuracy.unwrap_or(f64::NAN)) };
        }
        Ok(())
    })
}

/// Writes the task's .elxc (coefficients and head, labelled with the classes) atomically,
/// named `task_name`.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path`, `task_name` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_save(
    ft: *mut ElxFinetune,
    path: *const c_char,
    task_name: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path, task) = unsafe {
            (
                finetune(ft)?,
                text(path, "path")?,
                text(task_name, "task_name")?,
            )
        };
        h.job.write_task(Path::new(path), task)?;
        Ok(())
    })
}

/// Adds the task as trained so far to a runtime (of the same bundle) and writes its id.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `rt` a live runtime; `task_name`
/// NUL-terminated; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_add_task(
    ft: *mut ElxFinetune,
    rt: *const ElxRuntime,
    task_name: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, rt, name) = unsafe { (finetune(ft)?, runtime(rt)?, text(task_name, "task_name")?) };
        if task.is_null() {
            return Err(null("task"));
        }
        let coeffs = h.job.coeff_file(name)?;
        let id = id_out(rt.runner.engine().insert_task(&coeffs)?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Writes a checkpoint of the run (atomically): [`elx_finetune_resume`] on a run set up
/// with the same texts and options continues from it exactly.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_save_checkpoint(
    ft: *mut ElxFinetune,
    path: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path) = unsafe { (finetune(ft)?, text(path, "path")?) };
        h.job.finetuner().save_checkpoint(Path::new(path))?;
        Ok(())
    })
}

/// Restores a checkpoint written by [`elx_finetune_save_checkpoint`] (or `elx finetune
/// --checkpoint`) into a run set up with the same data and options.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_resume(
    ft: *mut ElxFinetune,
    path: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path) = unsafe { (finetune(ft)?, text(path, "path")?) };
        h.job.finetuner().resume(Path::new(path))?;
        Ok(())
    })
}

/// Frees a finetune handle (NULL: nothing).
///
/// # Safety
/// `ft` is null or a handle not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_free(ft: *mut ElxFinetune) {
    if !ft.is_null() {
        // SAFETY: per the contract, we own it from here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(ft) })));
    }
}
