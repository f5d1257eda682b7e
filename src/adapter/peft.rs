//! HF PEFT adapter folders.
use super::Adapter;
use crate::error::Result;
use std::path::Path;

/// Opens a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`).
pub fn open(dir: &Path) -> Result<Adapter> {
    let _ = dir;
    todo!("adapter helper")
}
