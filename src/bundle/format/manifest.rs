//! The manifest of a bundle (JSON in `__metadata__`): its sources, the base model's
//! identity, per module the shapes and K of each side, and the binding to a base ONNX model.

use super::super::quant::StorageDtype;
use crate::adapter::{AdapterFormat, base};
use crate::error::{Error, Result};
use crate::subspace::{ExtractOptions, ModuleSubspace, SideInfo};
use std::collections::BTreeMap;

/// One adapter the subspace was extracted from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceAdapter {
    /// Path as given on the command line.
    pub path: String,
    /// SHA-256 of its weights file.
    pub sha256: String,
    /// On-disk convention.
    pub format: AdapterFormat,
    /// `base_model_name_or_path`, when known.
    pub base_model: Option<String>,
    /// Number of adapted modules.
    pub modules: usize,
}

impl From<&crate::adapter::Adapter> for SourceAdapter {
    fn from(ad: &crate::adapter::Adapter) -> Self {
        SourceAdapter {
            path: ad.path.display().to_string(),
            sha256: ad.sha256.clone(),
            format: ad.format,
            base_model: ad.base_model.clone(),
            modules: ad.modules.len(),
        }
    }
}

/// Which base model a bundle's subspace belongs to (format 3; derived for older bundles by
/// [`Manifest::base_identity`]). It is a function of the sources and the modules, so
/// [`Bundle::read`](super::Bundle::read) recomputes it and refuses a manifest whose stored one differs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseIdentity {
    /// The `base_model_name_or_path` the PEFT sources declare (normalized, see
    /// [`crate::adapter::base::normalize_base_name`]); `None` when none declares one.
    pub name: Option<String>,
    /// Further names, when the sources declare several (extracted with
    /// `--allow-mixed-bases`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_names: Vec<String>,
    /// [`crate::adapter::base::fingerprint`] of the bundle's modules and their (in, out).
    pub fingerprint: String,
}

impl BaseIdentity {
    /// The identity of a bundle with these sources and modules.
    pub fn of(sources: &[SourceAdapter], modules: &BTreeMap<String, ModuleManifest>) -> Self {
        let mut names: Vec<String> = Vec::new();
        for s in sources {
            if s.format != AdapterFormat::Peft {
                continue;
            }
            if let Some(n) = s.base_model.as_deref().map(base::normalize_base_name)
                && !n.is_empty()
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
        let mut it = names.into_iter();
        BaseIdentity {
            name: it.next(),
            other_names: it.collect(),
            fingerprint: base::fingerprint(
                modules
                    .iter()
                    .map(|(n, m)| (n.as_str(), m.in_features, m.out_features)),
            ),
        }
    }

    /// "`gpt2` (fingerprint shapes-…)", or "an unnamed base (fingerprint …)".
    pub fn describe(&self) -> String {
        let name = match &self.name {
            Some(n) if self.other_names.is_empty() => format!("base model `{n}`"),
            Some(n) => format!(
                "base models `{n}`, {} (mixed)",
                self.other_names
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "an unnamed base model".to_string(),
        };
        format!("{name} (fingerprint {})", self.fingerprint)
    }

    /// Checks that `adapter` is for this base: the base model it declares (PEFT) must be one
    /// of this bundle's, and every module it shares with the bundle must have the bundle's
    /// shape. Errors name the adapter's file, and the tensor for a shape.
    pub fn check_adapter(
        &self,
        adapter: &crate::adapter::Adapter,
        modules: &BTreeMap<String, ModuleManifest>,
        bundle: &str,
    ) -> Result<()> {
        if let (Some(theirs), Some(ours)) = (base::declared_base(adapter), &self.name)
            && &theirs != ours
            && !self.other_names.contains(&theirs)
        {
            return Err(Error::bad_tensor(
                adapter.path.join(crate::adapter::peft::CONFIG_FILE),
                "base_model_name_or_path",
                format!(
                    "expected an adapter for {} like {bundle}, found one for `{theirs}`: project it into a bundle extracted from adapters of its own base model",
                    self.describe()
                ),
            ));
        }
        for (name, info) in &adapter.modules {
            if let Some(mm) = modules.get(name)
                && (mm.in_features, mm.out_features) != (info.in_features, info.out_features)
            {
                return Err(Error::bad_tensor(
                    adapter.weights_path(),
                    info.a_key.clone(),
                    format!(
                        "expected a module with in={} out={} like `{name}` in {bundle} ({}), found in={} out={} (an adapter for another base model?)",
                        mm.in_features,
                        mm.out_features,
                        self.describe(),
                        info.in_features,
                        info.out_features
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Per-side summary kept in the manifest (the spectrum itself is a tensor).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideSummary {
    /// Principal directions kept.
    pub k_principal: usize,
    /// Whether the mean direction was appended.
    pub mean_vector: bool,
    /// Pseudo-PCs appended.
    pub pseudo: usize,
    /// Share of the stack's energy inside the principal directions.
    pub energy_kept: f64,
    /// Σσ² of the whole stack (the trace of its Gram); absent in format 1, whose spectrum
    /// tensors are complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_energy: Option<f64>,
    /// Whether the spectrum tensor holds every singular value (`true`, always so in format
    /// 1) or only the top K kept (`false`; `elx extract --full-spectrum` stores them all).
    ///
    /// Written only when `false`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub full_spectrum: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl SideSummary {
    fn of(s: &SideInfo) -> SideSummary {
        SideSummary {
            k_principal: s.k_principal,
            mean_vector: s.mean_vector,
            pseudo: s.pseudo,
            energy_kept: s.energy_kept,
            total_energy: Some(s.total_energy),
            full_spectrum: s.full_spectrum,
        }
    }

    /// Total basis size: principal + mean + pseudo.
    pub fn k_total(&self) -> usize {
        self.k_principal + usize::from(self.mean_vector) + self.pseudo
    }
}

/// One module in the manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleManifest {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Largest adapter rank seen for this module.
    pub r_max: usize,
    /// Adapters that had this module.
    pub n_adapters: usize,
    /// Rows of V_A.
    pub k_a: usize,
    /// Columns of V_B.
    pub k_b: usize,
    /// A-side summary.
    pub a: SideSummary,
    /// B-side summary.
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
    /// Layout of W0.
    pub layout: WeightLayout,
}

/// The binding of a bundle to one base ONNX model, resolved on the host by `elx bind`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    /// SHA-256 of the base model file.
    pub base_sha256: String,
    /// File name of the base model when bound (informational).
    pub base_file: String,
    /// Module name -> graph location.
    pub modules: BTreeMap<String, ModuleBinding>,
}

/// The bundle manifest (JSON in `__metadata__`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT_VERSION`](super::BUNDLE_FORMAT_VERSION) of the writer.
    pub format_version: u32,
    /// Hash of the stored components plus this manifest without `subspace_id` and `binding`.
    pub subspace_id: String,
    /// Storage dtype of V_A / V_B.
    pub dtype: StorageDtype,
    /// Extraction options.
    pub options: ExtractOptions,
    /// Per-module shapes and K.
    pub modules: BTreeMap<String, ModuleManifest>,
    /// The adapters the subspace came from.
    pub sources: Vec<SourceAdapter>,
    /// Binding to a base ONNX model, once `elx bind` ran.
    pub binding: Option<Binding>,
    /// The base model (format 3; absent in older bundles, see [`Manifest::base_identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseIdentity>,
}

impl Manifest {
    /// The base identity: the stored one (format 3), else derived from the sources and
    /// modules the same way.
    pub fn base_identity(&self) -> BaseIdentity {
        self.base
            .clone()
            .unwrap_or_else(|| BaseIdentity::of(&self.sources, &self.modules))
    }
}

/// The manifest entry of one module, checked against its bases and side infos.
pub(super) fn module_manifest(name: &str, m: &ModuleSubspace) -> Result<ModuleManifest> {
    let (k_a, k_b) = (m.v_a.nrows(), m.v_b.ncols());
    let bad = |what: String| Err(Error::Usage(format!("module `{name}`: {what}")));
    if m.v_a.ncols() != m.in_features || m.v_b.nrows() != m.out_features {
        return bad(format!(
            "V_A is {}x{} and V_B {}x{} but the module is in={} out={}",
            m.v_a.nrows(),
            m.v_a.ncols(),
            m.v_b.nrows(),
            m.v_b.ncols(),
            m.in_features,
            m.out_features
        ));
    }
    if k_a != m.a.k_total() || k_b != m.b.k_total() {
        return bad(format!(
            "V_A has {k_a} rows and V_B {k_b} columns but the side infos count {} and {}",
            m.a.k_total(),
            m.b.k_total()
        ));
    }
    if !m.a.energy_kept.is_finite() || !m.b.energy_kept.is_finite() {
        return bad("energy kept is not finite".to_string());
    }
    let valid = |t: f64| t.is_finite() && t >= 0.0;
    if !valid(m.a.total_energy) || !valid(m.b.total_energy) {
        return bad("total energy is not a finite non-negative number".to_string());
    }
    Ok(ModuleManifest {
        in_features: m.in_features,
        out_features: m.out_features,
        r_max: m.r_max,
        n_adapters: m.n_adapters,
        k_a,
        k_b,
        a: SideSummary::of(&m.a),
        b: SideSummary::of(&m.b),
    })
}
