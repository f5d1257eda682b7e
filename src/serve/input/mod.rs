//! Backend-neutral model inputs and outputs for `elx run`, one concept a file:
//!
//! * [`tensor`]: input declarations, input/output tensors (each engine converts them in its
//!   own folder, e.g. `serve::backend::tract::tensor`);
//! * [`text`]: text through a HF `tokenizer.json`;
//! * [`chat`]: chat messages through a model's chat template into a prompt;
//! * [`npy`]: the `.npy` parser;
//! * [`load`]: raw tensors from `.npy` or safetensors files.
//!
//! Pooling lives in [`crate::task::pool`], shared with training; a task's head in
//! [`crate::task::head`] (re-exported here).

pub mod chat;
pub mod load;
pub mod npy;
pub mod tensor;
pub mod text;

pub use crate::task::head::{Prediction, apply_head, softmax};
pub use chat::{ChatMessage, ChatTemplate};
pub use load::{assemble, load_tensors, read_safetensors};
pub use npy::{parse_npy, read_npy};
pub use tensor::{
    Batch, ElemType, InputSpec, InputTensor, OutputTensor, TensorData, check_inputs, input_specs,
    output_names,
};
pub use text::{DEFAULT_MAX_LENGTH, TextEncoder, find_tokenizer, tokenizer_beside};
