//! The decoder family: a causal LM built by [`crate::graph::llama`] (or exported the same
//! way: Optimum's input and output names), taking `input_ids`, `attention_mask`,
//! `position_ids`, one `past_key_values.<l>.key/.value` pair per layer and, in the graphs
//! this project builds, `logits_positions` (which positions get logits), and returning
//! `logits` then one `present.<l>.key/.value` pair per layer. A request keeps its KV cache:
//! the presents of one call are the pasts of the next.

use super::{LossReads, ModelFamily, TokenFeed};
use crate::error::{Error, Result};
use crate::graph::llama::{
    ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_POSITIONS, POSITION_IDS, past_key, past_value,
    present_key, present_value,
};
use crate::serve::input::{ElemType, InputSpec, InputTensor, OutputTensor, TensorData};

/// The shape of a decoder's KV cache and vocabulary, read from its declarations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoder {
    /// Layers (key/value pairs in the cache).
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Largest position the model takes (the rows of its rotary tables), when it declares one.
    pub max_position: Option<usize>,
    /// Whether the model takes [`LOGITS_POSITIONS`] (its last input): the logits are then
    /// computed at those positions only. Models imported before it existed, and Optimum's
    /// exports, compute them at every position.
    pub logits_positions: bool,
}

impl Decoder {
    /// The decoder whose inputs are `specs` and outputs `outputs` (in graph order): the
    /// token, mask and position inputs, then the past key/value pairs of layers 0, 1, …
    /// declared `[batch, kv_heads, past, head_dim]`, optionally `logits_positions` (int64,
    /// one dimension), and the outputs `logits` then the presents in the same order.
    /// Anything else is an error naming what differs.
    pub fn from_specs(specs: &[InputSpec], outputs: &[String]) -> Result<Decoder> {
        let bad = |m: String| Error::Usage(format!("expected a decoder model: {m}"));
        let (specs, logits_positions) = match specs.split_last() {
            Some((last, rest)) if last.name == LOGITS_POSITIONS => {
                if last.elem != ElemType::I64 || last.dims.len() != 1 {
                    return Err(bad(format!(
                        "`{LOGITS_POSITIONS}` declared int64 with one dimension, found {:?} {:?}",
                        last.elem, last.dims
                    )));
                }
                (rest, true)
            }
            _ => (specs, false),
        };
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if names.len() < 5 || names[..3] != [INPUT_IDS, ATTENTION_MASK, POSITION_IDS] {
            return Err(bad(format!(
                "inputs `{INPUT_IDS}`, `{ATTENTION_MASK}`, `{POSITION_IDS}` then `past_key_values.<layer>.key/.value`, found {names:?}"
            )));
        }
        let kv = &specs[3..];
        if !kv.len().is_multiple_of(2) {
            return Err(bad(format!(
                "a key and a value per layer, found {} cache inputs",
                kv.len()
            )));
        }
        let layers = kv.len() / 2;
        let (mut kv_heads, mut head_dim) = (None, None);
        for (l, pair) in kv.chunks(2).enumerate() {
            for (spec, want) in pair.iter().zip([past_key(l), past_value(l)]) {
                if spec.name != want {
                    return Err(bad(format!("input `{want}`, found `{}`", spec.name)));
                }
                match (spec.elem, spec.dims.as_slice()) {
                    (ElemType::F32, [_, Some(h), _, Some(d)]) => {
                        if kv_heads.is_some_and(|k| k != *h) || head_dim.is_some_and(|x| x != *d) {
                            return Err(bad(format!(
                                "every cache input shaped alike, `{want}` differs"
                            )));
                        }
                        kv_heads = Some(*h);
                        head_dim = Some(*d);
                    }
                    _ => {
                        return Err(bad(format!(
                            "`{want}` declared f32 [batch, kv_heads, past, head_dim] with fixed heads and width, found {:?} {:?}",
                            spec.elem, spec.dims
                        )));
                    }
                }
            }
        }
        let want_out: Vec<String> = std::iter::once(LOGITS.to_string())
            .chain((0..layers).flat_map(|l| [present_key(l), present_value(l)]))
            .collect();
        if outputs != want_out.as_slice() {
            return Err(bad(format!(
                "outputs `logits` then `present.<layer>.key/.value`, found {outputs:?}"
            )));
        }
        let max_position = specs[2].index_limit.as_ref().map(|l| l.rows);
        Ok(Decoder {
            layers,
            kv_heads: kv_heads.unwrap_or(0),
            head_dim: head_dim.unwrap_or(0),
            max_position,
            logits_positions,
        })
    }

    /// Floats one cached token takes in one row's cache.
    pub fn floats_per_token(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim
    }
}

impl ModelFamily for Decoder {
    fn name(&self) -> &'static str {
        "decoder"
    }

    /// Token ids, mask and positions of whole sequences, read from an empty cache.
    fn feeds(&self, inputs: &[&str]) -> Result<Vec<TokenFeed>> {
        let empty = TokenFeed::EmptyCache {
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        };
        let pasts: Vec<String> = (0..self.layers)
            .flat_map(|l| [past_key(l), past_value(l)])
            .collect();
        inputs
            .iter()
            .map(|&n| match n {
                INPUT_IDS => Ok(TokenFeed::Ids),
                ATTENTION_MASK => Ok(TokenFeed::Mask),
                POSITION_IDS => Ok(TokenFeed::Positions),
                LOGITS_POSITIONS => Ok(TokenFeed::EveryPosition),
                _ if pasts.iter().any(|p| p == n) => Ok(empty),
                _ => Err(Error::Usage(format!(
                    "a decoder takes `{INPUT_IDS}`, `{ATTENTION_MASK}`, `{POSITION_IDS}`, its cache and `{LOGITS_POSITIONS}`; found the input `{n}`"
                ))),
            })
            .collect()
    }

    /// The presents become the next call's pasts, under the input names.
    fn carry(&self, outputs: &[OutputTensor]) -> Vec<InputTensor> {
        outputs
            .iter()
            .skip(1)
            .zip((0..self.layers).flat_map(|l| [past_key(l), past_value(l)]))
            .map(|(o, name)| InputTensor {
                name,
                shape: o.shape.clone(),
                data: TensorData::F32(o.data.clone()),
            })
            .collect()
    }

    /// The logits, read at the answer tokens.
    fn loss_reads(&self, _outputs: &[String]) -> Result<LossReads> {
        Ok(LossReads {
            objective: super::Objective::NextToken,
            output: LOGITS.into(),
            mask: ATTENTION_MASK.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, elem: ElemType, dims: &[Option<usize>]) -> InputSpec {
        InputSpec {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
            index_limit: None,
        }
    }

    /// A one-layer decoder's inputs, with `last` appended when given.
    fn specs(last: Option<InputSpec>) -> Vec<InputSpec> {
        let kv = [None, Some(3), None, Some(8)];
        let mut v = vec![
            spec(INPUT_IDS, ElemType::I64, &[None, None]),
            spec(ATTENTION_MASK, ElemType::I64, &[None, None]),
            spec(POSITION_IDS, ElemType::I64, &[None, None]),
            spec(&past_key(0), ElemType::F32, &kv),
            spec(&past_value(0), ElemType::F32, &kv),
        ];
        v.extend(last);
        v
    }

    fn outputs() -> Vec<String> {
        vec![LOGITS.into(), present_key(0), present_value(0)]
    }

    #[test]
    fn logits_positions_is_an_optional_last_input_declared_int64_1d() {
        let old = Decoder::from_specs(&specs(None), &outputs()).expect("without");
        assert!(!old.logits_positions);
        assert_eq!((old.layers, old.kv_heads, old.head_dim), (1, 3, 8));
        let lp = spec(LOGITS_POSITIONS, ElemType::I64, &[None]);
        let new = Decoder::from_specs(&specs(Some(lp)), &outputs()).expect("with");
        assert!(new.logits_positions);
        assert_eq!((new.layers, new.kv_heads, new.head_dim), (1, 3, 8));
        let feeds = new.feeds(&[INPUT_IDS, LOGITS_POSITIONS]).expect("feeds");
        assert_eq!(feeds, [TokenFeed::Ids, TokenFeed::EveryPosition]);
        let t = TokenFeed::EveryPosition.input(LOGITS_POSITIONS, &[], &[], 2, 4);
        assert_eq!(t.shape, [4]);
        assert_eq!(t.data, TensorData::I64(vec![0, 1, 2, 3]));
        for bad in [
            spec(LOGITS_POSITIONS, ElemType::F32, &[None]),
            spec(LOGITS_POSITIONS, ElemType::I64, &[None, None]),
        ] {
            let e = Decoder::from_specs(&specs(Some(bad)), &outputs())
                .expect_err("bad declaration")
                .to_string();
            assert!(
                e.contains("`logits_positions` declared int64 with one dimension"),
                "{e}"
            );
        }
    }
}
