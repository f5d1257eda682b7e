//! Stage 4b: serving the patched graph. [`store`] keeps every loaded task's coefficients once,
//! as one f32 buffer laid out for the graph's coefficient inputs; a task swap is then handing
//! the engine other coefficient values: nothing is rebuilt.
//!
//! * [`engine`]: [`Engine`], the one backend-neutral engine (tract | ort behind it, the
//!   choice of engine compiled in one place).
//! * [`store`]: thread-safe store of prepared task coefficients.
//! * `tract` (feature `tract`): the pure-Rust CPU backend.
//! * [`ort`]: the ONNX Runtime backend (feature `ort`) and the execution-provider choice.
//! * [`hidden`]: the hidden-state backend the finetuner trains through.
//! * [`train`]: exact gradients: training graphs run on the serving engine.
//! * [`input`]: text (tokenizer.json), .npy and safetensors inputs, pooling.

pub mod engine;
pub mod hidden;
pub mod input;
pub mod ort;
pub mod store;
#[cfg(feature = "tract")]
pub mod tract;
pub mod train;

pub use engine::{Backend, Engine, HiddenState};
pub use store::{CoeffTensor, Task, TaskData, TaskId, TaskStore};
