//! `elx import-hf`: the ONNX graph of a BERT-family encoder built natively from a Hugging Face
//! checkpoint folder (`config.json` + `model.safetensors`), with no torch.
//!
//! The graph (opset 17) takes `input_ids`, `attention_mask` and `token_type_ids` (int64
//! `[batch, seq]`, both axes symbolic) and returns, in this order:
//!
//! 1. `last_hidden_state` `[batch, seq, hidden]`: exactly `BertModel`'s (word + position +
//!    token-type embeddings, LayerNorm, then per layer: self-attention with the additive mask
//!    `finfo(f32).min · (1 − mask)`, softmax, output dense + residual + LayerNorm, GELU (erf)
//!    feed-forward + residual + LayerNorm);
//! 2. `sentence_embedding` `[batch, hidden]`: the attention-mask mean of `last_hidden_state`,
//!    `Σ h·m / max(Σ m, 1e-9)`, without L2 normalisation (sentence-transformers' pooling).
//!
//! Every weight keeps its HF module name with the `bert.` prefix dropped, so that `elx bind`
//! resolves adapted modules by name (rule 1 of [`super::bind`]). Each linear layer's weight
//! `<module>.weight` is stored pre-transposed as `[in x out]` and feeds its MatMul directly
//! (no Transpose to fold at load time), followed by an Add of `<module>.bias`. All weights are
//! converted to f32 (F32, F16 and BF16 checkpoints are accepted).
//!
//! [`import_hf_file`] also copies the folder's [`COMPANION_FILES`] (the tokenizer and the
//! configuration a run reads) next to the ONNX it writes, so that `elx run --text` and
//! `elx finetune` find them beside the model without `--tokenizer`.
//!
//! Where things are: `config.json` read and checked ([`read_config`], `config.rs`), the
//! checkpoint's tensors (`weights.rs`), the encoder graph (`build.rs`) and the companion
//! files (`companions.rs`).

mod build;
mod companions;
mod config;
mod weights;

pub use companions::{COMPANION_FILES, Companions, copy_companions};
pub use config::{BertConfig, read_config};

use super::onnx;
use super::pb::ModelProto;
use crate::error::{Error, Result};
use build::build;
use companions::{plan_companions, write_companions};
use std::path::Path;
use weights::Weights;

/// An imported model: the ONNX graph and the configuration it was built from.
#[derive(Clone, Debug)]
pub struct ImportedModel {
    /// The ONNX model (weights inside, f32).
    pub model: ModelProto,
    /// The encoder's configuration.
    pub config: BertConfig,
    /// The files placed beside the written model ([`import_hf_file`]; empty from
    /// [`import_hf`], which writes nothing).
    pub companions: Companions,
}

/// Builds the ONNX model of the BERT encoder in `dir` (`config.json`, `model.safetensors`).
pub fn import_hf(dir: &Path) -> Result<ImportedModel> {
    let config_path = dir.join("config.json");
    let cfg = read_config(&config_path)?;
    let st_path = dir.join("model.safetensors");
    if !st_path.is_file() {
        return Err(Error::bad_file(
            &st_path,
            "expected the model weights as model.safetensors in the folder beside config.json, found none (a pytorch_model.bin must be converted first)",
        ));
    }
    let mut w = Weights::open(&st_path)?;
    let model = build(&cfg, &mut w)?;
    w.check_all_read()?;
    Ok(ImportedModel {
        model,
        config: cfg,
        companions: Companions::default(),
    })
}

/// Same as [`import_hf`], then writes the model to `out` and copies the folder's
/// [`COMPANION_FILES`] beside it ([`copy_companions`]), each atomically.
///
/// The companions are checked before the graph is built (a tokenizer that does not load, or
/// whose ids reach past the embedding table, is an error naming the file) and written
/// before the model, so that the model file, written last, is never newer than its
/// tokenizer: a caller that skips the import when the model is up to date also has the
/// tokenizer.
pub fn import_hf_file(dir: &Path, out: &Path) -> Result<ImportedModel> {
    let cfg = read_config(&dir.join("config.json"))?;
    let plan = plan_companions(dir, out, Some(&cfg))?;
    let mut m = import_hf(dir)?;
    m.companions = write_companions(plan)?;
    crate::util::write_atomic(out, &onnx::encode_model(&m.model))?;
    Ok(m)
}
