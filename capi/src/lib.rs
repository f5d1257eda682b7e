//! # libelx: the C API of eigenlorax
//!
//! A stable C ABI over [`eigenlorax`] for apps (C/C++ services, Android through JNI, iOS
//! through a Swift C module). `include/eigenlorax.h` is generated from this file by cbindgen
//! (capi/tests/header.rs fails when the committed header differs). Every function here is a
//! thin shell: it checks pointers and sizes, calls the library ([`Engine`], the task store,
//! [`TextEncoder`], the head, the [`Finetuner`]) and turns its result into a status code.
//!
//! The conventions (status codes, the thread-local last error, size queries, ownership and
//! threads) head the generated header; they are kept in capi/cbindgen.toml.

#![warn(missing_docs)]

use eigenlorax::bundle::{Bundle, Head};
use eigenlorax::error::Error;
use eigenlorax::finetune::cache::CachedFeatures;
use eigenlorax::finetune::data::{Example, RawSet, class_indices, label_set};
use eigenlorax::finetune::recipe;
use eigenlorax::finetune::seq::SequenceModel;
use eigenlorax::finetune::{FinetuneConfig, Finetuner, Objective, Split};
use eigenlorax::serve::ExecutionProvider;
use eigenlorax::serve::input::{
    InputTensor, OutputTensor, Prediction, TensorData, TextEncoder, apply_head, assemble,
    find_tokenizer, tokenizer_beside,
};
use eigenlorax::serve::store::TaskId;
use eigenlorax::serve::{Backend, Engine, HiddenState};
use eigenlorax::task::{Pooling, pool};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The ABI version: bumped whenever a function, struct or enum of the header changes
/// incompatibly. Compare with [`elx_abi_version`] at start-up.
pub const ELX_ABI_VERSION: u32 = 1;

/// The status every function returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxStatus {
    /// Success.
    Ok = 0,
    /// A required pointer was null.
    NullPointer = 1,
    /// An argument is out of range or sizes do not add up (e.g. rows x seq values, a tensor's
    /// byte length against its shape, an unknown enum value, a string that is not UTF-8).
    InvalidArgument = 2,
    /// A caller buffer is too small; `needed` says how large it must be.
    BufferTooSmall = 3,
    /// A file could not be read or written.
    Io = 4,
    /// A file's content (model, bundle, task, tokenizer, checkpoint) is not what was expected.
    BadInput = 5,
    /// A task file belongs to another subspace than the runtime's bundle.
    SubspaceMismatch = 6,
    /// The request cannot work (e.g. an unknown or unloaded task, text without a tokenizer,
    /// a mixed batch whose rows and tasks differ in number).
    Usage = 7,
    /// A numerical failure.
    Numeric = 8,
    /// The inference engine failed (or is not built into this library).
    Engine = 9,
    /// The task has no classification head.
    NoHead = 10,
    /// A bug in eigenlorax (an internal invariant broke).
    Internal = 11,
    /// A bug in eigenlorax that panicked; the panic was caught at the boundary.
    Panic = 12,
}

/// The inference engine (the `backend` of [`ElxOpenOptions`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxBackend {
    /// tract: pure Rust, CPU (the default).
    Tract = 0,
    /// ONNX Runtime (a library built with the `ort` feature; libonnxruntime is loaded at run
    /// time from `ORT_DYLIB_PATH`).
    Ort = 1,
}

/// The ONNX Runtime execution provider (the `provider` of [`ElxOpenOptions`]). One that
/// cannot start falls back to the CPU with a warning on stderr; [`elx_runtime_backend`] says
/// which one runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxProvider {
    /// CPU.
    Cpu = 0,
    /// NVIDIA CUDA.
    Cuda = 1,
    /// NVIDIA TensorRT (CUDA behind it).
    TensorRt = 2,
}

/// How a model output becomes one vector per row (the `pooling` of [`ElxOpenOptions`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxPooling {
    /// Mean over the tokens whose attention mask is 1 (the default; `elx run`'s).
    Mean = 0,
    /// The first token's state (BERT's [CLS]).
    Cls = 1,
    /// The output as it is, one flattened row per batch row.
    None = 2,
}

/// Element type of an [`ElxTensor`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxDtype {
    /// 32-bit float.
    F32 = 0,
    /// 64-bit signed integer (token ids, masks).
    I64 = 1,
}

/// How [`elx_runtime_open`] sets up a runtime; fill with [`elx_open_options_default`] first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxOpenOptions {
    /// An `ElxBackend` value.
    pub backend: u32,
    /// An `ElxProvider` value (ONNX Runtime only).
    pub provider: u32,
    /// HF tokenizer.json for text inputs, borrowed for the call; NULL: `tokenizer.json` next
    /// to the model when there is one (as `elx run`), else text inputs are refused.
    pub tokenizer_path: *const c_char,
    /// Truncate texts to this many tokens; 0: from the tokenizer files, else 512.
    pub max_length: usize,
    /// An `ElxPooling` value.
    pub pooling: u32,
    /// The graph output that is pooled (0: the first, as `elx run`).
    pub output_index: usize,
}

/// One raw input tensor of [`elx_run_tensors`]. Everything is borrowed for the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxTensor {
    /// The model input's name (e.g. "input_ids"), NUL-terminated UTF-8.
    pub name: *const c_char,
    /// An `ElxDtype` value.
    pub dtype: u32,
    /// `ndim` dimensions, outermost first (the first is the batch axis).
    pub shape: *const usize,
    /// Number of dimensions.
    pub ndim: usize,
    /// The values, row-major, native byte order; need not be aligned.
    pub data: *const c_void,
    /// Bytes at `data`: the product of the shape times 4 (F32) or 8 (I64).
    pub data_bytes: usize,
}

/// Settings of a finetuning run; fill with [`elx_finetune_options_default`] (the defaults
/// of `elx finetune`) and change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxFinetuneOptions {
    /// Coefficient rank (0: the bundle's smallest r_max, as `elx finetune`).
    pub rank: u32,
    /// Total optimisation steps of the run.
    pub max_steps: u64,
    /// Seed of the initialisation, the directions and the data order.
    pub seed: u64,
    /// Peak learning rate of the coefficients.
    pub lr: f64,
    /// Peak learning rate of the head.
    pub head_lr: f64,
    /// Examples per step.
    pub batch_size: u32,
    /// SPSA directions per step.
    pub directions: u32,
    /// Steps between evaluations (early stopping after 6 without improvement).
    pub eval_every: u64,
    /// Cut texts longer than the tokenizer's maximum length instead of refusing them.
    pub truncate: bool,
}

/// Where a finetuning run stands after [`elx_finetune_fit`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ElxFitReport {
    /// Steps taken in total.
    pub steps: u64,
    /// Forward passes in total (training and evaluation).
    pub forward_passes: u64,
    /// Best monitored metric so far (validation loss, else mean training loss); NaN before
    /// the first evaluation.
    pub best_metric: f64,
    /// Step at which it was measured.
    pub best_step: u64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether the run is over (max_steps reached or stopped early): the best parameters
    /// are then in place. Otherwise it is paused with its current parameters.
    pub finished: bool,
}

/// A base model patched for one bound bundle on one engine, its loaded tasks and its
/// tokenizer. Thread-safe (see the header's introduction). Free with [`elx_runtime_free`].
pub struct ElxRuntime {
    engine: Engine,
    subspace_id: String,
    text: Option<TextEncoder>,
    /// Why text inputs are refused when there is no tokenizer.
    no_text: String,
    pooling: Pooling,
    output_index: usize,
}

/// The outputs of one run: the raw graph outputs, the pooled rows and, for rows whose task
/// has a head, the prediction. Free with [`elx_result_free`].
pub struct ElxResult {
    outputs: Vec<OutputTensor>,
    pooled: Result<Vec<Vec<f32>>, Fail>,
    /// Per row: the task's name and, when it has a head, its prediction.
    rows: Vec<RowHead>,
}

struct RowHead {
    task: String,
    prediction: Option<Result<(Prediction, Vec<String>), Fail>>,
}

/// A finetuning run for a new task on a runtime's engine. Use it only on the thread that
/// created it. Free with [`elx_finetune_free`].
pub struct ElxFinetune {
    ft: Finetuner<CachedFeatures<SequenceModel<HiddenState>>>,
    classes: Vec<String>,
    subspace_id: String,
    val: Option<Split>,
}

// The thread rules of the header rest on these: a runtime is shared, a result may move
// between threads. A finetune run may not (the finetuner's objective may hold a loss
// closure that is not `Send`), so it stays on the thread that created it.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<ElxRuntime>();
    movable::<ElxResult>();
};

// ---------------------------------------------------------------------------------------------
// Errors and the boundary.

/// A failure on its way to C: status and message.
#[derive(Clone, Debug)]
struct Fail {
    status: ElxStatus,
    message: String,
}

impl Fail {
    fn new(status: ElxStatus, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Io { .. } => ElxStatus::Io,
            Error::BadInput { .. } => ElxStatus::BadInput,
            Error::SubspaceMismatch { .. } => ElxStatus::SubspaceMismatch,
            Error::Usage(_) => ElxStatus::Usage,
            Error::Numeric(_) => ElxStatus::Numeric,
            Error::Engine(_) => ElxStatus::Engine,
            _ => ElxStatus::Internal,
        };
        Fail::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message never holds NUL in practice; if one did, cut it there rather than lose it.
    let text = message.split('\0').next().unwrap_or("");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f` at the boundary: its error or panic becomes a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> ElxStatus {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Fail::new(
            ElxStatus::Panic,
            format!("internal: panic inside eigenlorax: {what}"),
        ))
    });
    match outcome {
        Ok(()) => {
            set_last_error("");
            ElxStatus::Ok
        }
        Err(f) => {
            set_last_error(&f.message);
            f.status
        }
    }
}

fn null(what: &str) -> Fail {
    Fail::new(
        ElxStatus::NullPointer,
        format!("`{what}` is a null pointer"),
    )
}

fn invalid(message: impl Into<String>) -> Fail {
    Fail::new(ElxStatus::InvalidArgument, message)
}

// ---------------------------------------------------------------------------------------------
// Borrowing from C.

/// A borrowed NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for `'a`.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("`{what}` is not valid UTF-8")))
}

/// `n` borrowed values at `p` (`p` may be null only when `n` is 0).
///
/// # Safety
/// `p` is null or points to `n` initialized values alive for `'a`.
unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], Fail> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(what));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(invalid(format!("`{what}`: {n} elements is too many")));
    }
    // SAFETY: non-null, n values per the contract, size checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Writes `value` to the out-pointer `p`.
///
/// # Safety
/// `p` is null or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, value: T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and writable per the contract.
    unsafe { p.write(value) };
    Ok(())
}

/// Copies `src` into the caller's buffer (`cap` elements) under the size-query convention.
///
/// # Safety
/// `dst` is null or valid for `cap` writes; `needed` is null or writable.
unsafe fn copy_out<T: Copy>(
    src: &[T],
    dst: *mut T,
    cap: usize,
    needed: *mut usize,
    what: &str,
) -> Result<(), Fail> {
    if !needed.is_null() {
        // SAFETY: non-null and writable per the contract.
        unsafe { needed.write(src.len()) };
    }
    if dst.is_null() {
        return if cap == 0 { Ok(()) } else { Err(null(what)) };
    }
    if cap < src.len() {
        return Err(Fail::new(
            ElxStatus::BufferTooSmall,
            format!("`{what}` holds {cap} elements; {} are needed", src.len()),
        ));
    }
    // SAFETY: dst holds at least src.len() elements (checked) and does not overlap src,
    // which is ours.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    Ok(())
}

/// Copies `s` and a terminating NUL (needed counts the NUL).
///
/// # Safety
/// As [`copy_out`].
unsafe fn copy_str(
    s: &str,
    dst: *mut c_char,
    cap: usize,
    needed: *mut usize,
    what: &str,
) -> Result<(), Fail> {
    let mut bytes: Vec<c_char> = s.bytes().map(|b| b as c_char).collect();
    bytes.push(0);
    // SAFETY: forwarded contract.
    unsafe { copy_out(&bytes, dst, cap, needed, what) }
}

/// The runtime behind a handle.
///
/// # Safety
/// `rt` is null or a live handle from [`elx_runtime_open`].
unsafe fn runtime<'a>(rt: *const ElxRuntime) -> Result<&'a ElxRuntime, Fail> {
    // SAFETY: per the contract.
    unsafe { rt.as_ref() }.ok_or_else(|| null("runtime"))
}

fn task_id(id: u32) -> TaskId {
    TaskId(id as usize)
}

fn id_out(id: TaskId) -> Result<u32, Fail> {
    u32::try_from(id.0).map_err(|_| Fail::new(ElxStatus::Usage, "more than 2^32 tasks loaded"))
}

// ---------------------------------------------------------------------------------------------
// Versions and errors.

/// The library version ("0.1.0"), a static string.
#[unsafe(no_mangle)]
pub extern "C" fn elx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version of the library (`ELX_ABI_VERSION` of the header it was built with).
#[unsafe(no_mangle)]
pub extern "C" fn elx_abi_version() -> u32 {
    ELX_ABI_VERSION
}

/// The message of the last failed call on this thread ("" after a success), the CLI's text
/// for the same error. Owned by the library; valid until the next call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn elx_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

// ---------------------------------------------------------------------------------------------
// Runtime.

/// Fills `options` with the defaults: tract, CPU, tokenizer.json next to the model, its
/// truncation length, mean pooling of the first output.
///
/// # Safety
/// `options` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_open_options_default(options: *mut ElxOpenOptions) -> ElxStatus {
    guard(|| {
        let d = ElxOpenOptions {
            backend: ElxBackend::Tract as u32,
            provider: ElxProvider::Cpu as u32,
            tokenizer_path: std::ptr::null(),
            max_length: 0,
            pooling: ElxPooling::Mean as u32,
            output_index: 0,
        };
        // SAFETY: per the contract.
        unsafe { put(options, d, "options") }
    })
}

fn backend_of(o: &ElxOpenOptions) -> Result<Backend, Fail> {
    let ep = match o.provider {
        0 => ExecutionProvider::Cpu,
        1 => ExecutionProvider::Cuda,
        2 => ExecutionProvider::TensorRt,
        p => {
            return Err(invalid(format!(
                "unknown provider {p} (expected 0, 1 or 2)"
            )));
        }
    };
    match (o.backend, ep) {
        (0, ExecutionProvider::Cpu) => Ok(Backend::Tract),
        (0, _) => Err(invalid(
            "the CUDA and TensorRT providers need the ONNX Runtime backend (ELX_BACKEND_ORT)",
        )),
        (1, ep) => Ok(Backend::Ort(ep)),
        (b, _) => Err(invalid(format!("unknown backend {b} (expected 0 or 1)"))),
    }
}

fn pooling_of(p: u32) -> Result<Pooling, Fail> {
    match p {
        0 => Ok(Pooling::Mean),
        1 => Ok(Pooling::Cls),
        2 => Ok(Pooling::None),
        p => Err(invalid(format!("unknown pooling {p} (expected 0, 1 or 2)"))),
    }
}

/// Opens a runtime: reads the bound bundle, checks the base model against its binding,
/// patches it once and prepares the engine (`options` NULL: the defaults). On success
/// `*out` owns a new runtime; free it with [`elx_runtime_free`].
///
/// # Safety
/// `model_path` and `bundle_path` are NUL-terminated strings; `options` is null or valid;
/// `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_runtime_open(
    model_path: *const c_char,
    bundle_path: *const c_char,
    options: *const ElxOpenOptions,
    out: *mut *mut ElxRuntime,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (model, bundle) = unsafe {
            (
                PathBuf::from(text(model_path, "model_path")?),
                PathBuf::from(text(bundle_path, "bundle_path")?),
            )
        };
        let mut o = ElxOpenOptions {
            backend: 0,
            provider: 0,
            tokenizer_path: std::ptr::null(),
            max_length: 0,
            pooling: 0,
            output_index: 0,
        };
        // SAFETY: per the contract.
        if let Some(given) = unsafe { options.as_ref() } {
            o = *given;
        }
        let backend = backend_of(&o)?;
        let pooling = pooling_of(o.pooling)?;
        let tokenizer = if o.tokenizer_path.is_null() {
            find_tokenizer(&model, None)
        } else {
            // SAFETY: per the contract.
            Some(PathBuf::from(unsafe {
                text(o.tokenizer_path, "options.tokenizer_path")?
            }))
        };
        let max_length = (o.max_length > 0).then_some(o.max_length);
        let text_encoder = match &tokenizer {
            Some(p) => Some(TextEncoder::from_file(p, max_length)?),
            None => None,
        };
        let bundle = Bundle::read(&bundle)?;
        let engine = Engine::load(&model, &bundle, backend)?;
        let outputs = engine.output_names().len();
        if o.output_index >= outputs {
            return Err(invalid(format!(
                "output_index {} but the model has {outputs} outputs",
                o.output_index
            )));
        }
        let no_text = format!(
            "{}: expected a HF tokenizer.json for text inputs (give options.tokenizer_path), found no file",
            tokenizer_beside(&model).display()
        );
        let rt = Box::new(ElxRuntime {
            engine,
            subspace_id: bundle.manifest.subspace_id.clone(),
            text: text_encoder,
            no_text,
            pooling,
            output_index: o.output_index,
        });
        // SAFETY: checked non-null above; writable per the contract.
        unsafe { out.write(Box::into_raw(rt)) };
        Ok(())
    })
}

/// Frees a runtime (NULL: nothing). No other call on it may be running or follow; results
/// and finetune handles made from it stay valid.
///
/// # Safety
/// `rt` is null or a handle from [`elx_runtime_open`] not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_runtime_free(rt: *mut ElxRuntime) {
    if !rt.is_null() {
        // SAFETY: per the contract, we own it from here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(rt) })));
    }
}

/// The engine actually running (after any fallback to the CPU): an `ElxBackend` and an
/// `ElxProvider` value (`ELX_PROVIDER_CPU` for tract). Either out-pointer may be NULL.
///
/// # Safety
/// `rt` is a live runtime; the out-pointers are null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_runtime_backend(
    rt: *const ElxRuntime,
    backend: *mut u32,
    provider: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (b, p) = match rt.engine.backend() {
            Backend::Tract => (ElxBackend::Tract, ElxProvider::Cpu),
            Backend::Ort(ExecutionProvider::Cpu) => (ElxBackend::Ort, ElxProvider::Cpu),
            Backend::Ort(ExecutionProvider::Cuda) => (ElxBackend::Ort, ElxProvider::Cuda),
            Backend::Ort(ExecutionProvider::TensorRt) => (ElxBackend::Ort, ElxProvider::TensorRt),
        };
        if !backend.is_null() {
            // SAFETY: non-null and writable per the contract.
            unsafe { backend.write(b as u32) };
        }
        if !provider.is_null() {
            // SAFETY: as above.
            unsafe { provider.write(p as u32) };
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tasks.

/// Loads a task file (.elxc), checked against the runtime's bundle, and writes its id to
/// `*task`. Ids are never reused. Safe while other threads run.
///
/// # Safety
/// `rt` is a live runtime; `path` a NUL-terminated string; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_load(
    rt: *const ElxRuntime,
    path: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (rt, path) = unsafe { (runtime(rt)?, text(path, "path")?) };
        if task.is_null() {
            return Err(null("task"));
        }
        let id = id_out(rt.engine.load_task(Path::new(path))?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Loads a task from the bytes of a .elxc file (copied; `bytes` is only borrowed). `name`
/// (may be NULL) stands for the file in error messages.
///
/// # Safety
/// `rt` is a live runtime; `bytes` holds `len` bytes; `name` is null or a NUL-terminated
/// string; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_load_bytes(
    rt: *const ElxRuntime,
    bytes: *const u8,
    len: usize,
    name: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (rt, data) = unsafe { (runtime(rt)?, slice(bytes, len, "bytes")?) };
        let name = if name.is_null() {
            "<task bytes>"
        } else {
            // SAFETY: per the contract.
            unsafe { text(name, "name")? }
        };
        if task.is_null() {
            return Err(null("task"));
        }
        let id = id_out(rt.engine.load_task_bytes(Path::new(name), data.to_vec())?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Unloads a task. Runs already using it finish with it; later calls naming it fail with
/// `ELX_STATUS_USAGE`.
///
/// # Safety
/// `rt` is a live runtime.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_unload(rt: *const ElxRuntime, task: u32) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        rt.engine.unload_task(task_id(task))?;
        Ok(())
    })
}

/// The ids of the loaded tasks in load order, into `ids` (`cap` entries); `*needed` gets
/// their number (size-query convention).
///
/// # Safety
/// `rt` is a live runtime; `ids` is null or holds `cap` entries; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_list(
    rt: *const ElxRuntime,
    ids: *mut u32,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let list: Vec<u32> = rt
            .engine
            .task_ids()
            .into_iter()
            .map(id_out)
            .collect::<Result<_, _>>()?;
        // SAFETY: per the contract.
        unsafe { copy_out(&list, ids, cap, needed, "ids") }
    })
}

/// A task's name (from its file), NUL-terminated, into `buf` (`cap` bytes); `*needed` gets
/// its size with the NUL.
///
/// # Safety
/// `rt` is a live runtime; `buf` is null or holds `cap` bytes; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_name(
    rt: *const ElxRuntime,
    task: u32,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (name, _) = rt.engine.task_info(task_id(task))?;
        // SAFETY: per the contract.
        unsafe { copy_str(&name, buf, cap, needed, "buf") }
    })
}

/// The number of classes of a task's head (0 when it has none).
///
/// # Safety
/// `rt` is a live runtime; `classes` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_classes(
    rt: *const ElxRuntime,
    task: u32,
    classes: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (_, head) = rt.engine.task_info(task_id(task))?;
        // SAFETY: per the contract.
        unsafe { put(classes, head.map_or(0, |h| h.labels.len()), "classes") }
    })
}

/// The label of class `class` of a task's head, NUL-terminated, into `buf`.
///
/// # Safety
/// As [`elx_task_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_task_label(
    rt: *const ElxRuntime,
    task: u32,
    class: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let (name, head) = rt.engine.task_info(task_id(task))?;
        let head = head.ok_or_else(|| no_head(&name))?;
        let label = head.labels.get(class).ok_or_else(|| {
            invalid(format!(
                "class {class} but task `{name}` has {} classes",
                head.labels.len()
            ))
        })?;
        // SAFETY: per the contract.
        unsafe { copy_str(label, buf, cap, needed, "buf") }
    })
}

fn no_head(task: &str) -> Fail {
    Fail::new(
        ElxStatus::NoHead,
        format!("task `{task}` has no head (its file holds coefficients only)"),
    )
}

// ---------------------------------------------------------------------------------------------
// Running.

/// Which task each row runs with.
enum Rows<'a> {
    /// Every row with one task.
    One(u32),
    /// Row i with the i-th task.
    Each(&'a [u32]),
}

/// Runs `batch` and gathers the outputs, pooled rows and predictions.
fn run_batch(
    rt: &ElxRuntime,
    rows: Rows<'_>,
    batch: &eigenlorax::serve::input::Batch,
) -> Result<ElxResult, Fail> {
    let ids: Vec<TaskId> = match rows {
        Rows::One(t) => vec![task_id(t); batch.rows],
        Rows::Each(ts) => {
            if ts.len() != batch.rows {
                return Err(invalid(format!(
                    "a mixed batch pairs row i with task i: {} rows but {} tasks",
                    batch.rows,
                    ts.len()
                )));
            }
            ts.iter().map(|&t| task_id(t)).collect()
        }
    };
    // Heads first: a task unloaded from now on fails the run itself.
    let mut infos: Vec<(TaskId, String, Option<Head>)> = Vec::new();
    for &id in &ids {
        if !infos.iter().any(|(i, _, _)| *i == id) {
            let (name, head) = rt.engine.task_info(id)?;
            infos.push((id, name, head));
        }
    }
    let outputs = match rows {
        Rows::One(_) => rt.engine.run(batch, ids[0])?,
        Rows::Each(_) => rt.engine.run_mixed(batch, &ids)?,
    };
    let pooled = outputs
        .get(rt.output_index)
        .ok_or_else(|| Fail::new(ElxStatus::Internal, "the run returned too few outputs"))
        .and_then(|o| {
            pool(&o.data, &o.shape, batch.mask.as_deref(), rt.pooling).map_err(Fail::from)
        });
    let mut heads = Vec::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        let (_, name, head) = infos
            .iter()
            .find(|(i, _, _)| i == id)
            .ok_or_else(|| Fail::new(ElxStatus::Internal, "a row's task went missing"))?;
        let prediction = head.as_ref().map(|h| match &pooled {
            Ok(p) => p
                .get(row)
                .ok_or_else(|| Fail::new(ElxStatus::Internal, "pooling lost a row"))
                .and_then(|v| apply_head(h, v).map_err(Fail::from))
                .map(|pr| (pr, h.labels.clone())),
            Err(e) => Err(e.clone()),
        });
        heads.push(RowHead {
            task: name.clone(),
            prediction,
        });
    }
    Ok(ElxResult {
        outputs,
        pooled,
        rows: heads,
    })
}

/// Hands a result to C.
///
/// # Safety
/// `out` is writable (checked non-null by the caller).
unsafe fn give(out: *mut *mut ElxResult, r: ElxResult) -> Result<(), Fail> {
    // SAFETY: per the contract.
    unsafe { put(out, Box::into_raw(Box::new(r)), "out") }
}

/// The texts at `texts` as owned strings.
///
/// # Safety
/// `texts` holds `rows` NUL-terminated strings.
unsafe fn texts_of(texts: *const *const c_char, rows: usize) -> Result<Vec<String>, Fail> {
    if rows == 0 {
        return Err(invalid("no text to run (rows is 0)"));
    }
    // SAFETY: per the contract.
    let ptrs = unsafe { slice(texts, rows, "texts")? };
    ptrs.iter()
        .enumerate()
        // SAFETY: per the contract.
        .map(|(i, &p)| unsafe { text(p, &format!("texts[{i}]")) }.map(str::to_string))
        .collect()
}

fn text_batch(rt: &ElxRuntime, texts: &[String]) -> Result<eigenlorax::serve::input::Batch, Fail> {
    let enc = rt
        .text
        .as_ref()
        .ok_or_else(|| Fail::new(ElxStatus::Usage, rt.no_text.clone()))?;
    Ok(enc.encode(texts, rt.engine.specs()?)?)
}

/// Runs `rows` texts through the tokenizer and the model with task `task`. On success
/// `*out` owns a new result; free it with [`elx_result_free`].
///
/// # Safety
/// `rt` is a live runtime; `texts` holds `rows` NUL-terminated UTF-8 strings; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_text(
    rt: *const ElxRuntime,
    task: u32,
    texts: *const *const c_char,
    rows: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, texts) = unsafe { (runtime(rt)?, texts_of(texts, rows)?) };
        let batch = text_batch(rt, &texts)?;
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_text`] as a mixed batch: row i runs with `tasks[i]`, all in one pass.
///
/// # Safety
/// As [`elx_run_text`]; `tasks` holds `rows` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_text_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    texts: *const *const c_char,
    rows: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, texts, tasks) = unsafe {
            (
                runtime(rt)?,
                texts_of(texts, rows)?,
                slice(tasks, rows, "tasks")?,
            )
        };
        let batch = text_batch(rt, &texts)?;
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// The token batch for [`elx_run_ids`]: ids [rows x seq] and the mask (all ones when NULL);
/// token types are filled with zeros when the model takes them.
///
/// # Safety
/// `ids` (and `mask` when non-null) hold `rows * seq` values.
unsafe fn ids_batch(
    rt: &ElxRuntime,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
) -> Result<eigenlorax::serve::input::Batch, Fail> {
    if rows == 0 || seq == 0 {
        return Err(invalid(format!(
            "expected at least one row and one token, found rows {rows}, seq {seq}"
        )));
    }
    let n = rows
        .checked_mul(seq)
        .ok_or_else(|| invalid(format!("rows {rows} x seq {seq} overflows")))?;
    // SAFETY: per the contract.
    let ids = unsafe { slice(ids, n, "ids")? };
    let mut given = vec![InputTensor {
        name: "input_ids".into(),
        shape: vec![rows, seq],
        data: TensorData::I64(ids.to_vec()),
    }];
    if !mask.is_null() {
        // SAFETY: per the contract.
        let mask = unsafe { slice(mask, n, "mask")? };
        if let Some(i) = mask.iter().position(|&m| m != 0 && m != 1) {
            return Err(invalid(format!(
                "mask[{i}] is {}; expected 0 or 1",
                mask[i]
            )));
        }
        given.push(InputTensor {
            name: "attention_mask".into(),
            shape: vec![rows, seq],
            data: TensorData::I64(mask.to_vec()),
        });
    }
    Ok(assemble(
        Path::new("<token ids>"),
        given,
        rt.engine.specs()?,
    )?)
}

/// Runs token ids [rows x seq] (row-major) with an attention mask of the same shape (NULL:
/// all ones) with task `task`.
///
/// # Safety
/// `rt` is a live runtime; `ids` and `mask` (when non-null) hold `rows * seq` values; `out`
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_ids(
    rt: *const ElxRuntime,
    task: u32,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        // SAFETY: per the contract.
        let batch = unsafe { ids_batch(rt, ids, mask, rows, seq)? };
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_ids`] as a mixed batch: row i runs with `tasks[i]`.
///
/// # Safety
/// As [`elx_run_ids`]; `tasks` holds `rows` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_ids_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    ids: *const i64,
    mask: *const i64,
    rows: usize,
    seq: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, tasks) = unsafe { (runtime(rt)?, slice(tasks, rows, "tasks")?) };
        // SAFETY: per the contract.
        let batch = unsafe { ids_batch(rt, ids, mask, rows, seq)? };
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// The raw tensors as a batch for the model (missing masks and token types filled).
///
/// # Safety
/// `tensors` holds `n` valid [`ElxTensor`]s.
unsafe fn tensor_batch(
    rt: &ElxRuntime,
    tensors: *const ElxTensor,
    n: usize,
) -> Result<eigenlorax::serve::input::Batch, Fail> {
    // SAFETY: per the contract.
    let ts = unsafe { slice(tensors, n, "tensors")? };
    if ts.is_empty() {
        return Err(invalid("no input tensor (n is 0)"));
    }
    let mut given = Vec::with_capacity(ts.len());
    for (i, t) in ts.iter().enumerate() {
        // SAFETY: per the contract.
        let name = unsafe { text(t.name, &format!("tensors[{i}].name"))? };
        // SAFETY: per the contract.
        let shape = unsafe { slice(t.shape, t.ndim, &format!("tensors[{i}].shape"))? };
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let width = match t.dtype {
            0 => 4,
            1 => 8,
            d => {
                return Err(invalid(format!(
                    "tensor `{name}`: unknown dtype {d} (expected 0 = F32 or 1 = I64)"
                )));
            }
        };
        let want = count
            .checked_mul(width)
            .ok_or_else(|| invalid(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if want != t.data_bytes {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} needs {want} bytes, data_bytes is {}",
                t.data_bytes
            )));
        }
        // Bytes, not typed values: the caller's data need not be aligned.
        // SAFETY: per the contract, data holds data_bytes bytes.
        let bytes = unsafe { slice(t.data.cast::<u8>(), want, &format!("tensors[{i}].data"))? };
        let data = if width == 4 {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(invalid(format!(
                    "tensor `{name}`: expected finite values, found {} at {j}",
                    v[j]
                )));
            }
            TensorData::F32(v)
        } else {
            TensorData::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
        };
        given.push(InputTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        });
    }
    Ok(assemble(
        Path::new("<input tensors>"),
        given,
        rt.engine.specs()?,
    )?)
}

/// Runs raw input tensors (one per model input, by name; a missing `attention_mask` or
/// `token_type_ids` is filled with ones / zeros) with task `task`.
///
/// # Safety
/// `rt` is a live runtime; `tensors` holds `n` tensors whose pointers are valid as
/// documented on [`ElxTensor`]; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_tensors(
    rt: *const ElxRuntime,
    task: u32,
    tensors: *const ElxTensor,
    n: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        // SAFETY: per the contract.
        let batch = unsafe { tensor_batch(rt, tensors, n)? };
        let r = run_batch(rt, Rows::One(task), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// [`elx_run_tensors`] as a mixed batch: row i (of the leading axis) runs with `tasks[i]`;
/// `n_tasks` must equal the number of rows.
///
/// # Safety
/// As [`elx_run_tensors`]; `tasks` holds `n_tasks` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_run_tensors_mixed(
    rt: *const ElxRuntime,
    tasks: *const u32,
    n_tasks: usize,
    tensors: *const ElxTensor,
    n: usize,
    out: *mut *mut ElxResult,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let (rt, tasks) = unsafe { (runtime(rt)?, slice(tasks, n_tasks, "tasks")?) };
        // SAFETY: per the contract.
        let batch = unsafe { tensor_batch(rt, tensors, n)? };
        let r = run_batch(rt, Rows::Each(tasks), &batch)?;
        // SAFETY: checked above.
        unsafe { give(out, r) }
    })
}

/// Frees a result (NULL: nothing).
///
/// # Safety
/// `result` is null or a result not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_free(result: *mut ElxResult) {
    if !result.is_null() {
        // SAFETY: per the contract, we own it from here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(result) })));
    }
}

/// The result behind a handle.
///
/// # Safety
/// `r` is null or a live result.
unsafe fn result_ref<'a>(r: *const ElxResult) -> Result<&'a ElxResult, Fail> {
    // SAFETY: per the contract.
    unsafe { r.as_ref() }.ok_or_else(|| null("result"))
}

/// The number of rows of a result.
///
/// # Safety
/// `result` is a live result; `rows` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_rows(result: *const ElxResult, rows: *mut usize) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        // SAFETY: per the contract.
        unsafe { put(rows, r.rows.len(), "rows") }
    })
}

/// The number of graph outputs of a result.
///
/// # Safety
/// `result` is a live result; `count` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_count(
    result: *const ElxResult,
    count: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        // SAFETY: per the contract.
        unsafe { put(count, r.outputs.len(), "count") }
    })
}

fn output(r: &ElxResult, i: usize) -> Result<&OutputTensor, Fail> {
    r.outputs.get(i).ok_or_else(|| {
        invalid(format!(
            "output {i} but the model has {} outputs",
            r.outputs.len()
        ))
    })
}

/// The name of graph output `index`, NUL-terminated, into `buf`.
///
/// # Safety
/// `result` is a live result; `buf` null or `cap` bytes; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_name(
    result: *const ElxResult,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_str(&o.name, buf, cap, needed, "buf") }
    })
}

/// The shape of graph output `index` into `dims` (`cap` entries); `*needed` gets its rank.
///
/// # Safety
/// `result` is a live result; `dims` null or `cap` entries; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_shape(
    result: *const ElxResult,
    index: usize,
    dims: *mut usize,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&o.shape, dims, cap, needed, "dims") }
    })
}

/// The values of graph output `index` (f32, row-major) into `values` (`cap` floats).
///
/// # Safety
/// `result` is a live result; `values` null or `cap` floats; `needed` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_output_data(
    result: *const ElxResult,
    index: usize,
    values: *mut f32,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let o = output(unsafe { result_ref(result)? }, index)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&o.data, values, cap, needed, "values") }
    })
}

/// The pooled rows [rows x features] (f32, row-major) into `values`; `*features` (when
/// not NULL) gets the features per row and `*needed` rows x features.
///
/// # Safety
/// `result` is a live result; `values` null or `cap` floats; `features` and `needed` null
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_pooled(
    result: *const ElxResult,
    values: *mut f32,
    cap: usize,
    features: *mut usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let r = unsafe { result_ref(result)? };
        let rows = r.pooled.as_ref().map_err(Clone::clone)?;
        let d = rows.first().map_or(0, Vec::len);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        if !features.is_null() {
            // SAFETY: per the contract.
            unsafe { features.write(d) };
        }
        // SAFETY: per the contract.
        unsafe { copy_out(&flat, values, cap, needed, "values") }
    })
}

fn prediction(r: &ElxResult, row: usize) -> Result<&(Prediction, Vec<String>), Fail> {
    let rh = r.rows.get(row).ok_or_else(|| {
        invalid(format!(
            "row {row} but the result has {} rows",
            r.rows.len()
        ))
    })?;
    match &rh.prediction {
        None => Err(no_head(&rh.task)),
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => Err(e.clone()),
    }
}

/// The head's answer for row `row`: the class index into `*class` (when not NULL) and the
/// softmax probabilities into `probs` (`cap` doubles; `*needed` gets the class count).
/// `ELX_STATUS_NO_HEAD` when the row's task has no head.
///
/// # Safety
/// `result` is a live result; `probs` null or `cap` doubles; `class`, `needed` null or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_prediction(
    result: *const ElxResult,
    row: usize,
    class: *mut usize,
    probs: *mut f64,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (p, _) = prediction(unsafe { result_ref(result)? }, row)?;
        // SAFETY: per the contract.
        unsafe { copy_out(&p.probs, probs, cap, needed, "probs")? };
        if !class.is_null() {
            // SAFETY: per the contract.
            unsafe { class.write(p.class) };
        }
        Ok(())
    })
}

/// The label of the predicted class of row `row`, NUL-terminated, into `buf`.
///
/// # Safety
/// As [`elx_result_output_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_label(
    result: *const ElxResult,
    row: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (p, _) = prediction(unsafe { result_ref(result)? }, row)?;
        // SAFETY: per the contract.
        unsafe { copy_str(&p.label, buf, cap, needed, "buf") }
    })
}

/// The label of class `class` of row `row`'s head (for printing all probabilities).
///
/// # Safety
/// As [`elx_result_output_name`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_result_class_label(
    result: *const ElxResult,
    row: usize,
    class: usize,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (_, labels) = prediction(unsafe { result_ref(result)? }, row)?;
        let label = labels.get(class).ok_or_else(|| {
            invalid(format!(
                "class {class} but the head has {} classes",
                labels.len()
            ))
        })?;
        // SAFETY: per the contract.
        unsafe { copy_str(label, buf, cap, needed, "buf") }
    })
}

// ---------------------------------------------------------------------------------------------
// Personalization: on-device finetuning of a new task.

/// Fills `options` with the defaults of `elx finetune`.
///
/// # Safety
/// `options` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_options_default(
    options: *mut ElxFinetuneOptions,
) -> ElxStatus {
    guard(|| {
        let d = recipe::Defaults::EXACT;
        let o = ElxFinetuneOptions {
            rank: 0,
            max_steps: d.steps,
            seed: 0,
            lr: FinetuneConfig::default().lr,
            head_lr: d.head_lr,
            batch_size: u32::try_from(d.batch_size).unwrap_or(u32::MAX),
            directions: u32::try_from(d.directions).unwrap_or(u32::MAX),
            eval_every: d.eval_every,
            truncate: false,
        };
        // SAFETY: per the contract.
        unsafe { put(options, o, "options") }
    })
}

/// Labelled texts as examples (tokenized, never padded) and their raw labels.
///
/// # Safety
/// `texts` and `labels` hold `n` NUL-terminated strings each.
unsafe fn labelled(
    enc: &TextEncoder,
    texts: *const *const c_char,
    labels: *const *const c_char,
    n: usize,
    what: &str,
    truncate: bool,
) -> Result<RawSet, Fail> {
    // SAFETY: per the contract.
    let (ts, ls) = unsafe {
        (
            slice(texts, n, &format!("{what}_texts"))?,
            slice(labels, n, &format!("{what}_labels"))?,
        )
    };
    let mut set = RawSet::default();
    for (i, (&t, &l)) in ts.iter().zip(ls).enumerate() {
        // SAFETY: per the contract.
        let (t, l) = unsafe {
            (
                text(t, &format!("{what}_texts[{i}]"))?,
                text(l, &format!("{what}_labels[{i}]"))?,
            )
        };
        if l.is_empty() {
            return Err(invalid(format!("{what}_labels[{i}] is empty")));
        }
        let (ids, cut) = enc.ids_truncated(t)?;
        if cut && !truncate {
            return Err(invalid(format!(
                "{what}_texts[{i}] has more than the {} tokens the model accepts; set options.truncate to cut it",
                enc.max_length()
            )));
        }
        set.truncated += usize::from(cut);
        set.examples.push(Example {
            attention_mask: vec![1; ids.len()],
            input_ids: ids.into_iter().map(i64::from).collect(),
        });
        set.labels.push(l.to_string());
        set.lines.push(i + 1);
    }
    Ok(set)
}

/// Sets up finetuning of a new task on the runtime's engine from labelled texts (`n_train`
/// training pairs; `n_val` validation pairs, which may be 0 with NULL arrays), with
/// `options` (NULL: the defaults). The classes are the distinct training labels, sorted.
/// The run is not started: call [`elx_finetune_fit`]. Free with [`elx_finetune_free`].
///
/// # Safety
/// `rt` is a live runtime; the text and label arrays hold their counts of NUL-terminated
/// strings; `options` null or valid; `out` writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn elx_finetune_new_text(
    rt: *const ElxRuntime,
    train_texts: *const *const c_char,
    train_labels: *const *const c_char,
    n_train: usize,
    val_texts: *const *const c_char,
    val_labels: *const *const c_char,
    n_val: usize,
    options: *const ElxFinetuneOptions,
    out: *mut *mut ElxFinetune,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: per the contract.
        let rt = unsafe { runtime(rt)? };
        let mut o = ElxFinetuneOptions {
            rank: 0,
            max_steps: 0,
            seed: 0,
            lr: 0.0,
            head_lr: 0.0,
            batch_size: 0,
            directions: 0,
            eval_every: 0,
            truncate: false,
        };
        // SAFETY: the pointer is valid for a write.
        unsafe { elx_finetune_options_default(&mut o) };
        // SAFETY: per the contract.
        if let Some(given) = unsafe { options.as_ref() } {
            o = *given;
        }
        let enc = rt
            .text
            .as_ref()
            .ok_or_else(|| Fail::new(ElxStatus::Usage, rt.no_text.clone()))?;
        // SAFETY: per the contract.
        let train =
            unsafe { labelled(enc, train_texts, train_labels, n_train, "train", o.truncate)? };
        // SAFETY: per the contract.
        let val = unsafe { labelled(enc, val_texts, val_labels, n_val, "val", o.truncate)? };
        let classes = label_set(&train);
        if classes.len() < 2 {
            return Err(invalid(format!(
                "expected at least 2 distinct training labels to train a classifier, found {classes:?}"
            )));
        }
        let train_labels = class_indices(Path::new("<train labels>"), &train, &classes)?;
        let n_train = train.examples.len();
        let mut examples = train.examples;
        let val_split = if val.examples.is_empty() {
            None
        } else {
            let labels = class_indices(Path::new("<val labels>"), &val, &classes)?;
            let ids = (examples.len()..examples.len() + val.examples.len()).collect();
            examples.extend(val.examples);
            Some(Split { ids, labels })
        };
        // Exact gradients, as `elx finetune` by default (SPSA where the graph has ops
        // without a gradient rule).
        let model = SequenceModel::for_training(
            &rt.engine,
            examples,
            i64::from(enc.pad_id()),
            enc.max_length(),
            eigenlorax::finetune::GradMode::Exact,
        )?;
        let defaults = FinetuneConfig::default();
        let rank = if o.rank == 0 {
            rt.engine.min_rank()
        } else {
            o.rank as usize
        };
        let cfg = FinetuneConfig {
            rank,
            seed: o.seed,
            lr: o.lr,
            head_lr: o.head_lr,
            directions: o.directions as usize,
            batch_size: o.batch_size as usize,
            max_steps: o.max_steps,
            eval_every: o.eval_every,
            ..defaults
        };
        let train_split = Split {
            ids: (0..n_train).collect(),
            labels: train_labels,
        };
        // As `elx finetune` without a head warm-up: features cached while the coefficients
        // stay put, head and coefficients trained together.
        let ft = recipe::joint(
            CachedFeatures::new(model),
            cfg,
            Objective::Classify {
                classes: classes.len(),
            },
            train_split,
            val_split.clone(),
            None,
        )?;
        let handle = Box::new(ElxFinetune {
            ft,
            classes,
            subspace_id: rt.subspace_id.clone(),
            val: val_split,
        });
        // SAFETY: checked above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// The finetune run behind a handle.
///
/// # Safety
/// `ft` is null or a live handle.
unsafe fn finetune<'a>(ft: *mut ElxFinetune) -> Result<&'a mut ElxFinetune, Fail> {
    // SAFETY: per the contract.
    unsafe { ft.as_mut() }.ok_or_else(|| null("finetune"))
}

/// Trains for up to `steps` more steps (fewer when the run ends: max_steps or early
/// stopping), then pauses. Slices add up to the uninterrupted run. `report` may be NULL.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `report` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_fit(
    ft: *mut ElxFinetune,
    steps: u64,
    report: *mut ElxFitReport,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { finetune(ft)? };
        let pause_at = h.ft.steps().saturating_add(steps);
        let r = h.ft.fit_until(pause_at, &mut |_| {})?;
        if !report.is_null() {
            let rep = ElxFitReport {
                steps: r.steps,
                forward_passes: r.forward_passes,
                best_metric: r.best_metric,
                best_step: r.best_step,
                stopped_early: r.stopped_early,
                finished: !r.paused,
            };
            // SAFETY: per the contract.
            unsafe { report.write(rep) };
        }
        Ok(())
    })
}

/// The validation loss (mean cross-entropy) and accuracy (either pointer may be NULL) at the
/// current parameters. `ELX_STATUS_USAGE` when no validation texts were given.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `loss`, `accuracy` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_validation_loss(
    ft: *mut ElxFinetune,
    loss: *mut f64,
    accuracy: *mut f64,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { finetune(ft)? };
        let split = h.val.clone().ok_or_else(|| {
            Fail::new(
                ElxStatus::Usage,
                "no validation texts were given to this run",
            )
        })?;
        let e = h.ft.evaluate(&split)?;
        if !loss.is_null() {
            // SAFETY: per the contract.
            unsafe { loss.write(e.loss) };
        }
        if !accuracy.is_null() {
            // SAFETY: per the contract.
            unsafe { accuracy.write(e.accuracy.unwrap_or(f64::NAN)) };
        }
        Ok(())
    })
}

/// Writes the task's .elxc (coefficients and head, labelled with the classes) atomically,
/// named `task_name`.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path`, `task_name` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_save(
    ft: *mut ElxFinetune,
    path: *const c_char,
    task_name: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path, task) = unsafe {
            (
                finetune(ft)?,
                text(path, "path")?,
                text(task_name, "task_name")?,
            )
        };
        h.ft.save(Path::new(path), &h.subspace_id, task, &h.classes)?;
        Ok(())
    })
}

/// Adds the task as trained so far to a runtime (of the same bundle) and writes its id.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `rt` a live runtime; `task_name`
/// NUL-terminated; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_add_task(
    ft: *mut ElxFinetune,
    rt: *const ElxRuntime,
    task_name: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, rt, name) = unsafe { (finetune(ft)?, runtime(rt)?, text(task_name, "task_name")?) };
        if task.is_null() {
            return Err(null("task"));
        }
        let coeffs = h.ft.to_coeff_file(&h.subspace_id, name, &h.classes)?;
        let id = id_out(rt.engine.insert_task(&coeffs)?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Writes a checkpoint of the run (atomically): [`elx_finetune_resume`] on a run set up
/// with the same texts and options continues from it exactly.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_save_checkpoint(
    ft: *mut ElxFinetune,
    path: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path) = unsafe { (finetune(ft)?, text(path, "path")?) };
        h.ft.save_checkpoint(Path::new(path))?;
        Ok(())
    })
}

/// Restores a checkpoint written by [`elx_finetune_save_checkpoint`] (or `elx finetune
/// --checkpoint`) into a run set up with the same data and options.
///
/// # Safety
/// `ft` is a live handle, used on the thread that created it; `path` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_resume(
    ft: *mut ElxFinetune,
    path: *const c_char,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (h, path) = unsafe { (finetune(ft)?, text(path, "path")?) };
        h.ft.resume(Path::new(path))?;
        Ok(())
    })
}

/// Frees a finetune handle (NULL: nothing).
///
/// # Safety
/// `ft` is null or a handle not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_finetune_free(ft: *mut ElxFinetune) {
    if !ft.is_null() {
        // SAFETY: per the contract, we own it from here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(ft) })));
    }
}
