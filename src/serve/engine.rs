//! [`Engine`]: one backend-neutral type over the inference engines that serve a patched
//! graph (tract, and ONNX Runtime with the `ort` feature).
//!
//! It covers what the CLI, [`crate::eval`] and [`crate::finetune`] ask of an engine: load a
//! base model for a bound bundle, the input declarations, load/insert/select tasks, run a
//! batch with one task or a mixed batch with one task per row, open a request
//! ([`Engine::session`]) that keeps its state between calls, whether inputs should be padded
//! to a few length buckets, and the hidden-state backend the finetuner trains through
//! ([`Engine::hidden_state`]). The choice of engine is a value ([`Backend`]); the engine
//! itself is an `Arc<dyn EngineBackend>` ([`super::backend`]), so this file names no engine:
//! asking for one that is not built gives an error that says how to rebuild, the way candle
//! keeps CUDA behind its `Device`.

use super::backend::{self, EngineBackend, HiddenView};
use super::family::{Encoder, ModelFamily};
use super::hidden::{HiddenStateBackend, TokenBatch};
use super::input::{Batch, InputSpec, InputTensor, OutputTensor};
use super::store::{Task, TaskData, TaskId};
use crate::bundle::{Bundle, CoeffFile, Head};
use crate::error::{Error, Result};
use crate::graph::patch::CoeffInput;
use crate::task::CoeffLayout;
use std::path::Path;
use std::sync::Arc;

pub use super::backend::{Backend, ExecutionProvider, LoadOptions, not_built};

/// A patched base model on one engine, with its task store. Cloning shares the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<dyn EngineBackend>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend())
            .finish()
    }
}

/// Checks that every output value is finite: a NaN or infinity (finite but extreme
/// coefficients, inputs or weights driving the model out of f32 range) is an
/// [`Error::Numeric`] naming the output, the value's position and `tasks`.
pub fn check_finite(outputs: &[OutputTensor], tasks: impl FnOnce() -> String) -> Result<()> {
    for o in outputs {
        if all_finite(&o.data) {
            continue;
        }
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

/// Whether every value is finite. A branch-free OR over the exponent bits, which the
/// compiler vectorizes: a decoder's outputs hold its whole KV cache at every step.
fn all_finite(v: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    v.chunks(4096).all(|c| {
        c.iter().fold(0u32, |any, x| {
            any | u32::from(x.to_bits() & EXPONENT == EXPONENT)
        }) == 0
    })
}

impl Engine {
    /// Checks that `backend` can start in this build and process before any work is done:
    /// an engine not compiled in is an error, and ONNX Runtime's library must load.
    pub fn check_available(backend: Backend) -> Result<()> {
        backend::open(backend)?.check()
    }

    /// Loads `base` for the bound `bundle` on `backend`: checks the model's SHA-256 against
    /// the binding, patches it once and prepares the engine. The model is decoded once.
    pub fn load(base: &Path, bundle: &Bundle, backend: Backend) -> Result<Engine> {
        Ok(Engine {
            inner: backend::open(backend)?.load(base, bundle)?,
        })
    }

    /// [`Engine::load`] with `options` (e.g. one plan with a task per row, as a decoder is
    /// served: [`LoadOptions::per_row_tasks`]).
    pub fn load_with(
        base: &Path,
        bundle: &Bundle,
        backend: Backend,
        options: &LoadOptions,
    ) -> Result<Engine> {
        Ok(Engine {
            inner: backend::open(backend)?.load_with(base, bundle, options)?,
        })
    }

    /// An engine over a runtime already loaded (e.g. a `serve::backend::tract::Runtime` built
    /// with options).
    pub fn from_runtime(rt: Arc<dyn EngineBackend>) -> Engine {
        Engine { inner: rt }
    }

    /// The engine in use (for ONNX Runtime, the provider actually running: the CPU after a
    /// fallback).
    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    /// The declarations of the base model's own inputs (what [`Engine::run`] takes).
    pub fn specs(&self) -> Result<&[InputSpec]> {
        self.inner.specs()
    }

    /// The graph outputs, in the order runs return them.
    pub fn output_names(&self) -> &[String] {
        self.inner.output_names()
    }

    /// The coefficient inputs of the patched graph.
    pub fn coeff_inputs(&self) -> &[CoeffInput] {
        self.inner.coeff_inputs()
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
        self.inner.plans_per_shape()
    }

    /// The subspace id of the bundle the engine serves: a task's coefficients must name it.
    pub fn subspace_id(&self) -> &str {
        self.inner.store().subspace_id()
    }

    /// Loads a coefficient file (checked against the bundle's subspace) as a new task.
    pub fn load_task(&self, path: &Path) -> Result<TaskId> {
        self.inner.store().load(path)
    }

    /// Loads a coefficient file held in memory as a new task; `name` stands for its path in
    /// error messages.
    pub fn load_task_bytes(&self, name: &Path, bytes: Vec<u8>) -> Result<TaskId> {
        self.inner.store().load_bytes(name, bytes)
    }

    /// Adds in-memory coefficients as a new task.
    pub fn insert_task(&self, coeffs: &CoeffFile) -> Result<TaskId> {
        self.inner.store().insert(coeffs)
    }

    /// Replaces a task's coefficients (e.g. after on-device training): runs already holding
    /// the old ones finish with them, later runs use the new ones.
    pub fn replace_task(&self, id: TaskId, coeffs: &CoeffFile) -> Result<()> {
        self.inner.store().replace(id, coeffs)
    }

    /// Unloads a task (its id is not reused; runs holding it finish with it, later runs of
    /// `id` are an error).
    pub fn unload_task(&self, id: TaskId) -> Result<()> {
        self.inner.store().unload(id)
    }

    /// The ids of the loaded tasks, in load order.
    pub fn task_ids(&self) -> Vec<TaskId> {
        self.inner.store().ids()
    }

    /// The task named `name`, if loaded.
    pub fn find_task(&self, name: &str) -> Option<TaskId> {
        self.inner.store().find(name)
    }

    /// A task's name and head.
    pub fn task_info(&self, id: TaskId) -> Result<(String, Option<Head>)> {
        self.inner
            .store()
            .get(id)
            .map(|t| (t.name.clone(), t.head.clone()))
    }

    /// Runs every row of `batch` with task `id`. Outputs that are not all finite are an
    /// [`Error::Numeric`] naming the output, the position and the task.
    pub fn run(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>> {
        let out = self.inner.run_batch(batch, id)?;
        check_finite(&out, || self.task_names(&[id]))?;
        Ok(out)
    }

    /// Runs a mixed batch: row i with `ids[i]`, all in one pass; outputs checked as
    /// [`Engine::run`] does.
    pub fn run_mixed(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>> {
        let out = self.inner.run_mixed_batch(batch, ids)?;
        check_finite(&out, || self.task_names(ids))?;
        Ok(out)
    }

    /// A loaded task's coefficients, pinned: runs given them ([`Engine::run_rows`]) use these
    /// values even after the task is replaced or unloaded.
    pub fn task(&self, id: TaskId) -> Result<Arc<Task>> {
        self.inner.store().get(id)
    }

    /// Runs row i of `inputs` (in the model's input order) with `tasks[i]`, all in one pass;
    /// outputs checked as [`Engine::run`] does.
    pub fn run_rows(
        &self,
        inputs: &[InputTensor],
        tasks: &[&TaskData],
    ) -> Result<Vec<OutputTensor>> {
        self.run_rows_checking(inputs, tasks, usize::MAX)
    }

    /// [`Engine::run_rows`], checking only the first `checked` outputs for non-finite values:
    /// a decoder's cache outputs reach its logits at the next call, which checks them there,
    /// and scanning the whole cache at every step costs a twentieth of a decode step.
    pub fn run_rows_checking(
        &self,
        inputs: &[InputTensor],
        tasks: &[&TaskData],
        checked: usize,
    ) -> Result<Vec<OutputTensor>> {
        let out = self.inner.run_rows(inputs, tasks)?;
        check_finite(&out[..checked.min(out.len())], || {
            let names: Vec<String> = tasks.iter().map(|t| format!("`{}`", t.name)).collect();
            names.join(", ")
        })?;
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
        self.inner.patched_model()
    }

    /// The hidden-state backend the finetuner trains through on this engine: trial
    /// coefficients in a private task, the hidden state read from the first output.
    pub fn hidden_state(&self) -> Result<HiddenState> {
        Ok(HiddenState {
            inner: Arc::clone(&self.inner).hidden_state()?,
        })
    }

    /// Opens a request on task `id` for the [`Encoder`] family (see [`Engine::session_with`]).
    pub fn session(&self, id: TaskId) -> Result<Session> {
        self.session_with(id, Arc::new(Encoder))
    }

    /// Opens a request on task `id` for a model of `family`: a handle that pins the task's
    /// coefficients for its whole life (a later [`Engine::replace_task`] or
    /// [`Engine::unload_task`] does not change a request already open) and keeps what the
    /// family carries from one call to the next (an encoder: nothing; a decoder: its KV
    /// cache). Requests are independent: each holds its own state and task, so requests on
    /// different tasks can be served side by side.
    pub fn session_with(&self, id: TaskId, family: Arc<dyn ModelFamily>) -> Result<Session> {
        let task = self.inner.store().get(id)?;
        Ok(Session {
            engine: self.clone(),
            id,
            task,
            family,
            carried: Vec::new(),
        })
    }

    /// The engine object itself (for the training graphs of [`super::train`]).
    pub(crate) fn backend_object(&self) -> &dyn EngineBackend {
        &*self.inner
    }
}

/// One request on an [`Engine`] (see [`Engine::session_with`]): its task's coefficients,
/// pinned, and the state its model family keeps between calls.
pub struct Session {
    engine: Engine,
    id: TaskId,
    task: Arc<Task>,
    family: Arc<dyn ModelFamily>,
    carried: Vec<InputTensor>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("task", &self.task.name)
            .field("family", &self.family.name())
            .field("carried", &self.carried.len())
            .finish()
    }
}

impl Session {
    /// Runs every row of `batch` with the request's task, the tensors carried from the last
    /// call added to its inputs; keeps what the family carries from these outputs for the
    /// next call. Outputs are checked as [`Engine::run`] checks them.
    pub fn run(&mut self, batch: &Batch) -> Result<Vec<OutputTensor>> {
        let out = if self.carried.is_empty() {
            self.engine
                .inner
                .run_task_data(&batch.tensors, &self.task)?
        } else {
            let mut inputs = batch.tensors.clone();
            inputs.extend(self.carried.iter().cloned());
            self.engine.inner.run_task_data(&inputs, &self.task)?
        };
        check_finite(&out, || format!("`{}`", self.task.name))?;
        self.carried = self.family.carry(&out);
        Ok(out)
    }

    /// The task this request was opened on.
    pub fn task(&self) -> TaskId {
        self.id
    }

    /// The tensors this request carries into its next call (empty for an encoder).
    pub fn carried(&self) -> &[InputTensor] {
        &self.carried
    }
}

/// The finetuner's view of an [`Engine`] (see [`Engine::hidden_state`]).
pub struct HiddenState {
    inner: Box<dyn HiddenView>,
}

impl HiddenState {
    /// Reads the hidden state from the model's `i`-th output instead of the first.
    pub fn with_output(mut self, i: usize) -> Self {
        self.inner.set_output(i);
        self
    }

    /// Coefficient tensors allocated anew because the engine still held the previous ones
    /// (tract; 0 in normal use: every write is in place). Always 0 on ONNX Runtime, which
    /// borrows the buffers.
    pub fn reallocations(&self) -> u64 {
        self.inner.reallocations()
    }
}

impl HiddenStateBackend for HiddenState {
    fn layout(&self) -> &[CoeffLayout] {
        self.inner.layout()
    }

    fn hidden(
        &mut self,
        tokens: TokenBatch<'_>,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        self.inner.hidden(tokens, params, out)
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

    #[test]
    fn all_finite_finds_every_non_finite_value_anywhere() {
        let mut v = vec![1.5f32; 10_000];
        v[17] = f32::MAX;
        v[18] = -f32::MIN_POSITIVE / 2.0; // subnormal
        assert!(super::all_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 4095, 4096, 9_999] {
                let mut w = v.clone();
                w[at] = bad;
                assert!(!super::all_finite(&w), "{bad} at {at}");
            }
        }
        assert!(super::all_finite(&[]));
    }
}
