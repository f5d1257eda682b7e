//! [`HiddenStateBackend`] over the tract [`Runtime`]: the finetuner's trial coefficients go
//! into one private task whose tensors are preallocated once and overwritten in place, then
//! the patched graph runs through [`Runtime::run_task`] exactly as a served task would.
//!
//! No method was added to the runtime: a [`TractTask`] is a plain struct and `run_task`
//! takes any task, so the backend keeps its own and never touches the shared task store.
//! The graph consumes its inputs (`Arc` clones of ours) and drops them when the run returns,
//! so on the next call our `Arc`s are unique again and are written without allocating.

use super::{HiddenStateBackend, TokenFeed, check_tokens, hidden_width};
use crate::error::{Error, Result};
use crate::serve::store::{Task, TaskData};
use crate::serve::tract::{Runtime, TValue, Tensor, TractTask};
use crate::task::{CoeffLayout, check_params, module_params, write_alpha_a_t, write_alpha_b_t};
use std::sync::Arc;
use tract_onnx::prelude::IntoArcTensor;

/// The tract runtime as a [`HiddenStateBackend`]. See the module documentation.
pub struct TractBackend {
    rt: Arc<Runtime>,
    layout: Vec<CoeffLayout>,
    feeds: Vec<TokenFeed>,
    output: usize,
    task: TractTask,
    /// Small placeholder swapped into a task slot while its tensor is written.
    hole: TValue,
    inputs: Vec<TValue>,
    reallocations: u64,
}

impl TractBackend {
    /// Wraps `rt`, reading the hidden state from its first output. The base model's inputs
    /// must be among `input_ids`, `attention_mask` and `token_type_ids` (given as zeros).
    pub fn new(rt: Arc<Runtime>) -> Result<Self> {
        let feeds = TokenFeed::for_inputs(rt.input_names().iter().map(String::as_str))?;
        let mut layout = Vec::with_capacity(rt.coeff_inputs().len());
        let mut extra = Vec::with_capacity(2 * rt.coeff_inputs().len());
        let zeros = |shape: &[usize]| -> Result<TValue> {
            let n = shape.iter().product::<usize>();
            Tensor::from_shape(shape, &vec![0f32; n])
                .map(TValue::from)
                .map_err(|e| Error::Engine(format!("coefficient tensor {shape:?}: {e}")))
        };
        for ci in rt.coeff_inputs() {
            layout.push(ci.layout());
            extra.push(zeros(&[1, ci.k_a, ci.r])?);
            extra.push(zeros(&[1, ci.r, ci.k_b])?);
        }
        // Only `extra` is read by `run_task`; the data part stays empty (not in any store).
        let task = Task {
            data: TaskData {
                name: "finetune".into(),
                path: None,
                tensors: Vec::new(),
                head: None,
            },
            extra,
        };
        Ok(Self {
            rt,
            layout,
            feeds,
            output: 0,
            task,
            hole: zeros(&[1])?,
            inputs: Vec::new(),
            reallocations: 0,
        })
    }

    /// Reads the hidden state from the model's `i`-th output instead of the first.
    pub fn with_output(mut self, i: usize) -> Self {
        self.output = i;
        self
    }

    /// Coefficient tensors that had to be allocated anew because the engine still held the
    /// previous ones (0 in normal use: every write is in place).
    pub fn reallocations(&self) -> u64 {
        self.reallocations
    }

    /// The runtime (to serve tasks beside the one being trained).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Writes the flat parameters (α_A [r x K_A] then α_B [K_B x r] per module) into the
    /// private task as the graph wants them: α_Aᵀ [1, K_A, r] and α_Bᵀ [1, r, K_B].
    fn write_coeffs(&mut self, params: &[f32]) -> Result<()> {
        check_params(&self.layout, params)?;
        for (m, l) in self.layout.iter().enumerate() {
            let (a, b) = module_params(&self.layout, params, m);
            let (k_a, k_b, r) = (l.k_a, l.k_b, l.r);
            let fresh_a = write_slot(&mut self.task.extra[2 * m], &self.hole, &[1, k_a, r], |t| {
                write_alpha_a_t(l, a, t)
            })?;
            let fresh_b = write_slot(
                &mut self.task.extra[2 * m + 1],
                &self.hole,
                &[1, r, k_b],
                |t| write_alpha_b_t(l, b, t),
            )?;
            self.reallocations += u64::from(fresh_a) + u64::from(fresh_b);
        }
        Ok(())
    }
}

/// Overwrites the f32 tensor in `slot` through `fill`, in place when no one else holds it
/// (the usual case: the previous run has dropped its clones), else into a fresh tensor.
/// Returns whether a fresh tensor was allocated.
fn write_slot(
    slot: &mut TValue,
    hole: &TValue,
    shape: &[usize],
    fill: impl FnOnce(&mut [f32]),
) -> Result<bool> {
    let mut arc = std::mem::replace(slot, hole.clone()).into_arc_tensor();
    let fresh = Arc::get_mut(&mut arc).is_none();
    if fresh {
        let n = shape.iter().product::<usize>();
        arc = Arc::new(
            Tensor::from_shape(shape, &vec![0f32; n])
                .map_err(|e| Error::Engine(format!("coefficient tensor {shape:?}: {e}")))?,
        );
    }
    let t =
        Arc::get_mut(&mut arc).ok_or_else(|| Error::Internal("fresh tensor is shared".into()))?;
    let internal =
        |e: tract_onnx::prelude::TractError| Error::Internal(format!("coefficient tensor: {e}"));
    let mut view = t.try_as_plain_ram_mut().map_err(internal)?;
    fill(view.as_slice_mut::<f32>().map_err(internal)?);
    *slot = TValue::from_const(arc);
    Ok(fresh)
}

impl HiddenStateBackend for TractBackend {
    fn layout(&self) -> &[CoeffLayout] {
        &self.layout
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
        check_tokens(input_ids, attention_mask, batch, seq)?;
        self.write_coeffs(params)?;
        self.inputs.clear();
        let shape = [batch, seq];
        for f in &self.feeds {
            let t = match f {
                TokenFeed::Ids => Tensor::from_shape(&shape, input_ids),
                TokenFeed::Mask => Tensor::from_shape(&shape, attention_mask),
                TokenFeed::Zeros => Tensor::from_shape(&shape, &vec![0i64; batch * seq]),
            }
            .map_err(|e| Error::Engine(format!("token inputs {shape:?}: {e}")))?;
            self.inputs.push(t.into());
        }
        let outputs = self.rt.run_task(&self.inputs, &self.task)?;
        self.inputs.clear();
        let o = outputs.get(self.output).ok_or_else(|| {
            Error::Usage(format!(
                "the model has {} outputs; the hidden state was asked of output {}",
                outputs.len(),
                self.output
            ))
        })?;
        let d = hidden_width(o.shape(), batch, seq, &self.output.to_string())?;
        let view = o.to_plain_array_view::<f32>().map_err(|e| {
            Error::Usage(format!(
                "the model's hidden state is not an f32 tensor: {e}"
            ))
        })?;
        out.clear();
        // Iterating the view gives row-major order whatever the memory layout.
        out.extend(view.iter().copied());
        Ok(d)
    }
}
