//! Backend-neutral tensors: the model's input declarations, the tensors a run takes and
//! returns (plain row-major `Vec`s, so tract and ONNX Runtime share them), and the
//! conversions to and from tract values.

use crate::error::{Error, Result};
use crate::graph::check::{IndexLimit, index_limits};
use crate::graph::onnx::{Dim, value_info_dims};
use crate::graph::pb::{ModelProto, type_proto};

/// Element type of a graph input or of an input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer (token ids, masks).
    I64,
}

impl ElemType {
    /// ONNX `TensorProto.DataType` code, `None` for types we do not feed.
    pub fn from_onnx(code: i32) -> Option<ElemType> {
        match code {
            1 => Some(ElemType::F32),
            7 => Some(ElemType::I64),
            _ => None,
        }
    }
}

/// What the model expects on one of its own (non-coefficient) inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Dimensions; `None` where symbolic or unknown.
    pub dims: Vec<Option<usize>>,
    /// The table the input's values index (token ids into the embeddings), when it indexes
    /// one: [`check_inputs`] refuses values outside it.
    pub index_limit: Option<IndexLimit>,
}

/// The values of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 values.
    F32(Vec<f32>),
    /// i64 values.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem(&self) -> ElemType {
        match self {
            TensorData::F32(_) => ElemType::F32,
            TensorData::I64(_) => ElemType::I64,
        }
    }
}

/// One named input tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// Graph input name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values (`shape.iter().product()` of them).
    pub data: TensorData,
}

/// A batch ready to feed: one tensor per model input, plus the attention mask for pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// One tensor per model input, in the model's input order.
    pub tensors: Vec<InputTensor>,
    /// Rows in the batch (the leading axis of every tensor).
    pub rows: usize,
    /// Attention mask [rows x seq] when the inputs are token sequences (1 = real token).
    pub mask: Option<Vec<i64>>,
}

/// One model output, f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// Graph output name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// The specs of the graph inputs named `names` (in that order), from the model's declarations.
pub fn input_specs(model: &ModelProto, names: &[String]) -> Result<Vec<InputSpec>> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Usage("the model has no graph".into()))?;
    let mut specs = Vec::with_capacity(names.len());
    for (name, index_limit) in names.iter().zip(index_limits(model, names)) {
        let vi = graph
            .input
            .iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| Error::Usage(format!("the model declares no input `{name}`")))?;
        let code = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t.elem_type,
            _ => {
                return Err(Error::Usage(format!(
                    "the model's input `{name}` is not a tensor"
                )));
            }
        };
        let elem = ElemType::from_onnx(code).ok_or_else(|| {
            Error::Usage(format!(
                "the model's input `{name}` has ONNX element type {code}; only float32 (1) and int64 (7) can be fed"
            ))
        })?;
        let dims = value_info_dims(vi)
            .unwrap_or_default()
            .into_iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(n),
                Dim::Param(_) => None,
            })
            .collect();
        specs.push(InputSpec {
            name: name.clone(),
            elem,
            dims,
            index_limit,
        });
    }
    Ok(specs)
}

/// Names of the model's graph outputs, in order.
pub fn output_names(model: &ModelProto) -> Vec<String> {
    model
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|v| v.name.clone()).collect())
        .unwrap_or_default()
}

/// Checks that `tensors` are exactly the model inputs `specs` (same names in any order, element
/// types, values matching shapes, fixed dims honoured, ids within the table an input indexes)
/// and returns them in `specs` order.
pub fn check_inputs<'a>(
    specs: &[InputSpec],
    tensors: &'a [InputTensor],
) -> Result<Vec<&'a InputTensor>> {
    let mut ordered = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = tensors
            .iter()
            .find(|t| t.name == spec.name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no tensor given for the model input `{}`",
                    spec.name
                ))
            })?;
        if t.data.elem() != spec.elem {
            return Err(Error::Usage(format!(
                "the model input `{}` takes {:?} values, found {:?}",
                spec.name,
                spec.elem,
                t.data.elem()
            )));
        }
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(t.data.len()) {
            return Err(Error::Usage(format!(
                "tensor `{}` has shape {:?} but {} values",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        let rank_ok = spec.dims.is_empty() || spec.dims.len() == t.shape.len();
        let dims_ok = spec
            .dims
            .iter()
            .zip(&t.shape)
            .all(|(w, &h)| w.is_none_or(|w| w == h));
        if !rank_ok || !dims_ok {
            let want: Vec<String> = spec
                .dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
                .collect();
            return Err(Error::Usage(format!(
                "the model input `{}` takes shape [{}], found {:?}",
                spec.name,
                want.join(", "),
                t.shape
            )));
        }
        if let (Some(limit), TensorData::I64(ids)) = (&spec.index_limit, &t.data) {
            limit.check(&spec.name, &t.shape, ids)?;
        }
        ordered.push(t);
    }
    if let Some(extra) = tensors
        .iter()
        .find(|t| !specs.iter().any(|s| s.name == t.name))
    {
        return Err(Error::Usage(format!(
            "the model has no input `{}`",
            extra.name
        )));
    }
    Ok(ordered)
}
