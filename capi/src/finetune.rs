//! Personalization: on-device finetuning of a new task.

use crate::error::*;
use crate::ffi::*;
use crate::runtime::*;
use eigenlorax::finetune::cache::CachedFeatures;
use eigenlorax::finetune::data::{Example, RawSet, class_indices, label_set};
use eigenlorax::finetune::recipe;
use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::finetune::{FinetuneConfig, Finetuner, Objective, Split};
use eigenlorax::serve::HiddenState;
use eigenlorax::serve::input::TextEncoder;
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
    pub(crate) ft: Finetuner<CachedFeatures<SequenceModel<HiddenState>>>,
    pub(crate) classes: Vec<String>,
    pub(crate) subspace_id: String,
    pub(crate) val: Option<Split>,
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

/// Labelled texts as examples (tokenized, never padded) and their raw labels.
///
/// # Safety
/// `texts` and `labels` hold `n` NUL-terminated strings each.
pub(crate) unsafe fn labelled(
    enc: &TextEncoder,
    texts: *const *const c_char,
    labels: *const *const c_char,
    n: usize,
    what: &str,
    truncate: bool,
) -> Result<RawSet, Fail> {
    // SAFETY: per the contract.
    let (ts, ls) = unsafe {
        (
            slice(texts, n, &format!("{what}_texts"))?,
            slice(labels, n, &format!("{what}_labels"))?,
        )
    };
    let mut set = RawSet::default();
    for (i, (&t, &l)) in ts.iter().zip(ls).enumerate() {
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
        let (ids, cut) = enc.ids_truncated(t)?;
        if cut && !truncate {
            return Err(invalid(format!(
                "{what}_texts[{i}] has more than the {} tokens the model accepts; set options.truncate to cut it",
                enc.max_length()
            )));
        }
        set.truncated += usize::from(cut);
        set.examples.push(Example {
            attention_mask: vec![1; ids.len()],
            input_ids: ids.into_iter().map(i64::from).collect(),
        });
        set.labels.push(l.to_string());
        set.lines.push(i + 1);
    }
    Ok(set)
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
        let enc = rt
            .text
            .as_ref()
            .ok_or_else(|| Fail::new(ElxStatus::Usage, rt.no_text.clone()))?;
        // SAFETY: per the contract.
        let train =
            unsafe { labelled(enc, train_texts, train_labels, n_train, "train", o.truncate)? };
        // SAFETY: per the contract.
        let val = unsafe { labelled(enc, val_texts, val_labels, n_val, "val", o.truncate)? };
        let classes = label_set(&train);
        if classes.len() < 2 {
            return Err(invalid(format!(
                "expected at least 2 distinct training labels to train a classifier, found {classes:?}"
            )));
        }
        let train_labels = class_indices(Path::new("<train labels>"), &train, &classes)?;
        let n_train = train.examples.len();
        let mut examples = train.examples;
        let val_split = if val.examples.is_empty() {
            None
        } else {
            let labels = class_indices(Path::new("<val labels>"), &val, &classes)?;
            let ids = (examples.len()..examples.len() + val.examples.len()).collect();
            examples.extend(val.examples);
            Some(Split { ids, labels })
        };
        // Exact gradients, as `elx finetune` by default (SPSA where the graph has ops
        // without a gradient rule).
        let model = SequenceModel::for_training(
            &rt.engine,
            examples,
            i64::from(enc.pad_id()),
            enc.max_length(),
            eigenlorax::finetune::GradMode::Exact,
        )?;
        let defaults = FinetuneConfig::default();
        let rank = if o.rank == 0 {
            rt.engine.min_rank()
        } else {
            o.rank as usize
        };
        let cfg = FinetuneConfig {
            rank,
            seed: o.seed,
            lr: o.lr,
            head_lr: o.head_lr,
            directions: o.directions as usize,
            batch_size: o.batch_size as usize,
            max_steps: o.max_steps,
            eval_every: o.eval_every,
            ..defaults
        };
        let train_split = Split {
            ids: (0..n_train).collect(),
            labels: train_labels,
        };
        // As `elx finetune` without a head warm-up: features cached while the coefficients
        // stay put, head and coefficients trained together.
        let ft = recipe::joint(
            CachedFeatures::new(model),
            cfg,
            Objective::Classify {
                classes: classes.len(),
            },
            train_split,
            val_split.clone(),
            None,
        )?;
        let handle = Box::new(ElxFinetune {
            ft,
            classes,
            subspace_id: rt.subspace_id.clone(),
            val: val_split,
        });
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
        let pause_at = h.ft.steps().saturating_add(steps);
        let r = h.ft.fit_until(pause_at, &mut |_| {})?;
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
        let split = h.val.clone().ok_or_else(|| {
            Fail::new(
                ElxStatus::Usage,
                "no validation texts were given to this run",
            )
        })?;
        let e = h.ft.evaluate(&split)?;
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
        h.ft.save(Path::new(path), &h.subspace_id, task, &h.classes)?;
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
        let coeffs = h.ft.to_coeff_file(&h.subspace_id, name, &h.classes)?;
        let id = id_out(rt.engine.insert_task(&coeffs)?)?;
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
        h.ft.save_checkpoint(Path::new(path))?;
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
        h.ft.resume(Path::new(path))?;
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
