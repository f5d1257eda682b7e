//! One home for per-task math, shared by serving, training and evaluation, so that the
//! paths cannot drift apart (a difference would be a training/serving skew):
//!
//! * [`coeffs`]: a task's [`Coefficients`] and their flat parameter layout.
//! * [`layout`]: [`CoeffLayout`] and the transpositions into the graph's coefficient inputs.
//! * [`pool`]: pooling of hidden states (mean, CLS, none), for serving and training.
//! * [`head`]: the classification [`Head`]: logits, softmax, cross-entropy, metrics.
//!
//! It depends on nothing but the error type, so every stage may use it.

pub mod coeffs;
pub mod head;
pub mod layout;
pub mod pool;

pub use coeffs::{Coefficients, layout_params};
pub use head::{Head, Metrics, Prediction, apply_head, head_metrics, softmax};
pub use layout::{CoeffLayout, check_params, module_params, write_alpha_a_t, write_alpha_b_t};
pub use pool::{Pooling, masked_mean, mean_pool, pool};
