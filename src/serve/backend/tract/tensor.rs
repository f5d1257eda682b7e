//! Conversions between the backend-neutral tensors of [`crate::serve::input`] and tract's
//! values.

use crate::error::{Error, Result};
use crate::serve::input::{InputTensor, OutputTensor, TensorData};
use tract_onnx::prelude::{TValue, Tensor};

/// Converts inputs (already ordered by [`crate::serve::input::check_inputs`]) to tract values.
pub fn to_tract(tensors: &[&InputTensor]) -> Result<Vec<TValue>> {
    tensors
        .iter()
        .map(|t| {
            let r = match &t.data {
                TensorData::F32(v) => Tensor::from_shape(&t.shape, v),
                TensorData::I64(v) => Tensor::from_shape(&t.shape, v),
            };
            r.map(TValue::from).map_err(|e| {
                Error::Usage(format!("input `{}` with shape {:?}: {e}", t.name, t.shape))
            })
        })
        .collect()
}

/// Converts tract outputs to f32 [`OutputTensor`]s named `names` (in order).
pub fn from_tract(names: &[String], values: &[TValue]) -> Result<Vec<OutputTensor>> {
    if names.len() != values.len() {
        return Err(Error::Usage(format!(
            "the model declares {} outputs, tract returned {}",
            names.len(),
            values.len()
        )));
    }
    names
        .iter()
        .zip(values)
        .map(|(name, v)| {
            let view = v.to_plain_array_view::<f32>().map_err(|e| {
                Error::Usage(format!(
                    "the model output `{name}` is not an f32 tensor: {e}"
                ))
            })?;
            // A standard-layout view is copied whole; iterating any other view gives
            // row-major order whatever its memory layout.
            let data = match view.as_slice() {
                Some(s) => s.to_vec(),
                None => view.iter().copied().collect(),
            };
            Ok(OutputTensor {
                name: name.clone(),
                shape: v.shape().to_vec(),
                data,
            })
        })
        .collect()
}
