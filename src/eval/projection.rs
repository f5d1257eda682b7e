//! A whole adapter projected into a subspace, with its error report: the one function behind
//! `elx project`, `elx inspect` and [`super::capture`]. Whole-adapter figures have one
//! definition, weighted by each module's ‖ΔW‖²_F ([`super::capture_vs_chance::combine`]).

use super::capture_vs_chance::{ModuleMeasure, combine, measure_module_with};
use crate::adapter::{Adapter, LoraModule};
use crate::error::{Error, Result};
use crate::subspace::Subspace;
use crate::task::Coefficients;
use std::collections::BTreeMap;

/// Per-module coefficients of an adapter in a subspace, with each module's measures.
#[derive(Clone, Debug)]
pub struct Projection {
    /// Coefficients by module.
    pub modules: BTreeMap<String, Coefficients>,
    /// By module: the relative ΔW error, the captured share and ‖ΔW‖²_F (and the random
    /// control's error and share, when one was given).
    pub measures: BTreeMap<String, ModuleMeasure>,
    /// The modules as loaded (scale folded in), by name.
    pub loaded: BTreeMap<String, LoraModule>,
    /// Modules of the adapter that are not in the subspace.
    pub missing: Vec<String>,
}

impl Projection {
    /// Whole-adapter (error, captured share), weighted by ‖ΔW‖²_F, and the same for the
    /// random control when every module has one ([`combine`]).
    pub fn combined(&self) -> ((f64, f64), Option<(f64, f64)>) {
        let measures: Vec<ModuleMeasure> = self.measures.values().copied().collect();
        combine(&measures)
    }
}

/// Projects every module of `adapter` that `space` has (and measures it in `random`, a
/// control of the same size, when given). An in/out mismatch is an error naming the
/// adapter's weights file and tensor; `space_name` says which subspace (e.g. `bundle <id>
/// (<path>)`).
pub fn project_adapter(
    adapter: &Adapter,
    space: &Subspace,
    random: Option<&Subspace>,
    space_name: &str,
) -> Result<Projection> {
    let mut p = Projection {
        modules: BTreeMap::new(),
        measures: BTreeMap::new(),
        loaded: BTreeMap::new(),
        missing: Vec::new(),
    };
    for (name, info) in &adapter.modules {
        let Some(s) = space.modules.get(name) else {
            p.missing.push(name.clone());
            continue;
        };
        if info.in_features != s.in_features || info.out_features != s.out_features {
            return Err(Error::bad_tensor(
                adapter.weights_path(),
                &info.a_key,
                format!(
                    "expected a module with in={} out={} like `{name}` in {space_name}, found in={} out={} \
                     (an adapter for another base model?)",
                    s.in_features, s.out_features, info.in_features, info.out_features
                ),
            ));
        }
        let m = adapter.load_module(name)?;
        let (c, measure) = measure_module_with(&m, s, random.and_then(|r| r.modules.get(name)))?;
        p.modules.insert(name.clone(), c);
        p.measures.insert(name.clone(), measure);
        p.loaded.insert(name.clone(), m);
    }
    Ok(p)
}
