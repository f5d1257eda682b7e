//! Borrowing from C (strings, arrays, out-pointers) and copying out under the size-query convention.

use crate::error::*;
use crate::runtime::*;
use eigenlorax::serve::store::TaskId;
use std::ffi::{CStr, c_char};

/// A borrowed NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for `'a`.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("`{what}` is not valid UTF-8")))
}

/// `n` borrowed values at `p` (`p` may be null only when `n` is 0).
///
/// # Safety
/// `p` is null or points to `n` initialized values alive for `'a`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], Fail> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(what));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(invalid(format!("`{what}`: {n} elements is too many")));
    }
    // SAFETY: non-null, n values per the contract, size checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Writes `value` to the out-pointer `p`.
///
/// # Safety
/// `p` is null or valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, value: T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and writable per the contract.
    unsafe { p.write(value) };
    Ok(())
}

/// Copies `src` into the caller's buffer (`cap` elements) under the size-query convention.
///
/// # Safety
/// `dst` is null or valid for `cap` writes; `needed` is null or writable.
pub(crate) unsafe fn copy_out<T: Copy>(
    src: &[T],
    dst: *mut T,
    cap: usize,
    needed: *mut usize,
    what: &str,
) -> Result<(), Fail> {
    if !needed.is_null() {
        // SAFETY: non-null and writable per the contract.
        unsafe { needed.write(src.len()) };
    }
    if dst.is_null() {
        return if cap == 0 { Ok(()) } else { Err(null(what)) };
    }
    if cap < src.len() {
        return Err(Fail::new(
            ElxStatus::BufferTooSmall,
            format!("`{what}` holds {cap} elements; {} are needed", src.len()),
        ));
    }
    // SAFETY: dst holds at least src.len() elements (checked) and does not overlap src,
    // which is ours.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    Ok(())
}

/// Copies `s` and a terminating NUL (needed counts the NUL).
///
/// # Safety
/// As [`copy_out`].
pub(crate) unsafe fn copy_str(
    s: &str,
    dst: *mut c_char,
    cap: usize,
    needed: *mut usize,
    what: &str,
) -> Result<(), Fail> {
    let mut bytes: Vec<c_char> = s.bytes().map(|b| b as c_char).collect();
    bytes.push(0);
    // SAFETY: forwarded contract.
    unsafe { copy_out(&bytes, dst, cap, needed, what) }
}

/// The runtime behind a handle.
///
/// # Safety
/// `rt` is null or a live handle from [`elx_runtime_open`].
pub(crate) unsafe fn runtime<'a>(rt: *const ElxRuntime) -> Result<&'a ElxRuntime, Fail> {
    // SAFETY: per the contract.
    unsafe { rt.as_ref() }.ok_or_else(|| null("runtime"))
}

pub(crate) fn task_id(id: u32) -> TaskId {
    TaskId(id as usize)
}

pub(crate) fn id_out(id: TaskId) -> Result<u32, Fail> {
    u32::try_from(id.0).map_err(|_| Fail::new(ElxStatus::Usage, "more than 2^32 tasks loaded"))
}
