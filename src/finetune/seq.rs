//! A [`ForwardModel`] over tokenized examples for any engine that returns a last hidden
//! state: the engine implements [`HiddenStateBackend`] (run the patched graph with these
//! coefficient values), and [`SequenceModel`] does the batching, padding and masked mean
//! pooling. This keeps the tract and ONNX Runtime adapters to one method each.

use super::data::Example;
use super::pool::mean_pool;
use super::{CoeffLayout, ForwardModel};
use crate::error::{Error, Result};

/// An inference engine whose adaptable inputs are the per-module coefficients.
pub trait HiddenStateBackend {
    /// Module layout (see [`ForwardModel::layout`]).
    fn layout(&self) -> &[CoeffLayout];

    /// Last hidden state [batch x seq x d] (row-major) of the padded token ids and attention
    /// mask [batch x seq], with the coefficient values `params` (layout of
    /// [`ForwardModel::features`]); written into `out` (cleared first). Returns d.
    fn hidden(
        &mut self,
        input_ids: &[i64],
        attention_mask: &[i64],
        batch: usize,
        seq: usize,
        params: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize>;
}

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
}

impl<B: HiddenStateBackend> ForwardModel for SequenceModel<B> {
    fn layout(&self) -> &[CoeffLayout] {
        self.backend.layout()
    }

    fn num_examples(&self) -> usize {
        self.examples.len()
    }

    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize> {
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
        let d = self.backend.hidden(
            &self.ids,
            &self.mask,
            batch.len(),
            seq,
            params,
            &mut self.hidden,
        )?;
        mean_pool(&self.hidden, &self.mask, batch.len(), seq, d, out)?;
        Ok(d)
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
        fn hidden(
            &mut self,
            ids: &[i64],
            mask: &[i64],
            b: usize,
            s: usize,
            p: &[f32],
            out: &mut Vec<f32>,
        ) -> Result<usize> {
            assert_eq!((ids.len(), mask.len()), (b * s, b * s));
            let g = 1.0 + p.iter().sum::<f32>();
            out.clear();
            for &t in ids {
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
}

/// Where a base-model input's values come from, for the engines behind
/// [`HiddenStateBackend`] (the finetuner feeds token ids only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFeed {
    /// `input_ids`: the padded token ids.
    Ids,
    /// `attention_mask`: 1 on tokens, 0 on padding.
    Mask,
    /// `token_type_ids`: all zeros (single-segment inputs).
    Zeros,
}

impl TokenFeed {
    /// The feed of each of a model's inputs, in order; an input other than `input_ids`,
    /// `attention_mask` and `token_type_ids`, or no `input_ids`, is an error.
    pub fn for_inputs<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<TokenFeed>> {
        let feeds = names
            .into_iter()
            .map(|n| match n {
                "input_ids" => Ok(TokenFeed::Ids),
                "attention_mask" => Ok(TokenFeed::Mask),
                "token_type_ids" => Ok(TokenFeed::Zeros),
                other => Err(Error::Usage(format!(
                    "finetuning feeds input_ids, attention_mask and token_type_ids; the model also takes `{other}`"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        if !feeds.contains(&TokenFeed::Ids) {
            return Err(Error::Usage(
                "finetuning needs a model with an `input_ids` input".into(),
            ));
        }
        Ok(feeds)
    }
}

/// Checks the token inputs of [`HiddenStateBackend::hidden`]: `batch` x `seq` of each.
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn check_tokens(ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<()> {
    if ids.len() != batch * seq || mask.len() != batch * seq {
        return Err(Error::Usage(format!(
            "expected {batch}x{seq} token ids and mask values, found {} and {}",
            ids.len(),
            mask.len()
        )));
    }
    Ok(())
}

/// The width d of a last hidden state of shape [batch, seq, d] read from output `output`.
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn hidden_width(
    shape: &[usize],
    batch: usize,
    seq: usize,
    output: &str,
) -> Result<usize> {
    match *shape {
        [b, s, d] if b == batch && s == seq => Ok(d),
        _ => Err(Error::Usage(format!(
            "expected a last hidden state [{batch}, {seq}, d] from output {output}, found shape {shape:?}"
        ))),
    }
}

/// Checks that `params` holds exactly the values of `layout` (see [`ForwardModel::features`]).
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn check_params(layout: &[CoeffLayout], params: &[f32]) -> Result<()> {
    let total: usize = layout.iter().map(CoeffLayout::len).sum();
    if params.len() != total {
        return Err(Error::Usage(format!(
            "expected {total} coefficient values for the model's layout, found {}",
            params.len()
        )));
    }
    Ok(())
}

/// Module `m`'s flat values (α_A [r x K_A] then α_B [K_B x r], row-major) from `params`,
/// already checked by [`check_params`].
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn module_params<'a>(
    layout: &[CoeffLayout],
    params: &'a [f32],
    m: usize,
) -> (&'a [f32], &'a [f32]) {
    let at: usize = layout[..m].iter().map(CoeffLayout::len).sum();
    let l = &layout[m];
    let (a, rest) = params[at..at + l.len()].split_at(l.r * l.k_a);
    (a, rest)
}

/// Writes α_A [r x K_A] as the graph's α_Aᵀ [1, K_A, r] into `dst`.
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn write_alpha_a_t(l: &CoeffLayout, a: &[f32], dst: &mut [f32]) {
    let (k_a, r) = (l.k_a, l.r);
    for j in 0..r {
        for k in 0..k_a {
            dst[k * r + j] = a[j * k_a + k];
        }
    }
}

/// Writes α_B [K_B x r] as the graph's α_Bᵀ [1, r, K_B] into `dst`.
#[cfg_attr(not(any(feature = "tract", feature = "ort")), allow(dead_code))]
pub(crate) fn write_alpha_b_t(l: &CoeffLayout, b: &[f32], dst: &mut [f32]) {
    let (k_b, r) = (l.k_b, l.r);
    for j in 0..r {
        for k in 0..k_b {
            dst[j * k_b + k] = b[k * r + j];
        }
    }
}
