//! Writing a PEFT adapter folder ([`write`]), as PEFT itself would load it: the modules'
//! factors with their scale, any extra tensors passed through unchanged ([`pass_through`]),
//! and ranks padded to one where the config cannot hold several ([`pad_to_uniform_rank`]).

use super::{CONFIG_FILE, WEIGHTS_FILE};
use crate::adapter::{Adapter, AdapterFormat, LoraModule};
use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorOut};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a PEFT adapter holds besides its LoRA pairs, kept so that a reconstruction writes
/// it back as the source had it: the non-LoRA tensors (a classifier head, `modules_to_save`
/// copies, …) byte for byte under their keys, and the config fields that decide how PEFT
/// loads and applies the adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct PassThrough {
    /// `task_type` (e.g. `SEQ_CLS`), or `None` when the config has none.
    pub task_type: Option<String>,
    /// `fan_in_fan_out` (GPT-2 Conv1D bases).
    pub fan_in_fan_out: bool,
    /// `modules_to_save` as in the config (`null` when absent).
    pub modules_to_save: Value,
    /// `target_modules` as in the config (`null` when absent).
    pub target_modules: Value,
    /// The non-LoRA tensors, as stored (key, dtype, shape, bytes).
    pub tensors: Vec<TensorOut>,
}

impl PassThrough {
    /// Bytes of the carried tensors.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }
}

/// The [`PassThrough`] of a PEFT adapter (`None` for kohya/diffusers files, whose
/// reconstruction is a plain PEFT folder). A carried tensor of a dtype this crate cannot write
/// (e.g. I64) is an error naming it.
pub fn pass_through(adapter: &Adapter) -> Result<Option<PassThrough>> {
    if adapter.format != AdapterFormat::Peft {
        return Ok(None);
    }
    let cfg = &adapter.config;
    let mut tensors = Vec::with_capacity(adapter.extras.len());
    for e in &adapter.extras {
        let (dtype, data) = adapter.weights.raw(&e.key)?;
        tensors.push(TensorOut {
            name: e.key.clone(),
            dtype,
            shape: e.shape.clone(),
            data: data.to_vec(),
        });
    }
    Ok(Some(PassThrough {
        task_type: cfg
            .get("task_type")
            .and_then(Value::as_str)
            .map(str::to_string),
        fan_in_fan_out: adapter.fan_in_fan_out,
        modules_to_save: cfg.get("modules_to_save").cloned().unwrap_or(Value::Null),
        target_modules: cfg.get("target_modules").cloned().unwrap_or(Value::Null),
        tensors,
    }))
}

/// Options of [`write()`].
#[derive(Clone, Debug)]
pub struct PeftWriteOptions {
    /// `base_model_name_or_path` to record.
    pub base_model: Option<String>,
    /// `fan_in_fan_out` to record (GPT-2 Conv1D bases).
    pub fan_in_fan_out: bool,
    /// Storage dtype of the weights (F32 by default; F64/F16/BF16 allowed, I8 refused).
    pub dtype: Dtype,
    /// The source's non-LoRA tensors and config fields, written back: its `task_type`,
    /// `modules_to_save` and `target_modules` replace the defaults, its `fan_in_fan_out`
    /// is or-ed with the one above, and its tensors are written under their own keys.
    pub pass_through: Option<PassThrough>,
}

impl Default for PeftWriteOptions {
    fn default() -> Self {
        PeftWriteOptions {
            base_model: None,
            fan_in_fan_out: false,
            dtype: Dtype::F32,
            pass_through: None,
        }
    }
}

/// Writes a standard PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, both
/// atomic).
///
/// Modules carry the scale folded in, so it writes lora_alpha = r (scale 1) and, when ranks
/// differ between modules, rank_pattern/alpha_pattern; keys are
/// `base_model.model.<name>.lora_A.weight` / `lora_B`. target_modules = the distinct leaf
/// names. The pattern keys are the full module names, regex-escaped, which PEFT's
/// `(.*\.)?(key)$` match selects exactly.
pub fn write(
    dir: &Path,
    modules: &BTreeMap<String, LoraModule>,
    options: &PeftWriteOptions,
) -> Result<()> {
    if options.dtype == Dtype::I8 {
        return Err(Error::Usage(format!(
            "{}: PEFT weights cannot be stored as I8",
            dir.display()
        )));
    }
    if modules.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no modules to write",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // The most common rank is the default; the others go to rank_pattern.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for m in modules.values() {
        *counts.entry(m.rank()).or_default() += 1;
    }
    let default_r = counts
        .iter()
        .max_by_key(|(r, c)| (**c, std::cmp::Reverse(**r)))
        .map(|(r, _)| *r)
        .unwrap_or(1);
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    let mut leaves = BTreeSet::new();
    let mut tensors = Vec::with_capacity(2 * modules.len());
    for (name, m) in modules {
        if m.b.ncols() != m.rank() || m.rank() == 0 {
            return Err(Error::Usage(format!(
                "{}: module `{name}`: A is [{}, {}] and B is [{}, {}]; expected B's columns = A's rows > 0",
                dir.display(),
                m.a.nrows(),
                m.a.ncols(),
                m.b.nrows(),
                m.b.ncols()
            )));
        }
        if m.rank() != default_r {
            let key = regex::escape(name);
            rank_pattern.insert(key.clone(), Value::from(m.rank()));
            alpha_pattern.insert(key, Value::from(m.rank()));
        }
        leaves.insert(target_leaf(name));
        tensors.push(TensorOut::from_mat(
            format!("base_model.model.{name}.lora_A.weight"),
            options.dtype,
            m.a.as_ref(),
        ));
        tensors.push(TensorOut::from_mat(
            format!("base_model.model.{name}.lora_B.weight"),
            options.dtype,
            m.b.as_ref(),
        ));
    }
    let pt = options.pass_through.as_ref();
    if let Some(pt) = pt {
        let lora: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        for t in &pt.tensors {
            if lora.contains(t.name.as_str()) {
                return Err(Error::Usage(format!(
                    "{}: carried tensor `{}` has the key of a reconstructed LoRA tensor",
                    dir.display(),
                    t.name
                )));
            }
        }
        tensors.extend(pt.tensors.iter().cloned());
    }
    // The source's target_modules when it had them: PEFT then wraps the same layers (a
    // wrapped layer whose LoRA is absent from the file keeps B = 0, no update).
    let target_modules = match pt.map(|p| &p.target_modules) {
        Some(v) if !v.is_null() => v.clone(),
        _ => Value::from(leaves.into_iter().collect::<Vec<_>>()),
    };
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": pt.and_then(|p| p.task_type.clone()),
        "base_model_name_or_path": options.base_model,
        "r": default_r,
        "lora_alpha": default_r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": false,
        "use_dora": false,
        "target_modules": target_modules,
        "fan_in_fan_out": options.fan_in_fan_out || pt.is_some_and(|p| p.fan_in_fan_out),
        "lora_dropout": 0.0,
        "bias": "none",
        "modules_to_save": pt.map_or(Value::Null, |p| p.modules_to_save.clone()),
        "init_lora_weights": true,
        "inference_mode": true,
        "layers_to_transform": Value::Null,
        "layers_pattern": Value::Null,
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Usage(format!("{}: cannot serialize config: {e}", dir.display())))?;
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    // Weights first: a folder whose config is present always has matching weights.
    crate::tensorfile::write(&dir.join(WEIGHTS_FILE), tensors, md)?;
    crate::util::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Zero-pads every module to the largest rank: A gets zero rows, B zero columns, so each ΔW
/// is unchanged bit for bit. Written with [`write()`], the result has one rank, no
/// `rank_pattern`/`alpha_pattern` and scale 1 everywhere, which consumers that apply one
/// global alpha (llama.cpp computes alpha/rank per tensor from a single `adapter.lora.alpha`;
/// servers that ignore the patterns) then read correctly too. Costs storage for the zeros.
pub fn pad_to_uniform_rank(modules: &BTreeMap<String, LoraModule>) -> BTreeMap<String, LoraModule> {
    let r_max = modules.values().map(LoraModule::rank).max().unwrap_or(0);
    modules
        .iter()
        .map(|(name, m)| {
            let r = m.rank();
            let a = faer::Mat::from_fn(
                r_max,
                m.a.ncols(),
                |i, j| if i < r { m.a[(i, j)] } else { 0.0 },
            );
            let b = faer::Mat::from_fn(m.b.nrows(), r_max, |i, j| {
                if j < r && j < m.b.ncols() {
                    m.b[(i, j)]
                } else {
                    0.0
                }
            });
            (name.clone(), LoraModule { a, b })
        })
        .collect()
}

/// The `target_modules` entry for `name`: its last segment, or its last two when the last is
/// a bare index (`to_out.0`), which alone would also select every other `.0` child.
fn target_leaf(name: &str) -> String {
    let mut it = name.rsplit('.');
    let last = it.next().unwrap_or(name);
    match it.next() {
        Some(parent) if last.bytes().all(|b| b.is_ascii_digit()) => format!("{parent}.{last}"),
        _ => last.to_string(),
    }
}
