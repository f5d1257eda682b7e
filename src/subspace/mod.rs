//! Stage 2: per-module principal subspaces (the paper's Algorithm 1) and coefficients in them.
//!
//! Per module, the A side stacks the rows of every adapter's A' (Σr x in) and keeps the top
//! K_A right singular vectors as V_A [K_A x in] (orthonormal rows); the B side stacks the
//! columns of every B' (out x Σr) and keeps the top K_B left singular vectors as
//! V_B [out x K_B] (orthonormal columns).
//!
//! * [`decompose`]: exact decomposition of a stacked side, on the smaller Gram side, with
//!   optional streaming of the d x d Gram for very many adapters.
//! * [`select`]: the K rules (fixed, explained energy, Gavish–Donoho).
//! * [`augment`]: mean direction and pseudo-PCs, orthogonalized by modified Gram–Schmidt.
//! * [`project`]: coefficients of an adapter in a subspace, reconstruction, errors.

pub mod augment;
pub mod decompose;
pub mod project;
pub mod select;

use crate::adapter::{Adapter, LoraModule};
use crate::error::Result;
use faer::Mat;
use std::collections::BTreeMap;

pub use project::{Coefficients, captured_energy, project, reconstruct, relative_error};

/// How many principal directions to keep on one side of one module.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rule", content = "value", rename_all = "kebab-case")]
pub enum KRule {
    /// Exactly K (capped at the rank of the stack).
    Fixed(usize),
    /// The smallest K whose squared singular values reach this share of the total energy.
    Energy(f64),
    /// Gavish & Donoho (2014) optimal hard threshold for unknown noise level.
    GavishDonoho,
}

/// Options of [`extract`]; all of them are recorded in the bundle manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtractOptions {
    /// Replace each adapter's (A', B') by the balanced factorization of ΔW before stacking.
    pub canonicalize: bool,
    /// Subtract the mean vector before the decomposition and keep it as one more basis vector.
    pub center: bool,
    /// K rule for the A side.
    pub k_rule_a: KRule,
    /// K rule for the B side.
    pub k_rule_b: KRule,
    /// Pseudo-PCs appended per side.
    pub pseudo: usize,
    /// Seed of the pseudo-PC Gaussian draws.
    pub seed: u64,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            canonicalize: true,
            center: false,
            k_rule_a: KRule::Energy(0.9),
            k_rule_b: KRule::Energy(0.9),
            pseudo: 0,
            seed: 0,
        }
    }
}

/// What was kept on one side of one module, for the manifest and the plots.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideInfo {
    /// All singular values of the stacked (and, if centered, mean-removed) side, descending.
    pub spectrum: Vec<f64>,
    /// Principal directions kept (the K the rule chose).
    pub k_principal: usize,
    /// Whether the mean direction was appended (centering).
    pub mean_vector: bool,
    /// Pseudo-PCs appended (after dropping near-null draws).
    pub pseudo: usize,
    /// Share of the stack's energy (Σσ²) inside the kept principal directions.
    pub energy_kept: f64,
}

impl SideInfo {
    /// Total basis size on this side: principal + mean + pseudo.
    pub fn k_total(&self) -> usize {
        self.k_principal + usize::from(self.mean_vector) + self.pseudo
    }
}

/// The subspace of one adapted module.
#[derive(Clone, Debug)]
pub struct ModuleSubspace {
    /// Input features of the module.
    pub in_features: usize,
    /// Output features of the module.
    pub out_features: usize,
    /// Largest rank among the adapters that had this module.
    pub r_max: usize,
    /// How many adapters had this module.
    pub n_adapters: usize,
    /// V_A [K_A x in], orthonormal rows (exactly so before quantization).
    pub v_a: Mat<f64>,
    /// V_B [out x K_B], orthonormal columns.
    pub v_b: Mat<f64>,
    /// A-side statistics.
    pub a: SideInfo,
    /// B-side statistics.
    pub b: SideInfo,
}

/// A whole subspace: one [`ModuleSubspace`] per module name.
#[derive(Clone, Debug)]
pub struct Subspace {
    pub modules: BTreeMap<String, ModuleSubspace>,
    pub options: ExtractOptions,
}

/// Progress callback: (modules done, modules total, module name).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

/// Extracts the subspace of every module found in any adapter (a module present in only some
/// adapters uses those). Adapters are read one module at a time.
pub fn extract(adapters: &[Adapter], options: &ExtractOptions, progress: Progress<'_>) -> Result<Subspace> {
    let _ = (adapters, options, progress);
    todo!("subspace helper")
}

/// Extracts one module's subspace from its adapters' matrices (pure math; all modules must
/// agree on in/out features).
pub fn extract_module(modules: &[LoraModule], options: &ExtractOptions) -> Result<ModuleSubspace> {
    let _ = (modules, options);
    todo!("subspace helper")
}
