//! kohya-ss / diffusers Stable Diffusion LoRA files (one `.safetensors` file).
//!
//! kohya keys: `<prefix>.lora_down.weight` [r, in] or, for convs, [r, in, kh, kw] (flattened
//! to [r, in·kh·kw]); `<prefix>.lora_up.weight` [out, r] or [out, r, 1, 1]; `<prefix>.alpha`
//! a scalar, missing or 0 meaning alpha = r. The scale is s = alpha/r. The canonical module
//! name is the prefix as given (e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`).
//!
//! The same file may instead use diffusers/PEFT keys (`<prefix>.lora_A.weight` /
//! `lora_B`, optionally with an adapter name before `weight`) or the older diffusers
//! attention-processor keys (`<prefix>.lora.down.weight` / `.lora.up.weight`); the same
//! alpha rule applies, which gives diffusers' own default scale 1 when no alpha is stored.

use super::{Adapter, AdapterFormat, ExtraTensor, ModuleInfo, pair_shape, pickle_refusal};
use crate::error::{Error, Result};
use crate::tensorfile::TensorFile;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// (down/A suffix, up/B suffix) pairs, most specific first.
const SUFFIXES: [(&str, &str); 3] = [
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
];

/// Splits a key into (module prefix, is_down) when it is one side of a LoRA pair.
fn split_key(key: &str) -> Option<(String, bool)> {
    for (down, up) in SUFFIXES {
        if let Some(p) = key.strip_suffix(down) {
            return Some((p.to_string(), true));
        }
        if let Some(p) = key.strip_suffix(up) {
            return Some((p.to_string(), false));
        }
    }
    // diffusers-PEFT with an adapter name: `<prefix>.lora_A.<name>.weight`.
    let rest = key.strip_suffix(".weight")?;
    let (before, _adapter) = rest.rsplit_once('.')?;
    if let Some(p) = before.strip_suffix(".lora_A") {
        return Some((p.to_string(), true));
    }
    before
        .strip_suffix(".lora_B")
        .map(|p| (p.to_string(), false))
}

/// Keys of network types that are not LoRA (LyCORIS LoHa/LoKr/..., DoRA): their update is not
/// s·up·down, so reading only part of them would give a silently wrong ΔW.
fn unsupported(key: &str) -> Option<&'static str> {
    let leaf = key.rsplit('.').nth(1).unwrap_or(key);
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.starts_with("hada_") || leaf.starts_with("hada_") {
        Some("LyCORIS LoHa (hada_*)")
    } else if last.starts_with("lokr_") || leaf.starts_with("lokr_") {
        Some("LyCORIS LoKr (lokr_*)")
    } else if last == "dora_scale" || key.contains("lora_magnitude_vector") {
        Some("DoRA (dora_scale / lora_magnitude_vector)")
    } else if last == "lora_mid" || leaf == "lora_mid" {
        Some("LoCon with a Tucker core (lora_mid)")
    } else {
        None
    }
}

/// A torch.save zip (`PK\x03\x04`) or a raw pickle (protocol opcode 0x80, version 2..=5).
fn looks_like_pickle(file: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 4];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut b))
        .unwrap_or(0);
    (n == 4 && b == *b"PK\x03\x04") || (n >= 2 && b[0] == 0x80 && (2..=5).contains(&b[1]))
}

/// Opens a kohya/diffusers `.safetensors` LoRA file.
pub fn open(file: &Path) -> Result<Adapter> {
    let weights = match TensorFile::open(file) {
        Ok(w) => w,
        // Only a file that is not valid safetensors is sniffed, so a header length whose low
        // byte happens to be 0x80 can never be mistaken for a pickle.
        Err(_) if looks_like_pickle(file) => return Err(pickle_refusal(file)),
        Err(e) => return Err(e),
    };
    let mut pairs: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut alphas: BTreeMap<String, String> = BTreeMap::new();
    let mut others: Vec<String> = Vec::new();
    for key in weights.names() {
        if let Some(kind) = unsupported(key) {
            return Err(Error::bad_tensor(
                file,
                key,
                format!(
                    "expected a plain LoRA file (lora_down/lora_up), found {kind}, whose update is not s·up·down"
                ),
            ));
        }
        if let Some((prefix, is_down)) = split_key(key) {
            let slot = pairs.entry(prefix).or_default();
            let side = if is_down { &mut slot.0 } else { &mut slot.1 };
            if let Some(prev) = side {
                return Err(Error::bad_tensor(
                    file,
                    key,
                    format!(
                        "expected one {} tensor per module, found it also as `{prev}`",
                        if is_down { "down" } else { "up" }
                    ),
                ));
            }
            *side = Some(key.to_string());
        } else if let Some(prefix) = key.strip_suffix(".alpha") {
            alphas.insert(prefix.to_string(), key.to_string());
        } else {
            others.push(key.to_string());
        }
    }
    if pairs.is_empty() {
        return Err(Error::bad_file(
            file,
            "expected LoRA tensors (`<module>.lora_down.weight` / `.lora_up.weight`, or `lora_A`/`lora_B`), found none",
        ));
    }
    // PEFT's `save_pretrained` writes `base_model.model.<module>.lora_A.weight`; read without
    // adapter_config.json, such a file would lose its scale (lora_alpha / r, rank and alpha
    // patterns) and keep the wrapper prefix, so its modules would pool with nothing.
    if let Some((prefix, (a, b))) = pairs
        .iter()
        .find(|(p, _)| p.starts_with("base_model.model."))
    {
        let key = a
            .as_ref()
            .or(b.as_ref())
            .cloned()
            .unwrap_or_else(|| prefix.clone());
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| ".".into());
        return Err(Error::bad_tensor(
            file,
            key,
            format!(
                "expected a kohya/diffusers LoRA file, found PEFT keys (`base_model.model.` prefix) with no \
                 {cfg} beside the file: PEFT keeps the scale (lora_alpha / r) in that config. Put the \
                 adapter's {cfg} in {dir} and pass the folder (`{dir}`), or the folder the adapter was \
                 downloaded as",
                cfg = super::peft::CONFIG_FILE
            ),
        ));
    }
    let mut modules = BTreeMap::new();
    for (prefix, (down, up)) in pairs {
        let (a_key, b_key) = match (down, up) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                return Err(Error::bad_tensor(
                    file,
                    format!("{prefix}.lora_up.weight"),
                    format!("expected the up partner of `{a}`, found none"),
                ));
            }
            (None, Some(b)) => {
                return Err(Error::bad_tensor(
                    file,
                    format!("{prefix}.lora_down.weight"),
                    format!("expected the down partner of `{b}`, found none"),
                ));
            }
            (None, None) => continue,
        };
        let shape = pair_shape(&weights, &a_key, &b_key)?;
        let r = shape.rank as f64;
        let alpha = match alphas.remove(&prefix) {
            None => r,
            Some(k) => {
                let (dims, v) = weights.read_f64(&k)?;
                match v.as_slice() {
                    [a] if *a == 0.0 => r,
                    [a] => *a,
                    _ => {
                        return Err(Error::bad_tensor(
                            file,
                            &k,
                            format!("expected a scalar alpha, found shape {dims:?}"),
                        ));
                    }
                }
            }
        };
        modules.insert(
            prefix,
            ModuleInfo {
                rank: shape.rank,
                in_features: shape.in_features,
                out_features: shape.out_features,
                scale: alpha / r,
                conv_kernel: shape.conv_kernel,
                a_key,
                b_key,
            },
        );
    }
    // Alphas without a module are harmless leftovers: report them with the other extras.
    others.extend(alphas.into_values());
    others.sort();
    let extras = others
        .into_iter()
        .map(|k| {
            let (dtype, shape) = weights.stored_info(&k).unwrap_or(("?", &[]));
            ExtraTensor {
                shape: shape.to_vec(),
                dtype: dtype.to_string(),
                bytes: weights.stored_len(&k).unwrap_or(0),
                key: k,
            }
        })
        .collect();

    // A small config so that later stages can record where the adapter came from.
    let md = weights.metadata();
    let pick = |k: &str| {
        md.and_then(|m| m.get(k))
            .map(|s| Value::String(s.clone()))
            .unwrap_or(Value::Null)
    };
    let base_model = md
        .and_then(|m| {
            m.get("ss_sd_model_name")
                .or_else(|| m.get("ss_base_model_version"))
        })
        .cloned();
    let ranks: std::collections::BTreeSet<usize> =
        modules.values().map(|m: &ModuleInfo| m.rank).collect();
    let config = serde_json::json!({
        "format": "kohya",
        "file": file.file_name().map(|n| n.to_string_lossy().into_owned()),
        "modules": modules.len(),
        "ranks": ranks.into_iter().collect::<Vec<_>>(),
        "ss_network_module": pick("ss_network_module"),
        "ss_network_dim": pick("ss_network_dim"),
        "ss_network_alpha": pick("ss_network_alpha"),
        "ss_base_model_version": pick("ss_base_model_version"),
        "ss_sd_model_name": pick("ss_sd_model_name"),
    });
    let sha256 = crate::util::sha256_file(file)?;
    Ok(Adapter {
        path: file.to_path_buf(),
        format: AdapterFormat::Kohya,
        sha256,
        base_model,
        fan_in_fan_out: false,
        modules,
        extras,
        config,
        weights,
    })
}
