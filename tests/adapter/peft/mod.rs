//! HF PEFT folders: scale folding (plain, rslora, rank/alpha patterns), key conventions,
//! dtypes, shapes, extras and bad inputs. Every fixture is written here with known values and
//! the loaded ΔW = B'·A' is compared with s·B·A computed independently.
//!
//! One module per concept: scale folding (`scale.rs`), key conventions, dtypes and shapes
//! (`layout.rs`), refused inputs (`refused.rs`) and real PEFT output (`real.rs`).

mod layout;
mod real;
mod refused;
mod scale;

use crate::support::adapter_fixtures as fixtures;
use eigenlorax::adapter::Adapter;
use eigenlorax::tensorfile::Dtype;
use fixtures::*;

pub(super) const P: &str = "base_model.model.";

pub(super) fn lora_keys(module: &str) -> (String, String) {
    (
        format!("{P}{module}.lora_A.weight"),
        format!("{P}{module}.lora_B.weight"),
    )
}

/// Writes `modules` (name, pair) with `config`; returns the folder.
pub(super) fn folder(
    tmp: &TmpDir,
    tag: &str,
    config: serde_json::Value,
    modules: &[(&str, &Pair)],
    dtype: Dtype,
) -> std::path::PathBuf {
    let dir = tmp.sub(tag);
    let mut t = Vec::new();
    for (name, p) in modules {
        let (a, b) = lora_keys(name);
        t.push(p.a.tensor(&a, dtype));
        t.push(p.b.tensor(&b, dtype));
    }
    write_peft(&dir, &config, t);
    dir
}

pub(super) fn check_delta(ad: &Adapter, name: &str, pair: &Pair, s: f64) {
    let info = &ad.modules[name];
    assert!(
        (info.scale - s).abs() <= 1e-15 * s.abs(),
        "{name}: scale {} vs {s}",
        info.scale
    );
    let m = ad.load_module(name).unwrap();
    let e = rel_err(&loaded_delta(&m), &pair.delta(s));
    assert!(e <= 1e-12, "{name}: relative error {e}");
    // Folding is symmetric: A' = √s·A exactly up to one rounding.
    let a = Dense::from_mat(m.a.as_ref());
    assert!(
        rel_err(&a, &pair.a.scaled(s.sqrt())) <= 1e-15,
        "{name}: A' is not √s·A"
    );
}
