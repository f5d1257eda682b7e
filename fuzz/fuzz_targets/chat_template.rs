//! The `chat_template` target: `fuzz_support::chat_template` (fuzz/src/lib.rs, which the stable
//! test suite also replays over the committed corpus and regression inputs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_support::chat_template(data));
