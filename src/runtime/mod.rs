//! Stage 4: the device runtime.

pub mod input;
