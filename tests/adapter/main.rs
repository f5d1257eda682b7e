//! Stage 1, adapters: PEFT and kohya readers, the safetensors reader, the PEFT writer.
//! One test binary for the stage (a debug build links tract into every test binary);
//! shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

mod base;
mod kohya;
mod peft;
mod tensorfile;
mod write;
