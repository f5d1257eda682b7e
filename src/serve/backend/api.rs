//! The object-safe traits every engine implements. [`crate::serve::Engine`] holds one
//! `Arc<dyn EngineBackend>` and asks nothing else of an engine; the finetuner's hidden-state
//! view ([`HiddenView`]) and the exact-gradient training graphs ([`Trainer`],
//! [`FixedSession`]) come from the same object. A third engine implements these four traits
//! and [`Loader`] in its own folder beside `tract/` and `ort/` (see `docs/ARCHITECTURE.md`).

use super::Backend;
use crate::error::Result;
use crate::graph::grad::Weight;
use crate::graph::patch::{CoeffInput, PatchedModel};
use crate::graph::pb::ModelProto;
use crate::serve::hidden::HiddenStateBackend;
use crate::serve::input::{Batch, InputSpec, InputTensor, OutputTensor};
use crate::serve::store::{TaskData, TaskId, TaskStore};
use std::path::Path;
use std::sync::Arc;

/// Starts one engine: what [`super::open`] returns for a [`Backend`] compiled into this build.
pub trait Loader {
    /// Checks that the engine can start in this process before any work is done (ONNX
    /// Runtime: its shared library must load).
    fn check(&self) -> Result<()>;

    /// Loads `base` for the bound `bundle`: checks the model's SHA-256 against the binding,
    /// patches it once and prepares the engine.
    fn load(&self, base: &Path, bundle: &crate::bundle::Bundle) -> Result<Arc<dyn EngineBackend>> {
        self.load_with(base, bundle, &LoadOptions::default())
    }

    /// [`Loader::load`] with `options`.
    fn load_with(
        &self,
        base: &Path,
        bundle: &crate::bundle::Bundle,
        options: &LoadOptions,
    ) -> Result<Arc<dyn EngineBackend>>;
}

/// How an engine prepares a model at load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Patch the model with one task per row ([`crate::graph::patch::PER_ROW`]): one plan,
    /// holding the weights once, serves single-task and mixed-task batches of every size (a
    /// decoder's batches change size from step to step). Otherwise single-task runs have
    /// their own plan and mixed batches one plan per batch size.
    pub per_row_tasks: bool,
    /// How the engine stores the base model's matrix-product weights.
    pub weights: WeightFormat,
}

/// How an engine stores the base model's matrix-product weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// As the model file holds them (f32): exact.
    #[default]
    F32,
    /// Q4_0 blocks, multiplied natively: 32 weights share one scale (f16 on tract, 4.5 bits
    /// a weight; f32 on ONNX Runtime, 5 bits), an eighth of the memory traffic of a decode
    /// step in f32. The patch's subspace products and the token embedding stay f32.
    Q4_0,
    /// Q4_1 blocks (ONNX Runtime only, `MatMulNBits`): 32 weights share a scale and an
    /// offset (f32 each, 6 bits a weight). A model imported from a Q4_1 GGUF file is then
    /// multiplied with the file's own blocks. See `serve::backend::ort::quant`.
    Q4_1,
}

impl WeightFormat {
    /// The name the CLI and the C API take (`f32`, `q4_0`, `q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WeightFormat::F32),
            "q4_0" | "q40" => Ok(WeightFormat::Q4_0),
            "q4_1" | "q41" => Ok(WeightFormat::Q4_1),
            _ => Err(crate::error::Error::Usage(format!(
                "expected a weight format `f32`, `q4_0` or `q4_1`, found `{s}`"
            ))),
        }
    }
}

/// A patched base model on one engine, with its task store: what [`crate::serve::Engine`]
/// serves through. Runs take `&self`: an engine is shared between threads.
pub trait EngineBackend: Send + Sync {
    /// The engine in use (for ONNX Runtime, the provider actually running: the CPU after a
    /// fallback).
    fn backend(&self) -> Backend;

    /// The declarations of the base model's own inputs (what a run takes).
    fn specs(&self) -> Result<&[InputSpec]>;

    /// The graph outputs, in the order runs return them.
    fn output_names(&self) -> &[String];

    /// The coefficient inputs of the patched graph.
    fn coeff_inputs(&self) -> &[CoeffInput];

    /// The task store (load, insert, replace, find tasks).
    fn store(&self) -> &TaskStore;

    /// Whether the engine builds one plan per input shape (so batches should be padded to a
    /// few lengths).
    fn plans_per_shape(&self) -> bool;

    /// Runs every row of `batch` with task `id` (outputs not yet checked to be finite).
    fn run_batch(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>>;

    /// Runs row i of `batch` with `ids[i]`, all in one pass.
    fn run_mixed_batch(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>>;

    /// Runs every row of `inputs` with coefficients that need not be in the store (a
    /// request's own, or trial values).
    fn run_task_data(&self, inputs: &[InputTensor], task: &TaskData) -> Result<Vec<OutputTensor>>;

    /// Runs row i of `inputs` with `tasks[i]` (coefficients pinned by the caller, which need
    /// not be in the store any more), all in one pass.
    fn run_rows(&self, inputs: &[InputTensor], tasks: &[&TaskData]) -> Result<Vec<OutputTensor>>;

    /// The base model patched for one task, as this engine serves it: what training graphs
    /// are built from.
    fn patched_model(&self) -> Result<PatchedModel>;

    /// The finetuner's view of this engine: trial coefficients in a private task, the hidden
    /// state read from the first output.
    fn hidden_state(self: Arc<Self>) -> Result<Box<dyn HiddenView>>;

    /// Holds the training graphs' large `weights` once, in the form this engine feeds without
    /// copying, and builds fixed-shape sessions over them.
    fn trainer(&self, weights: Vec<Weight>) -> Result<Box<dyn Trainer>>;
}

/// The hidden-state view of one engine (see [`EngineBackend::hidden_state`]).
pub trait HiddenView: HiddenStateBackend + Send {
    /// Reads the hidden state from the model's `i`-th output instead of the first.
    fn set_output(&mut self, i: usize);

    /// Coefficient tensors allocated anew because the engine still held the previous ones
    /// (0 in normal use).
    fn reallocations(&self) -> u64 {
        0
    }
}

/// Fixed-shape graphs (the training graphs of [`crate::graph::grad`]) on one engine, sharing
/// one set of large weights fed as inputs.
pub trait Trainer: Send + Sync {
    /// Prepares `model` for inputs shaped like `like` (names, element types and shapes),
    /// followed by the shared weights.
    fn session(&self, model: &ModelProto, like: &[InputTensor]) -> Result<Box<dyn FixedSession>>;

    /// The shared weights as (name, shape, values), e.g. to put them back as initializers.
    fn weights(&self) -> Result<Vec<Weight>>;
}

/// One fixed-shape graph ready to run (see [`Trainer::session`]).
pub trait FixedSession: Send + Sync {
    /// Runs on `inputs` (the names of `like` at [`Trainer::session`]) and the shared weights;
    /// every output, f32.
    fn run(&self, inputs: &[InputTensor]) -> Result<Vec<OutputTensor>>;
}
