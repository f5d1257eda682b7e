//! [`HiddenStateBackend`] over the tract [`Runtime`]: the finetuner's trial coefficients go
//! into one private [`TaskData`] buffer, allocated once and overwritten in place, then the
//! patched graph runs through [`Runtime::run_task`] exactly as a served task would.
//!
//! No method was added to the runtime: `run_task` takes any [`TaskData`], so the backend keeps
//! its own and never touches the shared task store. The runtime copies the buffer into
//! coefficient tensors from its pool, which the run gives back, so a warm call allocates no
//! coefficient tensor.

use super::runtime::{Runtime, TValue, Tensor};
use crate::error::{Error, Result};
use crate::serve::backend::HiddenView;
use crate::serve::family::{Encoder, ModelFamily, TokenFeed};
use crate::serve::hidden::{HiddenStateBackend, TokenBatch, hidden_width};
use crate::serve::store::TaskData;
use crate::task::{CoeffLayout, check_params, module_params, write_alpha_a_t, write_alpha_b_t};
use std::sync::Arc;

/// The tract runtime as a [`HiddenStateBackend`]. See the module documentation.
pub struct TractBackend {
    rt: Arc<Runtime>,
    layout: Vec<CoeffLayout>,
    feeds: Vec<TokenFeed>,
    output: usize,
    task: TaskData,
    inputs: Vec<TValue>,
}

impl TractBackend {
    /// Wraps `rt`, reading the hidden state from its first output. The base model's inputs
    /// must be among `input_ids`, `attention_mask` and `token_type_ids` (given as zeros).
    pub fn new(rt: Arc<Runtime>) -> Result<Self> {
        let names: Vec<&str> = rt.input_names().iter().map(String::as_str).collect();
        let feeds = Encoder.feeds(&names)?;
        let layout = rt.coeff_inputs().iter().map(|ci| ci.layout()).collect();
        let task = TaskData::zeros("finetune", rt.coeff_inputs());
        Ok(Self {
            rt,
            layout,
            feeds,
            output: 0,
            task,
            inputs: Vec::new(),
        })
    }

    /// Reads the hidden state from the model's `i`-th output instead of the first.
    pub fn with_output(mut self, i: usize) -> Self {
        self.output = i;
        self
    }

    /// Coefficient tensors allocated anew because the engine still held the previous ones:
    /// always 0 now that the runtime fills pooled tensors (kept for the API).
    pub fn reallocations(&self) -> u64 {
        0
    }

    /// The runtime (to serve tasks beside the one being trained).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Writes the flat parameters (α_A [r x K_A] then α_B [K_B x r] per module) into the
    /// private task as the graph wants them: α_Aᵀ [1, K_A, r] and α_Bᵀ [1, r, K_B].
    fn write_coeffs(&mut self, params: &[f32]) -> Result<()> {
        check_params(&self.layout, params)?;
        let slots = self.task.inputs_mut(self.rt.coeff_inputs());
        for (m, (l, (ta, tb))) in self.layout.iter().zip(slots).enumerate() {
            let (a, b) = module_params(&self.layout, params, m);
            write_alpha_a_t(l, a, ta);
            write_alpha_b_t(l, b, tb);
        }
        Ok(())
    }
}

impl HiddenStateBackend for TractBackend {
    fn layout(&self) -> &[CoeffLayout] {
        &self.layout
    }

    fn hidden(
        &mut self,
        tokens: TokenBatch<'_>,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        self.write_coeffs(params)?;
        let (input_ids, attention_mask) = (tokens.ids(), tokens.mask());
        let (batch, seq) = (tokens.batch(), tokens.seq());
        self.inputs.clear();
        let shape = [batch, seq];
        for f in &self.feeds {
            let t = match f {
                TokenFeed::Ids => Tensor::from_shape(&shape, input_ids),
                TokenFeed::Mask => Tensor::from_shape(&shape, attention_mask),
                TokenFeed::Zeros => Tensor::from_shape(&shape, &vec![0i64; batch * seq]),
                other => {
                    let x = other.input("", input_ids, attention_mask, batch, seq);
                    self.inputs.extend(super::to_tract(&[&x])?);
                    continue;
                }
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

impl HiddenView for TractBackend {
    fn set_output(&mut self, i: usize) {
        self.output = i;
    }

    fn reallocations(&self) -> u64 {
        TractBackend::reallocations(self)
    }
}
