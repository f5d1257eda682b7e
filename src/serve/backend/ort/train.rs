//! Training graphs on ONNX Runtime: the large weights held once and borrowed by every run,
//! one session per fixed shape ([`OrtTrainer`], [`OrtSession`]).

use super::runtime::OrtModel;
use crate::error::Result;
use crate::graph::grad::Weight;
use crate::graph::pb::ModelProto;
use crate::serve::backend::{ExecutionProvider, FixedSession, Trainer};
use crate::serve::input::{InputTensor, OutputTensor};
use std::sync::Arc;

/// The training graphs' weights, shared by every session built from it, on one provider.
pub struct OrtTrainer {
    weights: Arc<Vec<Weight>>,
    provider: ExecutionProvider,
}

impl OrtTrainer {
    /// Holds `weights` for sessions on `provider`.
    pub fn new(weights: Vec<Weight>, provider: ExecutionProvider) -> OrtTrainer {
        OrtTrainer {
            weights: Arc::new(weights),
            provider,
        }
    }
}

impl Trainer for OrtTrainer {
    fn session(&self, model: &ModelProto, like: &[InputTensor]) -> Result<Box<dyn FixedSession>> {
        // ONNX Runtime takes the weights at run time only.
        let names: Vec<String> = like.iter().map(|t| t.name.clone()).collect();
        Ok(Box::new(OrtSession {
            model: OrtModel::new(model, &names, self.provider)?,
            weights: Arc::clone(&self.weights),
        }))
    }

    fn weights(&self) -> Result<Vec<Weight>> {
        Ok(self.weights.as_ref().clone())
    }
}

/// One session of a training graph, with the shared weights.
pub struct OrtSession {
    model: OrtModel,
    weights: Arc<Vec<Weight>>,
}

impl FixedSession for OrtSession {
    fn run(&self, inputs: &[InputTensor]) -> Result<Vec<OutputTensor>> {
        let extra: Vec<(&str, &[usize], &[f32])> = self
            .weights
            .iter()
            .map(|(n, d, v)| (n.as_str(), d.as_slice(), v.as_slice()))
            .collect();
        self.model.run_with(inputs, &extra)
    }
}
