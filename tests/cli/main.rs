//! The command line, end to end: each test spawns the `elx` binary. One test binary for the
//! stage (a debug build links tract into every test binary); shared helpers in `support`.

#[path = "../support/mod.rs"]
mod support;

mod base;
mod faults;
mod fixtures;
mod generate;
mod hardening;
mod help;
mod import_hf_tokenizer;
mod inspect;
mod loo_report;
mod peft_roundtrip;
mod roundtrip;
mod shards;
mod update;
