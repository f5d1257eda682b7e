//! The `.elxb` bundle: manifest types, write and read.

use super::quant::StorageDtype;
use crate::adapter::AdapterFormat;
use crate::error::Result;
use crate::subspace::{ExtractOptions, Subspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bundle format version written by this build.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// One adapter the subspace was extracted from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceAdapter {
    pub path: String,
    pub sha256: String,
    pub format: AdapterFormat,
    pub base_model: Option<String>,
    pub modules: usize,
}

/// Per-side summary kept in the manifest (the spectrum itself is a tensor).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideSummary {
    pub k_principal: usize,
    pub mean_vector: bool,
    pub pseudo: usize,
    pub energy_kept: f64,
}

/// One module in the manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleManifest {
    pub in_features: usize,
    pub out_features: usize,
    pub r_max: usize,
    pub n_adapters: usize,
    pub k_a: usize,
    pub k_b: usize,
    pub a: SideSummary,
    pub b: SideSummary,
}

/// How the base weight of a bound MatMul/Gemm is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightLayout {
    /// Y = X·W with W stored [in x out] (torch legacy export of Linear, MatMul).
    InOut,
    /// Y = X·Wᵀ with W stored [out x in] (Gemm transB=1, or a Transpose before MatMul).
    OutIn,
}

/// Where one module lives in the base ONNX graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleBinding {
    /// Name of the MatMul or Gemm node.
    pub node: String,
    /// The node's activation input X.
    pub input: String,
    /// The tensor whose consumers receive Y + T (the node output, or the bias Add's output).
    pub output: String,
    /// Initializer holding W0.
    pub weight: String,
    pub layout: WeightLayout,
}

/// The binding of a bundle to one base ONNX model, resolved on the host by `elx bind`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    /// SHA-256 of the base model file.
    pub base_sha256: String,
    /// File name of the base model when bound (informational).
    pub base_file: String,
    pub modules: BTreeMap<String, ModuleBinding>,
}

/// The bundle manifest (JSON in `__metadata__`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Hash of the stored components plus this manifest without `subspace_id` and `binding`.
    pub subspace_id: String,
    pub dtype: StorageDtype,
    pub options: ExtractOptions,
    pub modules: BTreeMap<String, ModuleManifest>,
    pub sources: Vec<SourceAdapter>,
    pub binding: Option<Binding>,
}

/// A bundle loaded in memory; components are dequantized to f64.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub subspace: Subspace,
}

impl Bundle {
    /// Writes `subspace` as a bundle, atomically; returns the manifest (with its subspace id).
    pub fn write(
        path: &Path,
        subspace: &Subspace,
        sources: &[SourceAdapter],
        dtype: StorageDtype,
        binding: Option<&Binding>,
    ) -> Result<Manifest> {
        let _ = (path, subspace, sources, dtype, binding);
        todo!("bundle helper")
    }

    /// Reads and validates a bundle (shapes against the manifest, finite values, the id).
    pub fn read(path: &Path) -> Result<Bundle> {
        let _ = path;
        todo!("bundle helper")
    }
}
