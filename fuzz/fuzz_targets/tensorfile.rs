//! Any bytes as a safetensors file: open (header checks) and read every tensor.
#![no_main]
use eigenlorax::tensorfile::TensorFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fuzz_support::file("t.safetensors", data);
    if let Ok(tf) = TensorFile::open(&p) {
        for name in tf.names() {
            let _ = tf.read_f64(name);
        }
    }
});
