//! Loading, unloading and describing tasks.

use crate::error::*;
use crate::ffi::*;
use crate::runtime::*;
use std::ffi::c_char;
use std::path::Path;

/// Loads a task file (.elxc), checked against the runtime's bundle, and writes its id to
/// `*task`. Ids are never reused. Safe while other threads run.
///
/// # Safety
/// `rt` is a live runtime; `path` a NUL-terminated string; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_load(
    rt: *const ElxRuntime,
    path: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (rt, path) = unsafe { (runtime(rt)?, text(path, "path")?) };
        if task.is_null() {
            return Err(null("task"));
        }
        let id = id_out(rt.runner.engine().load_task(Path::new(path))?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Loads a task from the bytes of a .elxc file (copied; `bytes` is only borrowed). `name`
/// (may be NULL) stands for the file in error messages.
///
/// # Safety
/// `rt` is a live runtime; `bytes` holds `len` bytes; `name` is null or a NUL-terminated
/// string; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_load_bytes(
    rt: *const ElxRuntime,
    bytes: *const u8,
    len: usize,
    name: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (rt, data) = unsafe { (runtime(rt)?, slice(bytes, len, "bytes")?) };
        let name = if name.is_null() {
            "<task bytes>"
        } else {
            // SAFETY: per the contract.
            unsafe { text(name, "name")? }
        };
        if task.is_null() {
            return Err(null("task"));
        }
        let id = id_out(
            rt.runner
                .engine()
                .load_task_bytes(Path::new(name), data.to_vec())?,
        )?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Unloads a task. Runs already using it finish with it; later calls naming it fail with
/// `ELX_STATUS_USAGE`.
///
/// # Safety
/// `rt` is a live runtime.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_unload(rt: *const ElxRuntime, task: u32) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        rt.runner.engine().unload_task(task_id(task))?;
        Ok(())
    })
}

/// The ids of the loaded tasks in load order, into `ids` (`cap` entries); `*needed` gets
/// their number (size-query convention).
///
/// # Safety
/// `rt` is a live runtime; `ids` is null or holds `cap` entries; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_list(
    rt: *const ElxRuntime,
    ids: *mut u32,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let list: Vec<u32> = rt
            .runner
            .engine()
            .task_ids()
            .into_iter()
            .map(id_out)
            .collect::<Result<_, _>>()?;
        // SAFETY: per the contract.
        unsafe { copy_out(&list, ids, cap, needed, "ids") }
    })
}

/// A task's name (from its file), NUL-terminated, into `buf` (`cap` bytes); `*needed` gets
/// its size with the NUL.
///
/// # Safety
/// `rt` is a live runtime; `buf` is null or holds `cap` bytes; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_name(
    rt: *const ElxRuntime,
    task: u32,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (name, _) = rt.runner.engine().task_info(task_id(task))?;
        // SAFETY: per the contract.
        unsafe { copy_str(&name, buf, cap, needed, "buf") }
    })
}

/// The number of classes of a task's head (0 when it has none).
///
/// # Safety
/// `rt` is a live runtime; `classes` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_classes(
    rt: *const ElxRuntime,
    task: u32,
    classes: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (_, head) = rt.runner.engine().task_info(task_id(task))?;
        // SAFETY: per the contract.
        unsafe { put(classes, head.map_or(0, |h| h.labels.len()), "classes") }
    })
}

/// The label of class `class` of a task's head, NUL-terminated, into `buf`.
///
/// # Safety
/// As [`elx_task_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_label(
    rt: *const ElxRuntime,
    task: u32,
    class: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (name, head) = rt.runner.engine().task_info(task_id(task))?;
        let head = head.ok_or_else(|| no_head(&name))?;
        let label = head.labels.get(class).ok_or_else(|| {
            invalid(format!(
                "class {class} but task `{name}` has {} classes",
                head.labels.len()
            ))
        })?;
        // SAFETY: per the contract.
        unsafe { copy_str(label, buf, cap, needed, "buf") }
    })
}

pub(crate) fn no_head(task: &str) -> Fail {
    Fail::new(
        ElxStatus::NoHead,
        format!("task `{task}` has no head (its file holds coefficients only)"),
    )
}
