//! Any bytes as an .npy input tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = eigenlorax::runtime::input::parse_npy(data, std::path::Path::new("x.npy"));
});
