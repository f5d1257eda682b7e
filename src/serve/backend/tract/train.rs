//! Training graphs on tract: the large weights held once as tract values, and one optimized
//! plan per fixed shape ([`TractTrainer`], [`TractSession`]).

use super::tensor::{from_tract, to_tract};
use crate::error::{Error, Result};
use crate::graph::grad::Weight;
use crate::graph::onnx::encode_model;
use crate::graph::pb::ModelProto;
use crate::serve::backend::{FixedSession, Trainer, engine_call};
use crate::serve::input::{InputTensor, OutputTensor, TensorData, output_names};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// The training graphs' weights as tract values, shared by every session built from it.
pub struct TractTrainer {
    weights: Arc<Vec<(String, TValue)>>,
}

impl TractTrainer {
    /// Converts `values` into tract tensors, once.
    pub fn new(values: Vec<Weight>) -> Result<TractTrainer> {
        let weights = values
            .into_iter()
            .map(|(n, dims, v)| {
                Tensor::from_shape(&dims, &v)
                    .map(|t| (n.clone(), t.into()))
                    .map_err(|e| Error::Engine(format!("weight `{n}`: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(TractTrainer {
            weights: Arc::new(weights),
        })
    }
}

impl Trainer for TractTrainer {
    fn session(&self, model: &ModelProto, like: &[InputTensor]) -> Result<Box<dyn FixedSession>> {
        let mut facts: Vec<(&str, DatumType, &[usize])> = like
            .iter()
            .map(|t| {
                let dt = match t.data {
                    TensorData::F32(_) => DatumType::F32,
                    TensorData::I64(_) => DatumType::I64,
                };
                (t.name.as_str(), dt, t.shape.as_slice())
            })
            .collect();
        for (n, t) in self.weights.iter() {
            facts.push((n.as_str(), DatumType::F32, t.shape()));
        }
        let (plan, order) = fixed_shape_plan(model, &facts)?;
        Ok(Box::new(TractSession {
            plan,
            order,
            outputs: output_names(model),
            weights: Arc::clone(&self.weights),
        }))
    }

    fn weights(&self) -> Result<Vec<Weight>> {
        self.weights
            .iter()
            .map(|(n, t)| {
                let data = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| Error::Internal(format!("weight `{n}`: {e}")))?
                    .iter()
                    .copied()
                    .collect();
                Ok((n.clone(), t.shape().to_vec(), data))
            })
            .collect()
    }
}

/// One fixed-shape plan of a training graph, with the shared weights.
pub struct TractSession {
    plan: Arc<TypedRunnableModel>,
    /// For each plan input, the position of its tensor in the caller's list (then the weights).
    order: Vec<usize>,
    outputs: Vec<String>,
    weights: Arc<Vec<(String, TValue)>>,
}

impl FixedSession for TractSession {
    fn run(&self, inputs: &[InputTensor]) -> Result<Vec<OutputTensor>> {
        let mut values = Vec::with_capacity(self.order.len());
        for &i in &self.order {
            if i < inputs.len() {
                values.extend(to_tract(&[&inputs[i]])?);
            } else {
                let (_, v) = self
                    .weights
                    .get(i - inputs.len())
                    .ok_or_else(|| Error::Internal("training graph input out of range".into()))?;
                values.push(v.clone());
            }
        }
        let out = engine_call("tract run of the training graph", || {
            self.plan
                .run(values.into_iter().collect())
                .map_err(|e| Error::Engine(format!("tract run of the training graph: {e:#}")))
        })?;
        from_tract(&self.outputs, &out)
    }
}

/// Builds an optimized tract plan of `model` for inputs of exactly these names, types and
/// shapes (every graph input without an initializer must be among them); returns the plan
/// and, for each of its inputs in order, the position of that input in `inputs`.
fn fixed_shape_plan(
    model: &crate::graph::ModelProto,
    inputs: &[(&str, DatumType, &[usize])],
) -> Result<(Arc<TypedRunnableModel>, Vec<usize>)> {
    let engine = |stage: &str, e: TractError| {
        Error::Engine(format!("tract could not {stage} the training graph: {e:#}"))
    };
    let proto = {
        use prost::Message;
        tract_onnx::pb::ModelProto::decode(prost::bytes::Bytes::from(encode_model(model)))
            .map_err(|e| engine("decode", TractError::from(e)))?
    };
    let mut m = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .map_err(|e| engine("load", e))?;
    drop(proto);
    let mut order = Vec::new();
    for (k, o) in m
        .input_outlets()
        .map_err(|e| engine("inspect", e))?
        .to_vec()
        .into_iter()
        .enumerate()
    {
        let name = m.node(o.node).name.clone();
        let i = inputs
            .iter()
            .position(|(n, _, _)| *n == name)
            .ok_or_else(|| Error::Internal(format!("no value for graph input `{name}`")))?;
        let (_, dt, shape) = inputs[i];
        m = m
            .with_input_fact(k, InferenceFact::dt_shape(dt, shape))
            .map_err(|e| engine("load", e))?;
        order.push(i);
    }
    let runnable = engine_call("tract training-graph plan", move || {
        let typed = m.into_optimized().map_err(|e| engine("optimize", e))?;
        typed.into_runnable().map_err(|e| engine("plan", e))
    })?;
    Ok((runnable, order))
}
