//! [`HiddenStateBackend`] over the ONNX Runtime backend ([`OrtRuntime`]): the finetuner's
//! trial coefficients go into one private [`TaskData`] whose buffers are allocated once and
//! overwritten in place, then the patched graph runs through [`OrtRuntime::run_task`] on the
//! runtime's session (CPU, CUDA or TensorRT), exactly as a served task would.
//!
//! ONNX Runtime borrows the coefficient buffers for the run (no copy on our side); the token
//! inputs and the returned hidden state are copied once per call, as for any ORT run.

use super::runtime::OrtRuntime;
use crate::error::{Error, Result};
use crate::serve::backend::HiddenView;
use crate::serve::family::{Encoder, ModelFamily, TokenFeed};
use crate::serve::hidden::{HiddenStateBackend, TokenBatch, hidden_width};
use crate::serve::input::InputTensor;
use crate::serve::store::TaskData;
use crate::task::{CoeffLayout, check_params, module_params, write_alpha_a_t, write_alpha_b_t};
use std::sync::Arc;

/// The ONNX Runtime backend as a [`HiddenStateBackend`]. See the module documentation.
pub struct OrtBackend {
    rt: Arc<OrtRuntime>,
    layout: Vec<CoeffLayout>,
    feeds: Vec<(String, TokenFeed)>,
    output: usize,
    task: TaskData,
}

impl OrtBackend {
    /// Wraps `rt`, reading the hidden state from its first output. The base model's inputs
    /// must be among `input_ids`, `attention_mask` and `token_type_ids` (given as zeros).
    pub fn new(rt: Arc<OrtRuntime>) -> Result<Self> {
        let names: Vec<String> = rt.inputs().iter().map(|s| s.name.clone()).collect();
        let feeds = Encoder.feeds(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
        let layout = rt.coeff_inputs().iter().map(|ci| ci.layout()).collect();
        let task = TaskData::zeros("finetune", rt.coeff_inputs());
        Ok(Self {
            rt,
            layout,
            feeds: names.into_iter().zip(feeds).collect(),
            output: 0,
            task,
        })
    }

    /// Reads the hidden state from the model's `i`-th output instead of the first.
    pub fn with_output(mut self, i: usize) -> Self {
        self.output = i;
        self
    }

    /// The runtime (to serve tasks beside the one being trained).
    pub fn runtime(&self) -> &Arc<OrtRuntime> {
        &self.rt
    }
}

impl HiddenStateBackend for OrtBackend {
    fn layout(&self) -> &[CoeffLayout] {
        &self.layout
    }

    fn hidden(
        &mut self,
        tokens: TokenBatch<'_>,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        let (input_ids, attention_mask) = (tokens.ids(), tokens.mask());
        let (batch, seq) = (tokens.batch(), tokens.seq());
        check_params(&self.layout, params)?;
        let slots = self.task.inputs_mut(self.rt.coeff_inputs());
        for (m, (l, (ta, tb))) in self.layout.iter().zip(slots).enumerate() {
            let (a, b) = module_params(&self.layout, params, m);
            write_alpha_a_t(l, a, ta);
            write_alpha_b_t(l, b, tb);
        }
        let inputs: Vec<InputTensor> = self
            .feeds
            .iter()
            .map(|(name, f)| f.input(name, input_ids, attention_mask, batch, seq))
            .collect();
        let mut outputs = self.rt.run_task(&inputs, &self.task)?;
        let n = outputs.len();
        if self.output >= n {
            return Err(Error::Usage(format!(
                "the model has {n} outputs; the hidden state was asked of output {}",
                self.output
            )));
        }
        let o = outputs.swap_remove(self.output);
        let d = hidden_width(&o.shape, batch, seq, &format!("`{}`", o.name))?;
        *out = o.data;
        Ok(d)
    }
}

impl HiddenView for OrtBackend {
    fn set_output(&mut self, i: usize) {
        self.output = i;
    }
}
