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

pub mod base;
pub mod kohya;
pub mod peft;

use crate::error::{Error, Result};
use crate::tensorfile::{TensorFile, mat_from_row_major};
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
    /// Bytes it occupies in the weights file.
    pub bytes: usize,
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
    ///
    /// A folder without `adapter_config.json` that holds a diffusers
    /// `pytorch_lora_weights.safetensors` is read as that single file; an
    /// `adapter_model.safetensors` named directly, with its config beside it, is read as
    /// its PEFT folder (so its scale is not lost).
    pub fn open(path: &Path) -> Result<Adapter> {
        if !path.exists() {
            return Err(Error::bad_file(
                path,
                "expected a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) \
                 or a kohya/diffusers LoRA .safetensors file, found nothing at this path",
            ));
        }
        if path.is_dir() {
            let diffusers = path.join("pytorch_lora_weights.safetensors");
            if !path.join(peft::CONFIG_FILE).exists() && diffusers.is_file() {
                return kohya::open(&diffusers);
            }
            peft::open(path)
        } else {
            // A PEFT weights file named directly: its scale lives in the config beside it.
            if path.file_name().is_some_and(|n| n == peft::WEIGHTS_FILE)
                && let Some(dir) = path.parent()
                && dir.join(peft::CONFIG_FILE).is_file()
            {
                return peft::open(dir);
            }
            if path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth" || e == "ckpt")
            {
                return Err(pickle_refusal(path));
            }
            kohya::open(path)
        }
    }

    /// Loads one module's A' and B' (scale folded in) as f64, checking shapes against the
    /// header and that every value is finite.
    ///
    /// The scale is split as A' = sign(s)·√|s|·A and B' = √|s|·B, so B'·A' = s·B·A exactly
    /// (up to one rounding per factor) even for a negative `lora_alpha`.
    pub fn load_module(&self, name: &str) -> Result<LoraModule> {
        let info = self.modules.get(name).ok_or_else(|| {
            Error::bad_tensor(
                &self.path,
                name,
                format!(
                    "expected a LoRA module of this name in the adapter ({} modules), found none",
                    self.modules.len()
                ),
            )
        })?;
        let (ca, cb) = folded_factors(info.scale);
        let a = read_flat(&self.weights, &info.a_key, info.rank, info.in_features, ca)?;
        let b = read_flat(&self.weights, &info.b_key, info.out_features, info.rank, cb)?;
        // The values are copied out: the mapped pages need not stay resident.
        self.weights.release(&info.a_key);
        self.weights.release(&info.b_key);
        Ok(LoraModule { a, b })
    }

    /// Modules by canonical name, in sorted order (a convenience over `modules.keys()`).
    pub fn module_names(&self) -> Vec<&str> {
        self.modules.keys().map(|k| k.as_str()).collect()
    }

    /// The file that holds the tensors (for error messages).
    pub fn weights_path(&self) -> &Path {
        self.weights.path()
    }

    /// ‖ΔW‖_F = ‖s·B·A‖_F of every module, loading one module at a time. A zero is an
    /// untrained module (PEFT starts B at zero): it adds nothing to a subspace.
    pub fn delta_norms(&self) -> Result<BTreeMap<String, f64>> {
        self.modules
            .keys()
            .map(|n| {
                let m = self.load_module(n)?;
                Ok((
                    n.clone(),
                    crate::linalg::lowrank_frob(m.b.as_ref(), m.a.as_ref()),
                ))
            })
            .collect()
    }

    /// [`base::fingerprint`] of this adapter's modules.
    pub fn fingerprint(&self) -> String {
        base::fingerprint(
            self.modules
                .iter()
                .map(|(n, m)| (n.as_str(), m.in_features, m.out_features)),
        )
    }

    /// A string entry of the PEFT config (`task_type`, …), when present.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }
}

/// The two factors that fold s into A and B: (sign(s)·√|s|, √|s|).
pub(crate) fn folded_factors(scale: f64) -> (f64, f64) {
    let r = scale.abs().sqrt();
    (if scale < 0.0 { -r } else { r }, r)
}

/// Reads tensor `key` as a [rows x cols] matrix times `factor`. The stored tensor may carry
/// trailing dimensions (conv kernels) as long as it flattens to exactly [rows, cols]: its first
/// dimension is `rows` and the product of the rest is `cols`.
fn read_flat(
    file: &TensorFile,
    key: &str,
    rows: usize,
    cols: usize,
    factor: f64,
) -> Result<Mat<f64>> {
    let (shape, values) = file.read_f64(key)?;
    let first = shape.first().copied();
    let rest = shape
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if shape.len() < 2
        || first != Some(rows)
        || rest != Some(cols)
        || Some(values.len()) != rows.checked_mul(cols)
    {
        return Err(Error::bad_tensor(
            file.path(),
            key,
            format!(
                "expected [{rows}, {cols}] (trailing conv dimensions flattened), found {shape:?}"
            ),
        ));
    }
    let mut m = mat_from_row_major(rows, cols, &values);
    if factor != 1.0 {
        for j in 0..cols {
            for i in 0..rows {
                m[(i, j)] *= factor;
            }
        }
    }
    Ok(m)
}

/// Shapes of one LoRA pair as read from the header, validated against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PairShape {
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub conv_kernel: Option<[usize; 2]>,
}

/// Validates a (down/A, up/B) pair from the header only: A is [r, in] or [r, in, kh, kw], B is
/// [out, r] or [out, r, 1, 1], both of a dtype we can read.
pub(crate) fn pair_shape(file: &TensorFile, a_key: &str, b_key: &str) -> Result<PairShape> {
    let path = file.path();
    let shape_of = |key: &str| -> Result<Vec<usize>> {
        match file.info(key) {
            Some(i) => Ok(i.shape),
            None => Err(match file.stored_info(key) {
                Some((dt, _)) => Error::bad_tensor(
                    path,
                    key,
                    format!("expected dtype F32, F16, BF16 or F64, found {dt}"),
                ),
                None => Error::bad_tensor(
                    path,
                    key,
                    "expected this tensor (its pair is present), found none",
                ),
            }),
        }
    };
    let a = shape_of(a_key)?;
    let b = shape_of(b_key)?;
    let (rank, in_features, conv_kernel) = match a.as_slice() {
        [r, i] => (*r, *i, None),
        [r, i, kh, kw] => {
            let flat = i
                .checked_mul(*kh)
                .and_then(|x| x.checked_mul(*kw))
                .ok_or_else(|| {
                    Error::bad_tensor(
                        path,
                        a_key,
                        format!("expected a conv shape whose size fits, found {a:?}"),
                    )
                })?;
            (*r, flat, Some([*kh, *kw]))
        }
        _ => {
            return Err(Error::bad_tensor(
                path,
                a_key,
                format!("expected [r, in] or [r, in, kh, kw], found {a:?}"),
            ));
        }
    };
    if rank == 0 || in_features == 0 {
        return Err(Error::bad_tensor(
            path,
            a_key,
            format!("expected a non-empty [r, in], found {a:?}"),
        ));
    }
    let out_features = match b.as_slice() {
        [o, r] if *r == rank => *o,
        [o, r, 1, 1] if *r == rank && conv_kernel.is_some() => *o,
        _ => {
            let want = if conv_kernel.is_some() {
                format!("[out, {rank}, 1, 1]")
            } else {
                format!("[out, {rank}]")
            };
            return Err(Error::bad_tensor(
                path,
                b_key,
                format!("expected {want} to match {a_key} {a:?}, found {b:?}"),
            ));
        }
    };
    if out_features == 0 {
        return Err(Error::bad_tensor(
            path,
            b_key,
            format!("expected a non-empty [out, r], found {b:?}"),
        ));
    }
    Ok(PairShape {
        rank,
        in_features,
        out_features,
        conv_kernel,
    })
}

/// The refusal for pickled checkpoints: they can run code when loaded.
pub(crate) fn pickle_refusal(path: &Path) -> Error {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter_model.bin".into());
    Error::bad_file(
        path,
        format!(
            "expected safetensors weights, found a pickle ({name}). Pickles can run arbitrary code when \
             loaded, so eigenlorax refuses them. Convert it once in a trusted environment: \
             python -c \"import torch; from safetensors.torch import save_file; \
             save_file(torch.load('{name}'), '{}')\"",
            if name == "adapter_model.bin" {
                "adapter_model.safetensors".to_string()
            } else {
                format!(
                    "{}.safetensors",
                    name.rsplit_once('.').map(|x| x.0).unwrap_or(&name)
                )
            }
        ),
    )
}
