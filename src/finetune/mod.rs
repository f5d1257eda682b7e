//! On-device personalization: train a new task's coefficients (and its linear head) on the
//! serving engine.
//!
//! The coefficients α_A, α_B of every module are trained either with exact gradients
//! ([`crate::serve::train::ExactGradient`]: training graphs built from the served model by
//! [`crate::graph::grad`] and run on the same engine) or, where a graph holds an op with no
//! gradient rule or on request, with SPSA estimates from forward passes only ([`zo`],
//! MeZO-style); the head's gradient is computed exactly from the pooled features ([`head`]). Both go through AdamW with a linear
//! warm-up and ReduceLROnPlateau ([`schedule`], the paper's Table 11), with early stopping on
//! the validation loss. Any backend plugs in through the small [`ForwardModel`] trait.
//!
//! ## Initialisation
//!
//! * α_A ~ N(0, 1/K_A) entrywise, so each row of Â = α_A·V_A has unit expected norm; α_B = 0.
//!   As in LoRA, ΔW = 0 at the start (the run starts from the base model) and the gradient
//!   reaches α_B at once.
//! * The head starts at zero (uniform predictions); its problem is convex, so nothing is lost.
//!   The coefficients then receive gradient from the first head update on.
//! * Zero-shot (the paper's ELoRAx^ZS): α_A as above and α_B ~ N(0, σ²) with
//!   σ = [`FinetuneConfig::zero_shot_b_std`]; the coefficients stay fixed and only the head
//!   trains (one forward pass per step).
//!
//! ## Cost
//!
//! With SPSA, a step with D directions takes 2·D + 1 forward passes of one batch (2 per direction, one
//! unperturbed for the head gradient and the reported loss); memory beyond the engine's is a
//! few vectors of the size of the coefficients plus one feature batch.
//!
//! ## Where things are
//!
//! * [`ForwardModel`], [`GradQuery`]: what the finetuner needs from a model (`model.rs`).
//! * [`FinetuneConfig`], [`GradMode`]: the settings of a run (`config.rs`).
//! * [`Objective`], [`Split`]: what is trained, on which examples (`objective.rs`).
//! * [`Finetuner`]: a run's state, its set-up and the trained task out (`finetuner.rs`); one
//!   optimisation step (`step.rs`); the training loop with evaluation, early stopping and
//!   pauses (`fit.rs`); the trainable vector against the model's buffer (`params.rs`).
//! * [`StepStats`], [`Eval`], [`Event`], [`FitReport`]: what a run reports (`report.rs`).

pub mod cache;
pub mod checkpoint;
mod config;
pub mod data;
mod finetuner;
mod fit;
pub mod head;
pub mod job;
pub mod lm;
mod model;
mod objective;
mod params;
pub mod pinned;
pub mod recipe;
mod report;
pub mod schedule;
pub mod seq;
mod step;
pub mod testing;
pub mod zo;

pub use crate::serve::train::Gradients;
pub use crate::task::CoeffLayout;
pub use config::{FinetuneConfig, GradMode, MAX_DIRECTIONS};
pub use finetuner::Finetuner;
pub use model::{ForwardModel, GradQuery};
pub use objective::{LossFn, Objective, Split};
pub use report::{Eval, Event, FitReport, StepStats};
