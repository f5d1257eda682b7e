//! Any bytes as a bundle (.elxb): the full read (manifest, id, binding hash, components).
#![no_main]
use eigenlorax::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fuzz_support::file("b.elxb", data);
    let _ = Bundle::read(&p);
});
