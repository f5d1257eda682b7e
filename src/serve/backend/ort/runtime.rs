//! The ONNX Runtime runtime (Cargo feature `ort`): the same patched graph as tract, run by
//! ONNX Runtime with the CPU, CUDA or TensorRT execution provider.
//!
//! ONNX Runtime is loaded at run time from the shared library named by `ORT_DYLIB_PATH`
//! (`tools/install_onnxruntime.sh` installs one and prints its path), so the build needs
//! neither the library nor CUDA. A requested CUDA or TensorRT provider that this library or
//! machine cannot give falls back to the CPU with a warning on stderr.
//!
//! A session is built once per task-batch size from the patched `ModelProto` (coefficient
//! inputs of fixed shape, as TensorRT wants). A task swap only hands the session other
//! coefficient tensors, borrowed from the [`TaskStore`]: nothing is rebuilt or copied.

use super::quant::quantize_matmuls_releasing;
use super::spool;
use crate::bundle::{Bundle, CoeffFile};
use crate::error::{Error, Result};
use crate::graph::onnx::{MappedPages, encode_model, read_model};
use crate::graph::patch::{self, CoeffInput, PatchedModel};
use crate::graph::pb::ModelProto;
use crate::serve::backend::{ExecutionProvider, WeightFormat, engine_call};
use crate::serve::input::{
    InputSpec, InputTensor, OutputTensor, TensorData, check_inputs, input_specs, output_names,
};
use crate::serve::store::{TaskData, TaskId, TaskStore};
use ::ort::environment::Environment;
use ::ort::session::{Session, SessionInputValue};
use ::ort::value::TensorRef;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide ONNX Runtime environment; an error is not cached, so a later call can
/// succeed once `ORT_DYLIB_PATH` is fixed.
static ENV: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads ONNX Runtime from `ORT_DYLIB_PATH` (once per process) and returns its environment.
pub fn environment() -> Result<Environment> {
    let mut guard = ENV
        .lock()
        .map_err(|_| Error::Internal("ONNX Runtime environment lock poisoned".into()))?;
    if let Some(env) = guard.as_ref() {
        return Ok(env.clone());
    }
    let path = dylib_path()?;
    let builder = ::ort::init_from(&path).map_err(|e| {
        Error::bad_file(
            &path,
            format!(
                "expected an ONNX Runtime shared library of version >= 1.20 ({DYLIB_ENV}); loading it failed: {e}. Run tools/install_onnxruntime.sh and export {DYLIB_ENV}=<the path it prints>"
            ),
        )
    })?;
    let env = builder
        .with_name("eigenlorax")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            Error::Engine(format!(
                "ONNX Runtime could not create its environment: {e}"
            ))
        })?;
    *guard = Some(env.clone());
    Ok(env)
}

/// The library path from `ORT_DYLIB_PATH`, checked to exist.
pub fn dylib_path() -> Result<PathBuf> {
    let missing = || {
        Error::Usage(format!(
            "{DYLIB_ENV} is not set: the ort backend loads ONNX Runtime (libonnxruntime.so) at run time. Run tools/install_onnxruntime.sh and export {DYLIB_ENV}=<the path it prints>"
        ))
    };
    let path = PathBuf::from(
        std::env::var_os(DYLIB_ENV)
            .filter(|v| !v.is_empty())
            .ok_or_else(missing)?,
    );
    if !path.is_file() {
        return Err(Error::bad_file(
            &path,
            format!(
                "expected the ONNX Runtime shared library named by {DYLIB_ENV}, found no such file. Run tools/install_onnxruntime.sh and export {DYLIB_ENV}=<the path it prints>"
            ),
        ));
    }
    Ok(path)
}

fn ort_err(what: &str) -> impl Fn(::ort::Error) -> Error + '_ {
    move |e| Error::Engine(format!("ONNX Runtime: {what}: {e}"))
}

/// One ONNX Runtime session over a model, with the specs of its inputs and outputs.
///
/// Runs take `&self`: the session sits behind a mutex (the `ort` crate needs exclusive
/// access per run), so the model can be shared between threads.
pub struct OrtModel {
    session: Mutex<Session>,
    inputs: Vec<InputSpec>,
    outputs: Vec<String>,
    provider: ExecutionProvider,
    warnings: Vec<String>,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("provider", &self.provider)
            .finish()
    }
}

impl OrtModel {
    /// Builds a session for `model` on `ep` (falling back to the CPU with a warning when the
    /// provider is unavailable). `inputs` are the graph inputs the caller will feed by
    /// [`InputTensor`]; any other graph input must be fed through `run_with`'s `extra`.
    pub fn new(model: &ModelProto, inputs: &[String], ep: ExecutionProvider) -> Result<OrtModel> {
        let specs = input_specs(model, inputs)?;
        let outputs = output_names(model);
        let mut warnings = Vec::new();
        let source = Source::of(model, &|_| {}, &mut warnings);
        Self::from_source(&source, specs, outputs, ep, warnings)
    }

    /// [`OrtModel::new`], spooling the model to a new folder under `parent` whatever its
    /// size ([`spool`]; an error if that fails). The folder is gone when this returns.
    pub fn new_spooled(
        model: &ModelProto,
        inputs: &[String],
        ep: ExecutionProvider,
        parent: &Path,
    ) -> Result<OrtModel> {
        let specs = input_specs(model, inputs)?;
        let outputs = output_names(model);
        let source = Source::File(spool::spool(model, parent, &|_| {})?);
        Self::from_source(&source, specs, outputs, ep, Vec::new())
    }

    /// [`OrtModel::new`] for a model it may consume: the model is spooled (or encoded),
    /// dropped, and its file's pages (`pages`) let go of before ONNX Runtime starts, so that
    /// the weights the session keeps are never held twice, nor beside the f32 file
    /// (BENCHMARKS.md, "Peak memory of a 4-bit decoder").
    pub fn from_owned(
        model: ModelProto,
        inputs: &[String],
        ep: ExecutionProvider,
        pages: Option<&MappedPages>,
    ) -> Result<OrtModel> {
        let specs = input_specs(&model, inputs)?;
        let outputs = output_names(&model);
        let release = |data: &[u8]| {
            if let Some(p) = pages {
                p.release(data)
            }
        };
        let mut warnings = Vec::new();
        let source = Source::of(&model, &release, &mut warnings);
        drop(model);
        if let Some(p) = pages {
            p.release_all();
        }
        Self::from_source(&source, specs, outputs, ep, warnings)
    }

    fn from_source(
        source: &Source,
        specs: Vec<InputSpec>,
        outputs: Vec<String>,
        ep: ExecutionProvider,
        mut warnings: Vec<String>,
    ) -> Result<OrtModel> {
        let env = environment()?;
        let (session, provider) = build_session(&env, source, ep, &mut warnings)?;
        Ok(OrtModel {
            session: Mutex::new(session),
            inputs: specs,
            outputs,
            provider,
            warnings,
        })
    }

    /// Builds a session for a model file with every graph input fed by [`InputTensor`]s.
    pub fn from_file(path: &Path, ep: ExecutionProvider) -> Result<OrtModel> {
        let (model, _) = read_model(path)?;
        let names = plain_inputs(&model);
        OrtModel::new(&model, &names, ep)
    }

    /// The inputs fed by [`InputTensor`]s.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// The graph outputs, in the order runs return them.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The execution provider actually in use.
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Warnings raised while building the session (also printed on stderr).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Runs the model on `tensors` (exactly [`OrtModel::inputs`]) and returns every graph output.
    pub fn run(&self, tensors: &[InputTensor]) -> Result<Vec<OutputTensor>> {
        self.run_with(tensors, &[])
    }

    /// Runs with additional f32 inputs `extra` (name, shape, values), borrowed, not copied.
    pub fn run_with(
        &self,
        tensors: &[InputTensor],
        extra: &[(&str, &[usize], &[f32])],
    ) -> Result<Vec<OutputTensor>> {
        let ordered = check_inputs(&self.inputs, tensors)?;
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(ordered.len() + extra.len());
        for t in ordered {
            let value: SessionInputValue<'_> = match &t.data {
                TensorData::F32(v) => {
                    TensorRef::from_array_view((t.shape.as_slice(), v.as_slice()))
                        .map_err(ort_err("input tensor"))?
                        .into()
                }
                TensorData::I64(v) => {
                    TensorRef::from_array_view((t.shape.as_slice(), v.as_slice()))
                        .map_err(ort_err("input tensor"))?
                        .into()
                }
            };
            feed.push((Cow::Borrowed(t.name.as_str()), value));
        }
        for &(name, shape, values) in extra {
            let value = TensorRef::from_array_view((shape, values))
                .map_err(ort_err("coefficient tensor"))?;
            feed.push((Cow::Borrowed(name), value.into()));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Internal("ONNX Runtime session lock poisoned".into()))?;
        engine_call("ONNX Runtime run", || {
            self.collect_outputs(session.run(feed).map_err(ort_err("run"))?)
        })
    }

    /// The graph outputs of a run, in [`OrtModel::output_names`] order, as f32 tensors.
    /// Each of ONNX Runtime's buffers is let go of once copied, so the copies and the
    /// originals (a decoder's whole KV cache) are not all held at once.
    fn collect_outputs(
        &self,
        mut out: ::ort::session::SessionOutputs<'_>,
    ) -> Result<Vec<OutputTensor>> {
        let mut result = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let v = out.remove(name).ok_or_else(|| {
                Error::Engine(format!("ONNX Runtime returned no output `{name}`"))
            })?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| {
                Error::Engine(format!(
                    "the model output `{name}` is not an f32 tensor: {e}"
                ))
            })?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect();
            result.push(OutputTensor {
                name: name.clone(),
                shape,
                data: data.to_vec(),
            });
        }
        Ok(result)
    }
}

/// The graph inputs that have no initializer (what a caller must feed).
pub fn plain_inputs(model: &ModelProto) -> Vec<String> {
    let Some(g) = model.graph.as_ref() else {
        return Vec::new();
    };
    g.input
        .iter()
        .filter(|v| !g.initializer.iter().any(|t| t.name == v.name))
        .map(|v| v.name.clone())
        .collect()
}

/// What a session is built from: an encoded model, or a model spooled to a file whose
/// weights ONNX Runtime maps ([`spool`]).
enum Source {
    Bytes(Vec<u8>),
    File(spool::Spooled),
}

impl Source {
    /// A spooled file for a model of [`spool::SPOOL_MIN_BYTES`] or more (`release` called on
    /// each weight once written), else (or if spooling fails, with a warning) its encoding.
    fn of(model: &ModelProto, release: &dyn Fn(&[u8]), warnings: &mut Vec<String>) -> Source {
        if spool::initializer_bytes(model) >= spool::SPOOL_MIN_BYTES {
            match spool::spool(model, &std::env::temp_dir(), release) {
                Ok(s) => return Source::File(s),
                Err(e) => warn(
                    warnings,
                    format!("{e}; ONNX Runtime copies the weights from memory instead"),
                ),
            }
        }
        Source::Bytes(encode_model(model))
    }
}

/// Creates a session with `ep`, falling back to the CPU (with a warning) when the provider
/// cannot be registered or the session cannot be built on it.
fn build_session(
    env: &Environment,
    source: &Source,
    ep: ExecutionProvider,
    warnings: &mut Vec<String>,
) -> Result<(Session, ExecutionProvider)> {
    let commit = |builder: &mut ::ort::session::builder::SessionBuilder| match source {
        Source::Bytes(bytes) => builder.commit_from_memory(bytes),
        Source::File(s) => builder.commit_from_file(s.model_path()),
    };
    let mut builder = session_builder(env)?;
    let active = register(&mut builder, ep, warnings);
    let built = engine_call("building the ONNX Runtime session", || {
        Ok(commit(&mut builder))
    })?;
    match built {
        Ok(s) => Ok((s, active)),
        Err(e) if active != ExecutionProvider::Cpu => {
            warn(
                warnings,
                format!(
                    "ONNX Runtime could not build the session on {}: {e}; falling back to the CPU",
                    active.name()
                ),
            );
            let mut builder = session_builder(env)?;
            let s = commit(&mut builder).map_err(ort_err("building the session on the CPU"))?;
            Ok((s, ExecutionProvider::Cpu))
        }
        Err(e) => Err(ort_err("building the session")(e)),
    }
}

/// Intra-op threads of the sessions built from now on (0: ONNX Runtime's default, one per
/// physical core); set by [`crate::serve::backend::set_cpu_threads`].
static INTRA_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the intra-op threads of the sessions built from now on (0: ONNX Runtime's default).
pub fn set_threads(n: usize) {
    INTRA_THREADS.store(n, Ordering::Relaxed);
}

/// A session builder with the thread count of [`set_threads`].
fn session_builder(env: &Environment) -> Result<::ort::session::builder::SessionBuilder> {
    let builder = Session::builder(env).map_err(ort_err("session options"))?;
    // No memory patterns and no arena: a decoder's shapes change at every step (the cache
    // grows), ONNX Runtime keeps a planned block per input shape it has seen, and its arena
    // grows by doubling and never shrinks. Plain allocations track what a call needs:
    // SmolLM2's generation peak 249 -> 231 MiB, its whole benchmark 743 -> 676 MiB
    // (BENCHMARKS.md, "Peak memory of a 4-bit decoder"). What this costs is one large call:
    // a 512-token prompt fed at once peaks at 794 MiB instead of 464, which is why
    // `Generator` feeds at most 64 positions a call.
    let mut builder = builder
        .with_memory_pattern(false)
        .map_err(|e| ort_err("memory pattern")(e.into()))?;
    {
        use ::ort::ep::ExecutionProvider as _;
        ::ort::ep::CPU::default()
            .with_arena_allocator(false)
            .register(&mut builder)
            .map_err(ort_err("CPU memory arena"))?;
    }
    match INTRA_THREADS.load(Ordering::Relaxed) {
        0 => Ok(builder),
        n => builder
            .with_intra_threads(n)
            .map_err(|e| ort_err("intra-op threads")(e.into())),
    }
}

fn warn(warnings: &mut Vec<String>, message: String) {
    eprintln!("warning: {message}");
    warnings.push(message);
}

/// Registers the requested provider (TensorRT also registers CUDA behind it for the nodes
/// TensorRT does not take); returns the provider in effect.
fn register(
    builder: &mut ::ort::session::builder::SessionBuilder,
    ep: ExecutionProvider,
    warnings: &mut Vec<String>,
) -> ExecutionProvider {
    match ep {
        ExecutionProvider::Cpu => ExecutionProvider::Cpu,
        ExecutionProvider::Cuda => {
            if try_register(builder, ::ort::ep::CUDA::default(), warnings) {
                ExecutionProvider::Cuda
            } else {
                warn(
                    warnings,
                    "CUDA was requested but is unavailable; running on the CPU".into(),
                );
                ExecutionProvider::Cpu
            }
        }
        ExecutionProvider::TensorRt => {
            if try_register(builder, ::ort::ep::TensorRT::default(), warnings) {
                // Nodes TensorRT cannot take go to CUDA when it is there, else to the CPU.
                let mut quiet = Vec::new();
                try_register(builder, ::ort::ep::CUDA::default(), &mut quiet);
                ExecutionProvider::TensorRt
            } else if try_register(builder, ::ort::ep::CUDA::default(), warnings) {
                warn(
                    warnings,
                    "TensorRT was requested but is unavailable; running on CUDA".into(),
                );
                ExecutionProvider::Cuda
            } else {
                warn(warnings, "TensorRT was requested but neither TensorRT nor CUDA is available; running on the CPU".into());
                ExecutionProvider::Cpu
            }
        }
    }
}

/// Registers one provider; false (with a warning) when the library lacks it or it fails.
fn try_register<E: ::ort::ep::ExecutionProvider>(
    builder: &mut ::ort::session::builder::SessionBuilder,
    ep: E,
    warnings: &mut Vec<String>,
) -> bool {
    match E::is_available() {
        Ok(true) => match ep.register(builder) {
            Ok(()) => true,
            Err(e) => {
                warn(
                    warnings,
                    format!("{} could not be registered: {e}", E::NAME),
                );
                false
            }
        },
        Ok(false) => {
            warn(
                warnings,
                format!(
                    "the ONNX Runtime library ({DYLIB_ENV}) was built without {}; install a GPU build (e.g. onnxruntime-gpu) to use it",
                    E::NAME
                ),
            );
            false
        }
        Err(e) => {
            warn(
                warnings,
                format!("could not ask ONNX Runtime for its providers: {e}"),
            );
            false
        }
    }
}

/// Base model + bundle + task coefficients on ONNX Runtime (the same API as tract's
/// `Runtime`).
///
/// One session serves single-task runs ([`OrtRuntime::run`]); mixed-task batches
/// ([`OrtRuntime::run_mixed`]) use a session built on first use for each batch size, since
/// the coefficient inputs have a fixed task axis. Runs take `&self`.
pub struct OrtRuntime {
    /// The base model, whose weights are slices of its file's map (`pages`) when it was
    /// read from a file: resident only while a session is being built from them (a
    /// mixed-batch session, a training graph). As with every map, the file must not be
    /// truncated while the runtime lives; `elx import-gguf` and `import-hf` replace files by
    /// renaming, which leaves the mapped one intact.
    base: ModelProto,
    pages: Option<MappedPages>,
    bundle: Bundle,
    requested: ExecutionProvider,
    single: OrtModel,
    coeff_inputs: Vec<CoeffInput>,
    mixed: Mutex<HashMap<usize, Arc<OrtModel>>>,
    store: TaskStore,
    /// Whether the single session takes one task per row ([`patch::PER_ROW`]).
    per_row: bool,
    /// How the sessions store the base weights ([`super::quant`]).
    weights: WeightFormat,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("requested", &self.requested)
            .field("single", &self.single)
            .field("coeff_inputs", &self.coeff_inputs)
            .finish()
    }
}

impl OrtRuntime {
    /// Reads the base model (checked against the bundle's binding hash), patches it for one
    /// task and builds its session on `ep`.
    pub fn load(base: &Path, bundle: &Bundle, ep: ExecutionProvider) -> Result<OrtRuntime> {
        Self::load_with(base, bundle, ep, false)
    }

    /// [`OrtRuntime::load`]; with `per_row`, one session whose coefficient inputs take one
    /// task per row ([`patch::PER_ROW`]) serves every run, single-task or mixed, of any batch
    /// size.
    pub fn load_with(
        base: &Path,
        bundle: &Bundle,
        ep: ExecutionProvider,
        per_row: bool,
    ) -> Result<OrtRuntime> {
        Self::load_with_weights(base, bundle, ep, per_row, WeightFormat::F32)
    }

    /// [`OrtRuntime::load_with`], with the base weights of every session in `weights`
    /// ([`super::quant`]: 4-bit blocks multiplied by `MatMulNBits`).
    pub fn load_with_weights(
        base: &Path,
        bundle: &Bundle,
        ep: ExecutionProvider,
        per_row: bool,
        weights: WeightFormat,
    ) -> Result<OrtRuntime> {
        let (model, pages) = patch::load_base_mapped(base, bundle)?;
        Self::from_model_with(model, Some(pages), bundle, ep, per_row, weights)
    }

    /// Same as [`OrtRuntime::load`] for a base model already in memory (hash not checked).
    pub fn from_model(
        base: ModelProto,
        bundle: &Bundle,
        ep: ExecutionProvider,
    ) -> Result<OrtRuntime> {
        Self::from_model_with(base, None, bundle, ep, false, WeightFormat::F32)
    }

    fn from_model_with(
        base: ModelProto,
        pages: Option<MappedPages>,
        bundle: &Bundle,
        ep: ExecutionProvider,
        per_row: bool,
        weights: WeightFormat,
    ) -> Result<OrtRuntime> {
        let tasks = if per_row { patch::PER_ROW } else { 1 };
        // `base` keeps only slices of the file: the patched clone shares its weights.
        let mut patched = patch::patch(&base, bundle, tasks)?;
        quantize_matmuls_releasing(&mut patched.proto, weights, pages.as_ref())?;
        let proto = std::mem::take(&mut patched.proto);
        let single = OrtModel::from_owned(proto, &patched.base_inputs, ep, pages.as_ref())?;
        let store = TaskStore::new(&bundle.manifest, &patched.coeff_inputs);
        Ok(OrtRuntime {
            base,
            pages,
            bundle: bundle.clone(),
            requested: ep,
            single,
            coeff_inputs: patched.coeff_inputs,
            mixed: Mutex::new(HashMap::new()),
            store,
            per_row,
            weights,
        })
    }

    /// The base model patched for one task (as the single-task session runs it, with f32
    /// weights whatever the sessions' [`WeightFormat`]).
    pub fn patched_model(&self) -> Result<crate::graph::PatchedModel> {
        patch::patch(&self.base, &self.bundle, 1)
    }

    /// The task store (load, insert, replace, find tasks).
    pub fn store(&self) -> &TaskStore {
        &self.store
    }

    /// Loads a coefficient file (checked against the bundle's subspace) as a new task.
    pub fn load_task(&self, path: &Path) -> Result<TaskId> {
        self.store.load(path)
    }

    /// Adds in-memory coefficients as a new task.
    pub fn insert_task(&self, coeffs: &CoeffFile) -> Result<TaskId> {
        self.store.insert(coeffs)
    }

    /// The base model's own inputs (what [`OrtRuntime::run`] takes).
    pub fn inputs(&self) -> &[InputSpec] {
        self.single.inputs()
    }

    /// The graph outputs, in the order runs return them.
    pub fn output_names(&self) -> &[String] {
        self.single.output_names()
    }

    /// The coefficient inputs of the patched graph.
    pub fn coeff_inputs(&self) -> &[CoeffInput] {
        &self.coeff_inputs
    }

    /// The provider requested at load.
    pub fn requested_provider(&self) -> ExecutionProvider {
        self.requested
    }

    /// The provider in use (the CPU after a fallback).
    pub fn provider(&self) -> ExecutionProvider {
        self.single.provider()
    }

    /// Fallback warnings raised at load (also printed on stderr).
    pub fn warnings(&self) -> &[String] {
        self.single.warnings()
    }

    /// Runs every row of `inputs` with task `task`. The task's coefficient tensors are
    /// borrowed from the store as they are: a swap copies and builds nothing.
    pub fn run(&self, inputs: &[InputTensor], task: TaskId) -> Result<Vec<OutputTensor>> {
        let t = self.store.get(task)?;
        self.run_task(inputs, &t)
    }

    /// Runs every row of `inputs` with the coefficients of `task`, which need not be in
    /// the store (the finetuner's trial coefficients): one tensor per coefficient input,
    /// in [`OrtRuntime::coeff_inputs`] order, α_Aᵀ [1, K_A, r] then α_Bᵀ [1, r, K_B].
    pub fn run_task(&self, inputs: &[InputTensor], task: &TaskData) -> Result<Vec<OutputTensor>> {
        if self.per_row {
            let b = inputs
                .first()
                .and_then(|x| x.shape.first())
                .copied()
                .unwrap_or(1);
            return self.run_rows(inputs, &vec![task; b]);
        }
        task.check(&self.coeff_inputs)?;
        let tensors: Vec<_> = task.tensors(&self.coeff_inputs).collect();
        let extra: Vec<(&str, &[usize], &[f32])> = tensors
            .iter()
            .map(|c| (c.name, &c.shape[..], c.data))
            .collect();
        self.single.run_with(inputs, &extra)
    }

    /// Runs row i of `inputs` with task `tasks[i]` in one pass (the leading axis of every
    /// input of two or more dimensions must be `tasks.len()`).
    pub fn run_mixed(&self, inputs: &[InputTensor], tasks: &[TaskId]) -> Result<Vec<OutputTensor>> {
        let loaded: Vec<_> = tasks
            .iter()
            .map(|&id| self.store.get(id))
            .collect::<Result<_>>()?;
        let rows: Vec<&TaskData> = loaded.iter().map(|t| &**t).collect();
        self.run_rows(inputs, &rows)
    }

    /// Runs row i of `inputs` with `tasks[i]` (coefficients pinned by the caller) in one
    /// pass: on the per-row session, or the mixed session of this batch size.
    pub fn run_rows(
        &self,
        inputs: &[InputTensor],
        tasks: &[&TaskData],
    ) -> Result<Vec<OutputTensor>> {
        let b = tasks.len();
        if b == 0 {
            return Err(Error::Usage("mixed run: expected at least one task".into()));
        }
        // An input of one dimension is shared by the rows (a decoder's `logits_positions`).
        if let Some(t) = inputs
            .iter()
            .find(|t| t.shape.len() > 1 && t.shape.first() != Some(&b))
        {
            return Err(Error::Usage(format!(
                "mixed run: input `{}` has shape {:?}, expected {b} rows (one per task)",
                t.name, t.shape
            )));
        }
        // Stack the rows' coefficients: one [B, K, r] buffer per coefficient input.
        let n = 2 * self.coeff_inputs.len();
        let mut views = Vec::with_capacity(b);
        for t in tasks {
            t.check(&self.coeff_inputs)?;
            views.push(t.tensors(&self.coeff_inputs).collect::<Vec<_>>());
        }
        let mut stacked: Vec<([usize; 3], Vec<f32>)> = Vec::with_capacity(n);
        for j in 0..n {
            let mut shape = [b, 0, 0];
            let mut data = Vec::new();
            for v in &views {
                let c = v.get(j).ok_or_else(|| {
                    Error::Internal("a checked task lacks a coefficient tensor".into())
                })?;
                shape[1] = c.shape[1];
                shape[2] = c.shape[2];
                data.extend_from_slice(c.data);
            }
            stacked.push((shape, data));
        }
        let names = self
            .coeff_inputs
            .iter()
            .flat_map(|c| [c.alpha_a.as_str(), c.alpha_b.as_str()]);
        let extra: Vec<(&str, &[usize], &[f32])> = names
            .zip(&stacked)
            .map(|(name, (shape, data))| (name, &shape[..], data.as_slice()))
            .collect();
        if self.per_row {
            return self.single.run_with(inputs, &extra);
        }
        self.mixed_model(b)?.run_with(inputs, &extra)
    }

    /// The session for mixed batches of `b` rows, built once on the provider the
    /// single-task session settled on (so a fallback warns only once).
    fn mixed_model(&self, b: usize) -> Result<Arc<OrtModel>> {
        let mut cache = self
            .mixed
            .lock()
            .map_err(|_| Error::Internal("mixed-session lock poisoned".into()))?;
        if let Some(m) = cache.get(&b) {
            return Ok(Arc::clone(m));
        }
        let mut patched: PatchedModel = patch::patch(&self.base, &self.bundle, b)?;
        quantize_matmuls_releasing(&mut patched.proto, self.weights, self.pages.as_ref())?;
        let proto = std::mem::take(&mut patched.proto);
        let model = Arc::new(OrtModel::from_owned(
            proto,
            &patched.base_inputs,
            self.single.provider(),
            self.pages.as_ref(),
        )?);
        cache.insert(b, Arc::clone(&model));
        Ok(model)
    }
}
