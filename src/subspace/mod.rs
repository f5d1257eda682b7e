//! Stage 2: per-module principal subspaces (the paper's Algorithm 1) and coefficients in them.
//!
//! Per module, the A side stacks the rows of every adapter's A' (Σr x in) and keeps the top
//! K_A right singular vectors as V_A [K_A x in] (orthonormal rows); the B side stacks the
//! columns of every B' (out x Σr) and keeps the top K_B left singular vectors as
//! V_B [out x K_B] (orthonormal columns).
//!
//! * [`decompose`]: exact decomposition of a stacked side, on the Gram in the smaller
//!   dimension, streaming the d x d Gram for very many adapters.
//! * [`topk`]: certified top-K eigenpairs (block Krylov; Davis–Kahan stopping test, with
//!   λ_{K+1} known or proven by an inertia test).
//! * [`select`]: the K rules (fixed, explained energy, Gavish–Donoho).
//! * [`augment`]: mean direction and pseudo-PCs, orthogonalized by modified Gram–Schmidt.
//! * [`project`]: coefficients of an adapter in a subspace, reconstruction, errors.
//! * [`extract`] and its variants (`extraction.rs`): every module of a set of adapters,
//!   selected, sharded, on threads, streamed to a sink, or continued from statistics.
//! * [`extract_module`] (`module.rs`): one module, its adapters folded into the two sides'
//!   accumulators one at a time; [`canonicalize`] (`canonical.rs`): the balanced gauge.

pub mod augment;
mod canonical;
pub mod decompose;
mod extraction;
mod module;
pub mod project;
pub mod select;
pub mod topk;

use faer::Mat;
use std::collections::BTreeMap;

pub use canonical::canonicalize;
pub use decompose::{Decomposition, Held, Route, SideAccumulator, SideStats};
pub use extraction::{
    Extraction, ExtractionReport, ModuleSelection, ModuleSink, ModuleStats, PriorStats, extract,
    extract_each, extract_selected, extract_with,
};
pub use module::{extract_module, extract_module_stream, extract_module_with, is_zero_delta};
pub use topk::Solver;

pub use project::{
    Coefficients, Remapped, captured_energy, project, reconstruct, relative_error, remap,
    try_project, try_reconstruct,
};

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
    /// Compute and keep every singular value of each side (for plots and diagnostics that
    /// read the whole spectrum). Without it the fixed and energy rules are served from the
    /// trace plus the top values, and [`SideInfo::spectrum`] holds the K values kept.
    /// (Not written to the manifest when `false`, so that older manifests read the same.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_spectrum: bool,
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
            full_spectrum: false,
        }
    }
}

/// What was kept on one side of one module, for the manifest and the plots.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideInfo {
    /// Singular values of the stacked (and, if centered, mean-removed) side, descending: all
    /// of them when `full_spectrum` is true, else the top K kept.
    pub spectrum: Vec<f64>,
    /// Σσ² of the whole stack (the trace of its Gram), exact either way.
    pub total_energy: f64,
    /// Whether `spectrum` is complete (min(rows, cols) values) or the top K only.
    pub full_spectrum: bool,
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
    /// Per-module subspaces by canonical module name.
    pub modules: BTreeMap<String, ModuleSubspace>,
    /// The options the subspace was extracted with.
    pub options: ExtractOptions,
}

/// Progress callback: (modules done, modules total, module name).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);
