//! The parts of a PEFT LoRA config that decide the math ([`PeftConfig`]): rank, alpha and
//! their per-module patterns (regexes, first key in file order wins), rsLoRA, the Conv1D
//! layout, `target_modules`, and the refusals of what the math does not cover (DoRA, ...).

use crate::error::{Error, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::path::Path;

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

pub(super) fn dora_message() -> String {
    "expected a plain LoRA adapter, found DoRA (use_dora / lora_magnitude_vector). DoRA rescales \
     W0 + s·B·A column by column with a learned magnitude, so its update depends on the base \
     weights and is not the low-rank s·B·A that EigenLoRAx recycles; merge it into the base model \
     or retrain without DoRA"
        .to_string()
}
