//! A PEFT folder from one input: adapter_config.json (up to the first 0xFF byte) and
//! adapter_model.safetensors (the rest). Open, then load every module.
#![no_main]
use eigenlorax::adapter::Adapter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0xFF).unwrap_or(data.len());
    let dir = fuzz_support::scratch("peft");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("adapter_config.json"), &data[..cut]).expect("write");
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        data.get(cut + 1..).unwrap_or(&[]),
    )
    .expect("write");
    if let Ok(a) = Adapter::open(&dir) {
        for name in a.modules.keys() {
            let _ = a.load_module(name);
        }
    }
});
