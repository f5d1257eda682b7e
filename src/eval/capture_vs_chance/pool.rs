//! A pool of adapters loaded once into memory ([`Pool`]), of one base model, and the
//! subspace of any of its members.

use crate::adapter::{Adapter, LoraModule};
use crate::error::{Error, Result};
use crate::subspace::{self, ExtractOptions, Subspace};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A pool of adapters loaded once into memory (per module, the scale folded in).
#[derive(Clone, Debug)]
pub struct Pool {
    /// Display names (the paths as given).
    pub names: Vec<String>,
    /// The paths, in the same order.
    pub paths: Vec<PathBuf>,
    /// Per adapter, its modules by canonical name.
    pub modules: Vec<BTreeMap<String, LoraModule>>,
}

impl Pool {
    /// Reads every module of every adapter. The adapters must be of one base model
    /// ([`crate::adapter::base::refuse_mixed`]) and agree on each shared module's shape; a
    /// mismatch names the file and module.
    pub fn load(paths: &[PathBuf]) -> Result<Pool> {
        Pool::load_with(paths, false)
    }

    /// [`Pool::load`]; with `allow_mixed_bases`, adapters of several base models are accepted
    /// (`elx inspect --allow-mixed-bases`).
    pub fn load_with(paths: &[PathBuf], allow_mixed_bases: bool) -> Result<Pool> {
        let mut modules = Vec::with_capacity(paths.len());
        let mut shapes: BTreeMap<String, (usize, usize, PathBuf)> = BTreeMap::new();
        let opened = paths
            .iter()
            .map(|p| Adapter::open(p))
            .collect::<Result<Vec<_>>>()?;
        if !allow_mixed_bases {
            crate::adapter::base::refuse_mixed(&opened, "--allow-mixed-bases")?;
        }
        for (p, a) in paths.iter().zip(opened) {
            let mut mods = BTreeMap::new();
            for name in a.modules.keys() {
                let m = a.load_module(name)?;
                let shape = (m.in_features(), m.out_features());
                match shapes.get(name) {
                    Some(&(i, o, ref first)) if (i, o) != shape => {
                        return Err(Error::bad_file(
                            a.weights_path(),
                            format!(
                                "module `{name}`: expected in={i} out={o} like {}, found in={} out={}",
                                first.display(),
                                shape.0,
                                shape.1
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        shapes.insert(name.clone(), (shape.0, shape.1, p.clone()));
                    }
                }
                mods.insert(name.clone(), m);
            }
            modules.push(mods);
        }
        Ok(Pool {
            names: paths.iter().map(|p| p.display().to_string()).collect(),
            paths: paths.to_vec(),
            modules,
        })
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The subspace of the adapters `members` (indices into the pool), one module at a time.
    pub fn extract(&self, members: &[usize], options: &ExtractOptions) -> Result<Subspace> {
        let mut names: Vec<&String> = members
            .iter()
            .flat_map(|&i| self.modules[i].keys())
            .collect();
        names.sort();
        names.dedup();
        let mut modules = BTreeMap::new();
        for name in names {
            let stack: Vec<LoraModule> = members
                .iter()
                .filter_map(|&i| self.modules[i].get(name).cloned())
                .collect();
            modules.insert(name.clone(), subspace::extract_module(&stack, options)?);
        }
        Ok(Subspace {
            modules,
            options: options.clone(),
        })
    }
}
