//! Reading a PEFT adapter: a folder ([`open`]) or a config and weights already in memory
//! ([`from_memory`]), assembled into an [`Adapter`] with every key classified and every
//! module's scale and shapes checked.

use super::config::{PeftConfig, dora_message};
use super::keys::{KeyKind, classify};
use super::{CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE};
use crate::adapter::{Adapter, AdapterFormat, ExtraTensor, ModuleInfo, pair_shape, pickle_refusal};
use crate::error::{Error, Result};
use crate::tensorfile::TensorFile;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Opens a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`).
pub fn open(dir: &Path) -> Result<Adapter> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    let has_config = config_path.is_file();
    if !weights_path.is_file() {
        let pickle = dir.join(PICKLE_FILE);
        if pickle.is_file() {
            return Err(pickle_refusal(&pickle));
        }
        return Err(Error::bad_file(
            dir,
            format!(
                "expected a PEFT adapter folder with {CONFIG_FILE} and {WEIGHTS_FILE}, found {}",
                if has_config {
                    "no weights file"
                } else {
                    "neither"
                }
            ),
        ));
    }
    if !has_config {
        return Err(Error::bad_file(
            &config_path,
            "expected the PEFT adapter config beside the weights, found none",
        ));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let (cfg, config) = PeftConfig::parse(&config_path, &text)?;
    let weights = TensorFile::open(&weights_path)?;
    assemble(dir, cfg, config, weights, &|_| {
        crate::util::sha256_file(&weights_path)
    })
}

/// A PEFT adapter held in memory: `config_json` is its `adapter_config.json` text (PEFT's
/// `LoraConfig.to_dict()` as JSON), `weights` its `state_dict` ([`TensorFile::from_parts`],
/// no copy). `name` stands for its folder in errors and in a bundle's sources. Its SHA-256
/// is that of the `adapter_model.safetensors` PEFT's `save_pretrained` would write
/// ([`TensorFile::canonical_sha256`]), so a bundle extracted from memory has the id of the
/// one extracted from the saved folder under the same name.
pub fn from_memory(name: &Path, config_json: &str, weights: TensorFile) -> Result<Adapter> {
    let config_path = name.join(CONFIG_FILE);
    let (cfg, config) = PeftConfig::parse(&config_path, config_json)?;
    assemble(name, cfg, config, weights, &TensorFile::canonical_sha256)
}

/// The adapter in `weights` under config `cfg`: its LoRA pairs checked against the config and
/// each other, its extras listed; `sha256` is asked for last, once everything is valid.
fn assemble(
    dir: &Path,
    cfg: PeftConfig,
    config: serde_json::Value,
    weights: TensorFile,
    sha256: &dyn Fn(&TensorFile) -> Result<String>,
) -> Result<Adapter> {
    let weights_path = weights.path().to_path_buf();

    let extra = |key: &str| {
        let (dtype, shape) = weights.stored_info(key).unwrap_or(("?", &[]));
        ExtraTensor {
            key: key.to_string(),
            shape: shape.to_vec(),
            dtype: dtype.to_string(),
            bytes: weights.stored_len(key).unwrap_or(0),
        }
    };
    // Group the keys into (A, B) pairs per canonical module: [0] plain keys, [1] keys under a
    // `modules_to_save` wrapper (see `classify`).
    type Pair = (Option<String>, Option<String>);
    let mut pairs: BTreeMap<String, [Pair; 2]> = BTreeMap::new();
    let mut adapters_seen: BTreeSet<String> = BTreeSet::new();
    let mut extras = Vec::new();
    for key in weights.names() {
        match classify(key) {
            KeyKind::Dora => return Err(Error::bad_tensor(&weights_path, key, dora_message())),
            KeyKind::Extra => extras.push(extra(key)),
            KeyKind::Lora {
                module,
                adapter,
                is_a,
                in_copy,
            } => {
                adapters_seen.insert(adapter.unwrap_or_default());
                let slots = pairs.entry(module).or_default();
                let slot = &mut slots[usize::from(in_copy)];
                let side = if is_a { &mut slot.0 } else { &mut slot.1 };
                if let Some(prev) = side {
                    return Err(Error::bad_tensor(
                        &weights_path,
                        key,
                        format!(
                            "expected one {} tensor per module, found it also as `{prev}`",
                            if is_a { "lora_A" } else { "lora_B" }
                        ),
                    ));
                }
                *side = Some(key.to_string());
            }
        }
    }
    if adapters_seen.len() > 1 {
        let names: Vec<String> = adapters_seen
            .iter()
            .map(|a| {
                if a.is_empty() {
                    "(unnamed)".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        return Err(Error::bad_file(
            &weights_path,
            format!(
                "expected the weights of one adapter, found several adapter names in keys: {}",
                names.join(", ")
            ),
        ));
    }
    if pairs.is_empty() {
        return Err(Error::bad_file(
            &weights_path,
            "expected lora_A/lora_B tensors, found none",
        ));
    }

    let mut modules = BTreeMap::new();
    for (name, [plain, copy]) in pairs {
        // A head saved by PEFT 0.10-0.12 has the applied LoRA twice: plain (`<head>.lora_A.weight`)
        // and under `modules_to_save`. PEFT reads the plain one: its set_peft_model_state_dict
        // (v0.10.0 src/peft/utils/save_and_load.py) maps `<head>.` to
        // `<head>.modules_to_save.<adapter>.`, so the plain key lands on the copy's LoRA and the
        // `modules_to_save` key on a name the model lacks (dropped by strict=False). The copy
        // is read only when there is no plain key; the unused one is reported as an extra.
        let ((a_key, b_key), unused) = if plain.0.is_some() || plain.1.is_some() {
            (plain, copy)
        } else {
            (copy, (None, None))
        };
        extras.extend(unused.0.iter().chain(&unused.1).map(|k| extra(k)));
        let (a_key, b_key) = match (a_key, b_key) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                return Err(Error::bad_tensor(
                    &weights_path,
                    a.replace("lora_A", "lora_B"),
                    format!("expected the lora_B partner of `{a}`, found none"),
                ));
            }
            (None, Some(b)) => {
                return Err(Error::bad_tensor(
                    &weights_path,
                    b.replace("lora_B", "lora_A"),
                    format!("expected the lora_A partner of `{b}`, found none"),
                ));
            }
            (None, None) => continue,
        };
        if !cfg.targets(&name) {
            return Err(Error::bad_tensor(
                &weights_path,
                &a_key,
                format!(
                    "expected only modules selected by target_modules in {CONFIG_FILE}, found module `{name}`"
                ),
            ));
        }
        let shape = pair_shape(&weights, &a_key, &b_key)?;
        let (want_r, alpha, pattern_key) = cfg.rank_alpha(&name);
        if shape.rank != want_r {
            let source = match pattern_key {
                Some(k) => format!("rank_pattern key `{k}`"),
                None => "r".to_string(),
            };
            return Err(Error::bad_tensor(
                &weights_path,
                &a_key,
                format!(
                    "expected rank {want_r} ({source} in {CONFIG_FILE}), found rank {} in its shape",
                    shape.rank
                ),
            ));
        }
        modules.insert(
            name,
            ModuleInfo {
                rank: shape.rank,
                in_features: shape.in_features,
                out_features: shape.out_features,
                scale: cfg.scale(shape.rank, alpha),
                conv_kernel: shape.conv_kernel,
                a_key,
                b_key,
            },
        );
    }
    extras.sort_by(|x, y| x.key.cmp(&y.key));
    let sha256 = sha256(&weights)?;
    Ok(Adapter {
        path: dir.to_path_buf(),
        format: AdapterFormat::Peft,
        sha256,
        base_model: cfg.base_model.clone(),
        fan_in_fan_out: cfg.fan_in_fan_out,
        modules,
        extras,
        config,
        weights,
    })
}
