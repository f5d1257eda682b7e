//! Opening a runtime: the engine, its options and its handle.

use crate::error::*;
use crate::ffi::*;
use crate::result::*;
use eigenlorax::serve::job::{OutputChoice, RunSpec, Runner};
use eigenlorax::serve::{Backend, ExecutionProvider};
use eigenlorax::task::Pooling;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

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

/// A base model patched for one bound bundle on one engine, its loaded tasks and its
/// tokenizer. Thread-safe (see the header's introduction). Free with [`elx_runtime_free`].
pub struct ElxRuntime {
    /// The run job: engine, tasks, tokenizer, pooling.
    pub(crate) runner: Runner,
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

pub(crate) fn backend_of(o: &ElxOpenOptions) -> Result<Backend, Fail> {
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

pub(crate) fn pooling_of(p: u32) -> Result<Pooling, Fail> {
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
        let tokenizer = if o.tokenizer_path.is_null() {
            None
        } else {
            // SAFETY: per the contract.
            Some(PathBuf::from(unsafe {
                text(o.tokenizer_path, "options.tokenizer_path")?
            }))
        };
        let spec = RunSpec {
            model,
            bundle,
            backend: backend_of(&o)?,
            text_inputs: true,
            tokenizer,
            max_length: (o.max_length > 0).then_some(o.max_length),
            pooling: pooling_of(o.pooling)?,
            output: OutputChoice::Index(o.output_index),
        };
        let runner = Runner::open(&spec)?;
        let outputs = runner.engine().output_names().len();
        if o.output_index >= outputs {
            return Err(invalid(format!(
                "output_index {} but the model has {outputs} outputs",
                o.output_index
            )));
        }
        let rt = Box::new(ElxRuntime { runner });
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
        let (b, p) = match rt.runner.engine().backend() {
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
