//! The `.elxs` statistics file kept beside a bundle, and the streaming sink of an extraction.
//!
//! A subspace cannot be grown from its bases alone: the directions it dropped and the
//! spectrum's tail are gone. What is exactly sufficient is the state an extraction holds once
//! every adapter is folded in (`crate::subspace::ModuleStats`), per side:
//! * while the stack has n = Σr ≤ d vectors, the (canonicalized) vectors themselves, d·n
//!   values: the extraction decomposes their n x n Gram, and a Gram alone would not give the
//!   left vectors back;
//! * past that, the d x d Gram Σ x·xᵀ, of which the lower triangle d·(d + 1)/2 is stored;
//! * and the sum of the vectors (d values, for centering).
//!
//! All in f64 (the extraction's precision: f32 would move the result by ~1e-7 relative,
//! angles up to 1e-7/gap). **Cost per module**: 8·Σ_side (d + (n ≤ d ? d·n : d·(d + 1)/2)) bytes
//! (at most 8·(d + d·(d + 1)) per side, at n = d).
//! The Lots-of-LoRAs shape (d = 4096, n = 7840 per side) stores 2 x 67.1 MB = 134 MB per
//! module, 8.6 GB for 64 modules (the adapters are 16.4 GB); 50 adapters of rank 16 on
//! 1024 x 1024 store 2 x 6.6 MB per module. It is therefore optional (`elx extract
//! --keep-stats`), a separate file that devices never need, and the bundle's bytes and id do
//! not depend on it.
//!
//! Layout (safetensors, F64): per module and side S ∈ {A, B}: `<module>.S.sum` [d], and either
//! `<module>.S.columns` [n, d] (row i = stacked vector i) or `<module>.S.gram` [d·(d + 1)/2]
//! (the lower triangle, column by column: (j..d, j) for j = 0..d). `__metadata__["eigenlorax"]`:
//! `{kind: "subspace-stats", format_version: 1, subspace_id, options, modules: {name: {in_features,
//! out_features, r_max, n_adapters, a: {n, held}, b: {n, held}}}}` with `held` `columns` or
//! `gram`. The subspace id is the bundle's whose extraction wrote it; `elx extract --update`
//! refuses statistics of another bundle.

use super::format::{Binding, BundleWriter, METADATA_KEY, Manifest, SourceAdapter, manifest_json};
use crate::error::{Error, Result};
use crate::subspace::{
    ExtractOptions, Held, ModuleSink, ModuleStats, ModuleSubspace, PriorStats, SideStats,
};
use crate::tensorfile::{Dtype, SpoolWriter, TensorFile, TensorOut};
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Format version of the statistics file written by this build.
pub const STATS_FORMAT_VERSION: u32 = 1;

const KIND: &str = "subspace-stats";

/// Where the statistics of the bundle at `bundle` live: the same path with extension `.elxs`.
pub fn path_beside(bundle: &Path) -> PathBuf {
    bundle.with_extension("elxs")
}

/// How one side's statistics are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum HeldKind {
    Columns,
    Gram,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SideMeta {
    n: usize,
    held: HeldKind,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleMeta {
    in_features: usize,
    out_features: usize,
    r_max: usize,
    n_adapters: usize,
    a: SideMeta,
    b: SideMeta,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsMeta {
    kind: String,
    format_version: u32,
    subspace_id: String,
    options: ExtractOptions,
    modules: BTreeMap<String, ModuleMeta>,
}

fn tensor_names(module: &str, side: &str) -> (String, String, String) {
    (
        format!("{module}.{side}.sum"),
        format!("{module}.{side}.columns"),
        format!("{module}.{side}.gram"),
    )
}

/// Writes a statistics file module by module (spooled to disk, like [`BundleWriter`]).
pub struct StatsWriter {
    spool: SpoolWriter,
    modules: BTreeMap<String, ModuleMeta>,
}

impl StatsWriter {
    /// Starts a statistics file to be written at `path` (nothing appears there before
    /// `finish`).
    pub fn create(path: &Path) -> Result<StatsWriter> {
        Ok(StatsWriter {
            spool: SpoolWriter::create(path)?,
            modules: BTreeMap::new(),
        })
    }

    /// Spools one module's statistics.
    pub fn add(&mut self, name: &str, st: &ModuleStats) -> Result<()> {
        if self.modules.contains_key(name) {
            return Err(Error::Usage(format!(
                "statistics of module `{name}` written twice"
            )));
        }
        let mut sides = Vec::with_capacity(2);
        for (side, s) in [("A", &st.a), ("B", &st.b)] {
            let (sum, columns, gram) = tensor_names(name, side);
            let d = s.dim;
            self.spool
                .add(TensorOut::from_f64(sum, Dtype::F64, vec![d], &s.sum))?;
            let held = match &s.held {
                Held::Columns(c) => {
                    self.spool
                        .add(TensorOut::from_f64(columns, Dtype::F64, vec![s.n, d], c))?;
                    HeldKind::Columns
                }
                Held::Gram(g) => {
                    let mut packed = Vec::with_capacity(d * (d + 1) / 2);
                    for j in 0..d {
                        packed.extend((j..d).map(|i| g[(i, j)]));
                    }
                    self.spool.add(TensorOut::from_f64(
                        gram,
                        Dtype::F64,
                        vec![packed.len()],
                        &packed,
                    ))?;
                    HeldKind::Gram
                }
            };
            sides.push(SideMeta { n: s.n, held });
        }
        let b = sides.pop();
        let a = sides.pop();
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::Numeric("statistics of two sides expected".into()));
        };
        self.modules.insert(
            name.to_string(),
            ModuleMeta {
                in_features: st.in_features,
                out_features: st.out_features,
                r_max: st.r_max,
                n_adapters: st.n_adapters,
                a,
                b,
            },
        );
        Ok(())
    }

    /// Writes the file (atomically) for the bundle with `subspace_id`, extracted with
    /// `options`.
    pub fn finish(self, subspace_id: &str, options: &ExtractOptions) -> Result<()> {
        let meta = StatsMeta {
            kind: KIND.into(),
            format_version: STATS_FORMAT_VERSION,
            subspace_id: subspace_id.to_string(),
            options: options.clone(),
            modules: self.modules,
        };
        let json = serde_json::to_string(&meta)
            .map_err(|e| Error::Usage(format!("cannot serialize statistics metadata: {e}")))?;
        let order: Vec<String> = self.spool.names().map(str::to_string).collect();
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        let mut md = BTreeMap::new();
        md.insert(METADATA_KEY.to_string(), json);
        self.spool.finish(&order, md)
    }
}

/// A statistics file opened for an update: the metadata and every tensor's dtype and shape
/// are checked at open; a module's values are read (and checked finite) when it is loaded.
pub struct StatsFile {
    tf: TensorFile,
    meta: StatsMeta,
}

impl StatsFile {
    /// Opens and validates `path`: a statistics file (kind, version), every module's tensors
    /// present with the dtype and shape its metadata gives (columns only while n ≤ d, a Gram
    /// only past it), nothing else in the file.
    pub fn open(path: &Path) -> Result<StatsFile> {
        let tf = TensorFile::open(path)?;
        let json = manifest_json(&tf, "a statistics file without one")?;
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            Error::bad_tensor(
                path,
                "__metadata__.eigenlorax",
                format!("expected valid JSON ({e})"),
            )
        })?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected subspace statistics (.elxs, kind `{KIND}`), found kind {}",
                    value.get("kind").map_or("none".into(), |k| k.to_string())
                ),
            ));
        }
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(STATS_FORMAT_VERSION) => {}
            other => {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "expected statistics format version {STATS_FORMAT_VERSION}, found {other:?}"
                    ),
                ));
            }
        }
        let meta: StatsMeta = serde_json::from_value(value).map_err(|e| {
            Error::bad_tensor(
                path,
                "__metadata__.eigenlorax",
                format!("expected a statistics manifest ({e})"),
            )
        })?;
        let mut expected = std::collections::BTreeSet::new();
        for (name, m) in &meta.modules {
            if m.in_features == 0 || m.out_features == 0 {
                return Err(Error::bad_tensor(
                    path,
                    format!("modules.{name}"),
                    "expected in_features and out_features of at least 1",
                ));
            }
            for (side, s, d) in [("A", &m.a, m.in_features), ("B", &m.b, m.out_features)] {
                let (sum, columns, gram) = tensor_names(name, side);
                // d comes from the metadata: a triangle size that overflows is no real file's.
                let triangle = d
                    .checked_add(1)
                    .and_then(|e| e.checked_mul(d))
                    .map(|x| x / 2);
                let (held_name, shape) = match (s.held, triangle) {
                    (HeldKind::Columns, _) if s.n <= d => (columns, vec![s.n, d]),
                    (HeldKind::Gram, Some(t)) if s.n > d => (gram, vec![t]),
                    (held, _) => {
                        return Err(Error::bad_tensor(
                            path,
                            format!("modules.{name}.{}", side.to_lowercase()),
                            format!(
                                "expected columns while n <= d and a Gram past it (d at most 2^31), found {held:?} with n = {} and d = {d}",
                                s.n
                            ),
                        ));
                    }
                };
                for (t, shape) in [(sum, vec![d]), (held_name, shape)] {
                    super::format::check_tensor(&tf, &t, Dtype::F64, Some(&shape))?;
                    expected.insert(t);
                }
            }
        }
        for t in tf.names() {
            if !expected.contains(t) {
                return Err(Error::bad_tensor(
                    path,
                    t,
                    "expected only the statistics of the modules listed in the metadata",
                ));
            }
        }
        Ok(StatsFile { tf, meta })
    }

    /// The subspace id of the bundle these statistics belong to.
    pub fn subspace_id(&self) -> &str {
        &self.meta.subspace_id
    }

    /// The options of the extraction that wrote them.
    pub fn options(&self) -> &ExtractOptions {
        &self.meta.options
    }

    /// Checks that these statistics belong to `bundle` (same subspace id, options and
    /// modules); errors name the statistics file.
    pub fn check_for(&self, bundle: &Manifest) -> Result<()> {
        let path = self.tf.path();
        if self.meta.subspace_id != bundle.subspace_id {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected the statistics of bundle {}, found those of {}",
                    bundle.subspace_id, self.meta.subspace_id
                ),
            ));
        }
        if self.meta.options != bundle.options {
            return Err(Error::bad_file(
                path,
                "expected the extraction options of its bundle, found others",
            ));
        }
        for (name, mm) in &bundle.modules {
            let ok = self.meta.modules.get(name).is_some_and(|m| {
                (m.in_features, m.out_features, m.n_adapters, m.r_max)
                    == (mm.in_features, mm.out_features, mm.n_adapters, mm.r_max)
            });
            if !ok {
                return Err(Error::bad_tensor(
                    path,
                    format!("modules.{name}"),
                    format!(
                        "expected the statistics of module `{name}` as in bundle {} (in={} out={}, {} adapters, r_max {})",
                        bundle.subspace_id,
                        mm.in_features,
                        mm.out_features,
                        mm.n_adapters,
                        mm.r_max
                    ),
                ));
            }
        }
        if self.meta.modules.len() != bundle.modules.len() {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected the {} modules of bundle {}, found {}",
                    bundle.modules.len(),
                    bundle.subspace_id,
                    self.meta.modules.len()
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of statistics stored (tensor data).
    pub fn stored_bytes(&self) -> usize {
        self.tf
            .names()
            .iter()
            .filter_map(|n| self.tf.stored_len(n))
            .sum()
    }

    fn side(&self, name: &str, side: &str, s: &SideMeta, d: usize) -> Result<SideStats> {
        let (sum_name, columns, gram) = tensor_names(name, side);
        let read = |t: &str| -> Result<Vec<f64>> {
            let (_, v) = self.tf.read_f64(t)?;
            self.tf.release(t);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::bad_tensor(
                    self.tf.path(),
                    t,
                    format!("expected finite values, found {} at {i}", v[i]),
                ));
            }
            Ok(v)
        };
        let sum = read(&sum_name)?;
        let held = match s.held {
            HeldKind::Columns => Held::Columns(read(&columns)?),
            HeldKind::Gram => {
                let packed = read(&gram)?;
                let mut g = Mat::zeros(d, d);
                let mut it = packed.into_iter();
                for j in 0..d {
                    for i in j..d {
                        g[(i, j)] = it.next().unwrap_or(0.0);
                    }
                }
                Held::Gram(g)
            }
        };
        Ok(SideStats {
            dim: d,
            n: s.n,
            sum,
            held,
        })
    }
}

impl PriorStats for StatsFile {
    fn modules(&self) -> Vec<(String, usize, usize)> {
        self.meta
            .modules
            .iter()
            .map(|(n, m)| (n.clone(), m.in_features, m.out_features))
            .collect()
    }

    fn load(&self, name: &str) -> Result<ModuleStats> {
        let m = self.meta.modules.get(name).ok_or_else(|| {
            Error::bad_file(
                self.tf.path(),
                format!("expected statistics of module `{name}`, found none"),
            )
        })?;
        Ok(ModuleStats {
            in_features: m.in_features,
            out_features: m.out_features,
            r_max: m.r_max,
            n_adapters: m.n_adapters,
            a: self.side(name, "A", &m.a, m.in_features)?,
            b: self.side(name, "B", &m.b, m.out_features)?,
        })
    }
}

/// The sink of a streaming extraction ([`crate::subspace::extract_each`]): each module goes to
/// a [`BundleWriter`] as it finishes and, with statistics asked, its statistics to a
/// [`StatsWriter`]; [`BundleSink::finish`] writes both files.
pub struct BundleSink {
    bundle: Mutex<BundleWriter>,
    stats: Option<Mutex<StatsWriter>>,
}

impl BundleSink {
    /// Streams into `bundle`, and into `stats` when given.
    pub fn new(bundle: BundleWriter, stats: Option<StatsWriter>) -> BundleSink {
        BundleSink {
            bundle: Mutex::new(bundle),
            stats: stats.map(Mutex::new),
        }
    }

    /// Writes the bundle, then the statistics (with the bundle's id); returns the manifest.
    pub fn finish(
        self,
        options: &ExtractOptions,
        sources: &[SourceAdapter],
        binding: Option<&Binding>,
    ) -> Result<Manifest> {
        let bundle = self.bundle.into_inner().map_err(|_| poisoned())?;
        let manifest = bundle.finish(options, sources, binding)?;
        if let Some(s) = self.stats {
            s.into_inner()
                .map_err(|_| poisoned())?
                .finish(&manifest.subspace_id, options)?;
        }
        Ok(manifest)
    }
}

fn poisoned() -> Error {
    Error::Numeric("an extraction thread panicked while writing".into())
}

impl ModuleSink for BundleSink {
    fn wants_stats(&self) -> bool {
        self.stats.is_some()
    }

    fn stats(&self, name: &str, stats: &ModuleStats) -> Result<()> {
        match &self.stats {
            Some(s) => s.lock().map_err(|_| poisoned())?.add(name, stats),
            None => Ok(()),
        }
    }

    fn module(&self, name: &str, module: ModuleSubspace) -> Result<()> {
        self.bundle
            .lock()
            .map_err(|_| poisoned())?
            .add(name, &module)
    }
}
