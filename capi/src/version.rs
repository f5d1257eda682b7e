//! The library and ABI versions.

use std::ffi::c_char;

/// The ABI version: bumped whenever a function, struct or enum of the header changes
/// incompatibly. Compare with [`elx_abi_version`] at start-up.
pub const ELX_ABI_VERSION: u32 = 1;

/// The library version ("0.1.0"), a static string.
#[unsafe(no_mangle)]
pub extern "C" fn elx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version of the library (`ELX_ABI_VERSION` of the header it was built with).
#[unsafe(no_mangle)]
pub extern "C" fn elx_abi_version() -> u32 {
    ELX_ABI_VERSION
}
