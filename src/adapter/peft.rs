//! HF PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Scaling follows PEFT (checked against peft 0.21 `tuners/lora`): s = lora_alpha/r, or
//! lora_alpha/√r with `use_rslora`; `rank_pattern` and `alpha_pattern` override r and alpha per
//! module, their keys being regexes matched as `re.match(rf"(.*\.)?({key})$", name)`, first
//! key in file order wins. `target_modules` is a list of name suffixes or one regex that must
//! match the whole name (`re.fullmatch`).

use super::{
    Adapter, AdapterFormat, ExtraTensor, LoraModule, ModuleInfo, pair_shape, pickle_refusal,
};
use crate::error::{Error, Result};
use crate::tensorfile::{Dtype, TensorFile, TensorOut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the PEFT config file in an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the PEFT weights file in an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Name of the pickled weights file that older PEFT versions wrote (refused).
pub const PICKLE_FILE: &str = "adapter_model.bin";

/// The parts of a PEFT LoRA config that decide the math.
#[derive(Clone, Debug)]
pub struct PeftConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// s = alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    /// GPT-2 Conv1D layout flag.
    pub fan_in_fan_out: bool,
    /// `rank_pattern` in file order (regex key, rank).
    pub rank_pattern: Vec<(String, usize)>,
    /// `alpha_pattern` in file order (regex key, alpha).
    pub alpha_pattern: Vec<(String, f64)>,
    /// `target_modules`, when given as something we can check.
    pub target_modules: TargetModules,
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
    /// Compiled `rank_pattern` / `alpha_pattern` keys (same order) and `target_modules` regex.
    rank_re: Vec<regex::Regex>,
    alpha_re: Vec<regex::Regex>,
    target_re: Option<regex::Regex>,
}

/// How `target_modules` selects modules.
#[derive(Clone, Debug)]
pub enum TargetModules {
    /// Not given (null), or a shorthand such as `all-linear`: the weights file decides.
    Any,
    /// Names; a module matches when its name equals one or ends with `.` + one.
    List(Vec<String>),
    /// A regex that must match the whole module name.
    Regex(String),
}

/// A JSON object read with its key order kept (pattern precedence is file order in PEFT, and
/// `serde_json::Map` sorts keys without the `preserve_order` feature).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut m: M,
            ) -> std::result::Result<Ordered, M::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Ordered(v))
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Only the two pattern maps, with order kept.
#[derive(serde::Deserialize)]
struct PatternsInOrder {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

impl PeftConfig {
    /// Parses the config text; errors name `path` and the key at fault.
    pub fn parse(path: &Path, text: &str) -> Result<(PeftConfig, Value)> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::bad_file(
                path,
                format!("expected a JSON object (PEFT adapter config): {e}"),
            )
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::bad_file(path, "expected a JSON object (PEFT adapter config)"))?;
        let key_err = |key: &str, what: &str, found: Option<&Value>| {
            let found = match found {
                None => "nothing (key missing)".to_string(),
                Some(v) => v.to_string(),
            };
            Error::bad_tensor(path, key, format!("expected {what}, found {found}"))
        };
        if let Some(t) = obj.get("peft_type").filter(|v| !v.is_null())
            && t.as_str() != Some("LORA")
        {
            return Err(key_err(
                "peft_type",
                "\"LORA\" (only LoRA adapters can be recycled)",
                Some(t),
            ));
        }
        // Strictly a boolean: `"use_dora": "aaa"` must not read as false.
        match obj.get("use_dora") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(Error::bad_tensor(path, "use_dora", dora_message()));
            }
            other => return Err(key_err("use_dora", "true or false", other)),
        }
        let r = obj
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(|| key_err("r", "a positive integer rank", obj.get("r")))?;
        let lora_alpha = obj
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite())
            .ok_or_else(|| key_err("lora_alpha", "a finite number", obj.get("lora_alpha")))?;
        let flag = |key: &str| -> Result<bool> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(key_err(key, "true or false", Some(v))),
            }
        };
        let use_rslora = flag("use_rslora")?;
        let fan_in_fan_out = flag("fan_in_fan_out")?;
        let base_model = match obj.get("base_model_name_or_path") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(key_err("base_model_name_or_path", "a string", Some(v))),
        };

        let ordered: PatternsInOrder = serde_json::from_str(text).map_err(|e| {
            Error::bad_tensor(
                path,
                "rank_pattern",
                format!("expected rank_pattern/alpha_pattern to be objects: {e}"),
            )
        })?;
        let mut rank_pattern = Vec::new();
        let mut rank_re = Vec::new();
        for (k, v) in ordered.rank_pattern.map(|o| o.0).unwrap_or_default() {
            let rk = v
                .as_u64()
                .filter(|&x| x > 0)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| {
                    key_err(
                        &format!("rank_pattern.{k}"),
                        "a positive integer rank",
                        Some(&v),
                    )
                })?;
            rank_re.push(pattern_regex(path, "rank_pattern", &k)?);
            rank_pattern.push((k, rk));
        }
        let mut alpha_pattern = Vec::new();
        let mut alpha_re = Vec::new();
        for (k, v) in ordered.alpha_pattern.map(|o| o.0).unwrap_or_default() {
            let a = v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                key_err(&format!("alpha_pattern.{k}"), "a finite number", Some(&v))
            })?;
            alpha_re.push(pattern_regex(path, "alpha_pattern", &k)?);
            alpha_pattern.push((k, a));
        }
        let mut target_re = None;
        let target_modules = match obj.get("target_modules") {
            None | Some(Value::Null) => TargetModules::Any,
            Some(Value::String(s)) if s == "all-linear" => TargetModules::Any,
            Some(Value::String(s)) => {
                target_re = Some(regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| {
                    key_err(
                        "target_modules",
                        &format!("a regex this tool can evaluate ({e})"),
                        obj.get("target_modules"),
                    )
                })?);
                TargetModules::Regex(s.clone())
            }
            Some(Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for it in items {
                    let s = it.as_str().ok_or_else(|| {
                        key_err("target_modules", "a list of module names", Some(it))
                    })?;
                    names.push(s.to_string());
                }
                TargetModules::List(names)
            }
            Some(v) => {
                return Err(key_err(
                    "target_modules",
                    "a list of names or a regex string",
                    Some(v),
                ));
            }
        };
        Ok((
            PeftConfig {
                r,
                lora_alpha,
                use_rslora,
                fan_in_fan_out,
                rank_pattern,
                alpha_pattern,
                target_modules,
                base_model,
                rank_re,
                alpha_re,
                target_re,
            },
            value,
        ))
    }

    /// Rank and alpha PEFT gives module `name`, with the pattern keys that decided them.
    pub fn rank_alpha(&self, name: &str) -> (usize, f64, Option<&str>) {
        let rk = self
            .rank_pattern
            .iter()
            .zip(&self.rank_re)
            .find(|(_, re)| re.is_match(name))
            .map(|x| x.0);
        let al = self
            .alpha_pattern
            .iter()
            .zip(&self.alpha_re)
            .find(|(_, re)| re.is_match(name))
            .map(|x| x.0);
        (
            rk.map(|x| x.1).unwrap_or(self.r),
            al.map(|x| x.1).unwrap_or(self.lora_alpha),
            rk.map(|x| x.0.as_str()),
        )
    }

    /// The scale s of a module of rank `r` and alpha `alpha`.
    pub fn scale(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Whether `target_modules` selects module `name`.
    pub fn targets(&self, name: &str) -> bool {
        match &self.target_modules {
            TargetModules::Any => true,
            TargetModules::List(l) => l
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
            TargetModules::Regex(_) => self.target_re.as_ref().is_some_and(|re| re.is_match(name)),
        }
    }
}

/// PEFT's pattern match, `re.match(rf"(.*\.)?({key})$", name)`, compiled.
fn pattern_regex(path: &Path, field: &str, key: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
        Error::bad_tensor(
            path,
            format!("{field}.{key}"),
            format!("expected a regex this tool can evaluate: {e}"),
        )
    })
}

fn dora_message() -> String {
    "expected a plain LoRA adapter, found DoRA (use_dora / lora_magnitude_vector). DoRA rescales \
     W0 + s·B·A column by column with a learned magnitude, so its update depends on the base \
     weights and is not the low-rank s·B·A that EigenLoRAx recycles; merge it into the base model \
     or retrain without DoRA"
        .to_string()
}

/// What a weights key is.
enum KeyKind {
    /// `<module>.lora_A[.<adapter>].weight` (`is_a`) or `lora_B`. `in_copy`: the key sits under
    /// a `modules_to_save[.<adapter>]` wrapper segment (see [`classify`]).
    Lora {
        module: String,
        adapter: Option<String>,
        is_a: bool,
        in_copy: bool,
    },
    /// DoRA magnitude: refused.
    Dora,
    /// Anything else, including the LoRA of a wrapper's frozen `original_module`: passed
    /// through as an extra.
    Extra,
}

/// Strips the PEFT wrapper prefix and any `.base_layer` segment, giving the module's name in
/// the base model (the name its `<name>.weight` has there).
pub fn canonical_module_name(raw: &str) -> String {
    let s = raw.strip_prefix("base_model.model.").unwrap_or(raw);
    let parts: Vec<&str> = s.split('.').filter(|p| *p != "base_layer").collect();
    parts.join(".")
}

/// Sorts a weights key.
///
/// LoRA on a `modules_to_save` head (PEFT 0.10-0.12 with `task_type` SEQ_CLS and the head in
/// `target_modules`: LoRA was injected first, then `_set_trainable` wrapped the LoRA layer in a
/// `ModulesToSaveWrapper`). The wrapper keeps the frozen `original_module` and a trainable copy
/// `modules_to_save.<adapter>`, each with its own LoRA, and its forward runs only the copy while
/// the adapter is active (huggingface/peft v0.10.0 src/peft/utils/other.py,
/// `ModulesToSaveWrapper.forward`: `return self.modules_to_save[self.active_adapter](...)`).
/// `save_pretrained` writes the copy's LoRA as `<head>.lora_A.weight` and again as
/// `<head>.modules_to_save.lora_A.weight`, the original's as `<head>.original_module.lora_A.weight`.
/// So: the `original_module` LoRA is never applied (an extra), and `modules_to_save[.<adapter>]`
/// is dropped from the module name, the key being marked `in_copy` (see [`open`] for which of
/// the two copies is read). PEFT 0.13 refuses that config; later versions never put LoRA on a
/// modules_to_save module.
fn classify(key: &str) -> KeyKind {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.contains(&"lora_magnitude_vector") {
        return KeyKind::Dora;
    }
    let Some(pos) = parts.iter().rposition(|p| *p == "lora_A" || *p == "lora_B") else {
        return KeyKind::Extra;
    };
    let tail = parts.get(pos + 1..).unwrap_or(&[]);
    let adapter = match tail {
        ["weight"] => None,
        [name, "weight"] => Some((*name).to_string()),
        _ => return KeyKind::Extra,
    };
    let mut path: Vec<&str> = parts.get(..pos).unwrap_or(&[]).to_vec();
    if path.contains(&"original_module") {
        return KeyKind::Extra;
    }
    let mut in_copy = false;
    if let Some(w) = path.iter().position(|p| *p == "modules_to_save") {
        // The segment after `modules_to_save`, when there is one, is the wrapper's adapter
        // name (its ModuleDict key), not part of the module's name.
        path.drain(w..(w + 2).min(path.len()));
        in_copy = true;
    }
    let module = path.join(".");
    if module.is_empty() {
        return KeyKind::Extra;
    }
    KeyKind::Lora {
        module: canonical_module_name(&module),
        adapter,
        is_a: parts.get(pos) == Some(&"lora_A"),
        in_copy,
    }
}

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

/// The weights path of a PEFT folder (for callers that report it).
pub fn weights_path(dir: &Path) -> PathBuf {
    dir.join(WEIGHTS_FILE)
}
