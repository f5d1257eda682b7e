//! Generating text with a decoder (a folder written by `elx import-gguf`): one handle per
//! model, tasks loaded into it, tokens delivered to a callback as they are produced.

use crate::error::*;
use crate::ffi::*;
use crate::runtime::*;
use eigenlorax::serve::backend::WeightFormat;
use eigenlorax::serve::generate::{GenerateOptions, SamplingOptions, TextGenerator};
use std::ffi::{CString, c_char, c_void};
use std::path::{Path, PathBuf};

/// A decoder with its tokenizer, its tasks and one plan serving every batch. Thread-safe: any
/// number of threads may generate at once, each request with its own task and cache. Free
/// with [`elx_generator_free`].
pub struct ElxGenerator {
    pub(crate) inner: TextGenerator,
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<ElxGenerator>();
};

/// How [`elx_generate`] picks tokens; fill with [`elx_generate_options_default`] first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ElxGenerateOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// 0: greedy (deterministic); otherwise the softmax temperature.
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens only (0: all).
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Generation stops before this text (NUL-terminated UTF-8, borrowed for the call);
    /// NULL: none.
    pub stop: *const c_char,
}

/// Why [`elx_generate`] stopped (its `finish` output).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxFinish {
    /// The model's end-of-sequence token, or the stop text.
    Stop = 0,
    /// `max_tokens` tokens.
    Length = 1,
    /// The model's context is full.
    Context = 2,
    /// The callback returned non-zero.
    Caller = 3,
}

/// Called by [`elx_generate`] for every token as soon as it is picked: `token` its id (-1
/// for the text held back until the end), `text` the text it made final (NUL-terminated
/// UTF-8, valid during the call; may be empty while a character or a possible stop text is
/// incomplete), `logprob` the model's log-probability of it. Return 0 to go on, anything else
/// to stop.
pub type ElxTokenCallback = Option<
    unsafe extern "C" fn(user: *mut c_void, token: i64, text: *const c_char, logprob: f32) -> i32,
>;

/// Fills `options` with the defaults: 128 tokens, greedy, no stop text.
///
/// # Safety
/// `options` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generate_options_default(
    options: *mut ElxGenerateOptions,
) -> ElxStatus {
    guard(|| {
        let d = ElxGenerateOptions {
            max_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: std::ptr::null(),
        };
        // SAFETY: per the contract.
        unsafe { put(options, d, "options") }
    })
}

/// How a generator stores the base model's weights (the `weights` of
/// [`elx_generator_open_weights`]), as `elx generate --weights`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElxWeights {
    /// As the model file holds them (float32).
    F32 = 0,
    /// Symmetric 4-bit blocks of 32 (tract or ONNX Runtime).
    Q4_0 = 1,
    /// 4-bit blocks of 32 with an offset (ONNX Runtime only): a model imported from a Q4_1
    /// GGUF file multiplies the file's own blocks.
    Q4_1 = 2,
}

/// Opens a decoder: `model_path` is the folder `elx import-gguf` wrote (or its model.onnx,
/// with tokenizer.json beside it); `bundle_path` a bundle bound to it, or NULL for the base
/// model alone. Of `options` (NULL: the defaults) only the backend and provider apply. On
/// success `*out` owns a new generator; free it with [`elx_generator_free`]. The base
/// weights stay float32: [`elx_generator_open_weights`] stores them in 4 bits.
///
/// # Safety
/// `model_path` is a NUL-terminated string; `bundle_path` null or one; `options` null or
/// valid; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generator_open(
    model_path: *const c_char,
    bundle_path: *const c_char,
    options: *const ElxOpenOptions,
    out: *mut *mut ElxGenerator,
) -> ElxStatus {
    // SAFETY: the same contract.
    unsafe { elx_generator_open_weights(model_path, bundle_path, options, 0, out) }
}

/// [`elx_generator_open`] with the base weights stored as `weights` (an [`ElxWeights`]
/// value). Q4_1 needs the ONNX Runtime backend; asking for it on tract is an error that
/// says so.
///
/// # Safety
/// As [`elx_generator_open`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generator_open_weights(
    model_path: *const c_char,
    bundle_path: *const c_char,
    options: *const ElxOpenOptions,
    weights: u32,
    out: *mut *mut ElxGenerator,
) -> ElxStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        let weights = match weights {
            0 => WeightFormat::F32,
            1 => WeightFormat::Q4_0,
            2 => WeightFormat::Q4_1,
            w => {
                return Err(invalid(format!(
                    "unknown weights {w} (expected 0 f32, 1 q4_0 or 2 q4_1)"
                )));
            }
        };
        // SAFETY: per the contract.
        let model = PathBuf::from(unsafe { text(model_path, "model_path")? });
        let bundle = if bundle_path.is_null() {
            None
        } else {
            // SAFETY: per the contract.
            Some(PathBuf::from(unsafe { text(bundle_path, "bundle_path")? }))
        };
        // SAFETY: per the contract.
        let backend = match unsafe { options.as_ref() } {
            Some(o) => backend_of(o)?,
            None => eigenlorax::serve::Backend::Tract,
        };
        let inner = TextGenerator::open_with(&model, bundle.as_deref(), backend, weights)?;
        // SAFETY: checked non-null; writable per the contract.
        unsafe { out.write(Box::into_raw(Box::new(ElxGenerator { inner }))) };
        Ok(())
    })
}

/// Frees a generator (NULL: nothing). No other call on it may be running or follow.
///
/// # Safety
/// `g` is null or a live handle from [`elx_generator_open`], not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generator_free(g: *mut ElxGenerator) {
    if !g.is_null() {
        // SAFETY: per the contract, a handle from Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(g) });
    }
}

/// The generator behind a handle.
///
/// # Safety
/// `g` is null or a live handle.
unsafe fn generator<'a>(g: *const ElxGenerator) -> Result<&'a ElxGenerator, Fail> {
    // SAFETY: per the contract.
    unsafe { g.as_ref() }.ok_or_else(|| null("generator"))
}

/// Loads a task (.elxc, checked against the bundle) into the generator; `*task` gets its id.
///
/// # Safety
/// `g` is a live generator; `path` a NUL-terminated string; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generator_load_task(
    g: *const ElxGenerator,
    path: *const c_char,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (g, path) = unsafe { (generator(g)?, text(path, "path")?) };
        if task.is_null() {
            return Err(null("task"));
        }
        let id = id_out(g.inner.generator().engine().load_task(Path::new(path))?)?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// The id of the task that runs the base model (zero coefficients).
///
/// # Safety
/// `g` is a live generator; `task` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generator_base_task(
    g: *const ElxGenerator,
    task: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let g = unsafe { generator(g)? };
        let id = id_out(g.inner.base_task())?;
        // SAFETY: per the contract.
        unsafe { put(task, id, "task") }
    })
}

/// Generates after `prompt` (UTF-8; special tokens written in it, e.g. a chat template's,
/// become their ids) with `task`, calling `callback` for every token (see
/// [`ElxTokenCallback`]); `options` NULL: the defaults. `*finish` (may be NULL) gets an
/// `ElxFinish` value.
///
/// # Safety
/// `g` is a live generator; `prompt` a NUL-terminated string; `options` null or valid;
/// `callback` a function safe to call with `user`; `finish` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn elx_generate(
    g: *const ElxGenerator,
    task: u32,
    prompt: *const c_char,
    options: *const ElxGenerateOptions,
    callback: ElxTokenCallback,
    user: *mut c_void,
    finish: *mut u32,
) -> ElxStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (g, prompt) = unsafe { (generator(g)?, text(prompt, "prompt")?) };
        let Some(callback) = callback else {
            return Err(null("callback"));
        };
        let mut o = ElxGenerateOptions {
            max_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: std::ptr::null(),
        };
        // SAFETY: per the contract.
        if let Some(given) = unsafe { options.as_ref() } {
            o = *given;
        }
        let stops = if o.stop.is_null() {
            Vec::new()
        } else {
            // SAFETY: per the contract.
            vec![unsafe { text(o.stop, "options.stop")? }.to_string()]
        };
        let options = GenerateOptions {
            max_tokens: o.max_tokens,
            sampling: SamplingOptions {
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                seed: o.seed,
            },
            stop_tokens: Vec::new(),
        };
        let mut stopped_by_caller = false;
        let done = g
            .inner
            .generate(task_id(task), prompt, &options, &stops, &mut |p| {
                // Generated text holds no NUL that tokenizers would not decode; one would cut the
                // C string, so it is refused rather than truncated silently.
                let c = CString::new(p.text).map_err(|_| {
                    eigenlorax::Error::Engine("generated text holds a NUL byte".into())
                })?;
                let (id, lp) = p.token.map_or((-1, 0.0), |t| (i64::from(t.id), t.logprob));
                // SAFETY: per the contract; `c` lives for the call.
                let r = unsafe { callback(user, id, c.as_ptr(), lp) };
                stopped_by_caller = r != 0;
                Ok(r == 0)
            })?;
        let code = if stopped_by_caller {
            ElxFinish::Caller
        } else {
            match done {
                eigenlorax::serve::generate::Finish::Stop => ElxFinish::Stop,
                eigenlorax::serve::generate::Finish::Length => ElxFinish::Length,
                eigenlorax::serve::generate::Finish::Context => ElxFinish::Context,
                eigenlorax::serve::generate::Finish::Caller => ElxFinish::Caller,
            }
        };
        if !finish.is_null() {
            // SAFETY: per the contract.
            unsafe { finish.write(code as u32) };
        }
        Ok(())
    })
}
