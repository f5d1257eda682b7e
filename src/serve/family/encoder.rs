//! The encoder family: a BERT-like model taking `input_ids`, `attention_mask` and
//! `token_type_ids`, whose last hidden state (the first output) is pooled over the attention
//! mask ([`crate::task::pool`]) and fed to a linear head ([`crate::task::head`]). A request
//! keeps nothing between calls.

use super::{LossReads, ModelFamily, TokenFeed};
use crate::error::{Error, Result};
use crate::serve::input::{InputTensor, OutputTensor};

/// The encoder family. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoder;

impl ModelFamily for Encoder {
    fn name(&self) -> &'static str {
        "encoder"
    }

    /// An input other than `input_ids`, `attention_mask` and `token_type_ids`, or no
    /// `input_ids`, is an error.
    fn feeds(&self, inputs: &[&str]) -> Result<Vec<TokenFeed>> {
        let feeds = inputs
            .iter()
            .map(|&n| match n {
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

    fn carry(&self, _outputs: &[OutputTensor]) -> Vec<InputTensor> {
        Vec::new()
    }

    /// The last hidden state (the first output), pooled over `attention_mask`.
    fn loss_reads(&self, outputs: &[String]) -> Result<LossReads> {
        let output = outputs
            .first()
            .cloned()
            .ok_or_else(|| Error::Usage("the model has no output".into()))?;
        Ok(LossReads {
            objective: super::Objective::PooledHead,
            output,
            mask: "attention_mask".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoder_feeds_token_inputs_keeps_nothing_and_trains_on_its_first_output() {
        let e = Encoder;
        assert_eq!(
            e.feeds(&["input_ids", "attention_mask", "token_type_ids"])
                .expect("feeds"),
            [TokenFeed::Ids, TokenFeed::Mask, TokenFeed::Zeros]
        );
        let err = e
            .feeds(&["input_ids", "past_key_values.0.key"])
            .unwrap_err();
        assert!(err.to_string().contains("past_key_values.0.key"), "{err}");
        assert!(e.feeds(&["attention_mask"]).is_err());
        let out = OutputTensor {
            name: "last_hidden_state".into(),
            shape: vec![1, 2, 3],
            data: vec![0.0; 6],
        };
        assert!(e.carry(&[out]).is_empty());
        let reads = e
            .loss_reads(&["last_hidden_state".into(), "pooler_output".into()])
            .expect("reads");
        assert_eq!(reads.output, "last_hidden_state");
        assert_eq!(reads.mask, "attention_mask");
        assert!(e.loss_reads(&[]).is_err());
    }
}
