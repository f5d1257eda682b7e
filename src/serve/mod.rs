//! Stage 4b: serving the patched graph. [`store`] keeps every loaded task's coefficients once,
//! as one f32 buffer laid out for the graph's coefficient inputs; a task swap is then handing
//! the engine other coefficient values: nothing is rebuilt.
//!
//! * [`engine`]: [`Engine`], the one backend-neutral engine over an
//!   `Arc<dyn backend::EngineBackend>`.
//! * [`backend`]: the engine trait and one folder per engine (`tract/`, `ort/`); the choice
//!   of engine is compiled there and nowhere else.
//! * [`store`]: thread-safe store of prepared task coefficients.
//! * [`family`]: model families (what a model takes, what a request keeps, what the loss
//!   reads): the encoder and the decoder.
//! * [`generate`]: a decoder's requests, each with its task and KV cache, decoded in
//!   batches that mix tasks.
//! * [`hidden`]: the hidden-state view the finetuner trains through.
//! * [`train`]: exact gradients: training graphs run on the serving engine.
//! * [`input`]: text (tokenizer.json), .npy and safetensors inputs, pooling.
//! * [`job`]: the run job every face builds from one [`job::RunSpec`]: engine, tokenizer,
//!   tasks, pooled rows and predictions.

pub mod backend;
pub mod engine;
pub mod family;
pub mod generate;
pub mod hidden;
pub mod input;
pub mod job;
pub mod store;
pub mod train;

pub use backend::{Backend, ExecutionProvider};
pub use engine::{Engine, HiddenState, Session};
pub use store::{CoeffTensor, Task, TaskData, TaskId, TaskStore};
