//! Running a batch of texts, token ids or raw tensors, one task or mixed.

use crate::error::*;
use crate::ffi::*;
use crate::result::*;
use crate::runtime::*;
use eigenlorax::serve::input::{InputTensor, TensorData, apply_head, assemble};
use eigenlorax::serve::job;
use eigenlorax::serve::store::TaskId;
use std::ffi::{c_char, c_void};
use std::path::Path;

/// Element type of an [`ElxTensor`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxDtype {
    /// 32-bit float.
    F32 = 0,
    /// 64-bit signed integer (token ids, masks).
    I64 = 1,
}

/// One raw input tensor of [`elx_run_tensors`]. Everything is borrowed for the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxTensor {
    /// The model input's name (e.g. "input_ids"), NUL-terminated UTF-8.
    pub name: *const c_char,
    /// An `ElxDtype` value.
    pub dtype: u32,
    /// `ndim` dimensions, outermost first (the first is the batch axis).
    pub shape: *const usize,
    /// Number of dimensions.
    pub ndim: usize,
    /// The values, row-major, native byte order; need not be aligned.
    pub data: *const c_void,
    /// Bytes at `data`: the product of the shape times 4 (F32) or 8 (I64).
    pub data_bytes: usize,
}

/// Which task each row runs with.
pub(crate) enum Rows<'a> {
    /// Every row with one task.
    One(u32),
    /// Row i with the i-th task.
    Each(&'a [u32]),
}

/// Runs `batch` and gathers the outputs, pooled rows and predictions.
pub(crate) fn run_batch(
    rt: &ElxRuntime,
    rows: Rows<'_>,
    batch: &eigenlorax::serve::input::Batch,
) -> Result<ElxResult, Fail> {
    let ids: Vec<TaskId>;
    let rows = match rows {
        Rows::One(t) => job::Rows::One(task_id(t)),
        Rows::Each(ts) => {
            // An argument error of the caller's (ELX_STATUS_INVALID_ARGUMENT), checked here.
            if ts.len() != batch.rows {
                return Err(invalid(format!(
                    "a mixed batch pairs row i with task i: {} rows but {} tasks",
                    batch.rows,
                    ts.len()
                )));
            }
            ids = ts.iter().map(|&t| task_id(t)).collect();
            job::Rows::Each(&ids)
        }
    };
    let r = rt.runner.run(batch, rows)?;
    let pooled = r.pooled.map_err(Fail::from);
    let heads = r
        .rows
        .into_iter()
        .enumerate()
        .map(|(row, (task, head))| RowHead {
            task,
            prediction: head.map(|h| match &pooled {
                Ok(p) => p
                    .get(row)
                    .ok_or_else(|| Fail::new(ElxStatus::Internal, "pooling lost a row"))
                    .and_then(|v| apply_head(&h, v).map_err(Fail::from))
                    .map(|pr| (pr, h.labels.clone())),
                Err(e) => Err(e.clone()),
            }),
        })
        .collect();
    Ok(ElxResult {
        outputs: r.outputs,
        pooled,
        rows: heads,
    })
}

/// Hands a result to C.
///
/// # Safety
/// `out` is writable (checked non-null by the caller).
pub(crate) unsafe fn give(out: *mut *mut ElxResult, r: ElxResult) -> Result<(), Fail> {
    // SAFETY: per the contract.
    unsafe { put(out, Box::into_raw(Box::new(r)), "out") }
}

/// The texts at `texts` as owned strings.
///
/// # Safety
/// `texts` holds `rows` NUL-terminated strings.
pub(crate) unsafe fn texts_of(
    texts: *const *const c_char,
    rows: usize,
) -> Result<Vec<String>, Fail> {
    if rows == 0 {
        return Err(invalid("no text to run (rows is 0)"));
    }
    // SAFETY: per the contract.
    let ptrs = unsafe { slice(texts, rows, "texts")? };
    ptrs.iter()
        .enumerate()
        // SAFETY: per the contract.
        .map(|(i, &p)| unsafe { text(p, &format!("texts[{i}]")) }.map(str::to_string))
        .collect()
}

pub(crate) fn text_batch(
    rt: &ElxRuntime,
    texts: &[String],
) -> Result<eigenlorax::serve::input::Batch, Fail> {
    Ok(rt.runner.encode(texts)?)
}

/// Runs `rows` texts through the tokenizer and the model with task `task`. On success
/// `*out` owns a new result; free it with [`elx_result_free`].
///
/// # Safety
/// `rt` is a live runtime; `texts` holds `rows` NUL-terminated UTF-8 strings; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_text(
    rt: *const ElxRuntime,
    task: u32,
    texts: *const *const c_char,
    rows: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, texts) = unsafe { (runtime(rt)?, texts_of(texts, rows)?) };
        let batch = text_batch(rt, &texts)?;
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_text`] as a mixed batch: row i runs with `tasks[i]`, all in one pass.
///
/// # Safety
/// As [`elx_run_text`]; `tasks` holds `rows` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_text_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    texts: *const *const c_char,
    rows: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, texts, tasks) = unsafe {
            (
                runtime(rt)?,
                texts_of(texts, rows)?,
                slice(tasks, rows, "tasks")?,
            )
        };
        let batch = text_batch(rt, &texts)?;
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// The token batch for [`elx_run_ids`]: ids [rows x seq] and the mask (all ones when NULL);
/// token types are filled with zeros when the model takes them.
///
/// # Safety
/// `ids` (and `mask` when non-null) hold `rows * seq` values.
pub(crate) unsafe fn ids_batch(
    rt: &ElxRuntime,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
) -> Result<eigenlorax::serve::input::Batch, Fail> {
    if rows == 0 || seq == 0 {
        return Err(invalid(format!(
            "expected at least one row and one token, found rows {rows}, seq {seq}"
        )));
    }
    let n = rows
        .checked_mul(seq)
        .ok_or_else(|| invalid(format!("rows {rows} x seq {seq} overflows")))?;
    // SAFETY: per the contract.
    let ids = unsafe { slice(ids, n, "ids")? };
    let mut given = vec![InputTensor {
        name: "input_ids".into(),
        shape: vec![rows, seq],
        data: TensorData::I64(ids.to_vec()),
    }];
    if !mask.is_null() {
        // SAFETY: per the contract.
        let mask = unsafe { slice(mask, n, "mask")? };
        if let Some(i) = mask.iter().position(|&m| m != 0 && m != 1) {
            return Err(invalid(format!(
                "mask[{i}] is {}; expected 0 or 1",
                mask[i]
            )));
        }
        given.push(InputTensor {
            name: "attention_mask".into(),
            shape: vec![rows, seq],
            data: TensorData::I64(mask.to_vec()),
        });
    }
    Ok(assemble(
        Path::new("<token ids>"),
        given,
        rt.runner.engine().specs()?,
    )?)
}

/// Runs token ids [rows x seq] (row-major) with an attention mask of the same shape (NULL:
/// all ones) with task `task`.
///
/// # Safety
/// `rt` is a live runtime; `ids` and `mask` (when non-null) hold `rows * seq` values; `out`
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_ids(
    rt: *const ElxRuntime,
    task: u32,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        // SAFETY: per the contract.
        let batch = unsafe { ids_batch(rt, ids, mask, rows, seq)? };
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_ids`] as a mixed batch: row i runs with `tasks[i]`.
///
/// # Safety
/// As [`elx_run_ids`]; `tasks` holds `rows` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_ids_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, tasks) = unsafe { (runtime(rt)?, slice(tasks, rows, "tasks")?) };
        // SAFETY: per the contract.
        let batch = unsafe { ids_batch(rt, ids, mask, rows, seq)? };
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// The raw tensors as a batch for the model (missing masks and token types filled).
///
/// # Safety
/// `tensors` holds `n` valid [`ElxTensor`]s.
pub(crate) unsafe fn tensor_batch(
    rt: &ElxRuntime,
    tensors: *const ElxTensor,
    n: usize,
) -> Result<eigenlorax::serve::input::Batch, Fail> {
    // SAFETY: per the contract.
    let ts = unsafe { slice(tensors, n, "tensors")? };
    if ts.is_empty() {
        return Err(invalid("no input tensor (n is 0)"));
    }
    let mut given = Vec::with_capacity(ts.len());
    for (i, t) in ts.iter().enumerate() {
        // SAFETY: per the contract.
        let name = unsafe { text(t.name, &format!("tensors[{i}].name"))? };
        // SAFETY: per the contract.
        let shape = unsafe { slice(t.shape, t.ndim, &format!("tensors[{i}].shape"))? };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let width = match t.dtype {
            0 => 4,
            1 => 8,
            d => {
                return Err(invalid(format!(
                    "tensor `{name}`: unknown dtype {d} (expected 0 = F32 or 1 = I64)"
                )));
            }
        };
        let want = count
            .checked_mul(width)
            .ok_or_else(|| invalid(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if want != t.data_bytes {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} needs {want} bytes, data_bytes is {}",
                t.data_bytes
            )));
        }
        // Bytes, not typed values: the caller's data need not be aligned.
        // SAFETY: per the contract, data holds data_bytes bytes.
        let bytes = unsafe { slice(t.data.cast::<u8>(), want, &format!("tensors[{i}].data"))? };
        let data = if width == 4 {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(invalid(format!(
                    "tensor `{name}`: expected finite values, found {} at {j}",
                    v[j]
                )));
            }
            TensorData::F32(v)
        } else {
            TensorData::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
        };
        given.push(InputTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        });
    }
    Ok(assemble(
        Path::new("<input tensors>"),
        given,
        rt.runner.engine().specs()?,
    )?)
}

/// Runs raw input tensors (one per model input, by name; a missing `attention_mask` or
/// `token_type_ids` is filled with ones / zeros) with task `task`.
///
/// # Safety
/// `rt` is a live runtime; `tensors` holds `n` tensors whose pointers are valid as
/// documented on [`ElxTensor`]; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_tensors(
    rt: *const ElxRuntime,
    task: u32,
    tensors: *const ElxTensor,
    n: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        // SAFETY: per the contract.
        let batch = unsafe { tensor_batch(rt, tensors, n)? };
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_tensors`] as a mixed batch: row i (of the leading axis) runs with `tasks[i]`;
/// `n_tasks` must equal the number of rows.
///
/// # Safety
/// As [`elx_run_tensors`]; `tasks` holds `n_tasks` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_tensors_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    n_tasks: usize,
    tensors: *const ElxTensor,
    n: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, tasks) = unsafe { (runtime(rt)?, slice(tasks, n_tasks, "tasks")?) };
        // SAFETY: per the contract.
        let batch = unsafe { tensor_batch(rt, tensors, n)? };
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}
