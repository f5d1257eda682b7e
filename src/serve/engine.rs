//! [`Engine`]: one backend-neutral type over the inference engines that serve a patched
//! graph (tract, and ONNX Runtime with the `ort` feature).
//!
//! It covers what the CLI, [`crate::eval`] and [`crate::finetune`] ask of an engine: load a
//! base model for a bound bundle, the input declarations, load/insert/select tasks, run a
//! batch with one task or a mixed batch with one task per row, whether inputs should be padded
//! to a few length buckets, and the hidden-state backend the finetuner trains through
//! ([`Engine::hidden_state`]). The choice of engine is a value ([`Backend`]); which engines
//! were compiled in is decided here and nowhere else: asking for one that is not built gives
//! an error that says how to rebuild, the way candle keeps CUDA behind its `Device`.

// A build with no engine keeps every signature; nothing past `Engine::load` can run.
#![cfg_attr(
    not(any(feature = "tract", feature = "ort")),
    allow(unused_imports, unused_variables, unreachable_code, dead_code)
)]

use super::hidden::HiddenStateBackend;
use super::input::{Batch, InputSpec, OutputTensor};
use super::ort::ExecutionProvider;
use super::store::TaskId;
use crate::bundle::{Bundle, CoeffFile, Head};
use crate::error::{Error, Result};
use crate::graph::patch::CoeffInput;
use crate::task::CoeffLayout;
use std::path::Path;
use std::sync::Arc;

/// Which inference engine runs the patched graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// tract: pure Rust, CPU (feature `tract`, on by default).
    #[default]
    Tract,
    /// ONNX Runtime (feature `ort`) on this execution provider; a provider that cannot start
    /// falls back to the CPU with a warning.
    Ort(ExecutionProvider),
}

impl Backend {
    /// Human name for messages, e.g. `tract` or `ONNX Runtime (CUDA)`.
    pub fn name(self) -> String {
        match self {
            Backend::Tract => "tract".into(),
            Backend::Ort(ep) => format!("ONNX Runtime ({})", ep.name()),
        }
    }
}

/// A patched base model on one engine, with its task store. Cloning shares the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    #[cfg(feature = "tract")]
    Tract(Arc<super::tract::Runtime>),
    #[cfg(feature = "ort")]
    Ort(Arc<super::ort::OrtRuntime>),
    /// No engine built in: never constructed ([`Engine::load`] fails first).
    #[cfg(not(any(feature = "tract", feature = "ort")))]
    None(std::convert::Infallible),
}

/// Dispatches `$body` on the engine inside `$self`, binding it to `$rt`.
macro_rules! dispatch {
    ($self:expr, $rt:ident => $body:expr) => {
        match &$self.inner {
            #[cfg(feature = "tract")]
            Inner::Tract($rt) => $body,
            #[cfg(feature = "ort")]
            Inner::Ort($rt) => $body,
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            Inner::None(n) => match *n {},
        }
    };
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend())
            .finish()
    }
}

/// Runs one call into an engine (tract or ONNX Runtime) so that a panic inside it becomes
/// [`Error::Engine`] naming `what` instead of ending the process. Defence in depth: inputs
/// are checked before they reach an engine ([`crate::graph::check`], [`super::input::
/// check_inputs`]); this catches what the checks do not foresee. A build with
/// `panic = "abort"` (the `dist` profile) still aborts.
pub(crate) fn engine_call<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let caught = crate::util::CatchingPanics::enter();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(caught);
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(Error::Engine(format!(
                "{what} panicked inside the engine: {msg}"
            )))
        }
    }
}

/// Checks that every output value is finite: a NaN or infinity (finite but extreme
/// coefficients, inputs or weights driving the model out of f32 range) is an
/// [`Error::Numeric`] naming the output, the value's position and `tasks`.
pub fn check_finite(outputs: &[OutputTensor], tasks: impl FnOnce() -> String) -> Result<()> {
    for o in outputs {
        let Some(at) = o.data.iter().position(|v| !v.is_finite()) else {
            continue;
        };
        let mut index = vec![0usize; o.shape.len()];
        let mut rest = at;
        for (i, &d) in o.shape.iter().enumerate().rev() {
            if d > 0 {
                index[i] = rest % d;
                rest /= d;
            }
        }
        return Err(Error::Numeric(format!(
            "output `{}` holds {} at {index:?} (task {}): expected finite values; the coefficients, the input or the model's weights drive it outside the range of float32",
            o.name,
            o.data[at],
            tasks()
        )));
    }
    Ok(())
}

/// The error for an engine this build does not have.
pub fn not_built(backend: Backend) -> Error {
    match backend {
        Backend::Tract => Error::Usage(
            "this build of eigenlorax has no tract backend; rebuild with the `tract` feature"
                .into(),
        ),
        Backend::Ort(_) => super::ort::not_built(),
    }
}

impl Engine {
    /// Checks that `backend` can start in this build and process before any work is done:
    /// an engine not compiled in is an error, and ONNX Runtime's library must load.
    pub fn check_available(backend: Backend) -> Result<()> {
        match backend {
            #[cfg(feature = "tract")]
            Backend::Tract => Ok(()),
            #[cfg(feature = "ort")]
            Backend::Ort(_) => super::ort::environment().map(|_| ()),
            #[allow(unreachable_patterns)]
            other => Err(not_built(other)),
        }
    }

    /// Loads `base` for the bound `bundle` on `backend`: checks the model's SHA-256 against
    /// the binding, patches it once and prepares the engine. The model is decoded once.
    pub fn load(base: &Path, bundle: &Bundle, backend: Backend) -> Result<Engine> {
        let inner = match backend {
            #[cfg(feature = "tract")]
            Backend::Tract => Inner::Tract(Arc::new(super::tract::Runtime::load(base, bundle)?)),
            #[cfg(feature = "ort")]
            Backend::Ort(ep) => {
                Inner::Ort(Arc::new(super::ort::OrtRuntime::load(base, bundle, ep)?))
            }
            #[allow(unreachable_patterns)]
            other => return Err(not_built(other)),
        };
        Ok(Engine { inner })
    }

    /// An engine over a tract runtime already loaded.
    #[cfg(feature = "tract")]
    pub fn from_tract(rt: Arc<super::tract::Runtime>) -> Engine {
        Engine {
            inner: Inner::Tract(rt),
        }
    }

    /// An engine over an ONNX Runtime runtime already loaded.
    #[cfg(feature = "ort")]
    pub fn from_ort(rt: Arc<super::ort::OrtRuntime>) -> Engine {
        Engine {
            inner: Inner::Ort(rt),
        }
    }

    /// The engine in use (for ONNX Runtime, the provider actually running: the CPU after a
    /// fallback).
    pub fn backend(&self) -> Backend {
        dispatch!(self, rt => Serve::backend(&**rt))
    }

    /// The declarations of the base model's own inputs (what [`Engine::run`] takes).
    pub fn specs(&self) -> Result<&[InputSpec]> {
        dispatch!(self, rt => Serve::specs(&**rt))
    }

    /// The graph outputs, in the order runs return them.
    pub fn output_names(&self) -> &[String] {
        dispatch!(self, rt => rt.output_names())
    }

    /// The coefficient inputs of the patched graph.
    pub fn coeff_inputs(&self) -> &[CoeffInput] {
        dispatch!(self, rt => rt.coeff_inputs())
    }

    /// The coefficient layout of the patched graph, one entry per module.
    pub fn layout(&self) -> Vec<CoeffLayout> {
        self.coeff_inputs().iter().map(CoeffInput::layout).collect()
    }

    /// The smallest rank the coefficient inputs hold (0 without modules): the default rank
    /// of a task trained on this engine.
    pub fn min_rank(&self) -> usize {
        self.coeff_inputs().iter().map(|c| c.r).min().unwrap_or(0)
    }

    /// Whether batches should be padded to a few power-of-two lengths ([`crate::finetune::
    /// seq::SequenceModel::bucketed`]): the engine builds one plan per input shape (tract on
    /// a graph it cannot optimize with symbolic shapes, TensorRT always).
    pub fn plans_per_shape(&self) -> bool {
        dispatch!(self, rt => Serve::plans_per_shape(&**rt))
    }

    /// Loads a coefficient file (checked against the bundle's subspace) as a new task.
    pub fn load_task(&self, path: &Path) -> Result<TaskId> {
        dispatch!(self, rt => rt.load_task(path))
    }

    /// Loads a coefficient file held in memory as a new task; `name` stands for its path in
    /// error messages.
    pub fn load_task_bytes(&self, name: &Path, bytes: Vec<u8>) -> Result<TaskId> {
        dispatch!(self, rt => rt.store().load_bytes(name, bytes))
    }

    /// Adds in-memory coefficients as a new task.
    pub fn insert_task(&self, coeffs: &CoeffFile) -> Result<TaskId> {
        dispatch!(self, rt => rt.insert_task(coeffs))
    }

    /// Replaces a task's coefficients (e.g. after on-device training): runs already holding
    /// the old ones finish with them, later runs use the new ones.
    pub fn replace_task(&self, id: TaskId, coeffs: &CoeffFile) -> Result<()> {
        dispatch!(self, rt => rt.store().replace(id, coeffs))
    }

    /// Unloads a task (its id is not reused; runs holding it finish with it, later runs of
    /// `id` are an error).
    pub fn unload_task(&self, id: TaskId) -> Result<()> {
        dispatch!(self, rt => rt.store().unload(id))
    }

    /// The ids of the loaded tasks, in load order.
    pub fn task_ids(&self) -> Vec<TaskId> {
        dispatch!(self, rt => rt.store().ids())
    }

    /// The task named `name`, if loaded.
    pub fn find_task(&self, name: &str) -> Option<TaskId> {
        dispatch!(self, rt => rt.store().find(name))
    }

    /// A task's name and head.
    pub fn task_info(&self, id: TaskId) -> Result<(String, Option<Head>)> {
        dispatch!(self, rt => rt
            .store()
            .get(id)
            .map(|t| (t.name.clone(), t.head.clone())))
    }

    /// Runs every row of `batch` with task `id`. Outputs that are not all finite are an
    /// [`Error::Numeric`] naming the output, the position and the task.
    pub fn run(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>> {
        // Typed: in a build with no engine the dispatch is uninhabited.
        let out: Result<Vec<OutputTensor>> = dispatch!(self, rt => rt.run_batch(batch, id));
        let out = out?;
        check_finite(&out, || self.task_names(&[id]))?;
        Ok(out)
    }

    /// Runs a mixed batch: row i with `ids[i]`, all in one pass; outputs checked as
    /// [`Engine::run`] does.
    pub fn run_mixed(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>> {
        let out: Result<Vec<OutputTensor>> = dispatch!(self, rt => rt.run_mixed_batch(batch, ids));
        let out = out?;
        check_finite(&out, || self.task_names(ids))?;
        Ok(out)
    }

    /// The tasks' names, for messages.
    fn task_names(&self, ids: &[TaskId]) -> String {
        let names: Vec<String> = ids
            .iter()
            .map(|&id| {
                self.task_info(id)
                    .map_or_else(|_| format!("#{}", id.0), |(name, _)| format!("`{name}`"))
            })
            .collect();
        names.join(", ")
    }

    /// The base model patched for one task, as this engine serves it (re-read from its file,
    /// hash checked, on tract; from memory on ONNX Runtime): what training graphs are built from.
    pub fn patched_model(&self) -> Result<crate::graph::PatchedModel> {
        match &self.inner {
            #[cfg(feature = "tract")]
            Inner::Tract(rt) => rt.patched(1),
            #[cfg(feature = "ort")]
            Inner::Ort(rt) => rt.patched_model(),
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            Inner::None(n) => match *n {},
        }
    }

    /// The hidden-state backend the finetuner trains through on this engine: trial
    /// coefficients in a private task, the hidden state read from the first output.
    pub fn hidden_state(&self) -> Result<HiddenState> {
        let inner = match &self.inner {
            #[cfg(feature = "tract")]
            Inner::Tract(rt) => {
                HiddenInner::Tract(super::hidden::tract::TractBackend::new(Arc::clone(rt))?)
            }
            #[cfg(feature = "ort")]
            Inner::Ort(rt) => {
                HiddenInner::Ort(super::hidden::ort::OrtBackend::new(Arc::clone(rt))?)
            }
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            Inner::None(n) => match *n {},
        };
        Ok(HiddenState { inner })
    }
}

/// What [`Engine`] asks of each engine beyond the methods they share by name.
trait Serve {
    fn backend(&self) -> Backend;
    fn specs(&self) -> Result<&[InputSpec]>;
    fn plans_per_shape(&self) -> bool;
    fn run_batch(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>>;
    fn run_mixed_batch(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>>;
}

#[cfg(feature = "tract")]
impl Serve for super::tract::Runtime {
    fn backend(&self) -> Backend {
        Backend::Tract
    }

    fn specs(&self) -> Result<&[InputSpec]> {
        self.input_specs()
    }

    fn plans_per_shape(&self) -> bool {
        !self.is_shape_generic()
    }

    fn run_batch(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>> {
        use super::input::{check_inputs, from_tract, to_tract};
        let ordered = check_inputs(self.input_specs()?, &batch.tensors)?;
        let values = self.run(&to_tract(&ordered)?, id)?;
        from_tract(self.output_names(), &values)
    }

    fn run_mixed_batch(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>> {
        use super::input::{check_inputs, from_tract, to_tract};
        let ordered = check_inputs(self.input_specs()?, &batch.tensors)?;
        let values = self.run_mixed(&to_tract(&ordered)?, ids)?;
        from_tract(self.output_names(), &values)
    }
}

#[cfg(feature = "ort")]
impl Serve for super::ort::OrtRuntime {
    fn backend(&self) -> Backend {
        Backend::Ort(self.provider())
    }

    fn specs(&self) -> Result<&[InputSpec]> {
        Ok(self.inputs())
    }

    fn plans_per_shape(&self) -> bool {
        self.provider() == ExecutionProvider::TensorRt
    }

    fn run_batch(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>> {
        self.run(&batch.tensors, id)
    }

    fn run_mixed_batch(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>> {
        self.run_mixed(&batch.tensors, ids)
    }
}

/// The finetuner's view of an [`Engine`] (see [`Engine::hidden_state`]).
pub struct HiddenState {
    inner: HiddenInner,
}

enum HiddenInner {
    #[cfg(feature = "tract")]
    Tract(super::hidden::tract::TractBackend),
    #[cfg(feature = "ort")]
    Ort(super::hidden::ort::OrtBackend),
    #[cfg(not(any(feature = "tract", feature = "ort")))]
    None(std::convert::Infallible),
}

impl HiddenState {
    /// Reads the hidden state from the model's `i`-th output instead of the first.
    pub fn with_output(self, i: usize) -> Self {
        let inner = match self.inner {
            #[cfg(feature = "tract")]
            HiddenInner::Tract(b) => HiddenInner::Tract(b.with_output(i)),
            #[cfg(feature = "ort")]
            HiddenInner::Ort(b) => HiddenInner::Ort(b.with_output(i)),
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            HiddenInner::None(n) => match n {},
        };
        HiddenState { inner }
    }

    /// Coefficient tensors allocated anew because the engine still held the previous ones
    /// (tract; 0 in normal use: every write is in place). Always 0 on ONNX Runtime, which
    /// borrows the buffers.
    pub fn reallocations(&self) -> u64 {
        match &self.inner {
            #[cfg(feature = "tract")]
            HiddenInner::Tract(b) => b.reallocations(),
            #[cfg(feature = "ort")]
            HiddenInner::Ort(_) => 0,
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            HiddenInner::None(n) => match *n {},
        }
    }
}

impl HiddenStateBackend for HiddenState {
    fn layout(&self) -> &[CoeffLayout] {
        match &self.inner {
            #[cfg(feature = "tract")]
            HiddenInner::Tract(b) => b.layout(),
            #[cfg(feature = "ort")]
            HiddenInner::Ort(b) => b.layout(),
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            HiddenInner::None(n) => match *n {},
        }
    }

    fn hidden(
        &mut self,
        input_ids: &[i64],
        attention_mask: &[i64],
        batch: usize,
        seq: usize,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        match &mut self.inner {
            #[cfg(feature = "tract")]
            HiddenInner::Tract(b) => b.hidden(input_ids, attention_mask, batch, seq, params, out),
            #[cfg(feature = "ort")]
            HiddenInner::Ort(b) => b.hidden(input_ids, attention_mask, batch, seq, params, out),
            #[cfg(not(any(feature = "tract", feature = "ort")))]
            HiddenInner::None(n) => match *n {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_an_engine_call_becomes_a_named_engine_error() {
        assert!(!crate::util::panics_are_caught());
        let r: Result<()> = engine_call("tract run", || {
            // The panic hook of `elx` stays silent here: the error reports the panic.
            assert!(crate::util::panics_are_caught());
            panic!("index exceeds length")
        });
        assert!(!crate::util::panics_are_caught());
        match r {
            Err(Error::Engine(m)) => {
                assert!(
                    m.contains("tract run") && m.contains("index exceeds length"),
                    "{m}"
                )
            }
            other => panic!("expected Error::Engine, found {other:?}"),
        }
        let ok: Result<u8> = engine_call("tract run", || Ok(7));
        assert_eq!(ok.expect("no panic"), 7);
        let err: Result<u8> = engine_call("tract run", || Err(Error::Usage("u".into())));
        assert!(matches!(err, Err(Error::Usage(_))));
    }
}

#[cfg(test)]
mod finite_tests {
    use super::*;

    #[test]
    fn a_non_finite_output_is_named_with_its_position_and_task() {
        let o = |data: Vec<f32>| OutputTensor {
            name: "logits".into(),
            shape: vec![2, 3],
            data,
        };
        assert!(check_finite(&[o(vec![0.0, 1.0, -2.0, 3.0, 4.0, 5.0])], || "t".into()).is_ok());
        let e = check_finite(&[o(vec![0.0, 1.0, -2.0, 3.0, f32::NAN, 5.0])], || {
            "`sst2`".into()
        })
        .expect_err("NaN")
        .to_string();
        assert!(
            e.contains("`logits`") && e.contains("NaN at [1, 1]") && e.contains("`sst2`"),
            "{e}"
        );
        let e = check_finite(&[o(vec![f32::NEG_INFINITY; 6])], || "t".into())
            .expect_err("-inf")
            .to_string();
        assert!(e.contains("-inf at [0, 0]"), "{e}");
    }
}
