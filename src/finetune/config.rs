//! The settings of a finetuning run: [`FinetuneConfig`] and how the coefficients' gradient is
//! obtained ([`GradMode`]).

use super::schedule::PlateauConfig;
use super::zo::Direction;
use std::path::PathBuf;

/// Most SPSA directions per step ([`FinetuneConfig::directions`]): each costs two forward
/// passes of the batch, so more would make a single step run for hours.
pub const MAX_DIRECTIONS: usize = 4096;

/// How the coefficients' gradient is obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradMode {
    /// Exact reverse-mode gradients through a training graph on the engine, when the model has
    /// them ([`ForwardModel::has_exact_gradients`](super::ForwardModel::has_exact_gradients));
    /// SPSA otherwise.
    #[default]
    Exact,
    /// Forward-only SPSA estimates ([`zo`](super::zo)).
    Spsa,
}

impl GradMode {
    /// Checkpoints written before exact gradients existed trained with SPSA.
    fn legacy() -> Self {
        GradMode::Spsa
    }
}

/// Settings of a finetuning run. `Default` follows the paper's Table 11 where it says
/// something (lr 4e-3, weight decay 0.1, warm-up 6%, ReduceLROnPlateau).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinetuneConfig {
    /// Coefficient rank r (1..=each module's r).
    pub rank: usize,
    /// Train the head only, over fixed random coefficients (ELoRAx^ZS).
    pub zero_shot: bool,
    /// Seed of the initialisation, the directions and the data order.
    pub seed: u64,
    /// Peak learning rate of the coefficients.
    pub lr: f64,
    /// Peak learning rate of the head.
    pub head_lr: f64,
    /// Decoupled (AdamW) weight decay, on coefficients and head weights alike.
    pub weight_decay: f64,
    /// L2 penalty (l2/2)·‖W‖² added to the head loss (its gradient is exact).
    pub head_l2: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// SPSA perturbation ε.
    pub spsa_eps: f64,
    /// SPSA directions per step.
    pub directions: usize,
    /// SPSA direction distribution.
    pub direction: Direction,
    /// Examples per step.
    pub batch_size: usize,
    /// Examples per forward pass in [`Finetuner::evaluate`](super::Finetuner::evaluate).
    pub eval_batch: usize,
    /// Maximum optimisation steps of [`Finetuner::fit`](super::Finetuner::fit).
    pub max_steps: u64,
    /// Warm-up length as a fraction of `max_steps`.
    pub warmup_ratio: f64,
    /// ReduceLROnPlateau settings (monitors the validation loss).
    pub plateau: PlateauConfig,
    /// Steps between evaluations.
    pub eval_every: u64,
    /// Evaluations without improvement before stopping (0: never).
    pub early_stop_patience: usize,
    /// Steps between checkpoints (0: none).
    pub checkpoint_every: u64,
    /// Where checkpoints go.
    pub checkpoint_path: Option<PathBuf>,
    /// Standard deviation of the initial α_A entries (None: 1/√K_A).
    pub init_a_std: Option<f64>,
    /// Standard deviation of α_B in zero-shot mode.
    pub zero_shot_b_std: f64,
    /// Evaluate once before the first step, so that the starting point (e.g. a warm-started
    /// head) competes for "best": the restored result is then never worse on validation
    /// than where training started. Costs one evaluation.
    #[serde(default)]
    pub eval_at_start: bool,
    /// Exact gradients (default, where the model has them) or SPSA.
    #[serde(default = "GradMode::legacy")]
    pub grad: GradMode,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            rank: 4,
            zero_shot: false,
            seed: 0,
            lr: 4e-3,
            head_lr: 4e-3,
            weight_decay: 0.1,
            head_l2: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            spsa_eps: 1e-3,
            directions: 4,
            direction: Direction::Rademacher,
            batch_size: 16,
            eval_batch: 64,
            max_steps: 500,
            warmup_ratio: 0.06,
            plateau: PlateauConfig::default(),
            eval_every: 25,
            early_stop_patience: 6,
            checkpoint_every: 0,
            checkpoint_path: None,
            init_a_std: None,
            zero_shot_b_std: 0.1,
            eval_at_start: false,
            grad: GradMode::Exact,
        }
    }
}
