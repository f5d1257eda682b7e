//! The finetuning recipe shared by `elx finetune` and [`crate::eval::loo`] (LP-FT): the head
//! alone first, with the coefficients fixed at zero (the base model; its features are cached
//! by [`super::cache::CachedFeatures`], so the steps are cheap), then the coefficients and
//! the head together, the head starting from the head-only solution. A warm-started joint run
//! evaluates its start first ([`FinetuneConfig::eval_at_start`]), so it ends no worse on
//! validation than the head alone.

use super::{FinetuneConfig, Finetuner, ForwardModel, GradMode, Objective, Split};

use crate::error::Result;

/// The defaults of `elx finetune` that differ from [`FinetuneConfig::default`], one set per
/// way of getting the gradient, kept here so that the CLI and the C API's
/// `elx_finetune_options_default` cannot drift apart. Both were measured on MiniLM
/// (BENCHMARKS.md, "On-device finetuning quality"): with exact gradients, the backprop
/// reference's own schedule (150 steps, head and coefficients at 4e-3, validation every 25
/// steps); with SPSA, 1500 steps with the head at 1e-4, so that it does not re-fit the training
/// set before the noisy estimates move the coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    /// Maximum optimisation steps.
    pub steps: u64,
    /// SPSA directions per step.
    pub directions: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate of the head while the coefficients train.
    pub head_lr: f64,
    /// Steps between evaluations.
    pub eval_every: u64,
}

impl Defaults {
    /// With exact gradients (the command line's and the C API's default).
    pub const EXACT: Defaults = Defaults {
        steps: 150,
        directions: 2,
        batch_size: 16,
        head_lr: 4e-3,
        eval_every: 25,
    };

    /// With SPSA.
    pub const SPSA: Defaults = Defaults {
        steps: 1500,
        directions: 2,
        batch_size: 16,
        head_lr: 1e-4,
        eval_every: 100,
    };

    /// The defaults for `grad`.
    pub fn for_gradient(grad: GradMode) -> Defaults {
        match grad {
            GradMode::Exact => Defaults::EXACT,
            GradMode::Spsa => Defaults::SPSA,
        }
    }
}

/// The head-only run of `steps` steps at `head_lr`, from `base`: coefficients fixed at zero
/// (zero-shot with no random α_B), no checkpoints.
pub fn head_only_config(base: &FinetuneConfig, steps: u64, head_lr: f64) -> FinetuneConfig {
    FinetuneConfig {
        zero_shot: true,
        zero_shot_b_std: 0.0,
        max_steps: steps,
        head_lr,
        checkpoint_every: 0,
        checkpoint_path: None,
        ..base.clone()
    }
}

/// Trains the head alone on `model` ([`head_only_config`]) and returns the fitted finetuner:
/// its head (`head()`) warm-starts [`joint`], and `into_model()` gives the model back.
pub fn fit_head_only<M: ForwardModel>(
    model: M,
    base: &FinetuneConfig,
    steps: u64,
    head_lr: f64,
    objective: Objective,
    train: Split,
    val: Option<Split>,
) -> Result<Finetuner<M>> {
    let cfg = head_only_config(base, steps, head_lr);
    let mut ft = Finetuner::new(model, cfg, objective, train, val)?;
    ft.fit(&mut |_| {})?;
    Ok(ft)
}

/// The joint run of coefficients and head with `cfg`, the head starting from `head` (the
/// parameters of a [`fit_head_only`] head) when given. Not fitted yet: the caller may resume
/// a checkpoint and chooses how to report progress.
pub fn joint<M: ForwardModel>(
    model: M,
    cfg: FinetuneConfig,
    objective: Objective,
    train: Split,
    val: Option<Split>,
    head: Option<&[f64]>,
) -> Result<Finetuner<M>> {
    let mut ft = Finetuner::new(model, cfg, objective, train, val)?;
    if let Some(p) = head {
        ft.warm_start_head(p)?;
    }
    Ok(ft)
}
