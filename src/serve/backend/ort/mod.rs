//! The ONNX Runtime engine (feature `ort`): the same patched graph as tract, run by ONNX
//! Runtime with the CPU, CUDA or TensorRT execution provider.
//!
//! * [`runtime`]: [`OrtRuntime`] (patched graph + task store) and [`OrtModel`] (one session),
//!   the process-wide environment and the provider fallback;
//! * [`hidden`]: [`OrtBackend`], the finetuner's hidden-state view;
//! * [`quant`]: 4-bit base weights (`MatMulNBits`);
//! * [`spool`]: large models handed over as a file whose weights ONNX Runtime maps;
//! * [`train`]: training graphs as sessions over shared weights.
//!
//! ONNX Runtime takes the backend-neutral tensors of [`crate::serve::input`] as borrowed
//! views, so there is no conversion module. This file ties them to the traits of
//! [`crate::serve::backend::api`].

pub mod hidden;
pub mod quant;
pub mod runtime;
pub mod spool;
pub mod train;

pub use hidden::OrtBackend;
pub use runtime::{DYLIB_ENV, OrtModel, OrtRuntime, dylib_path, environment, plain_inputs};
pub use train::{OrtSession, OrtTrainer};

use super::{Backend, EngineBackend, ExecutionProvider, HiddenView, LoadOptions, Loader, Trainer};
use crate::bundle::Bundle;
use crate::error::Result;
use crate::graph::grad::Weight;
use crate::graph::patch::{CoeffInput, PatchedModel};
use crate::serve::input::{Batch, InputSpec, InputTensor, OutputTensor};
use crate::serve::store::{TaskData, TaskId, TaskStore};
use std::path::Path;
use std::sync::Arc;

/// Starts ONNX Runtime on an execution provider (see [`super::open`]).
pub struct OrtLoader(pub ExecutionProvider);

impl Loader for OrtLoader {
    fn check(&self) -> Result<()> {
        environment().map(|_| ())
    }

    fn load_with(
        &self,
        base: &Path,
        bundle: &Bundle,
        options: &LoadOptions,
    ) -> Result<Arc<dyn EngineBackend>> {
        Ok(Arc::new(OrtRuntime::load_with_weights(
            base,
            bundle,
            self.0,
            options.per_row_tasks,
            options.weights,
        )?))
    }
}

impl EngineBackend for OrtRuntime {
    fn backend(&self) -> Backend {
        Backend::Ort(self.provider())
    }

    fn specs(&self) -> Result<&[InputSpec]> {
        Ok(self.inputs())
    }

    fn output_names(&self) -> &[String] {
        OrtRuntime::output_names(self)
    }

    fn coeff_inputs(&self) -> &[CoeffInput] {
        OrtRuntime::coeff_inputs(self)
    }

    fn store(&self) -> &TaskStore {
        OrtRuntime::store(self)
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

    fn run_task_data(&self, inputs: &[InputTensor], task: &TaskData) -> Result<Vec<OutputTensor>> {
        self.run_task(inputs, task)
    }

    fn run_rows(&self, inputs: &[InputTensor], tasks: &[&TaskData]) -> Result<Vec<OutputTensor>> {
        OrtRuntime::run_rows(self, inputs, tasks)
    }

    fn patched_model(&self) -> Result<PatchedModel> {
        OrtRuntime::patched_model(self)
    }

    fn hidden_state(self: Arc<Self>) -> Result<Box<dyn HiddenView>> {
        Ok(Box::new(OrtBackend::new(self)?))
    }

    fn trainer(&self, weights: Vec<Weight>) -> Result<Box<dyn Trainer>> {
        Ok(Box::new(OrtTrainer::new(weights, self.provider())))
    }
}
