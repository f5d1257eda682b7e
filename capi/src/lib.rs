//! # libelx: the C API of eigenlorax
//!
//! A stable C ABI over [`eigenlorax`] for apps (C/C++ services, Android through JNI, iOS
//! through a Swift C module). `include/eigenlorax.h` is generated from this crate by cbindgen
//! (capi/tests/header.rs fails when the committed header differs). Every function here is a
//! thin shell: it checks pointers and sizes, calls the library ([`Engine`], the task store,
//! [`TextEncoder`], the head, the [`Finetuner`]) and turns its result into a status code.
//!
//! The conventions (status codes, the thread-local last error, size queries, ownership and
//! threads) head the generated header; they are kept in capi/cbindgen.toml.

#![warn(missing_docs)]

// cbindgen writes the header's functions in the order it reads them: these modules, in this
// order (kept apart so that rustfmt does not sort them), then their items as written.
mod version;

mod error;

mod ffi;

mod runtime;

mod tasks;

mod run;

mod result;

mod finetune;

mod generate;

pub use error::*;
pub use finetune::*;
pub use generate::*;
pub use result::*;
pub use run::*;
pub use runtime::*;
pub use tasks::*;
pub use version::*;
