//! Raw model inputs from files: a `.npy` (one tensor) or a safetensors file (one tensor per
//! model input), checked against the model's declarations, with token masks and types
//! filled in when missing.

use super::npy::read_npy;
use super::tensor::{Batch, InputSpec, InputTensor, TensorData};
use crate::error::{Error, Result};
use std::path::Path;

/// Reads every tensor of a safetensors file whose dtype is F32 or I64 (others are an error),
/// by name. The safetensors crate validates every offset against the file size.
pub fn read_safetensors(path: &Path) -> Result<Vec<InputTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_file(path, format!("expected a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).map_err(|e| {
            Error::bad_tensor(path, &name, format!("expected a readable tensor: {e}"))
        })?;
        let d = t.data();
        let data = match t.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::bad_tensor(
                        path,
                        &name,
                        format!("expected finite values, found {} at {i}", v[i]),
                    ));
                }
                TensorData::F32(v)
            }
            safetensors::Dtype::I64 => TensorData::I64(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            other => {
                return Err(Error::bad_tensor(
                    path,
                    &name,
                    format!("expected dtype F32 or I64, found {other:?}"),
                ));
            }
        };
        out.push(InputTensor {
            name,
            shape: t.shape().to_vec(),
            data,
        });
    }
    Ok(out)
}

/// Builds a batch for `inputs` from raw tensors read from `path` (`.npy` or `.safetensors`).
///
/// A `.npy` file holds one tensor: it feeds `input_ids` when the model has that input (the
/// mask is then all ones and token types all zeros), otherwise the model's only input. A
/// safetensors file names its tensors after the model inputs; a missing `attention_mask` or
/// `token_type_ids` is filled the same way.
pub fn load_tensors(path: &Path, inputs: &[InputSpec]) -> Result<Batch> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let given: Vec<InputTensor> = match ext.as_str() {
        "npy" => {
            let (shape, data) = read_npy(path)?;
            let target = if inputs.iter().any(|s| s.name == "input_ids") {
                "input_ids".to_string()
            } else if let [only] = inputs {
                only.name.clone()
            } else {
                let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::bad_file(
                    path,
                    format!(
                        "expected a safetensors file naming each model input {names:?}; a .npy holds only one"
                    ),
                ));
            };
            vec![InputTensor {
                name: target,
                shape,
                data,
            }]
        }
        "safetensors" => read_safetensors(path)?,
        other => {
            return Err(Error::bad_file(
                path,
                format!("expected a .npy or .safetensors input, found extension {other:?}"),
            ));
        }
    };
    assemble(path, given, inputs)
}

/// Orders `given` by the model's inputs, checks types and shapes, and fills missing token
/// masks and types. `path` names the source in errors (a file, or e.g. `<C API input>` for
/// tensors handed over in memory).
pub fn assemble(path: &Path, mut given: Vec<InputTensor>, inputs: &[InputSpec]) -> Result<Batch> {
    let ids_shape = given
        .iter()
        .find(|t| t.name == "input_ids")
        .map(|t| t.shape.clone());
    let mut tensors = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let t = match given.iter().position(|t| t.name == spec.name) {
            Some(i) => given.swap_remove(i),
            None => match (spec.name.as_str(), &ids_shape) {
                ("attention_mask", Some(s)) => filled(&spec.name, s, 1),
                ("token_type_ids", Some(s)) => filled(&spec.name, s, 0),
                _ => {
                    return Err(Error::bad_tensor(
                        path,
                        &spec.name,
                        "expected this model input in the file, found none",
                    ));
                }
            },
        };
        if t.data.elem() != spec.elem {
            return Err(Error::bad_tensor(
                path,
                &spec.name,
                format!(
                    "expected {:?} values for this model input, found {:?}",
                    spec.elem,
                    t.data.elem()
                ),
            ));
        }
        if t.shape.len() != spec.dims.len() && !spec.dims.is_empty() {
            return Err(Error::bad_tensor(
                path,
                &spec.name,
                format!(
                    "expected rank {} for this model input, found shape {:?}",
                    spec.dims.len(),
                    t.shape
                ),
            ));
        }
        for (axis, (&have, want)) in t.shape.iter().zip(&spec.dims).enumerate() {
            if let Some(w) = want
                && *w != have
                && axis > 0
            {
                return Err(Error::bad_tensor(
                    path,
                    &spec.name,
                    format!(
                        "expected dimension {axis} to be {w}, found shape {:?}",
                        t.shape
                    ),
                ));
            }
        }
        tensors.push(t);
    }
    if let Some(extra) = given.first() {
        let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::bad_tensor(
            path,
            &extra.name,
            format!("expected only the model inputs {names:?}"),
        ));
    }
    let rows = match tensors.first().and_then(|t| t.shape.first()) {
        Some(&r) if r > 0 => r,
        _ => {
            return Err(Error::bad_file(
                path,
                "expected tensors with a non-empty leading batch axis",
            ));
        }
    };
    if let Some(t) = tensors.iter().find(|t| t.shape.first() != Some(&rows)) {
        return Err(Error::bad_tensor(
            path,
            &t.name,
            format!(
                "expected a leading batch axis of {rows}, found {:?}",
                t.shape
            ),
        ));
    }
    let mask = tensors
        .iter()
        .find(|t| t.name == "attention_mask")
        .and_then(|t| match &t.data {
            TensorData::I64(v) => Some(v.clone()),
            TensorData::F32(_) => None,
        });
    Ok(Batch {
        tensors,
        rows,
        mask,
    })
}

fn filled(name: &str, shape: &[usize], value: i64) -> InputTensor {
    let n = shape.iter().product();
    InputTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        data: TensorData::I64(vec![value; n]),
    }
}

// ---------------------------------------------------------------------------------------------
