//! Any bytes as a coefficient file (.elxc) and as a head file.
#![no_main]
use eigenlorax::bundle::{CoeffFile, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fuzz_support::file("c.elxc", data);
    let _ = CoeffFile::read(&p);
    let _ = Head::read(&p);
});
