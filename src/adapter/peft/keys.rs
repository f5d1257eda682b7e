//! The weight keys of a PEFT file: which module and which side (A, B, or something the
//! math does not cover) a key holds, and the module's canonical name.

/// What a weights key is.
pub(super) enum KeyKind {
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
pub(super) fn classify(key: &str) -> KeyKind {
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
