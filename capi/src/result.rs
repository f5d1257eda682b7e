//! Reading a result: raw outputs, pooled rows and predictions.

use crate::error::*;
use crate::ffi::*;
use crate::tasks::*;
use eigenlorax::serve::input::{OutputTensor, Prediction};
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The outputs of one run: the raw graph outputs, the pooled rows and, for rows whose task
/// has a head, the prediction. Free with [`elx_result_free`].
pub struct ElxResult {
    pub(crate) outputs: Vec<OutputTensor>,
    pub(crate) pooled: Result<Vec<Vec<f32>>, Fail>,
    /// Per row: the task's name and, when it has a head, its prediction.
    pub(crate) rows: Vec<RowHead>,
}

pub(crate) struct RowHead {
    pub(crate) task: String,
    pub(crate) prediction: Option<Result<(Prediction, Vec<String>), Fail>>,
}

/// Frees a result (NULL: nothing).
///
/// # Safety
/// `result` is null or a result not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_free(result: *mut ElxResult) {
    if !result.is_null() {
        // SAFETY: per the contract, we own it from here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(result) })));
    }
}

/// The result behind a handle.
///
/// # Safety
/// `r` is null or a live result.
pub(crate) unsafe fn result_ref<'a>(r: *const ElxResult) -> Result<&'a ElxResult, Fail> {
    // SAFETY: per the contract.
    unsafe { r.as_ref() }.ok_or_else(|| null("result"))
}

/// The number of rows of a result.
///
/// # Safety
/// `result` is a live result; `rows` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_rows(result: *const ElxResult, rows: *mut usize) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        // SAFETY: per the contract.
        unsafe { put(rows, r.rows.len(), "rows") }
    })
}

/// The number of graph outputs of a result.
///
/// # Safety
/// `result` is a live result; `count` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_count(
    result: *const ElxResult,
    count: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        // SAFETY: per the contract.
        unsafe { put(count, r.outputs.len(), "count") }
    })
}

pub(crate) fn output(r: &ElxResult, i: usize) -> Result<&OutputTensor, Fail> {
    r.outputs.get(i).ok_or_else(|| {
        invalid(format!(
            "output {i} but the model has {} outputs",
            r.outputs.len()
        ))
    })
}

/// The name of graph output `index`, NUL-terminated, into `buf`.
///
/// # Safety
/// `result` is a live result; `buf` null or `cap` bytes; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_name(
    result: *const ElxResult,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_str(&o.name, buf, cap, needed, "buf") }
    })
}

/// The shape of graph output `index` into `dims` (`cap` entries); `*needed` gets its rank.
///
/// # Safety
/// `result` is a live result; `dims` null or `cap` entries; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_shape(
    result: *const ElxResult,
    index: usize,
    dims: *mut usize,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&o.shape, dims, cap, needed, "dims") }
    })
}

/// The values of graph output `index` (f32, row-major) into `values` (`cap` floats).
///
/// # Safety
/// `result` is a live result; `values` null or `cap` floats; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_data(
    result: *const ElxResult,
    index: usize,
    values: *mut f32,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&o.data, values, cap, needed, "values") }
    })
}

/// The pooled rows [rows x features] (f32, row-major) into `values`; `*features` (when
/// not NULL) gets the features per row and `*needed` rows x features.
///
/// # Safety
/// `result` is a live result; `values` null or `cap` floats; `features` and `needed` null
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_pooled(
    result: *const ElxResult,
    values: *mut f32,
    cap: usize,
    features: *mut usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        let rows = r.pooled.as_ref().map_err(Clone::clone)?;
        let d = rows.first().map_or(0, Vec::len);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        if !features.is_null() {
            // SAFETY: per the contract.
            unsafe { features.write(d) };
        }
        // SAFETY: per the contract.
        unsafe { copy_out(&flat, values, cap, needed, "values") }
    })
}

pub(crate) fn prediction(r: &ElxResult, row: usize) -> Result<&(Prediction, Vec<String>), Fail> {
    let rh = r.rows.get(row).ok_or_else(|| {
        invalid(format!(
            "row {row} but the result has {} rows",
            r.rows.len()
        ))
    })?;
    match &rh.prediction {
        None => Err(no_head(&rh.task)),
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => Err(e.clone()),
    }
}

/// The head's answer for row `row`: the class index into `*class` (when not NULL) and the
/// softmax probabilities into `probs` (`cap` doubles; `*needed` gets the class count).
/// `ELX_STATUS_NO_HEAD` when the row's task has no head.
///
/// # Safety
/// `result` is a live result; `probs` null or `cap` doubles; `class`, `needed` null or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_prediction(
    result: *const ElxResult,
    row: usize,
    class: *mut usize,
    probs: *mut f64,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (p, _) = prediction(unsafe { result_ref(result)? }, row)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&p.probs, probs, cap, needed, "probs")? };
        if !class.is_null() {
            // SAFETY: per the contract.
            unsafe { class.write(p.class) };
        }
        Ok(())
    })
}

/// The label of the predicted class of row `row`, NUL-terminated, into `buf`.
///
/// # Safety
/// As [`elx_result_output_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_label(
    result: *const ElxResult,
    row: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (p, _) = prediction(unsafe { result_ref(result)? }, row)?;
        // SAFETY: per the contract.
        unsafe { copy_str(&p.label, buf, cap, needed, "buf") }
    })
}

/// The label of class `class` of row `row`'s head (for printing all probabilities).
///
/// # Safety
/// As [`elx_result_output_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_class_label(
    result: *const ElxResult,
    row: usize,
    class: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (_, labels) = prediction(unsafe { result_ref(result)? }, row)?;
        let label = labels.get(class).ok_or_else(|| {
            invalid(format!(
                "class {class} but the head has {} classes",
                labels.len()
            ))
        })?;
        // SAFETY: per the contract.
        unsafe { copy_str(label, buf, cap, needed, "buf") }
    })
}
