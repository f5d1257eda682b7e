//! Any bytes as an ONNX model: decode, bind the fixture bundle's modules to it (bind runs the
//! load-time graph check on success), run the graph check against the tiny BERT's binding
//! (arbitrary graphs against a fixed binding: every bound-node and initializer rule), and
//! find the tables the graph inputs index.
#![no_main]
use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Binding, Bundle, Manifest, StorageDtype};
use eigenlorax::runtime::check::{check_model, index_limits};
use eigenlorax::subspace::{ExtractOptions, extract};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The manifest of a bundle of the five fixture adapters (extracted once), and its binding
/// to the tiny BERT.
fn manifest() -> &'static (Manifest, Binding) {
    static M: OnceLock<(Manifest, Binding)> = OnceLock::new();
    M.get_or_init(|| {
        let adapters: Vec<Adapter> = (0..5)
            .map(|i| {
                Adapter::open(&fuzz_support::repo().join(format!("models/fixtures/adapters/task{i}")))
                    .expect("fixture adapter")
            })
            .collect();
        let s = extract(&adapters, &ExtractOptions::default(), &|_, _, _| {}).expect("extract");
        let p = fuzz_support::scratch("fixture.elxb");
        let m = Bundle::write(&p, &s, &[], StorageDtype::F32, None).expect("bundle");
        let bundle = Bundle::read(&p).expect("read bundle");
        let model = fuzz_support::repo().join("models/fixtures/tiny-bert/model.onnx");
        let binding = eigenlorax::runtime::bind_file(&model, &bundle, None).expect("bind the tiny BERT");
        (m, binding)
    })
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.onnx");
    if let Ok(model) = eigenlorax::runtime::onnx::decode_model(prost::bytes::Bytes::from(data.to_vec()), path) {
        let (m, binding) = manifest();
        let _ = eigenlorax::runtime::bind(&model, "0".repeat(64), "fuzz.onnx", m, None);
        let _ = check_model(&model, m, binding, "fuzz.onnx");
        let inputs: Vec<String> = model
            .graph
            .as_ref()
            .map(|g| g.input.iter().map(|v| v.name.clone()).collect())
            .unwrap_or_default();
        let _ = index_limits(&model, &inputs);
    }
});
