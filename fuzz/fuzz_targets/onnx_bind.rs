//! Any bytes as an ONNX model: decode, then bind the fixture bundle's modules to it.
#![no_main]
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, Manifest, StorageDtype};
use eigenlorax::subspace::{ExtractOptions, extract};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The manifest of a bundle of the five fixture adapters (extracted once).
fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        let adapters: Vec<Adapter> = (0..5)
            .map(|i| {
                Adapter::open(&fuzz_support::repo().join(format!("models/fixtures/adapters/task{i}")))
                    .expect("fixture adapter")
            })
            .collect();
        let s = extract(&adapters, &ExtractOptions::default(), &|_, _, _| {}).expect("extract");
        let p = fuzz_support::scratch("fixture.elxb");
        Bundle::write(&p, &s, &[], StorageDtype::F32, None).expect("bundle")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.onnx");
    if let Ok(model) = eigenlorax::runtime::onnx::decode_model(prost::bytes::Bytes::from(data.to_vec()), path) {
        let _ = eigenlorax::runtime::bind(&model, "0".repeat(64), "fuzz.onnx", manifest(), None);
    }
});
