//! Any bytes as a kohya/diffusers LoRA .safetensors file: open, then load every module.
#![no_main]
use eigenlorax::adapter::Adapter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = fuzz_support::file("lora.safetensors", data);
    if let Ok(a) = Adapter::open(&p) {
        for name in a.modules.keys() {
            let _ = a.load_module(name);
        }
    }
});
