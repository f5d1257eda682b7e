//! Status codes, the thread-local last error and the boundary every call goes through.

use eigenlorax::error::Error;
use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The status every function returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxStatus {
    /// Success.
    Ok = 0,
    /// A required pointer was null.
    NullPointer = 1,
    /// An argument is out of range or sizes do not add up (e.g. rows x seq values, a tensor's
    /// byte length against its shape, an unknown enum value, a string that is not UTF-8).
    InvalidArgument = 2,
    /// A caller buffer is too small; `needed` says how large it must be.
    BufferTooSmall = 3,
    /// A file could not be read or written.
    Io = 4,
    /// A file's content (model, bundle, task, tokenizer, checkpoint) is not what was expected.
    BadInput = 5,
    /// A task file belongs to another subspace than the runtime's bundle.
    SubspaceMismatch = 6,
    /// The request cannot work (e.g. an unknown or unloaded task, text without a tokenizer,
    /// a mixed batch whose rows and tasks differ in number).
    Usage = 7,
    /// A numerical failure.
    Numeric = 8,
    /// The inference engine failed (or is not built into this library).
    Engine = 9,
    /// The task has no classification head.
    NoHead = 10,
    /// A bug in eigenlorax (an internal invariant broke).
    Internal = 11,
    /// A bug in eigenlorax that panicked; the panic was caught at the boundary.
    Panic = 12,
}

/// A failure on its way to C: status and message.
#[derive(Clone, Debug)]
pub(crate) struct Fail {
    pub(crate) status: ElxStatus,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn new(status: ElxStatus, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Io { .. } => ElxStatus::Io,
            Error::BadInput { .. } => ElxStatus::BadInput,
            Error::SubspaceMismatch { .. } => ElxStatus::SubspaceMismatch,
            Error::Usage(_) => ElxStatus::Usage,
            Error::Numeric(_) => ElxStatus::Numeric,
            Error::Engine(_) => ElxStatus::Engine,
            _ => ElxStatus::Internal,
        };
        Fail::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    // A message never holds NUL in practice; if one did, cut it there rather than lose it.
    let text = message.split('\0').next().unwrap_or("");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f` at the boundary: its error or panic becomes a status and the thread's last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Fail>) -> ElxStatus {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Fail::new(
            ElxStatus::Panic,
            format!("internal: panic inside eigenlorax: {what}"),
        ))
    });
    match outcome {
        Ok(()) => {
            set_last_error("");
            ElxStatus::Ok
        }
        Err(f) => {
            set_last_error(&f.message);
            f.status
        }
    }
}

pub(crate) fn null(what: &str) -> Fail {
    Fail::new(
        ElxStatus::NullPointer,
        format!("`{what}` is a null pointer"),
    )
}

pub(crate) fn invalid(message: impl Into<String>) -> Fail {
    Fail::new(ElxStatus::InvalidArgument, message)
}

/// The message of the last failed call on this thread ("" after a success), the CLI's text
/// for the same error. Owned by the library; valid until the next call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn elx_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
