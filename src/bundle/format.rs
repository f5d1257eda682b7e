//! The `.elxb` bundle: manifest types, write and read.
//!
//! Layout (safetensors):
//!
//! | tensor | shape | dtype |
//! |---|---|---|
//! | `<module>.V_A` | [K_A, in] | f32 / f16 / bf16 / i8 |
//! | `<module>.V_B` | [out, K_B] | same |
//! | `<module>.V_A.scale` (int8 only) | `[K_A]` | f32, one per row of V_A |
//! | `<module>.V_B.scale` (int8 only) | `[K_B]` | f32, one per *column* of V_B (basis vector) |
//! | `<module>.sigma_A`, `<module>.sigma_B` | `[len]` | f32, singular values of the stacked side: all of them, or the top K kept (see [`SideSummary::full_spectrum`]) |
//!
//! and `__metadata__["eigenlorax"]` = the JSON [`Manifest`].
//!
//! Format versions: **3** (this build) adds the base model's identity ([`BaseIdentity`]: the
//! base model name the sources declare and a fingerprint of the module shapes). **2** records per side the total energy Σσ² of the stack
//! (`total_energy`) and, when the spectrum tensors hold only the top K values, `full_spectrum:
//! false`. **1** always stored the full spectrum and no total; it is still read (the total is
//! then Σσ² of the stored spectrum).
//!
//! The subspace id is `elx-` + the first 16 hex digits of a SHA-256 over every stored tensor
//! (sorted by name; each as length-prefixed name, dtype name, shape and bytes) followed by the
//! manifest JSON with `subspace_id` blanked and `binding` removed. Binding a bundle to a base
//! model therefore keeps its id, and any change to a component, a spectrum, an option or a
//! source hash changes it.

use super::quant::{StorageDtype, cols_of, quantize_int8, rows_of};
use crate::adapter::{AdapterFormat, base};
use crate::error::{Error, Result};
use crate::subspace::{ExtractOptions, ModuleSubspace, SideInfo, Subspace};
use crate::tensorfile::{self, Dtype, TensorFile, TensorOut};
use faer::Mat;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bundle format version written by this build.
pub const BUNDLE_FORMAT_VERSION: u32 = 3;

/// The oldest bundle format version this build still reads (1: full spectra, no totals).
pub const BUNDLE_FORMAT_OLDEST: u32 = 1;

/// The `__metadata__` key that holds the manifest JSON (bundles and coefficient files).
pub const METADATA_KEY: &str = "eigenlorax";

/// `__metadata__` key of the binding's own hash (see [`binding_hash`]). The subspace id
/// leaves the binding out on purpose (binding keeps every coefficient file valid), so the
/// binding is covered by this second hash, checked at load.
///
/// **An integrity check against accident, not against tampering.** The hash is unkeyed:
/// it catches a damaged file, a hand edit that forgot the hash, a bundle bound to another
/// model; anyone who can write the file can also recompute it (swap two modules' bindings,
/// rehash, and the bundle loads). The subspace id is the same kind of check. A deployment
/// that must detect deliberate changes should authenticate the whole file outside eigenlorax
/// (a detached signature of the `.elxb`, e.g. `minisign` / `ssh-keygen -Y sign` / GPG,
/// checked before `elx run` or `Engine::load`; or a read-only, verified file system such as
/// dm-verity), the same way it protects the base model and the binary.
pub const BINDING_HASH_KEY: &str = "eigenlorax.binding_sha256";

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
/// [`Bundle::read`] recomputes it and refuses a manifest whose stored one differs.
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
    /// [`BUNDLE_FORMAT_VERSION`] of the writer.
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

/// A bundle loaded in memory; components are dequantized to f64.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Dequantized bases and spectra.
    pub subspace: Subspace,
}

/// Names of the tensors of one module.
pub(super) struct Names {
    pub(super) v_a: String,
    pub(super) v_b: String,
    pub(super) v_a_scale: String,
    pub(super) v_b_scale: String,
    pub(super) sigma_a: String,
    pub(super) sigma_b: String,
}

impl Names {
    pub(super) fn of(module: &str) -> Names {
        Names {
            v_a: format!("{module}.V_A"),
            v_b: format!("{module}.V_B"),
            v_a_scale: format!("{module}.V_A.scale"),
            v_b_scale: format!("{module}.V_B.scale"),
            sigma_a: format!("{module}.sigma_A"),
            sigma_b: format!("{module}.sigma_B"),
        }
    }

    /// The names a module stores with `dtype`, in the order [`encode_module`] writes them
    /// (the order fixes the data offsets, so a merge that copies tensors keeps the bytes).
    pub(super) fn stored(&self, dtype: StorageDtype) -> Vec<&str> {
        match dtype {
            StorageDtype::Int8 => vec![
                &self.v_a,
                &self.v_a_scale,
                &self.v_b,
                &self.v_b_scale,
                &self.sigma_a,
                &self.sigma_b,
            ],
            _ => vec![&self.v_a, &self.v_b, &self.sigma_a, &self.sigma_b],
        }
    }
}

/// A stored tensor as the id sees it.
pub(super) struct Stored<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: Dtype,
    pub(super) shape: &'a [usize],
    pub(super) data: &'a [u8],
}

fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The subspace id of stored tensors plus a manifest (its `subspace_id` and `binding` are
/// ignored).
pub(super) fn compute_id(mut tensors: Vec<Stored<'_>>, manifest: &Manifest) -> Result<String> {
    tensors.sort_by(|a, b| a.name.cmp(b.name));
    let mut h = Sha256::new();
    h.update(b"eigenlorax-bundle-id-v1");
    h.update((tensors.len() as u64).to_le_bytes());
    for t in &tensors {
        hash_field(&mut h, t.name.as_bytes());
        hash_field(&mut h, t.dtype.name().as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for &d in t.shape {
            h.update((d as u64).to_le_bytes());
        }
        hash_field(&mut h, t.data);
    }
    let mut canon = manifest.clone();
    canon.subspace_id = String::new();
    canon.binding = None;
    let json = serde_json::to_string(&canon)
        .map_err(|e| Error::Usage(format!("cannot serialize manifest: {e}")))?;
    hash_field(&mut h, json.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("elx-{hex}"))
}

fn flat_row_major(m: &Mat<f64>) -> Vec<f64> {
    rows_of(m).into_iter().flatten().collect()
}

fn check_finite(m: &Mat<f64>, what: &str) -> Result<()> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            if !m[(i, j)].is_finite() {
                return Err(Error::Numeric(format!(
                    "{what} has a non-finite entry at ({i}, {j})"
                )));
            }
        }
    }
    Ok(())
}

/// Stored tensors of one module.
fn encode_module(name: &str, m: &ModuleSubspace, dtype: StorageDtype) -> Result<Vec<TensorOut>> {
    let n = Names::of(name);
    check_finite(&m.v_a, &n.v_a)?;
    check_finite(&m.v_b, &n.v_b)?;
    for (what, s) in [(&n.sigma_a, &m.a.spectrum), (&n.sigma_b, &m.b.spectrum)] {
        if s.iter().any(|x| !x.is_finite()) {
            return Err(Error::Numeric(format!("{what} has a non-finite value")));
        }
    }
    let mut out = Vec::with_capacity(6);
    match dtype {
        StorageDtype::Int8 => {
            let qa = quantize_int8(rows_of(&m.v_a).iter().map(|v| v.as_slice()));
            out.push(TensorOut {
                name: n.v_a.clone(),
                dtype: Dtype::I8,
                shape: vec![m.v_a.nrows(), m.v_a.ncols()],
                data: qa.values.iter().map(|&q| q as u8).collect(),
            });
            out.push(scale_tensor(n.v_a_scale, &qa.scales));
            // Quantize V_B per column (basis vector), then lay the values out row-major.
            let (rows, cols) = (m.v_b.nrows(), m.v_b.ncols());
            let qb = quantize_int8(cols_of(&m.v_b).iter().map(|v| v.as_slice()));
            let mut data = vec![0u8; rows * cols];
            for j in 0..cols {
                for i in 0..rows {
                    data[i * cols + j] = qb.values[j * rows + i] as u8;
                }
            }
            out.push(TensorOut {
                name: n.v_b.clone(),
                dtype: Dtype::I8,
                shape: vec![rows, cols],
                data,
            });
            out.push(scale_tensor(n.v_b_scale, &qb.scales));
        }
        _ => {
            let d = dtype.tensor_dtype();
            out.push(TensorOut::from_f64(
                &n.v_a,
                d,
                vec![m.v_a.nrows(), m.v_a.ncols()],
                &flat_row_major(&m.v_a),
            ));
            out.push(TensorOut::from_f64(
                &n.v_b,
                d,
                vec![m.v_b.nrows(), m.v_b.ncols()],
                &flat_row_major(&m.v_b),
            ));
        }
    }
    out.push(TensorOut::from_f64(
        &n.sigma_a,
        Dtype::F32,
        vec![m.a.spectrum.len()],
        &m.a.spectrum,
    ));
    out.push(TensorOut::from_f64(
        &n.sigma_b,
        Dtype::F32,
        vec![m.b.spectrum.len()],
        &m.b.spectrum,
    ));
    Ok(out)
}

fn scale_tensor(name: String, scales: &[f32]) -> TensorOut {
    TensorOut {
        name,
        dtype: Dtype::F32,
        shape: vec![scales.len()],
        data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
    }
}

fn module_manifest(name: &str, m: &ModuleSubspace) -> Result<ModuleManifest> {
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

pub(super) fn stored_of(t: &TensorOut) -> Stored<'_> {
    Stored {
        name: &t.name,
        dtype: t.dtype,
        shape: &t.shape,
        data: &t.data,
    }
}

pub(super) fn write_file(path: &Path, tensors: Vec<TensorOut>, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_string(manifest)
        .map_err(|e| Error::Usage(format!("cannot serialize manifest: {e}")))?;
    let mut meta = BTreeMap::new();
    meta.insert(METADATA_KEY.to_string(), json);
    if let Some(b) = &manifest.binding {
        meta.insert(
            BINDING_HASH_KEY.to_string(),
            binding_hash(&manifest.subspace_id, b)?,
        );
    }
    tensorfile::write(path, tensors, meta)
}

/// SHA-256 (hex) of a binding for one subspace: the subspace id, then the binding's JSON.
/// Any edit of a node, input, output, weight, layout or base hash changes it. Unkeyed: it
/// guards against accidents, not against someone who can rewrite the file and recompute it
/// ([`BINDING_HASH_KEY`] says how to get tamper-evidence).
pub fn binding_hash(subspace_id: &str, binding: &Binding) -> Result<String> {
    let json = serde_json::to_string(binding)
        .map_err(|e| Error::Usage(format!("cannot serialize the binding: {e}")))?;
    let mut h = Sha256::new();
    h.update(b"eigenlorax-binding-v1");
    hash_field(&mut h, subspace_id.as_bytes());
    hash_field(&mut h, json.as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the binding of a read manifest against its stored hash.
fn check_binding(tf: &TensorFile, manifest: &Manifest) -> Result<()> {
    let Some(b) = &manifest.binding else {
        return Ok(());
    };
    let stored = tf.metadata().and_then(|m| m.get(BINDING_HASH_KEY));
    let want = binding_hash(&manifest.subspace_id, b)?;
    match stored {
        Some(h) if *h == want => Ok(()),
        Some(_) => Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax.binding",
            "expected the binding that its hash covers: the binding was modified or is corrupt (run `elx bind` again)",
        )),
        None => Err(Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax.binding",
            format!(
                "expected the binding's hash under `{BINDING_HASH_KEY}` (a bundle bound by an older elx, or edited): run `elx bind` again"
            ),
        )),
    }
}

/// Reads the JSON under `__metadata__["eigenlorax"]` of an opened file.
pub(crate) fn manifest_json<'a>(tf: &'a TensorFile, what: &str) -> Result<&'a str> {
    tf.metadata()
        .and_then(|m| m.get(METADATA_KEY))
        .map(|s| s.as_str())
        .ok_or_else(|| {
            Error::bad_file(
                tf.path(),
                format!("expected a `{METADATA_KEY}` entry in __metadata__ (not {what})"),
            )
        })
}

impl Bundle {
    /// A bundle with no subspace, bound to the base model `base_file` (SHA-256 `sha256`):
    /// what serving the base model alone goes through (no module is patched, every task is
    /// the base model). Held in memory only; its id is `base`.
    pub fn without_subspace(base_file: &str, sha256: String) -> Bundle {
        let options = ExtractOptions::default();
        Bundle {
            path: PathBuf::from(format!("{base_file} (no bundle)")),
            manifest: Manifest {
                format_version: BUNDLE_FORMAT_VERSION,
                subspace_id: "base".into(),
                dtype: StorageDtype::F32,
                options: options.clone(),
                modules: BTreeMap::new(),
                sources: Vec::new(),
                binding: Some(Binding {
                    base_sha256: sha256,
                    base_file: base_file.to_string(),
                    modules: BTreeMap::new(),
                }),
                base: None,
            },
            subspace: Subspace {
                modules: BTreeMap::new(),
                options,
            },
        }
    }

    /// Writes `subspace` as a bundle, atomically; returns the manifest (with its subspace id).
    pub fn write(
        path: &Path,
        subspace: &Subspace,
        sources: &[SourceAdapter],
        dtype: StorageDtype,
        binding: Option<&Binding>,
    ) -> Result<Manifest> {
        let mut modules = BTreeMap::new();
        let mut tensors = Vec::new();
        for (name, m) in &subspace.modules {
            modules.insert(name.clone(), module_manifest(name, m)?);
            tensors.extend(encode_module(name, m, dtype)?);
        }
        let base = BaseIdentity::of(sources, &modules);
        let mut manifest = Manifest {
            format_version: BUNDLE_FORMAT_VERSION,
            subspace_id: String::new(),
            dtype,
            options: subspace.options.clone(),
            modules,
            sources: sources.to_vec(),
            binding: None,
            base: Some(base),
        };
        manifest.subspace_id = compute_id(tensors.iter().map(stored_of).collect(), &manifest)?;
        manifest.binding = binding.cloned();
        write_file(path, tensors, &manifest)?;
        Ok(manifest)
    }

    /// Reads and validates a bundle (shapes against the manifest, finite values, the id).
    pub fn read(path: &Path) -> Result<Bundle> {
        let tf = TensorFile::open(path)?;
        let manifest = parse_manifest(&tf)?;
        check_binding(&tf, &manifest)?;
        let mut expected = BTreeSet::new();
        let mut stored = Vec::new();
        for (name, mm) in &manifest.modules {
            for (list_name, side) in [("a", &mm.a), ("b", &mm.b)] {
                let k = if list_name == "a" { mm.k_a } else { mm.k_b };
                if side.k_total() != k {
                    return Err(Error::bad_tensor(
                        path,
                        format!("modules.{name}.{list_name}"),
                        format!(
                            "expected k_{list_name} = {k} = principal + mean + pseudo, found {}",
                            side.k_total()
                        ),
                    ));
                }
            }
            if mm.k_a > mm.in_features || mm.k_b > mm.out_features {
                return Err(Error::bad_tensor(
                    path,
                    format!("modules.{name}"),
                    format!(
                        "expected K_A <= in and K_B <= out (orthonormal bases), found K_A={} in={} K_B={} out={}",
                        mm.k_a, mm.in_features, mm.k_b, mm.out_features
                    ),
                ));
            }
            let n = Names::of(name);
            let vd = manifest.dtype.tensor_dtype();
            let mut shapes: Vec<(&String, Dtype, Vec<usize>)> = vec![
                (&n.v_a, vd, vec![mm.k_a, mm.in_features]),
                (&n.v_b, vd, vec![mm.out_features, mm.k_b]),
            ];
            if manifest.dtype == StorageDtype::Int8 {
                shapes.push((&n.v_a_scale, Dtype::F32, vec![mm.k_a]));
                shapes.push((&n.v_b_scale, Dtype::F32, vec![mm.k_b]));
            }
            for (t, d, shape) in shapes {
                check_tensor(&tf, t, d, Some(&shape))?;
                expected.insert(t.clone());
            }
            for t in [&n.sigma_a, &n.sigma_b] {
                check_tensor(&tf, t, Dtype::F32, None)?;
                expected.insert(t.clone());
            }
        }
        for t in tf.names() {
            if !expected.contains(t) {
                return Err(Error::bad_tensor(
                    path,
                    t,
                    "expected only the tensors of the modules listed in the manifest",
                ));
            }
        }
        // After the shapes (a wrong shape is named as such), before the id.
        check_base(path, &manifest)?;
        for t in &expected {
            let (dtype, data) = tf.raw(t)?;
            let shape = tf.info(t).map(|i| i.shape).unwrap_or_default();
            stored.push((t.as_str(), dtype, shape, data));
        }
        let id = compute_id(
            stored
                .iter()
                .map(|(name, dtype, shape, data)| Stored {
                    name,
                    dtype: *dtype,
                    shape,
                    data,
                })
                .collect(),
            &manifest,
        )?;
        if id != manifest.subspace_id {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected content that hashes to its subspace id {}, but it hashes to {id}: the file was modified or is corrupt",
                    manifest.subspace_id
                ),
            ));
        }
        let mut modules = BTreeMap::new();
        for (name, mm) in &manifest.modules {
            modules.insert(name.clone(), read_module(&tf, name, mm, manifest.dtype)?);
        }
        let subspace = Subspace {
            modules,
            options: manifest.options.clone(),
        };
        Ok(Bundle {
            path: path.to_path_buf(),
            manifest,
            subspace,
        })
    }

    /// Writes a copy of this bundle to `out` with `binding` (or none) in the manifest. Stored
    /// components are copied byte for byte, so the subspace id (which excludes the binding)
    /// and every coefficient file made for it stay valid. `out` may be this bundle's own path.
    pub fn with_binding(&self, binding: Option<&Binding>, out: &Path) -> Result<Manifest> {
        let tf = TensorFile::open(&self.path)?;
        let manifest = parse_manifest(&tf)?;
        if manifest.subspace_id != self.manifest.subspace_id {
            return Err(Error::bad_file(
                &self.path,
                format!(
                    "expected subspace {} (it changed on disk since it was loaded)",
                    self.manifest.subspace_id
                ),
            ));
        }
        let mut tensors = Vec::new();
        for name in tf.names() {
            let (dtype, data) = tf.raw(name)?;
            let shape = tf.info(name).map(|i| i.shape).unwrap_or_default();
            tensors.push(TensorOut {
                name: name.to_string(),
                dtype,
                shape,
                data: data.to_vec(),
            });
        }
        let check = compute_id(tensors.iter().map(stored_of).collect(), &manifest)?;
        if check != manifest.subspace_id {
            return Err(Error::bad_file(
                &self.path,
                format!("expected content that hashes to {}", manifest.subspace_id),
            ));
        }
        let mut new = manifest;
        new.binding = binding.cloned();
        drop(tf);
        write_file(out, tensors, &new)?;
        Ok(new)
    }
}

/// Format 3 stores the base identity, which must be what its sources and modules give;
/// older formats must not have one.
fn check_base(path: &Path, m: &Manifest) -> Result<()> {
    match (&m.base, m.format_version >= 3) {
        (Some(b), true) => {
            let want = BaseIdentity::of(&m.sources, &m.modules);
            if *b != want {
                return Err(Error::bad_tensor(
                    path,
                    "__metadata__.eigenlorax.base",
                    format!(
                        "expected the base identity its sources and modules give ({}), found {}",
                        want.describe(),
                        b.describe()
                    ),
                ));
            }
            Ok(())
        }
        (None, true) => Err(Error::bad_tensor(
            path,
            "__metadata__.eigenlorax.base",
            format!(
                "expected the base model identity (format version {}), found none",
                m.format_version
            ),
        )),
        (Some(_), false) => Err(Error::bad_tensor(
            path,
            "__metadata__.eigenlorax.base",
            format!(
                "expected no base identity in format version {} (it came with version 3)",
                m.format_version
            ),
        )),
        (None, false) => Ok(()),
    }
}

/// Parses and version-checks the manifest of an opened bundle.
fn parse_manifest(tf: &TensorFile) -> Result<Manifest> {
    let json = manifest_json(tf, "a bundle without one")?;
    // Check the version first so that a newer layout gets a version message, not a parse error.
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected valid JSON ({e})"),
        )
    })?;
    if value.get("kind").and_then(|k| k.as_str()) == Some("coefficients") {
        return Err(Error::bad_file(
            tf.path(),
            "expected a bundle (.elxb), found a coefficient file (.elxc)",
        ));
    }
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v)
            if (u64::from(BUNDLE_FORMAT_OLDEST)..=u64::from(BUNDLE_FORMAT_VERSION))
                .contains(&v) => {}
        Some(v) => {
            return Err(Error::bad_file(
                tf.path(),
                format!(
                    "expected bundle format version {BUNDLE_FORMAT_OLDEST} to {BUNDLE_FORMAT_VERSION}, found version {v} (written by another elx version)"
                ),
            ));
        }
        None => {
            if value.get("task").is_some() {
                return Err(Error::bad_file(
                    tf.path(),
                    "expected a bundle (.elxb), found a coefficient file (.elxc)",
                ));
            }
            return Err(Error::bad_tensor(
                tf.path(),
                "__metadata__.eigenlorax",
                "expected a format_version number",
            ));
        }
    }
    serde_json::from_value(value).map_err(|e| {
        Error::bad_tensor(
            tf.path(),
            "__metadata__.eigenlorax",
            format!("expected a bundle manifest ({e})"),
        )
    })
}

/// Checks presence, dtype and (optionally) shape of one tensor.
pub(crate) fn check_tensor(
    tf: &TensorFile,
    name: &str,
    dtype: Dtype,
    shape: Option<&[usize]>,
) -> Result<()> {
    let info = tf
        .info(name)
        .ok_or_else(|| Error::bad_tensor(tf.path(), name, "expected this tensor, found none"))?;
    if info.dtype != dtype {
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            format!(
                "expected dtype {}, found {}",
                dtype.name(),
                info.dtype.name()
            ),
        ));
    }
    match shape {
        Some(s) if info.shape != s => Err(Error::bad_tensor(
            tf.path(),
            name,
            format!("expected shape {s:?}, found {:?}", info.shape),
        )),
        None if info.shape.len() != 1 => Err(Error::bad_tensor(
            tf.path(),
            name,
            format!("expected a 1-D tensor, found shape {:?}", info.shape),
        )),
        _ => Ok(()),
    }
}

/// Int8 matrix times per-vector scales; `per_row` says whether scales go with rows or columns.
fn dequantize_int8(
    tf: &TensorFile,
    name: &str,
    scale_name: &str,
    per_row: bool,
) -> Result<Mat<f64>> {
    let shape = tf.info(name).map(|i| i.shape).unwrap_or_default();
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        _ => return Err(Error::bad_tensor(tf.path(), name, "expected a 2-D tensor")),
    };
    let (_, q) = tf.raw(name)?;
    let (_, scales) = tf.read_f64(scale_name)?;
    if let Some(s) = scales.iter().find(|s| **s < 0.0) {
        return Err(Error::bad_tensor(
            tf.path(),
            scale_name,
            format!("expected non-negative scales, found {s}"),
        ));
    }
    if q.len() != rows * cols || scales.len() != if per_row { rows } else { cols } {
        return Err(Error::bad_tensor(
            tf.path(),
            name,
            "expected data that matches its shape and scales",
        ));
    }
    Ok(Mat::from_fn(rows, cols, |i, j| {
        let s = if per_row { scales[i] } else { scales[j] };
        f64::from(q[i * cols + j] as i8) * s
    }))
}

fn read_module(
    tf: &TensorFile,
    name: &str,
    mm: &ModuleManifest,
    dtype: StorageDtype,
) -> Result<ModuleSubspace> {
    let n = Names::of(name);
    let (v_a, v_b) = if dtype == StorageDtype::Int8 {
        (
            dequantize_int8(tf, &n.v_a, &n.v_a_scale, true)?,
            dequantize_int8(tf, &n.v_b, &n.v_b_scale, false)?,
        )
    } else {
        (
            tf.read_mat(&n.v_a, Some([mm.k_a, mm.in_features]))?,
            tf.read_mat(&n.v_b, Some([mm.out_features, mm.k_b]))?,
        )
    };
    // The bases are orthonormal: no entry can exceed 1 in magnitude (quantization rounds
    // within it). A larger or non-finite entry would carry any coefficients out of range.
    for (t, v) in [(&n.v_a, &v_a), (&n.v_b, &v_b)] {
        let worst = (0..v.ncols())
            .flat_map(|j| (0..v.nrows()).map(move |i| v[(i, j)]))
            .find(|x| x.is_nan() || x.abs() > 1.0 + 1e-3);
        if let Some(x) = worst {
            return Err(Error::bad_tensor(
                tf.path(),
                t,
                format!("expected orthonormal components (every entry within [-1, 1]), found {x}"),
            ));
        }
    }
    let (_, sigma_a) = tf.read_f64(&n.sigma_a)?;
    let (_, sigma_b) = tf.read_f64(&n.sigma_b)?;
    let side = |s: &SideSummary, spectrum: Vec<f64>, tensor: &str| -> Result<SideInfo> {
        if let Some(x) = spectrum.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(Error::bad_tensor(
                tf.path(),
                tensor,
                format!("expected finite non-negative singular values, found {x}"),
            ));
        }
        let total_energy = match s.total_energy {
            Some(t) if t.is_finite() && t >= 0.0 => t,
            Some(t) => {
                return Err(Error::bad_tensor(
                    tf.path(),
                    format!("modules.{name}.total_energy"),
                    format!("expected a finite non-negative total energy, found {t}"),
                ));
            }
            // Format 1: the spectrum is complete, its squares sum to the total.
            None if s.full_spectrum => spectrum.iter().map(|x| x * x).sum(),
            None => {
                return Err(Error::bad_tensor(
                    tf.path(),
                    format!("modules.{name}.total_energy"),
                    "expected the total energy of a side whose spectrum holds only the top values",
                ));
            }
        };
        Ok(SideInfo {
            spectrum,
            total_energy,
            full_spectrum: s.full_spectrum,
            k_principal: s.k_principal,
            mean_vector: s.mean_vector,
            pseudo: s.pseudo,
            energy_kept: s.energy_kept,
        })
    };
    Ok(ModuleSubspace {
        in_features: mm.in_features,
        out_features: mm.out_features,
        r_max: mm.r_max,
        n_adapters: mm.n_adapters,
        v_a,
        v_b,
        a: side(&mm.a, sigma_a, &n.sigma_a)?,
        b: side(&mm.b, sigma_b, &n.sigma_b)?,
    })
}
