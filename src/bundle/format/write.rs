//! Writing a bundle: all at once ([`Bundle::write`]), module by module as an extraction
//! finishes them ([`BundleWriter`]), or as a copy with another binding
//! ([`Bundle::with_binding`]).

use super::super::quant::StorageDtype;
use super::id::{IdHasher, compute_id, stored_of};
use super::manifest::module_manifest;
use super::read::parse_manifest;
use super::tensors::{Names, encode_module};
use super::{
    BINDING_HASH_KEY, BUNDLE_FORMAT_VERSION, BaseIdentity, Binding, Bundle, METADATA_KEY, Manifest,
    ModuleManifest, SourceAdapter, binding_hash,
};
use crate::error::{Error, Result};
use crate::subspace::{ExtractOptions, ModuleSubspace, Subspace};
use crate::tensorfile::{self, TensorFile, TensorOut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes a bundle module by module as an extraction finishes them ([`crate::subspace::extract_each`]):
/// each module's bases are converted to the storage dtype and spooled to disk at once
/// ([`crate::tensorfile::SpoolWriter`]), so memory holds no module's tensors after its
/// [`BundleWriter::add`] returns, whatever the number of modules. [`BundleWriter::finish`]
/// hashes the spooled tensors for the subspace id and writes the bundle atomically, byte for
/// byte the file [`Bundle::write`] gives for the same subspace (modules may arrive in any
/// order; the layout is the one-shot writer's).
pub struct BundleWriter {
    spool: tensorfile::SpoolWriter,
    dtype: StorageDtype,
    modules: BTreeMap<String, ModuleManifest>,
}

impl BundleWriter {
    /// Starts a bundle to be written at `path` (nothing appears there before `finish`).
    pub fn create(path: &Path, dtype: StorageDtype) -> Result<BundleWriter> {
        Ok(BundleWriter {
            spool: tensorfile::SpoolWriter::create(path)?,
            dtype,
            modules: BTreeMap::new(),
        })
    }

    /// Converts one module to the storage dtype and spools its tensors. A module added twice,
    /// inconsistent shapes or non-finite values are refused.
    pub fn add(&mut self, name: &str, m: &ModuleSubspace) -> Result<()> {
        if self.modules.contains_key(name) {
            return Err(Error::Usage(format!("module `{name}` written twice")));
        }
        let mm = module_manifest(name, m)?;
        for t in encode_module(name, m, self.dtype)? {
            self.spool.add(t)?;
        }
        self.modules.insert(name.to_string(), mm);
        Ok(())
    }

    /// Modules added so far.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether no module was added.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Writes the bundle (atomically) with these options, sources and binding; returns its
    /// manifest.
    pub fn finish(
        self,
        options: &ExtractOptions,
        sources: &[SourceAdapter],
        binding: Option<&Binding>,
    ) -> Result<Manifest> {
        let base = BaseIdentity::of(sources, &self.modules);
        let mut manifest = Manifest {
            format_version: BUNDLE_FORMAT_VERSION,
            subspace_id: String::new(),
            dtype: self.dtype,
            options: options.clone(),
            modules: self.modules,
            sources: sources.to_vec(),
            binding: None,
            base: Some(base),
        };
        let spool = self.spool;
        let mut h = IdHasher::new(spool.names().count());
        for name in spool.names() {
            if let Some((dtype, shape, len)) = spool.info(name) {
                h.tensor(name, dtype, shape, len);
            }
            spool.read_chunks(name, |bytes| h.data(bytes))?;
        }
        manifest.subspace_id = h.finish(&manifest)?;
        manifest.binding = binding.cloned();
        let order: Vec<String> = manifest
            .modules
            .keys()
            .flat_map(|m| {
                Names::of(m)
                    .stored(manifest.dtype)
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        spool.finish(&order, metadata_of(&manifest)?)?;
        Ok(manifest)
    }
}

/// Writes `tensors` and the manifest (with the binding's hash when bound), atomically.
pub(in crate::bundle) fn write_file(
    path: &Path,
    tensors: Vec<TensorOut>,
    manifest: &Manifest,
) -> Result<()> {
    tensorfile::write(path, tensors, metadata_of(manifest)?)
}

/// The `__metadata__` of a bundle: the manifest JSON, and the binding's hash when bound.
fn metadata_of(manifest: &Manifest) -> Result<BTreeMap<String, String>> {
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
    Ok(meta)
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
