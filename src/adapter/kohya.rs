//! kohya-ss / diffusers Stable Diffusion LoRA files.
use super::Adapter;
use crate::error::Result;
use std::path::Path;

/// Opens a kohya/diffusers `.safetensors` LoRA file.
pub fn open(file: &Path) -> Result<Adapter> {
    let _ = file;
    todo!("adapter helper")
}
