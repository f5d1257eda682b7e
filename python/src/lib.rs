//! `eigenlorax._native`: the Rust side of the Python package (python/eigenlorax/ is the
//! Python side, which normalizes state dicts and arrays and holds the docstrings users read).
//!
//! Every function here fills a library spec (the adapters and [`ExtractOptions`], a
//! [`RunSpec`], a [`FinetuneSpec`]) and hands back what the library returns; nothing is
//! computed here. Long calls release the GIL ([`Python::detach`]); library errors become the
//! exceptions of [`raise`], with the library's message.

use eigenlorax::adapter::{Adapter, base, peft};
use eigenlorax::bundle::{Bundle as LibBundle, CoeffFile, Provenance, SourceAdapter, StorageDtype};
use eigenlorax::error::Error;
use eigenlorax::eval::project_adapter;
use eigenlorax::finetune::Event;
use eigenlorax::finetune::job::{DataSource, FinetuneJob, FinetuneSpec, Recipe, TextOptions};
use eigenlorax::serve::generate::{GenerateOptions, Request, SamplingOptions, TextGenerator};
use eigenlorax::serve::input::chat::ChatMessage;
use eigenlorax::serve::input::{InputTensor, TensorData, assemble};
use eigenlorax::serve::job::{OutputChoice, Rows, RunSpec, Runner};
use eigenlorax::serve::store::TaskId;
use eigenlorax::serve::{Backend, ExecutionProvider};
use eigenlorax::subspace::{self, ExtractOptions, KRule, ModuleSelection, Route};
use eigenlorax::task::Pooling;
use eigenlorax::tensorfile::{MemTensor, TensorFile};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

create_exception!(eigenlorax, ElxError, PyException, "Any eigenlorax error.");
create_exception!(
    eigenlorax,
    BadInputError,
    ElxError,
    "A file or tensor that is not what was expected (the message names it)."
);
create_exception!(
    eigenlorax,
    ElxIOError,
    ElxError,
    "An I/O failure on a named file."
);
create_exception!(
    eigenlorax,
    SubspaceMismatchError,
    ElxError,
    "A coefficient file or binding of another subspace."
);
create_exception!(
    eigenlorax,
    UsageError,
    ElxError,
    "Arguments that cannot work together."
);
create_exception!(eigenlorax, NumericError, ElxError, "A numerical failure.");
create_exception!(
    eigenlorax,
    EngineError,
    ElxError,
    "The inference engine failed."
);
create_exception!(
    eigenlorax,
    UnsupportedError,
    ElxError,
    "A model the asked-for feature cannot handle."
);

/// A library error as the Python exception of its kind, with the library's message (the
/// CLI's text for the same error).
fn raise(e: Error) -> PyErr {
    let m = e.to_string();
    match e {
        Error::Io { .. } => ElxIOError::new_err(m),
        Error::BadInput { .. } => BadInputError::new_err(m),
        Error::SubspaceMismatch { .. } => SubspaceMismatchError::new_err(m),
        Error::Usage(_) => UsageError::new_err(m),
        Error::Numeric(_) => NumericError::new_err(m),
        Error::Engine(_) => EngineError::new_err(m),
        Error::Unsupported(_) => UnsupportedError::new_err(m),
        _ => ElxError::new_err(m),
    }
}

/// The bytes of a C-contiguous numpy array, borrowed in place (no copy) for as long as this
/// lives. The array interface gives the address; holding a reference to the array keeps its
/// data alive and unmoved (an array that other objects reference cannot be resized). The
/// buffer protocol would say the same, but the stable ABI has it only from CPython 3.11.
struct Borrowed {
    address: usize,
    len: usize,
    _owner: Py<PyAny>,
}

impl Borrowed {
    /// `array`'s bytes: it must be a C-contiguous numpy array (the Python side makes it one).
    fn of(array: &Bound<'_, PyAny>, what: &str) -> PyResult<Borrowed> {
        let contiguous: bool = array.getattr("flags")?.getattr("c_contiguous")?.extract()?;
        if !contiguous {
            return Err(UsageError::new_err(format!(
                "{what}: expected a C-contiguous array"
            )));
        }
        let address: usize = array
            .getattr("__array_interface__")?
            .get_item("data")?
            .get_item(0)?
            .extract()?;
        let len: usize = array.getattr("nbytes")?.extract()?;
        if address == 0 && len > 0 {
            return Err(UsageError::new_err(format!(
                "{what}: the array has no data"
            )));
        }
        Ok(Borrowed {
            address,
            len,
            _owner: array.clone().unbind(),
        })
    }
}

impl AsRef<[u8]> for Borrowed {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `address` is the start of the `len` data bytes of a C-contiguous array
        // (checked in `of`), which `_owner` keeps alive and in place while this lives.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }
}

/// One adapter as Python hands it over: a folder or file path, or a state dict.
enum Source {
    Path(PathBuf),
    Memory {
        name: PathBuf,
        config: String,
        tensors: Vec<MemTensor>,
        metadata: Option<HashMap<String, String>>,
    },
}

/// (name, config JSON, [(key, safetensors dtype, shape, C-contiguous numpy array)], metadata)
type MemoryTuple<'py> = (
    String,
    String,
    Vec<(String, String, Vec<usize>, Bound<'py, PyAny>)>,
    Option<HashMap<String, String>>,
);

impl Source {
    /// Reads one item of `extract`'s list: a `str`/path, or the tuple the Python side builds
    /// from a state dict.
    fn from_py(item: &Bound<'_, PyAny>) -> PyResult<Source> {
        if let Ok(p) = item.extract::<PathBuf>() {
            return Ok(Source::Path(p));
        }
        let (name, config, tensors, metadata): MemoryTuple<'_> = item.extract()?;
        let mut out = Vec::with_capacity(tensors.len());
        for (key, dtype, shape, obj) in tensors {
            let bytes = Borrowed::of(&obj, &format!("{name}: tensor {key}"))?;
            out.push(MemTensor {
                name: key,
                dtype,
                shape,
                bytes: std::sync::Arc::new(bytes),
            });
        }
        Ok(Source::Memory {
            name: PathBuf::from(name),
            config,
            tensors: out,
            metadata,
        })
    }

    /// The opened adapter (headers and config checked; tensors still where they were).
    fn open(self) -> eigenlorax::Result<Adapter> {
        match self {
            Source::Path(p) => Adapter::open(&p),
            Source::Memory {
                name,
                config,
                tensors,
                metadata,
            } => {
                let weights =
                    TensorFile::from_parts(&name.join(peft::WEIGHTS_FILE), tensors, metadata)?;
                peft::from_memory(&name, &config, weights)
            }
        }
    }
}

/// A progress callback from Python, called from any thread (it takes the GIL for the call);
/// its first exception is kept and raised when the library call returns.
struct Progress {
    callback: Option<Py<PyAny>>,
    failed: Mutex<Option<PyErr>>,
}

impl Progress {
    fn new(callback: Option<Py<PyAny>>) -> Progress {
        Progress {
            callback,
            failed: Mutex::new(None),
        }
    }

    fn report(&self, done: u64, total: u64, what: &str) {
        let Some(cb) = &self.callback else { return };
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_some() {
            return;
        }
        if let Err(e) = Python::attach(|py| cb.call1(py, (done, total, what)).map(drop)) {
            *failed = Some(e);
        }
    }

    fn finish(self) -> PyResult<()> {
        match self.failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A bundle in memory: its file's bytes (exactly what `elx extract` writes) and the parsed
/// bundle.
#[pyclass(module = "eigenlorax._native", frozen)]
struct Bundle {
    bundle: LibBundle,
    bytes: Vec<u8>,
}

/// A unique temporary path (the bundle writer writes files; the bytes are read back).
fn temp_path(ext: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "eigenlorax-py-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Reads a bundle file into memory (its bytes and its parsed form).
fn read_bundle(path: &Path) -> eigenlorax::Result<Bundle> {
    let bundle = LibBundle::read(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Bundle { bundle, bytes })
}

#[pymethods]
impl Bundle {
    /// Reads a bundle (.elxb), checking every tensor against its id.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Bundle> {
        py.detach(|| read_bundle(&path)).map_err(raise)
    }

    /// Writes the bundle atomically to `path` (the bytes `elx extract` writes).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| eigenlorax::util::write_atomic(&path, &self.bytes))
            .map_err(raise)
    }

    /// The subspace id (a hash of the bases and the manifest).
    #[getter]
    fn id(&self) -> String {
        self.bundle.manifest.subspace_id.clone()
    }

    /// Module names, sorted.
    #[getter]
    fn modules(&self) -> Vec<String> {
        self.bundle.manifest.modules.keys().cloned().collect()
    }

    /// (K_A, K_B) of each module.
    #[getter]
    fn ranks(&self) -> BTreeMap<String, (usize, usize)> {
        self.bundle
            .manifest
            .modules
            .iter()
            .map(|(n, m)| (n.clone(), (m.k_a, m.k_b)))
            .collect()
    }

    /// The manifest as JSON text.
    #[getter]
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.bundle.manifest).map_err(|e| ElxError::new_err(e.to_string()))
    }

    /// The bytes of the bundle file.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyByteArray> {
        PyByteArray::new(py, &self.bytes)
    }

    /// Projects an adapter (path or state-dict tuple) onto the subspace.
    #[pyo3(signature = (adapter, task = None))]
    fn project(
        &self,
        py: Python<'_>,
        adapter: &Bound<'_, PyAny>,
        task: Option<String>,
    ) -> PyResult<Coefficients> {
        let source = Source::from_py(adapter)?;
        let b = &self.bundle;
        py.detach(move || {
            let adapter = source.open()?;
            let space = format!("bundle {}", b.manifest.subspace_id);
            // An adapter for another base model (declared name, or a module's shape) is refused.
            b.manifest
                .base_identity()
                .check_adapter(&adapter, &b.manifest.modules, &space)?;
            let p = project_adapter(&adapter, &b.subspace, None, &space)?;
            if p.modules.is_empty() {
                return Err(Error::bad_file(
                    &adapter.path,
                    format!(
                        "expected at least one module of {space}, found none of its {} modules",
                        b.manifest.modules.len()
                    ),
                ));
            }
            let task = task.unwrap_or_else(|| {
                adapter
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "task".into())
            });
            let errors = p
                .measures
                .iter()
                .map(|(n, m)| (n.clone(), m.error))
                .collect();
            let coeffs = CoeffFile {
                subspace_id: b.manifest.subspace_id.clone(),
                task,
                provenance: Provenance::Projected,
                modules: p.modules,
                head: None,
            };
            coeffs.check_for(&adapter.path, &b.manifest)?;
            let pass = peft::pass_through(&adapter)?;
            // The coefficients as a task file holds them (stored precision), so that saving,
            // serving and reconstructing give what `elx project` then `elx reconstruct` give.
            let tmp = temp_path("elxc");
            coeffs.write_with(&tmp, pass.as_ref())?;
            let stored = (CoeffFile::read(&tmp), CoeffFile::read_pass_through(&tmp));
            let _ = std::fs::remove_file(&tmp);
            Ok(Coefficients {
                coeffs: stored.0?,
                pass: stored.1?,
                errors,
                missing: p.missing,
            })
        })
        .map_err(raise)
    }

    /// Writes the PEFT adapter that `coeffs` stand for into `out_dir` (created; a folder that
    /// is not empty is refused unless `force`).
    #[pyo3(signature = (coeffs, out_dir, force = false))]
    fn reconstruct(
        &self,
        py: Python<'_>,
        coeffs: &Coefficients,
        out_dir: PathBuf,
        force: bool,
    ) -> PyResult<()> {
        let b = &self.bundle;
        py.detach(|| {
            coeffs.coeffs.check_for(&out_dir, &b.manifest)?;
            let mut modules = BTreeMap::new();
            for (name, co) in &coeffs.coeffs.modules {
                if let Some(s) = b.subspace.modules.get(name) {
                    modules.insert(name.clone(), subspace::try_reconstruct(co, s)?);
                }
            }
            eigenlorax::util::prepare_output_dir(&out_dir, force, &[])?;
            let base_model = b.manifest.sources.iter().find_map(|s| s.base_model.clone());
            peft::write(
                &out_dir,
                &modules,
                &peft::PeftWriteOptions {
                    base_model,
                    pass_through: coeffs.pass.clone(),
                    ..Default::default()
                },
            )
        })
        .map_err(raise)
    }

    fn __repr__(&self) -> String {
        format!(
            "Bundle(id={}, {} modules, {} adapters)",
            self.bundle.manifest.subspace_id,
            self.bundle.manifest.modules.len(),
            self.bundle.manifest.sources.len()
        )
    }
}

/// One task's coefficients in a bundle's subspace (a projected adapter).
#[pyclass(module = "eigenlorax._native", frozen)]
struct Coefficients {
    coeffs: CoeffFile,
    pass: Option<peft::PassThrough>,
    errors: BTreeMap<String, f64>,
    missing: Vec<String>,
}

#[pymethods]
impl Coefficients {
    /// Writes the task file (.elxc) atomically, with what PEFT keeps besides the LoRA pairs.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.coeffs.write_with(&path, self.pass.as_ref()))
            .map_err(raise)
    }

    /// Reads a task file.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Coefficients> {
        py.detach(|| {
            Ok(Coefficients {
                coeffs: CoeffFile::read(&path)?,
                pass: CoeffFile::read_pass_through(&path)?,
                errors: BTreeMap::new(),
                missing: Vec::new(),
            })
        })
        .map_err(raise)
    }

    /// The task's name.
    #[getter]
    fn task(&self) -> String {
        self.coeffs.task.clone()
    }

    /// The subspace id the coefficients belong to.
    #[getter]
    fn subspace_id(&self) -> String {
        self.coeffs.subspace_id.clone()
    }

    /// Relative error ‖ΔW − ΔŴ‖/‖ΔW‖ of each projected module.
    #[getter]
    fn errors(&self) -> BTreeMap<String, f64> {
        self.errors.clone()
    }

    /// Modules of the adapter that the bundle does not have (skipped).
    #[getter]
    fn missing(&self) -> Vec<String> {
        self.missing.clone()
    }

    /// Module names.
    #[getter]
    fn modules(&self) -> Vec<String> {
        self.coeffs.modules.keys().cloned().collect()
    }
}

/// A K rule from Python's `k` / `energy`.
fn k_rule(k: Option<usize>, energy: Option<f64>) -> PyResult<KRule> {
    match (k, energy) {
        (Some(_), Some(_)) => Err(UsageError::new_err("give k or energy, not both")),
        (Some(0), _) => Err(UsageError::new_err("k must be at least 1")),
        (Some(k), _) => Ok(KRule::Fixed(k)),
        (_, Some(e)) if !(e > 0.0 && e <= 1.0) => Err(UsageError::new_err(format!(
            "energy must be in (0, 1], found {e}"
        ))),
        (_, Some(e)) => Ok(KRule::Energy(e)),
        _ => Ok(ExtractOptions::default().k_rule_a),
    }
}

/// Extracts one principal subspace per module from LoRA adapters (see the Python docstring).
#[pyfunction]
#[pyo3(signature = (adapters, k = None, energy = None, center = false, canonicalize = true,
    pseudo = 0, seed = 0, full_spectrum = false, dtype = "f32", modules = None,
    allow_mixed_bases = false, progress = None, threads = 2))]
#[allow(clippy::too_many_arguments)]
fn extract(
    py: Python<'_>,
    adapters: Vec<Bound<'_, PyAny>>,
    k: Option<usize>,
    energy: Option<f64>,
    center: bool,
    canonicalize: bool,
    pseudo: usize,
    seed: u64,
    full_spectrum: bool,
    dtype: &str,
    modules: Option<&str>,
    allow_mixed_bases: bool,
    progress: Option<Py<PyAny>>,
    threads: usize,
) -> PyResult<Bundle> {
    let rule = k_rule(k, energy)?;
    let options = ExtractOptions {
        canonicalize,
        center,
        k_rule_a: rule,
        k_rule_b: rule,
        pseudo,
        seed,
        full_spectrum,
    };
    let dtype = StorageDtype::parse(dtype).ok_or_else(|| {
        UsageError::new_err(format!(
            "dtype: expected f32, f16, bf16 or int8, found `{dtype}`"
        ))
    })?;
    let pattern = modules
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| UsageError::new_err(format!("modules: expected a regular expression: {e}")))?;
    let sources = adapters
        .iter()
        .map(Source::from_py)
        .collect::<PyResult<Vec<_>>>()?;
    let progress = Progress::new(progress);
    let out = temp_path("elxb");
    let result = py.detach(|| {
        // As `elx extract` does for its process, for this call only (see the guard).
        let _keep = eigenlorax::util::KeepFreedMemory::start();
        let adapters = sources
            .into_iter()
            .map(Source::open)
            .collect::<eigenlorax::error::Result<Vec<_>>>()?;
        if !allow_mixed_bases {
            base::refuse_mixed(&adapters, "allow_mixed_bases=True")?;
        }
        let selection = ModuleSelection {
            pattern,
            shard: None,
        };
        let report = |done: usize, total: usize, name: &str| {
            progress.report(done as u64, total as u64, name)
        };
        let extraction = subspace::extract_selected(
            &adapters,
            &options,
            &report,
            Route::Auto,
            threads.max(1),
            &selection,
        )?;
        let listed: Vec<SourceAdapter> = adapters.iter().map(SourceAdapter::from).collect();
        LibBundle::write(&out, &extraction.subspace, &listed, dtype, None)?;
        let read = read_bundle(&out);
        let _ = std::fs::remove_file(&out);
        // The adapters are dropped here; the arrays they borrow are let go when the GIL is
        // held again.
        read
    });
    progress.finish()?;
    result.map_err(raise)
}

/// Held-out diagnostics (`elx inspect B --adapters ... --held-out`): each adapter of the pool
/// against the subspace of the others, extracted with the bundle's options; returns JSON of
/// {"verdict": {gain, line}, "distribution", "clusters": [[names]], "mean": HeldOutMean,
/// "adapters": [HeldOut]}.
#[pyfunction]
#[pyo3(signature = (bundle, held_out, seed = 0, allow_mixed_bases = false))]
fn diagnostics(
    py: Python<'_>,
    bundle: &Bundle,
    held_out: Vec<PathBuf>,
    seed: u64,
    allow_mixed_bases: bool,
) -> PyResult<String> {
    use eigenlorax::eval::capture_vs_chance as d;
    py.detach(|| {
        let pool = d::Pool::load_with(&held_out, allow_mixed_bases)?;
        let rows = d::held_out(&pool, &bundle.bundle.manifest.options, seed)?;
        let mean = d::HeldOutMean::of(&rows);
        // The verdict `elx inspect --held-out` prints: per cluster and for the rest.
        let pair = d::pairwise_capture(&pool)?;
        let st = d::structure(&rows, &pair, &pool.names);
        let clusters: Vec<Vec<&str>> = st
            .clusters
            .iter()
            .map(|c| {
                c.members
                    .iter()
                    .filter_map(|&k| pool.names.get(k).map(String::as_str))
                    .collect()
            })
            .collect();
        serde_json::to_string(&serde_json::json!({
            "verdict": {"gain": st.verdict.gain, "line": st.line},
            "distribution": st.all,
            "clusters": clusters,
            "mean": mean,
            "adapters": rows,
        }))
        .map_err(|e| Error::Internal(e.to_string()))
    })
    .map_err(raise)
}

/// A base model patched for one bound bundle on one engine, with its tasks and tokenizer.
#[pyclass(module = "eigenlorax._native", frozen)]
struct Runtime {
    runner: Runner,
}

/// The engine named by Python's `backend` and `provider`.
fn backend_of(backend: &str, provider: &str) -> PyResult<Backend> {
    let ep = match provider {
        "cpu" => ExecutionProvider::Cpu,
        "cuda" => ExecutionProvider::Cuda,
        "tensorrt" => ExecutionProvider::TensorRt,
        p => {
            return Err(UsageError::new_err(format!(
                "provider: expected cpu, cuda or tensorrt, found `{p}`"
            )));
        }
    };
    match (backend, ep) {
        ("tract", ExecutionProvider::Cpu) => Ok(Backend::Tract),
        ("tract", _) => Err(UsageError::new_err(
            "the CUDA and TensorRT providers need the ONNX Runtime backend (backend=\"ort\")",
        )),
        ("ort", ep) => Ok(Backend::Ort(ep)),
        (b, _) => Err(UsageError::new_err(format!(
            "backend: expected tract or ort, found `{b}`"
        ))),
    }
}

/// A row's task name and, with a head, (label, probabilities, the head's labels).
type RowPrediction = (String, Option<(String, Vec<f64>, Vec<String>)>);

fn task_id(id: u64) -> TaskId {
    TaskId(usize::try_from(id).unwrap_or(usize::MAX))
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (model, bundle, backend = "tract", provider = "cpu", tokenizer = None,
        max_length = None, pooling = "mean", output = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        bundle: PathBuf,
        backend: &str,
        provider: &str,
        tokenizer: Option<PathBuf>,
        max_length: Option<usize>,
        pooling: &str,
        output: Option<String>,
    ) -> PyResult<Runtime> {
        let pooling = match pooling {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "none" => Pooling::None,
            p => {
                return Err(UsageError::new_err(format!(
                    "pooling: expected mean, cls or none, found `{p}`"
                )));
            }
        };
        let spec = RunSpec {
            model,
            bundle,
            backend: backend_of(backend, provider)?,
            text_inputs: true,
            tokenizer,
            max_length,
            pooling,
            output: output.map_or(OutputChoice::First, OutputChoice::Name),
        };
        let runner = py.detach(|| Runner::open(&spec)).map_err(raise)?;
        Ok(Runtime { runner })
    }

    /// Loads a task file (.elxc) of this bundle; returns its id.
    fn load_task(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        let id = py
            .detach(|| self.runner.engine().load_task(&path))
            .map_err(raise)?;
        Ok(id.0 as u64)
    }

    /// Adds the base model (zero coefficients, no head) as a task; returns its id.
    fn base_task(&self) -> PyResult<u64> {
        Ok(self.runner.insert_base_task().map_err(raise)?.0 as u64)
    }

    /// Removes a task.
    fn unload_task(&self, task: u64) -> PyResult<()> {
        self.runner
            .engine()
            .unload_task(task_id(task))
            .map_err(raise)
    }

    /// (name, labels or None) of a task.
    fn task_info(&self, task: u64) -> PyResult<(String, Option<Vec<String>>)> {
        let (name, head) = self
            .runner
            .engine()
            .task_info(task_id(task))
            .map_err(raise)?;
        Ok((name, head.map(|h| h.labels)))
    }

    /// The engine running: "tract" or "ort:cpu" / "ort:cuda" / "ort:tensorrt".
    #[getter]
    fn backend(&self) -> String {
        match self.runner.engine().backend() {
            Backend::Tract => "tract".into(),
            Backend::Ort(ep) => format!("ort:{}", ep.name()),
        }
    }

    /// The bundle's subspace id.
    #[getter]
    fn subspace_id(&self) -> String {
        self.runner.subspace_id().to_string()
    }

    /// Runs texts (or token ids with a mask) with one task (one id in `tasks`) or a mixed
    /// batch (row i with the i-th): (pooled bytes (f32), rows, dim, per row its task's name
    /// and, when the task has a head, (label, probabilities, labels)).
    #[pyo3(signature = (tasks, texts = None, ids = None, mask = None, shape = None))]
    #[allow(clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        tasks: Vec<u64>,
        texts: Option<Vec<String>>,
        ids: Option<Vec<i64>>,
        mask: Option<Vec<i64>>,
        shape: Option<(usize, usize)>,
    ) -> PyResult<(Bound<'py, PyByteArray>, usize, usize, Vec<RowPrediction>)> {
        let result = py.detach(|| {
            let batch = match (texts, ids, shape) {
                (Some(t), None, _) => {
                    if t.is_empty() {
                        return Err(Error::Usage("no text to run".into()));
                    }
                    self.runner.encode(&t)?
                }
                (None, Some(ids), Some((rows, seq))) => {
                    let mut given = vec![InputTensor {
                        name: "input_ids".into(),
                        shape: vec![rows, seq],
                        data: TensorData::I64(ids),
                    }];
                    if let Some(m) = mask {
                        if let Some(i) = m.iter().position(|&v| v != 0 && v != 1) {
                            return Err(Error::Usage(format!(
                                "mask[{i}] is {}; expected 0 or 1",
                                m[i]
                            )));
                        }
                        given.push(InputTensor {
                            name: "attention_mask".into(),
                            shape: vec![rows, seq],
                            data: TensorData::I64(m),
                        });
                    }
                    assemble(
                        Path::new("<token ids>"),
                        given,
                        self.runner.engine().specs()?,
                    )?
                }
                _ => return Err(Error::Usage("give texts or token ids".into())),
            };
            let ids: Vec<TaskId> = tasks.iter().map(|&t| task_id(t)).collect();
            let rows = match ids.as_slice() {
                [one] => Rows::One(*one),
                many => Rows::Each(many),
            };
            let r = self.runner.run(&batch, rows)?;
            let mut preds = Vec::with_capacity(r.rows.len());
            for row in 0..r.rows.len() {
                let p = r.prediction(row).transpose()?;
                let (name, head) = &r.rows[row];
                preds.push((
                    name.clone(),
                    p.map(|p| {
                        (
                            p.label,
                            p.probs,
                            head.as_ref().map(|h| h.labels.clone()).unwrap_or_default(),
                        )
                    }),
                ));
            }
            let pooled = r.pooled?;
            Ok((pooled, preds))
        });
        let (pooled, preds) = result.map_err(raise)?;
        let rows = pooled.len();
        let dim = pooled.first().map_or(0, Vec::len);
        let mut bytes = Vec::with_capacity(rows * dim * 4);
        for v in &pooled {
            for x in v {
                bytes.extend_from_slice(&x.to_ne_bytes());
            }
        }
        Ok((PyByteArray::new(py, &bytes), rows, dim, preds))
    }

    /// Finetunes a new task on labelled texts (exact gradients by default) and adds it to
    /// the runtime; returns (task id, summary dict items).
    #[pyo3(signature = (train, val = None, task = "task", output = None, rank = None,
        steps = None, grad = "exact", lr = None, head_lr = None, batch_size = 16, seed = 0,
        eval_every = None, head_warmup = 0, truncate = false, threads = 1, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn finetune(
        &self,
        py: Python<'_>,
        train: Vec<(String, String)>,
        val: Option<Vec<(String, String)>>,
        task: &str,
        output: Option<PathBuf>,
        rank: Option<usize>,
        steps: Option<u64>,
        grad: &str,
        lr: Option<f64>,
        head_lr: Option<f64>,
        batch_size: usize,
        seed: u64,
        eval_every: Option<u64>,
        head_warmup: u64,
        truncate: bool,
        threads: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(u64, BTreeMap<String, f64>)> {
        let grad = match grad {
            "exact" => eigenlorax::finetune::GradMode::Exact,
            "spsa" => eigenlorax::finetune::GradMode::Spsa,
            g => {
                return Err(UsageError::new_err(format!(
                    "grad: expected exact or spsa, found `{g}`"
                )));
            }
        };
        let spec = FinetuneSpec {
            data: DataSource::Texts {
                train,
                val: val.unwrap_or_default(),
            },
            text: TextOptions {
                truncate,
                ..TextOptions::default()
            },
            recipe: Recipe {
                rank,
                steps,
                grad,
                threads,
                lr,
                head_lr,
                batch_size,
                seed,
                eval_every,
                head_warmup,
                ..Recipe::default()
            },
        };
        let progress = Progress::new(progress);
        let warnings = Mutex::new(Vec::new());
        let result = py.detach(|| {
            let mut job = FinetuneJob::on_runner(&spec, &self.runner, &mut |w| {
                warnings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(w.to_string());
                Ok(())
            })?;
            let total = job.max_steps();
            let report = job.fit_until(u64::MAX, &mut |e| {
                if let Event::Step(s) = e {
                    progress.report(s.step, total, "step");
                }
            })?;
            let file = match &output {
                Some(p) => job.write_task(p, task)?,
                None => job.coeff_file(task)?,
            };
            let id = self.runner.engine().insert_task(&file)?;
            let summary = job.summary()?;
            let mut figures = BTreeMap::from([
                ("steps".to_string(), report.steps as f64),
                ("forward_passes".to_string(), report.forward_passes as f64),
                ("best_metric".to_string(), report.best_metric),
                ("best_step".to_string(), report.best_step as f64),
                ("train_loss".to_string(), summary.train.loss),
                (
                    "train_accuracy".to_string(),
                    summary.train.accuracy.unwrap_or(f64::NAN),
                ),
            ]);
            if let Some(v) = summary.val {
                figures.insert("val_loss".into(), v.loss);
                figures.insert("val_accuracy".into(), v.accuracy.unwrap_or(f64::NAN));
            }
            Ok((id.0 as u64, figures))
        });
        for w in warnings.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let warnings = py.import("warnings")?;
            warnings.call_method1("warn", (w,))?;
        }
        progress.finish()?;
        result.map_err(raise)
    }
}

/// A decoder LLM (a folder `elx import-gguf` or `elx import-hf` wrote) patched for one
/// bound bundle, or alone, on one engine: `elx generate`'s [`TextGenerator`].
#[pyclass(module = "eigenlorax._native", frozen)]
struct Generator {
    tg: TextGenerator,
}

/// One generation: the text, each token (id, logprob), and why it stopped.
type Generated = (String, Vec<(u32, f32)>, String);

fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> PyResult<SamplingOptions> {
    let s = SamplingOptions {
        temperature,
        top_k,
        top_p,
        seed,
    };
    s.check().map_err(raise)?;
    Ok(s)
}

#[pymethods]
impl Generator {
    #[new]
    #[pyo3(signature = (model, bundle = None, backend = "tract", provider = "cpu", weights = "f32"))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        bundle: Option<PathBuf>,
        backend: &str,
        provider: &str,
        weights: &str,
    ) -> PyResult<Generator> {
        let backend = backend_of(backend, provider)?;
        let weights: eigenlorax::serve::backend::WeightFormat = weights.parse().map_err(raise)?;
        let tg = py
            .detach(|| TextGenerator::open_with(&model, bundle.as_deref(), backend, weights))
            .map_err(raise)?;
        Ok(Generator { tg })
    }

    /// Loads a task file (.elxc) of the bundle; returns its id.
    fn load_task(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        let id = py
            .detach(|| self.tg.generator().engine().load_task(&path))
            .map_err(raise)?;
        Ok(id.0 as u64)
    }

    /// Removes a task.
    fn unload_task(&self, task: u64) -> PyResult<()> {
        self.tg
            .generator()
            .engine()
            .unload_task(task_id(task))
            .map_err(raise)
    }

    /// The task of the base model (zero coefficients).
    #[getter]
    fn base_task(&self) -> u64 {
        self.tg.base_task().0 as u64
    }

    /// The bundle's subspace id (the base model alone: a placeholder bundle's).
    #[getter]
    fn subspace_id(&self) -> String {
        self.tg.generator().engine().subspace_id().to_string()
    }

    /// The engine running: "tract" or "ort:cpu" / "ort:cuda" / "ort:tensorrt".
    #[getter]
    fn backend(&self) -> String {
        match self.tg.generator().engine().backend() {
            Backend::Tract => "tract".into(),
            Backend::Ort(ep) => format!("ort:{}", ep.name()),
        }
    }

    /// The prompt for `messages` ((role, content) pairs) rendered by the model's chat
    /// template, the assistant's turn opened.
    fn chat_prompt(&self, messages: Vec<(String, String)>) -> PyResult<String> {
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|(role, content)| ChatMessage::new(role.as_str(), content.as_str()))
            .collect();
        self.tg.chat_prompt(&messages).map_err(raise)
    }

    /// Generates after `prompt` on `task` (the model's stop tokens, `max_tokens` or the
    /// first of `stops` end it); `on_text` gets each piece of text as it becomes final
    /// (with the GIL), and its first exception stops generation and is raised.
    #[pyo3(signature = (task, prompt, max_tokens = 128, temperature = 0.0, top_k = 0,
        top_p = 1.0, seed = 0, stops = Vec::new(), on_text = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        task: u64,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stops: Vec<String>,
        on_text: Option<Py<PyAny>>,
    ) -> PyResult<Generated> {
        let options = GenerateOptions {
            max_tokens,
            sampling: sampling(temperature, top_k, top_p, seed)?,
            stop_tokens: Vec::new(),
        };
        let mut failed: Option<PyErr> = None;
        let mut text = String::new();
        let mut tokens = Vec::new();
        let finish = py.detach(|| {
            self.tg
                .generate(task_id(task), &prompt, &options, &stops, &mut |piece| {
                    text.push_str(piece.text);
                    if let Some(t) = piece.token {
                        tokens.push((t.id, t.logprob));
                    }
                    if let (Some(cb), false) = (&on_text, piece.text.is_empty())
                        && let Err(e) = Python::attach(|py| cb.call1(py, (piece.text,)).map(drop))
                    {
                        failed = Some(e);
                        return Ok(false);
                    }
                    Ok(true)
                })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let finish = finish.map_err(raise)?;
        Ok((text, tokens, finish.name().to_string()))
    }

    /// Generates after each of `prompts`, row i on `tasks[i]`, all rows decoded as one batch
    /// (each row's tokens are those it gets alone); stops at the model's stop tokens or
    /// `max_tokens`.
    #[pyo3(signature = (tasks, prompts, max_tokens = 128, temperature = 0.0, top_k = 0,
        top_p = 1.0, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn generate_batch(
        &self,
        py: Python<'_>,
        tasks: Vec<u64>,
        prompts: Vec<String>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    ) -> PyResult<Vec<Generated>> {
        if tasks.len() != prompts.len() {
            return Err(UsageError::new_err(format!(
                "expected one task per prompt, found {} tasks and {} prompts",
                tasks.len(),
                prompts.len()
            )));
        }
        let options = GenerateOptions {
            max_tokens,
            sampling: sampling(temperature, top_k, top_p, seed)?,
            stop_tokens: self.tg.stop_tokens().to_vec(),
        };
        py.detach(|| {
            let tok = self.tg.tokenizer();
            let requests = tasks
                .iter()
                .zip(&prompts)
                .map(|(&task, prompt)| {
                    Ok(Request {
                        task: task_id(task),
                        prompt: tok.encode(prompt, true)?,
                        options: options.clone(),
                    })
                })
                .collect::<eigenlorax::error::Result<Vec<_>>>()?;
            let out = self.tg.generator().generate_batch(&requests)?;
            out.into_iter()
                .map(|g| {
                    let ids: Vec<u32> = g.tokens.iter().map(|t| t.id).collect();
                    Ok((
                        tok.decode_text(&ids)?,
                        g.tokens.iter().map(|t| (t.id, t.logprob)).collect(),
                        g.finish.name().to_string(),
                    ))
                })
                .collect::<eigenlorax::error::Result<Vec<Generated>>>()
        })
        .map_err(raise)
    }
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add_function(wrap_pyfunction!(diagnostics, m)?)?;
    m.add_class::<Bundle>()?;
    m.add_class::<Coefficients>()?;
    m.add_class::<Runtime>()?;
    m.add_class::<Generator>()?;
    m.add("ElxError", py.get_type::<ElxError>())?;
    m.add("BadInputError", py.get_type::<BadInputError>())?;
    m.add("ElxIOError", py.get_type::<ElxIOError>())?;
    m.add(
        "SubspaceMismatchError",
        py.get_type::<SubspaceMismatchError>(),
    )?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("NumericError", py.get_type::<NumericError>())?;
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
