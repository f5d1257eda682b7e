//! Stage 1: read LoRA adapters into one normalized form.
//!
//! Whatever the source (HF PEFT folder, kohya/diffusers file), a module comes out as
//! ΔW = B·A with the scale s folded in symmetrically (A' = √s·A, B' = √s·B), so adapters
//! are comparable and later stages never see s. Module names are canonical: no
//! `base_model.model.` prefix, no adapter name, no `.lora_A.weight` suffix.
//!
//! Tensors stay memory-mapped: [`Adapter::open`] reads only headers and config; a module's
//! matrices are materialized by [`Adapter::load_module`] when a stage asks for them, so
//! extraction over hundreds of adapters holds one module at a time.

pub mod kohya;
pub mod peft;

use crate::error::Result;
use crate::tensorfile::TensorFile;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which on-disk convention an adapter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterFormat {
    /// HF PEFT folder: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
    /// kohya-ss / diffusers Stable Diffusion LoRA (`lora_down` / `lora_up` / `alpha`).
    Kohya,
}

/// What is known about one adapted module without loading its matrices.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleInfo {
    /// LoRA rank r of this module in this adapter.
    pub rank: usize,
    /// Input features of the base layer (for convs: in_channels·kh·kw).
    pub in_features: usize,
    /// Output features of the base layer.
    pub out_features: usize,
    /// The scale s that multiplies B·A (already resolved from alpha, rslora, patterns).
    pub scale: f64,
    /// Conv kernel size when the base layer is a conv (A was flattened to [r, in·kh·kw]).
    pub conv_kernel: Option<[usize; 2]>,
    /// Tensor key of A (`lora_A` / `lora_down`) in the weights file.
    pub a_key: String,
    /// Tensor key of B (`lora_B` / `lora_up`) in the weights file.
    pub b_key: String,
}

/// A non-LoRA tensor found in an adapter (classifier head, `modules_to_save`, ...): reported and
/// passed through, never decomposed.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraTensor {
    /// Key as stored in the file.
    pub key: String,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Storage dtype, e.g. "F32".
    pub dtype: String,
}

/// One module's matrices with the scale folded in, as f64.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// A' = √s·A, shape [r x in].
    pub a: Mat<f64>,
    /// B' = √s·B, shape [out x r].
    pub b: Mat<f64>,
}

impl LoraModule {
    /// The rank r (rows of A).
    pub fn rank(&self) -> usize {
        self.a.nrows()
    }
    /// Input features (columns of A).
    pub fn in_features(&self) -> usize {
        self.a.ncols()
    }
    /// Output features (rows of B).
    pub fn out_features(&self) -> usize {
        self.b.nrows()
    }
}

/// One opened adapter.
#[derive(Debug)]
pub struct Adapter {
    /// The folder (PEFT) or file (kohya) the user named.
    pub path: PathBuf,
    /// The convention it follows.
    pub format: AdapterFormat,
    /// SHA-256 of the weights file, recorded in bundles as provenance.
    pub sha256: String,
    /// `base_model_name_or_path` from the PEFT config, when present.
    pub base_model: Option<String>,
    /// PEFT `fan_in_fan_out` (GPT-2 Conv1D stores W transposed; A and B shapes are unchanged).
    pub fan_in_fan_out: bool,
    /// Adapted modules by canonical name.
    pub modules: BTreeMap<String, ModuleInfo>,
    /// Non-LoRA tensors, passed through.
    pub extras: Vec<ExtraTensor>,
    /// The parsed PEFT config (or a synthesized one for kohya), kept for reconstruction.
    pub config: serde_json::Value,
    pub(crate) weights: TensorFile,
}

impl Adapter {
    /// Opens an adapter, detecting its format: a folder with `adapter_config.json` is PEFT;
    /// a `.safetensors` file with `lora_down`/`lora_up` keys is kohya. A pickled `.bin` is
    /// refused with a message that says how to convert it.
    pub fn open(path: &Path) -> Result<Adapter> {
        if path.is_dir() {
            peft::open(path)
        } else {
            kohya::open(path)
        }
    }

    /// Loads one module's A' and B' (scale folded in) as f64, checking shapes against the
    /// header and that every value is finite.
    pub fn load_module(&self, name: &str) -> Result<LoraModule> {
        let _ = name;
        todo!("adapter helper")
    }

    /// The file that holds the tensors (for error messages).
    pub fn weights_path(&self) -> &Path {
        self.weights.path()
    }
}
