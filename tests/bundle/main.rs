//! Stage 3, bundles: the `.elxb` and `.elxc` formats and quantization.
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

mod coeffs;
mod format;
mod quant;
mod stream;
mod update;
