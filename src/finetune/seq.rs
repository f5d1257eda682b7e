//! A [`ForwardModel`] over tokenized examples for any engine that returns a last hidden
//! state: the engine implements [`HiddenStateBackend`] (run the patched graph with these
//! coefficient values), and [`SequenceModel`] does the batching, padding and masked mean
//! pooling. This keeps the tract and ONNX Runtime adapters to one method each.

use super::data::Example;
use super::{CoeffLayout, ForwardModel, GradQuery};
use crate::error::{Error, Result};
pub use crate::serve::hidden::{HiddenStateBackend, TokenBatch};
use crate::serve::train::{ExactGradient, Gradients};
use crate::serve::{Engine, HiddenState};
use crate::task::mean_pool;

/// Most rows per engine run of a forward pass: a larger batch runs in runs of rows of
/// similar length (sorted), so padding follows each run's longest row, and the activations
/// held at once stay those of this many rows.
pub const FORWARD_RUN: usize = 16;

/// Tokenized examples served through a [`HiddenStateBackend`], pooled by masked mean.
pub struct SequenceModel<B> {
    backend: B,
    examples: Vec<Example>,
    pad_id: i64,
    fixed_seq: Option<usize>,
    bucket_max: Option<usize>,
    ids: Vec<i64>,
    mask: Vec<i64>,
    hidden: Vec<f32>,
    exact: Option<ExactGradient>,
    exact_unavailable: Option<String>,
}

impl<B: HiddenStateBackend> SequenceModel<B> {
    /// Wraps `backend` over `examples`. Batches are padded with `pad_id` (mask 0) to their
    /// longest example, or to `fixed_seq` for engines with fixed shapes (TensorRT); an example
    /// longer than `fixed_seq` is refused here (truncate when reading the data instead).
    pub fn new(
        backend: B,
        examples: Vec<Example>,
        pad_id: i64,
        fixed_seq: Option<usize>,
    ) -> Result<Self> {
        if let Some(s) = fixed_seq
            && let Some(i) = examples.iter().position(|e| e.input_ids.len() > s)
        {
            return Err(Error::Usage(format!(
                "example {i} has {} tokens but the model's sequence length is {s}",
                examples[i].input_ids.len()
            )));
        }
        if let Some(i) = examples
            .iter()
            .position(|e| e.input_ids.len() != e.attention_mask.len())
        {
            return Err(Error::Usage(format!(
                "example {i}: input_ids and attention_mask differ in length"
            )));
        }
        Ok(Self {
            backend,
            examples,
            pad_id,
            fixed_seq,
            bucket_max: None,
            ids: Vec::new(),
            mask: Vec::new(),
            hidden: Vec::new(),
            exact: None,
            exact_unavailable: None,
        })
    }

    /// Pads each batch to the next power of two (at least 8) of its longest example, capped at
    /// `max`, instead of one fixed length: for engines that build one plan per input shape,
    /// this keeps the plans to a handful (lengths 8, 16, .., max) while short texts no longer
    /// pay for the longest one. Replaces `fixed_seq`. Examples longer than `max` are refused.
    pub fn bucketed(mut self, max: usize) -> Result<Self> {
        if let Some(i) = self.examples.iter().position(|e| e.input_ids.len() > max) {
            return Err(Error::Usage(format!(
                "example {i} has {} tokens but the longest bucket is {max}",
                self.examples[i].input_ids.len()
            )));
        }
        self.fixed_seq = None;
        self.bucket_max = Some(max.max(1));
        Ok(self)
    }

    /// The backend (e.g. to serve the trained task afterwards).
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Gives the model exact gradients ([`ForwardModel::loss_grad`]) through training graphs
    /// on the engine; batches are padded the same way as for [`ForwardModel::features`].
    pub fn with_exact_gradients(mut self, exact: ExactGradient) -> Result<Self> {
        if exact.layout() != self.backend.layout() {
            return Err(Error::Usage(
                "the exact-gradient engine and the hidden-state backend differ in layout".into(),
            ));
        }
        self.exact = Some(exact);
        // One training graph per padded length: bucket the lengths unless they are fixed.
        if self.fixed_seq.is_none() && self.bucket_max.is_none() {
            let longest = self.examples.iter().map(|e| e.input_ids.len()).max();
            self.bucket_max = Some(longest.unwrap_or(1).max(1));
        }
        Ok(self)
    }

    /// Pooled features of `batch` from one engine run, in batch order.
    fn run_features(
        &mut self,
        batch: &[usize],
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        let seq = self.pad(batch)?;
        let tokens = TokenBatch::new(&self.ids, &self.mask, batch.len(), seq)?;
        let d = self.backend.hidden(tokens, params, &mut self.hidden)?;
        mean_pool(&self.hidden, &self.mask, batch.len(), seq, d, out)?;
        Ok(d)
    }

    /// Pads the examples `batch` into `self.ids` / `self.mask`; returns the sequence length.
    fn pad(&mut self, batch: &[usize]) -> Result<usize> {
        let mut longest = 0;
        for &id in batch {
            let e = self
                .examples
                .get(id)
                .ok_or_else(|| Error::Usage(format!("no example {id}")))?;
            longest = longest.max(e.input_ids.len());
        }
        let seq = match (self.fixed_seq, self.bucket_max) {
            (Some(s), _) => s,
            (None, Some(max)) => longest.max(8).next_power_of_two().min(max),
            (None, None) => longest,
        };
        self.ids.clear();
        self.mask.clear();
        for &id in batch {
            let e = &self.examples[id];
            self.ids.extend_from_slice(&e.input_ids);
            self.mask.extend_from_slice(&e.attention_mask);
            let pad = seq - e.input_ids.len();
            self.ids.extend(std::iter::repeat_n(self.pad_id, pad));
            self.mask.extend(std::iter::repeat_n(0, pad));
        }
        Ok(seq)
    }
}

impl SequenceModel<HiddenState> {
    /// [`SequenceModel::on_engine`], with exact gradients when `grad` asks for them and the
    /// engine's graph can be differentiated. A graph with ops that have no gradient rule is
    /// not an error: the model then has no exact gradients (the finetuner uses SPSA) and
    /// [`SequenceModel::exact_unavailable`] says why.
    pub fn for_training(
        engine: &Engine,
        examples: Vec<Example>,
        pad_id: i64,
        max_len: usize,
        grad: super::GradMode,
    ) -> Result<Self> {
        let mut model = Self::on_engine(engine, examples, pad_id, max_len)?;
        if grad == super::GradMode::Exact {
            match ExactGradient::new(engine) {
                Ok(g) => model = model.with_exact_gradients(g)?,
                Err(Error::Unsupported(why)) => model.exact_unavailable = Some(why),
                Err(e) => return Err(e),
            }
        }
        Ok(model)
    }

    /// Runs up to `n` micro-batches of an exact-gradient step at once, one thread each
    /// ([`ExactGradient::with_threads`]); no effect without exact gradients.
    pub fn with_gradient_threads(mut self, n: usize) -> Self {
        self.exact = self.exact.map(|e| e.with_threads(n));
        self
    }

    /// Why exact gradients were asked for and are not available (then SPSA is used).
    pub fn exact_unavailable(&self) -> Option<&str> {
        self.exact_unavailable.as_deref()
    }

    /// Checks every id of `examples` and the padding id against the model's vocabulary (the
    /// rows of its embedding table), naming the culprit: `pad` says where the padding id
    /// came from ("--pad-id", "the padding id of tokenizer.json"), `name(i)` names example
    /// `i` ("train.jsonl line 3"). The engine refuses such ids too, but only by their
    /// position in a batch. [`SequenceModel::on_engine`] runs it with plain names.
    pub fn check_token_ids(
        engine: &Engine,
        examples: &[Example],
        pad_id: i64,
        pad: &str,
        name: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        let limit = engine.specs().ok().and_then(|specs| {
            specs
                .iter()
                .find(|s| s.name == "input_ids")
                .and_then(|s| s.index_limit.clone())
        });
        if let Some(limit) = limit {
            limit
                .check("input_ids", &[1], &[pad_id])
                .map_err(|e| Error::Usage(format!("{pad}: {e}")))?;
            for (i, e) in examples.iter().enumerate() {
                limit
                    .check("input_ids", &[e.input_ids.len()], &e.input_ids)
                    .map_err(|err| Error::Usage(format!("{}: {err}", name(i))))?;
            }
        }
        Ok(())
    }

    /// `examples` served by `engine`'s hidden-state backend, padded with `pad_id`. An engine
    /// that builds one plan per input shape ([`Engine::plans_per_shape`]) gets batches padded
    /// to power-of-two lengths up to `max_len` ([`SequenceModel::bucketed`]): a handful of
    /// plans; any other engine pads each batch to its longest example.
    pub fn on_engine(
        engine: &Engine,
        examples: Vec<Example>,
        pad_id: i64,
        max_len: usize,
    ) -> Result<Self> {
        Self::check_token_ids(engine, &examples, pad_id, "the padding id", &|i| {
            format!("example {}", i + 1)
        })?;
        let model = SequenceModel::new(engine.hidden_state()?, examples, pad_id, None)?;
        if engine.plans_per_shape() {
            model.bucketed(max_len)
        } else {
            Ok(model)
        }
    }
}

impl<B: HiddenStateBackend> ForwardModel for SequenceModel<B> {
    fn layout(&self) -> &[CoeffLayout] {
        self.backend.layout()
    }

    fn num_examples(&self) -> usize {
        self.examples.len()
    }

    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize> {
        if self.fixed_seq.is_some() || batch.len() <= FORWARD_RUN {
            return self.run_features(batch, params, out);
        }
        // Rows sorted by length, FORWARD_RUN at a time, each run padded to its own longest:
        // short texts no longer pay for the batch's longest. Rows come back in batch order.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&k| self.examples.get(batch[k]).map_or(0, |e| e.input_ids.len()));
        let (mut rows, mut pooled) = (Vec::with_capacity(FORWARD_RUN), Vec::new());
        let mut d = 0;
        out.clear();
        for run in order.chunks(FORWARD_RUN) {
            rows.clear();
            rows.extend(run.iter().map(|&k| batch[k]));
            d = self.run_features(&rows, params, &mut pooled)?;
            out.resize(batch.len() * d, 0.0);
            for (j, &k) in run.iter().enumerate() {
                out[k * d..(k + 1) * d].copy_from_slice(&pooled[j * d..(j + 1) * d]);
            }
        }
        Ok(d)
    }

    fn has_exact_gradients(&self) -> bool {
        self.exact.is_some()
    }

    fn loss_grad(&mut self, batch: &[usize], q: &GradQuery<'_>, out: &mut Gradients) -> Result<()> {
        let seq = self.pad(batch)?;
        let exact = self.exact.as_mut().ok_or_else(|| {
            Error::Unsupported("this model was built without exact gradients".into())
        })?;
        exact.loss_grad(
            &self.ids,
            &self.mask,
            batch.len(),
            seq,
            q.params,
            q.head_weight,
            q.head_bias,
            q.targets,
            q.weights,
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hidden state = embedding(id)·(1 + Σ params): checks padding, pooling and plumbing.
    struct Toy(Vec<CoeffLayout>);

    impl HiddenStateBackend for Toy {
        fn layout(&self) -> &[CoeffLayout] {
            &self.0
        }
        fn hidden(&mut self, t: TokenBatch<'_>, p: &[f32], out: &mut Vec<f32>) -> Result<usize> {
            let g = 1.0 + p.iter().sum::<f32>();
            out.clear();
            for &t in t.ids() {
                out.extend([t as f32 * g, if t == -1 { 1000.0 } else { 1.0 }]);
            }
            Ok(2)
        }
    }

    #[test]
    fn pads_and_pools() {
        let ex = |ids: &[i64]| Example {
            input_ids: ids.to_vec(),
            attention_mask: vec![1; ids.len()],
        };
        let layout = vec![CoeffLayout {
            name: "m".into(),
            k_a: 1,
            k_b: 1,
            r: 1,
        }];
        let mut m =
            SequenceModel::new(Toy(layout.clone()), vec![ex(&[2, 4]), ex(&[6])], -1, None).unwrap();
        let mut out = Vec::new();
        // The pad token (-1, second feature 1000) must not leak into the mean.
        assert_eq!(m.features(&[0, 1], &[0.5, 0.5], &mut out).unwrap(), 2);
        assert_eq!(out, [6.0, 1.0, 12.0, 1.0]);
        assert!(m.features(&[2], &[0.0, 0.0], &mut out).is_err());
        let e = SequenceModel::new(Toy(layout), vec![ex(&[1, 2, 3])], 0, Some(2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("3 tokens") && e.contains("length is 2"), "{e}");
        // Buckets: 8 for short batches, capped at the maximum; pooled values unchanged.
        let layout = m.backend().0.clone();
        let long: Vec<i64> = (1..=10).collect();
        let b = SequenceModel::new(Toy(layout.clone()), vec![ex(&[2, 4]), ex(&long)], -1, None)
            .unwrap()
            .bucketed(12)
            .unwrap();
        let mut b = b;
        assert_eq!(b.features(&[0], &[0.5, 0.5], &mut out).unwrap(), 2);
        assert_eq!(b.ids.len(), 8);
        assert_eq!(out, [6.0, 1.0]);
        b.features(&[0, 1], &[0.5, 0.5], &mut out).unwrap();
        assert_eq!(b.ids.len(), 2 * 12);
        assert_eq!(out, [6.0, 1.0, 11.0, 1.0]);
        let e = SequenceModel::new(Toy(layout), vec![ex(&long)], -1, None)
            .unwrap()
            .bucketed(9)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("10 tokens") && e.contains("bucket is 9"), "{e}");
    }

    /// A batch larger than one run is run sorted by length; the features come back in batch
    /// order, the same as row by row, and each run is padded to its own longest row.
    #[test]
    fn long_batches_run_sorted_by_length() {
        struct Lengths(Vec<CoeffLayout>, Vec<usize>);
        impl HiddenStateBackend for Lengths {
            fn layout(&self) -> &[CoeffLayout] {
                &self.0
            }
            fn hidden(
                &mut self,
                t: TokenBatch<'_>,
                _: &[f32],
                out: &mut Vec<f32>,
            ) -> Result<usize> {
                self.1.push(t.seq());
                out.clear();
                out.extend(t.ids().iter().map(|&t| t as f32));
                Ok(1)
            }
        }
        let layout = vec![CoeffLayout {
            name: "m".into(),
            k_a: 1,
            k_b: 1,
            r: 1,
        }];
        // Example i has 1 + (7 i mod 40) tokens, all equal to i.
        let n = 2 * FORWARD_RUN + 3;
        let examples: Vec<Example> = (0..n)
            .map(|i| {
                let len = 1 + (7 * i) % 40;
                Example {
                    input_ids: vec![i as i64; len],
                    attention_mask: vec![1; len],
                }
            })
            .collect();
        let mut m = SequenceModel::new(Lengths(layout, Vec::new()), examples, -1, None).unwrap();
        let batch: Vec<usize> = (0..n).rev().collect();
        let mut out = Vec::new();
        assert_eq!(m.features(&batch, &[0.0, 0.0], &mut out).unwrap(), 1);
        let expected: Vec<f32> = batch.iter().map(|&i| i as f32).collect();
        assert_eq!(out, expected);
        // Three runs, shortest first, each as long as its longest row.
        let mut lens: Vec<usize> = (0..n).map(|i| 1 + (7 * i) % 40).collect();
        lens.sort();
        let runs: Vec<usize> = lens.chunks(FORWARD_RUN).map(|c| c[c.len() - 1]).collect();
        assert_eq!(m.backend().1, runs);
        assert!(runs[0] < runs[2]);
    }
}
