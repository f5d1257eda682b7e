//! The tract engine (feature `tract`, default): pure Rust, CPU, portable.
//!
//! * [`runtime`]: [`Runtime`], the patched graph's plans and the task store;
//! * [`hidden`]: [`TractBackend`], the finetuner's hidden-state view;
//! * [`train`]: training graphs as fixed-shape plans over shared weights;
//! * [`tensor`]: conversions to and from tract values;
//! * [`weights`]: how the base weights are laid out for tract's matrix products.
//!
//! This file ties them to the traits of [`crate::serve::backend::api`].

pub mod hidden;
pub mod runtime;
pub mod tensor;
pub mod train;
pub mod weights;

pub use hidden::TractBackend;
pub use runtime::{Runtime, RuntimeOptions, TValue, Tensor};
pub use tensor::{from_tract, to_tract};
pub use train::{TractSession, TractTrainer};

use super::{Backend, EngineBackend, HiddenView, LoadOptions, Loader, Trainer, WeightFormat};
use crate::bundle::Bundle;
use crate::error::Result;
use crate::graph::grad::Weight;
use crate::graph::patch::{CoeffInput, PatchedModel};
use crate::serve::input::{Batch, InputSpec, InputTensor, OutputTensor, check_inputs};
use crate::serve::store::{TaskData, TaskId, TaskStore};
use std::path::Path;
use std::sync::Arc;

/// Splits tract's matrix products over `n` threads from now on, in this whole process (tract
/// keeps one executor for every plan); 1 is tract's default, one thread.
pub fn set_threads(n: usize) {
    use tract_linalg::multithread::{Executor, set_default_executor};
    set_default_executor(if n <= 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(n)
    });
}

/// Starts the tract engine (see [`super::open`]).
pub struct TractLoader;

impl Loader for TractLoader {
    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn load_with(
        &self,
        base: &Path,
        bundle: &Bundle,
        options: &LoadOptions,
    ) -> Result<Arc<dyn EngineBackend>> {
        if options.weights == WeightFormat::Q4_1 {
            return Err(crate::error::Error::Usage(
                "expected --weights f32 or q4_0 on tract: q4_1 weights are multiplied natively by ONNX Runtime only (--backend ort)".into(),
            ));
        }
        let options = RuntimeOptions {
            per_row_tasks: options.per_row_tasks,
            weights: options.weights,
            ..Default::default()
        };
        Ok(Arc::new(Runtime::load_with(base, bundle, &options)?))
    }
}

impl EngineBackend for Runtime {
    fn backend(&self) -> Backend {
        Backend::Tract
    }

    fn specs(&self) -> Result<&[InputSpec]> {
        self.input_specs()
    }

    fn output_names(&self) -> &[String] {
        Runtime::output_names(self)
    }

    fn coeff_inputs(&self) -> &[CoeffInput] {
        Runtime::coeff_inputs(self)
    }

    fn store(&self) -> &TaskStore {
        Runtime::store(self)
    }

    fn plans_per_shape(&self) -> bool {
        !self.is_shape_generic()
    }

    fn run_batch(&self, batch: &Batch, id: TaskId) -> Result<Vec<OutputTensor>> {
        let ordered = check_inputs(self.input_specs()?, &batch.tensors)?;
        let values = self.run(&to_tract(&ordered)?, id)?;
        from_tract(Runtime::output_names(self), &values)
    }

    fn run_mixed_batch(&self, batch: &Batch, ids: &[TaskId]) -> Result<Vec<OutputTensor>> {
        let ordered = check_inputs(self.input_specs()?, &batch.tensors)?;
        let values = self.run_mixed(&to_tract(&ordered)?, ids)?;
        from_tract(Runtime::output_names(self), &values)
    }

    fn run_task_data(&self, inputs: &[InputTensor], task: &TaskData) -> Result<Vec<OutputTensor>> {
        let ordered = check_inputs(self.input_specs()?, inputs)?;
        let values = self.run_task(&to_tract(&ordered)?, task)?;
        from_tract(Runtime::output_names(self), &values)
    }

    fn run_rows(&self, inputs: &[InputTensor], tasks: &[&TaskData]) -> Result<Vec<OutputTensor>> {
        let ordered = check_inputs(self.input_specs()?, inputs)?;
        let values = Runtime::run_rows(self, &to_tract(&ordered)?, tasks)?;
        from_tract(Runtime::output_names(self), &values)
    }

    fn patched_model(&self) -> Result<PatchedModel> {
        self.patched(1)
    }

    fn hidden_state(self: Arc<Self>) -> Result<Box<dyn HiddenView>> {
        Ok(Box::new(TractBackend::new(self)?))
    }

    fn trainer(&self, weights: Vec<Weight>) -> Result<Box<dyn Trainer>> {
        Ok(Box::new(TractTrainer::new(weights)?))
    }
}
