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

pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod head;
pub mod job;
pub mod pinned;
pub mod recipe;
pub mod schedule;
pub mod seq;
pub mod testing;
pub mod zo;

use crate::bundle::{CoeffFile, Head, Provenance};
use crate::error::{Error, Result};
use crate::task::Coefficients;
use crate::util::GaussianRng;

use faer::Mat;
use head::LinearHead;
use schedule::{Adam, EarlyStopping, LrSchedule, PlateauConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zo::{Direction, SpsaScratch, SpsaSettings};

pub use crate::serve::train::Gradients;
pub use crate::task::CoeffLayout;

/// Most SPSA directions per step ([`FinetuneConfig::directions`]): each costs two forward
/// passes of the batch, so more would make a single step run for hours.
pub const MAX_DIRECTIONS: usize = 4096;

/// A forward-only model whose adaptable parameters are the per-module coefficients.
///
/// This is all the finetuner needs from a backend (tract, ONNX Runtime, or the pure-Rust
/// [`testing::TinyModel`]). The flat parameter vector holds, per module in
/// [`layout`](Self::layout) order, α_A [r x K_A] then α_B [K_B x r], both row-major (the
/// `.elxc` orientation), with r the layout's rank. Implementations copy it into their own
/// input tensors (transposing if their graph wants [K_A x r]).
pub trait ForwardModel {
    /// Module layout, in a fixed order.
    fn layout(&self) -> &[CoeffLayout];

    /// Number of examples the model can be asked about (ids are `0..num_examples()`).
    fn num_examples(&self) -> usize;

    /// Pooled features [n x d] (row-major) of the examples `batch` under the coefficient
    /// values `params`, written into `out` (cleared first); returns d. Must be deterministic.
    fn features(&mut self, batch: &[usize], params: &[f32], out: &mut Vec<f32>) -> Result<usize>;

    /// Whether [`loss_grad`](Self::loss_grad) is available (exact gradients).
    fn has_exact_gradients(&self) -> bool {
        false
    }

    /// The weighted cross-entropy of a linear head on the pooled features of `batch` and its
    /// exact gradients with respect to the coefficients (in the model's flat layout) and the
    /// head, into `out` (see [`GradQuery`]). Models without exact gradients keep this default,
    /// an [`Error::Unsupported`]; the finetuner then estimates by SPSA.
    fn loss_grad(
        &mut self,
        batch: &[usize],
        query: &GradQuery<'_>,
        out: &mut Gradients,
    ) -> Result<()> {
        let _ = (batch, query, out);
        Err(Error::Unsupported(
            "this model has no exact gradients".into(),
        ))
    }
}

/// The values [`ForwardModel::loss_grad`] differentiates at.
#[derive(Clone, Copy, Debug)]
pub struct GradQuery<'a> {
    /// Coefficients in the model's flat layout ([`ForwardModel::features`]).
    pub params: &'a [f32],
    /// Head weights [classes x d], row-major.
    pub head_weight: &'a [f32],
    /// Head biases [classes].
    pub head_bias: &'a [f32],
    /// Target distribution per example [n x classes] (one-hot for labels).
    pub targets: &'a [f32],
    /// Weight of each example's cross-entropy [n] (1/n for the mean).
    pub weights: &'a [f32],
}

/// How the coefficients' gradient is obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradMode {
    /// Exact reverse-mode gradients through a training graph on the engine, when the model
    /// has them ([`ForwardModel::has_exact_gradients`]); SPSA otherwise.
    #[default]
    Exact,
    /// Forward-only SPSA estimates ([`zo`]).
    Spsa,
}

impl GradMode {
    /// Checkpoints written before exact gradients existed trained with SPSA.
    fn legacy() -> Self {
        GradMode::Spsa
    }
}

/// Examples of one split: model example ids and, for classification, their class indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Example ids understood by the model.
    pub ids: Vec<usize>,
    /// Class index per example (empty for a custom objective that does not use labels).
    pub labels: Vec<usize>,
}

/// A user loss on raw features: `(features [n x d], example ids) -> mean loss`.
pub type LossFn = Box<dyn Fn(&[f32], &[usize]) -> f64>;

/// What is trained.
pub enum Objective {
    /// Softmax cross-entropy of a linear head over `classes` classes (head trained exactly,
    /// coefficients by SPSA on the current head's loss).
    Classify {
        /// Number of classes (≥ 2).
        classes: usize,
    },
    /// A user loss on the features (regression, metric learning, ...); no head.
    Custom(LossFn),
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
    /// Examples per forward pass in [`Finetuner::evaluate`].
    pub eval_batch: usize,
    /// Maximum optimisation steps of [`Finetuner::fit`].
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

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Steps taken after this one.
    pub step: u64,
    /// Training loss on the batch at the parameters before the update.
    pub loss: f64,
    /// Batch accuracy before the update (classification only).
    pub accuracy: Option<f64>,
    /// Learning rate of the coefficients used for this update.
    pub lr: f64,
    /// RMS of the SPSA projected derivatives (0 in zero-shot mode).
    pub rms_projection: f64,
    /// Forward passes this step took.
    pub forward_passes: u64,
}

/// An evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    /// The objective's mean loss (the cross-entropy, for classification).
    pub loss: f64,
    /// Mean cross-entropy (classification).
    pub cross_entropy: Option<f64>,
    /// Accuracy (classification).
    pub accuracy: Option<f64>,
    /// Examples evaluated.
    pub examples: usize,
}

/// Progress events of [`Finetuner::fit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// A step was taken.
    Step(StepStats),
    /// An evaluation: its result (None when there is no validation split: then `metric` is the
    /// mean training loss since the last evaluation), and whether it was a new best.
    Eval {
        /// Step count at the evaluation.
        step: u64,
        /// The validation result, if there is a validation split.
        val: Option<Eval>,
        /// The monitored metric.
        metric: f64,
        /// Whether it is the best so far.
        best: bool,
    },
    /// A checkpoint was written.
    Checkpoint(u64),
}

/// How a [`Finetuner::fit`] call ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitReport {
    /// Steps taken in total.
    pub steps: u64,
    /// Forward passes in total (training and evaluation).
    pub forward_passes: u64,
    /// Best monitored metric (validation loss, or training loss without validation).
    pub best_metric: f64,
    /// Step at which it was measured (the restored parameters).
    pub best_step: u64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether [`Finetuner::fit_until`] paused the run before its end (the parameters are
    /// then the current ones, not the best; continue with another `fit_until` or `fit`, in
    /// this process or after [`Finetuner::resume`]).
    pub paused: bool,
}

/// Where one module's coefficients sit in the trainable vector and in the model's buffer.
#[derive(Clone, Debug)]
struct Block {
    name: String,
    k_a: usize,
    k_b: usize,
    r_model: usize,
    theta: usize,
    buf: usize,
}

/// Copies the trainable rank-r coefficients into the model's rank-r_model f32 buffer (the
/// padding stays zero from construction).
fn write_params(blocks: &[Block], rank: usize, theta: &[f64], buf: &mut [f32]) {
    for b in blocks {
        let a_len = rank * b.k_a;
        for (dst, src) in buf[b.buf..b.buf + a_len]
            .iter_mut()
            .zip(&theta[b.theta..b.theta + a_len])
        {
            *dst = *src as f32;
        }
        let bb = b.buf + b.r_model * b.k_a;
        let tb = b.theta + a_len;
        for i in 0..b.k_b {
            for j in 0..rank {
                buf[bb + i * b.r_model + j] = theta[tb + i * rank + j] as f32;
            }
        }
    }
}

/// The forward state the loss needs, borrowed field by field so the SPSA closure can hold it
/// while the optimizer state is borrowed elsewhere.
struct Forward<'a, M> {
    model: &'a mut M,
    blocks: &'a [Block],
    rank: usize,
    buf: &'a mut Vec<f32>,
    feats: &'a mut Vec<f32>,
    dim: usize,
    passes: &'a mut u64,
}

impl<M: ForwardModel> Forward<'_, M> {
    fn run(&mut self, ids: &[usize], theta: &[f64]) -> Result<()> {
        write_params(self.blocks, self.rank, theta, self.buf);
        let d = self.model.features(ids, self.buf, self.feats)?;
        *self.passes += 1;
        if d != self.dim || self.feats.len() != ids.len() * d {
            return Err(Error::Usage(format!(
                "model returned {} feature values of dimension {d} for {} examples (expected dimension {})",
                self.feats.len(),
                ids.len(),
                self.dim
            )));
        }
        if let Some(i) = self.feats.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "model returned a non-finite feature at index {i}"
            )));
        }
        Ok(())
    }
}

/// Trains one task's coefficients and head. See the module documentation.
pub struct Finetuner<M: ForwardModel> {
    model: M,
    cfg: FinetuneConfig,
    objective: Objective,
    train: Split,
    val: Option<Split>,
    blocks: Vec<Block>,
    dim: usize,
    theta: Vec<f64>,
    head: Option<LinearHead>,
    adam_theta: Adam,
    adam_head: Adam,
    sched: LrSchedule,
    early: EarlyStopping,
    best_theta: Vec<f64>,
    best_head: Vec<f64>,
    step: u64,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
    forward_passes: u64,
    stopped: bool,
    window_sum: f64,
    window_n: u64,
    /// The caller's part of the checkpoint fingerprint ([`Finetuner::set_run_identity`]).
    identity: String,
    // Scratch, reused every step.
    buf: Vec<f32>,
    feats: Vec<f32>,
    grad_theta: Vec<f64>,
    grad_head: Vec<f64>,
    spsa: SpsaScratch,
    exact: Gradients,
    targets: Vec<f32>,
    ids: Vec<usize>,
    labels: Vec<usize>,
}

fn check_split<M: ForwardModel>(
    model: &M,
    s: &Split,
    what: &str,
    classes: Option<usize>,
) -> Result<()> {
    if s.ids.is_empty() {
        return Err(Error::Usage(format!("{what} split is empty")));
    }
    let n = model.num_examples();
    if let Some(i) = s.ids.iter().position(|&id| id >= n) {
        return Err(Error::Usage(format!(
            "{what} example {i}: id {} but the model holds {n} examples",
            s.ids[i]
        )));
    }
    if let Some(c) = classes {
        if s.labels.len() != s.ids.len() {
            return Err(Error::Usage(format!(
                "{what} split: {} labels for {} examples",
                s.labels.len(),
                s.ids.len()
            )));
        }
        if let Some(i) = s.labels.iter().position(|&y| y >= c) {
            return Err(Error::Usage(format!(
                "{what} example {i}: label {} but the task has {c} classes",
                s.labels[i]
            )));
        }
    }
    Ok(())
}

impl<M: ForwardModel> Finetuner<M> {
    /// Sets up a run: checks the settings and the data against the model, initialises the
    /// coefficients (see the module documentation) and probes the feature dimension with one
    /// forward pass.
    pub fn new(
        mut model: M,
        cfg: FinetuneConfig,
        objective: Objective,
        train: Split,
        val: Option<Split>,
    ) -> Result<Self> {
        let bad = |m: &str| Err(Error::Usage(format!("finetune settings: {m}")));
        if cfg.batch_size == 0 || cfg.eval_batch == 0 || cfg.eval_every == 0 {
            return bad("batch_size, eval_batch and eval_every must be at least 1");
        }
        if cfg.directions == 0 || !(cfg.spsa_eps > 0.0 && cfg.spsa_eps.is_finite()) {
            return bad("need at least one SPSA direction and spsa_eps > 0");
        }
        if cfg.directions > MAX_DIRECTIONS {
            return Err(Error::Usage(format!(
                "finetune settings: {} SPSA directions per step; expected at most {MAX_DIRECTIONS} (each costs two forward passes of a batch per step)",
                cfg.directions
            )));
        }
        if !(cfg.lr > 0.0 && cfg.head_lr > 0.0 && cfg.lr.is_finite() && cfg.head_lr.is_finite()) {
            return bad("learning rates must be positive and finite");
        }
        // Decoupled weight decay multiplies the weights by (1 - lr·wd) each step: at
        // lr·wd >= 1 that flips their sign, and beyond 2 it grows them without bound.
        if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
            return bad("weight_decay must be finite and >= 0");
        }
        for (what, lr) in [("lr", cfg.lr), ("head_lr", cfg.head_lr)] {
            if lr * cfg.weight_decay >= 1.0 {
                return Err(Error::Usage(format!(
                    "finetune settings: {what} {lr:e} x weight decay {:e} = {:e}; expected below 1 (AdamW's decay multiplies the weights by 1 - lr x wd each step, so they would flip sign and diverge); lower the learning rate",
                    cfg.weight_decay,
                    lr * cfg.weight_decay
                )));
            }
        }
        if !(0.0..1.0).contains(&cfg.plateau.factor) || cfg.plateau.factor == 0.0 {
            return bad("plateau factor must be in (0, 1)");
        }
        let classes = match &objective {
            Objective::Classify { classes } if *classes < 2 => {
                return bad("a classifier needs at least 2 classes");
            }
            Objective::Classify { classes } => Some(*classes),
            Objective::Custom(_) => None,
        };
        if cfg.zero_shot && classes.is_none() {
            return bad(
                "zero-shot mode trains the head only, so it needs the classification objective",
            );
        }
        let layout = model.layout().to_vec();
        if layout.is_empty() {
            return bad("the model exposes no adapted modules");
        }
        let mut blocks = Vec::with_capacity(layout.len());
        let (mut nt, mut nb) = (0, 0);
        for l in &layout {
            if cfg.rank == 0 || cfg.rank > l.r {
                return Err(Error::Usage(format!(
                    "rank {} is out of range for module {} (1..={})",
                    cfg.rank, l.name, l.r
                )));
            }
            blocks.push(Block {
                name: l.name.clone(),
                k_a: l.k_a,
                k_b: l.k_b,
                r_model: l.r,
                theta: nt,
                buf: nb,
            });
            nt += cfg.rank * (l.k_a + l.k_b);
            nb += l.len();
        }
        check_split(&model, &train, "training", classes)?;
        if let Some(v) = &val {
            check_split(&model, v, "validation", classes)?;
        }

        // Initialisation (documented in the module docs).
        let mut rng = GaussianRng::new(cfg.seed ^ 0x1A17_C0EF_F1C1_E475);
        let mut theta = vec![0.0; nt];
        for b in &blocks {
            let sa = cfg.init_a_std.unwrap_or(1.0 / (b.k_a.max(1) as f64).sqrt());
            let a_len = cfg.rank * b.k_a;
            for t in &mut theta[b.theta..b.theta + a_len] {
                *t = sa * rng.next_normal();
            }
            if cfg.zero_shot {
                for t in &mut theta[b.theta + a_len..b.theta + a_len + cfg.rank * b.k_b] {
                    *t = cfg.zero_shot_b_std * rng.next_normal();
                }
            }
        }

        let mut buf = vec![0.0f32; nb];
        let mut feats = Vec::new();
        write_params(&blocks, cfg.rank, &theta, &mut buf);
        let dim = model.features(&train.ids[..1], &buf, &mut feats)?;
        if dim == 0 || feats.len() != dim {
            return Err(Error::Usage(format!(
                "model returned {} values of dimension {dim} for one example",
                feats.len()
            )));
        }
        let head = classes.map(|c| LinearHead::zeros(c, dim));
        let nh = head.as_ref().map_or(0, |h| h.params().len());
        let warmup = (cfg.warmup_ratio.max(0.0) * cfg.max_steps as f64).ceil() as u64;
        Ok(Self {
            adam_theta: Adam::new(nt, cfg.beta1, cfg.beta2, cfg.adam_eps),
            adam_head: Adam::new(nh, cfg.beta1, cfg.beta2, cfg.adam_eps),
            sched: LrSchedule::new(cfg.lr, warmup, cfg.plateau),
            early: EarlyStopping::new(cfg.early_stop_patience),
            best_theta: theta.clone(),
            best_head: head.as_ref().map_or(Vec::new(), |h| h.params().to_vec()),
            grad_theta: vec![0.0; nt],
            grad_head: vec![0.0; nh],
            model,
            cfg,
            objective,
            train,
            val,
            blocks,
            dim,
            theta,
            head,
            step: 0,
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
            forward_passes: 0,
            stopped: false,
            window_sum: 0.0,
            window_n: 0,
            identity: String::new(),
            buf,
            feats,
            spsa: SpsaScratch::default(),
            exact: Gradients::default(),
            targets: Vec::new(),
            ids: Vec::new(),
            labels: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &FinetuneConfig {
        &self.cfg
    }

    /// The model (e.g. to serve it after training).
    pub fn model(&mut self) -> &mut M {
        &mut self.model
    }

    /// Ends the run and hands the model back (e.g. to evaluate another task on it).
    pub fn into_model(self) -> M {
        self.model
    }

    /// The trainable coefficients, per module α_A [r x K_A] then α_B [K_B x r], row-major.
    pub fn params(&self) -> &[f64] {
        &self.theta
    }

    /// The head, for classification.
    pub fn head(&self) -> Option<&LinearHead> {
        self.head.as_ref()
    }

    /// Starts the head from `params` (the [`LinearHead::params`] layout: weights
    /// [classes x dim] row-major, then biases) instead of zeros: e.g. a head-only solution, so
    /// that the coefficients are trained from the best linear probe (LP-FT). Only before the
    /// first step.
    pub fn warm_start_head(&mut self, params: &[f64]) -> Result<()> {
        if self.step > 0 {
            return Err(Error::Usage(
                "the head can only be warm-started before the first step".into(),
            ));
        }
        let head = self
            .head
            .as_mut()
            .ok_or_else(|| Error::Usage("this objective has no head to warm-start".into()))?;
        if params.len() != head.params().len() || params.iter().any(|v| !v.is_finite()) {
            return Err(Error::Usage(format!(
                "expected {} finite head parameters ({} classes x {} features + biases), found {}",
                head.params().len(),
                head.classes(),
                head.dim(),
                params.len()
            )));
        }
        head.params_mut().copy_from_slice(params);
        self.best_head.copy_from_slice(params);
        Ok(())
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Forward passes made so far (training and evaluation).
    pub fn forward_passes(&self) -> u64 {
        self.forward_passes
    }

    /// Feature dimension of the model.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// One optimisation step on the training examples at positions `batch` of the training
    /// split: the head's exact gradient at the current coefficients, the coefficients' SPSA
    /// estimate under the current head (or the custom loss), then one AdamW update of each.
    pub fn step(&mut self, batch: &[usize]) -> Result<StepStats> {
        if batch.is_empty() {
            return Err(Error::Usage("empty batch".into()));
        }
        if self.gradient() == GradMode::Exact && !self.cfg.zero_shot {
            return self.exact_step(batch);
        }
        let Self {
            model,
            cfg,
            objective,
            train,
            blocks,
            dim,
            theta,
            head,
            step,
            forward_passes,
            buf,
            feats,
            grad_theta,
            grad_head,
            spsa,
            ids,
            labels,
            ..
        } = self;
        ids.clear();
        labels.clear();
        for &p in batch {
            let id = *train.ids.get(p).ok_or_else(|| {
                Error::Usage(format!(
                    "batch position {p} beyond the {} training examples",
                    train.ids.len()
                ))
            })?;
            ids.push(id);
            if let Some(&y) = train.labels.get(p) {
                labels.push(y);
            }
        }
        let passes0 = *forward_passes;
        let mut fwd = Forward {
            model,
            blocks,
            rank: cfg.rank,
            buf,
            feats,
            dim: *dim,
            passes: forward_passes,
        };
        let objective = &*objective;
        let (loss, accuracy) = match (objective, head.as_mut()) {
            (Objective::Classify { .. }, Some(h)) => {
                fwd.run(ids, theta)?;
                let hl = h.loss_grad(fwd.feats, labels, cfg.head_l2, Some(grad_head))?;
                (hl.loss, Some(hl.correct as f64 / ids.len() as f64))
            }
            (Objective::Custom(f), _) => {
                fwd.run(ids, theta)?;
                (f(fwd.feats, ids), None)
            }
            (Objective::Classify { .. }, None) => {
                return Err(Error::Usage("classifier without a head".into()));
            }
        };
        if !loss.is_finite() {
            return Err(Error::Numeric(format!(
                "training loss is {loss} at step {step}"
            )));
        }
        let mut rms = 0.0;
        if !cfg.zero_shot {
            let settings = SpsaSettings {
                eps: cfg.spsa_eps,
                directions: cfg.directions,
                kind: cfg.direction,
                seed: cfg.seed,
                step: *step,
            };
            let mut loss_at = |p: &[f64]| -> Result<f64> {
                fwd.run(ids, p)?;
                match (objective, head.as_mut()) {
                    (Objective::Custom(f), _) => Ok(f(fwd.feats, ids)),
                    (_, Some(h)) => Ok(h.loss_grad(fwd.feats, labels, cfg.head_l2, None)?.loss),
                    (_, None) => Err(Error::Usage("classifier without a head".into())),
                }
            };
            rms =
                zo::spsa_estimate(theta, &settings, spsa, &mut loss_at, grad_theta)?.rms_projection;
        }
        let passes = *forward_passes - passes0;
        let lr = self.apply_gradients(loss)?;
        Ok(StepStats {
            step: self.step,
            loss,
            accuracy,
            lr,
            rms_projection: rms,
            forward_passes: passes,
        })
    }

    /// How this run obtains the coefficients' gradient: [`GradMode::Exact`] when asked for
    /// and the model has exact gradients for the objective (classification), else SPSA.
    pub fn gradient(&self) -> GradMode {
        let classify = matches!(self.objective, Objective::Classify { .. });
        if self.cfg.grad == GradMode::Exact && classify && self.model.has_exact_gradients() {
            GradMode::Exact
        } else {
            GradMode::Spsa
        }
    }

    /// [`Finetuner::step`] with exact gradients: one run of the training graph gives the
    /// pooled features and d CE / d coefficients; the head's gradient (and the reported loss
    /// and accuracy) come from the same features through [`LinearHead::loss_grad`].
    fn exact_step(&mut self, batch: &[usize]) -> Result<StepStats> {
        let Self {
            model,
            cfg,
            train,
            blocks,
            theta,
            head,
            step,
            forward_passes,
            buf,
            grad_theta,
            grad_head,
            exact,
            targets,
            ids,
            labels,
            ..
        } = self;
        let h = head
            .as_mut()
            .ok_or_else(|| Error::Internal("exact step without a head".into()))?;
        ids.clear();
        labels.clear();
        for &p in batch {
            let (id, y) = train.ids.get(p).zip(train.labels.get(p)).ok_or_else(|| {
                Error::Usage(format!(
                    "batch position {p} beyond the {} training examples",
                    train.ids.len()
                ))
            })?;
            ids.push(*id);
            labels.push(*y);
        }
        let (n, classes, dim) = (ids.len(), h.classes(), h.dim());
        targets.clear();
        targets.resize(n * classes, 0.0);
        for (i, &y) in labels.iter().enumerate() {
            targets[i * classes + y] = 1.0;
        }
        let weights = vec![1.0 / n as f32; n];
        let hw: Vec<f32> = h.params().iter().map(|&v| v as f32).collect();
        write_params(blocks, cfg.rank, theta, buf);
        let query = GradQuery {
            params: buf,
            head_weight: &hw[..classes * dim],
            head_bias: &hw[classes * dim..],
            targets,
            weights: &weights,
        };
        model.loss_grad(ids, &query, exact)?;
        *forward_passes += 1;
        if exact.pooled.len() != n * dim || exact.params.len() != buf.len() {
            return Err(Error::Internal(format!(
                "exact gradients: {} features for {n}x{dim}, {} gradient values for {}",
                exact.pooled.len(),
                exact.params.len(),
                buf.len()
            )));
        }
        let hl = h.loss_grad(&exact.pooled, labels, cfg.head_l2, Some(grad_head))?;
        if !hl.loss.is_finite() {
            return Err(Error::Numeric(format!(
                "training loss is {} at step {step}",
                hl.loss
            )));
        }
        // The model's rank-r_model layout -> the trained rank-`rank` coefficients.
        let rank = cfg.rank;
        for b in blocks.iter() {
            for j in 0..rank {
                for k in 0..b.k_a {
                    grad_theta[b.theta + j * b.k_a + k] =
                        f64::from(exact.params[b.buf + j * b.k_a + k]);
                }
            }
            let (tb, gb) = (b.theta + rank * b.k_a, b.buf + b.r_model * b.k_a);
            for i in 0..b.k_b {
                for j in 0..rank {
                    grad_theta[tb + i * rank + j] = f64::from(exact.params[gb + i * b.r_model + j]);
                }
            }
        }
        let lr = self.apply_gradients(hl.loss)?;
        Ok(StepStats {
            step: self.step,
            loss: hl.loss,
            accuracy: Some(hl.correct as f64 / n as f64),
            lr,
            rms_projection: 0.0,
            forward_passes: 1,
        })
    }

    /// One AdamW update from `grad_theta` (unless zero-shot) and `grad_head` at the scheduled
    /// rate; the head follows the same schedule scaled to its own peak rate, its bias not
    /// decayed. Advances the step and the loss window; returns the coefficients' rate. The
    /// updated parameters must pass [`Finetuner::check_trained`]: a run that diverges stops
    /// at the step it does, before any checkpoint or task file is written from it.
    fn apply_gradients(&mut self, loss: f64) -> Result<f64> {
        let cfg = &self.cfg;
        let lr = self.sched.lr(self.step);
        if !cfg.zero_shot {
            self.adam_theta
                .update(&mut self.theta, &self.grad_theta, lr, cfg.weight_decay);
        }
        if let Some(h) = self.head.as_mut() {
            let nw = h.classes() * h.dim();
            self.adam_head.update_split(
                h.params_mut(),
                &self.grad_head,
                lr * cfg.head_lr / cfg.lr,
                cfg.weight_decay,
                nw,
            );
        }
        self.step += 1;
        self.window_sum += loss;
        self.window_n += 1;
        self.check_trained()?;
        Ok(lr)
    }

    /// The one check of every trained tensor, shared by the exact and SPSA paths and run
    /// after every update and before any file (checkpoint or task) is written: each value
    /// finite and representable as float32 (files store f32; 1e39 would become inf), each
    /// module's ‖α_A‖_F·‖α_B‖_F within sqrt(f32::MAX) (the loosest bound a served task can
    /// meet: [`Coefficients::magnitude_limit`] at in·r = 1) and each head weight within
    /// sqrt(f32::MAX)/dim (so the logits stay finite for features up to sqrt(f32::MAX)).
    /// The error ([`Error::Numeric`]) names the tensor, the step and the cure (a lower
    /// learning rate).
    pub fn check_trained(&self) -> Result<()> {
        let limit = f64::from(f32::MAX).sqrt();
        let diverged = |what: &str, found: String| {
            Error::Numeric(format!(
                "training diverged at step {}: {what} {found}; nothing was written from this state (lower the learning rate: lr {:e}, head_lr {:e})",
                self.step, self.cfg.lr, self.cfg.head_lr
            ))
        };
        let f32_ok = |v: &f64| v.is_finite() && v.abs() <= f64::from(f32::MAX);
        let r = self.cfg.rank;
        for b in &self.blocks {
            let a = &self.theta[b.theta..b.theta + r * b.k_a];
            let bb = &self.theta[b.theta + r * b.k_a..b.theta + r * (b.k_a + b.k_b)];
            for (side, v) in [("alpha_A", a), ("alpha_B", bb)] {
                if let Some(i) = v.iter().position(|x| !f32_ok(x)) {
                    return Err(diverged(
                        &format!("module `{}` {side}", b.name),
                        format!("holds {:e} at {i}, beyond float32", v[i]),
                    ));
                }
            }
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let bound = norm(a) * norm(bb);
            if bound.is_nan() || bound > limit {
                return Err(diverged(
                    &format!("module `{}`", b.name),
                    format!("has ‖α_A‖·‖α_B‖ = {bound:.3e}, beyond {limit:.3e}"),
                ));
            }
        }
        if let Some(h) = &self.head {
            let w_limit = limit / h.dim().max(1) as f64;
            if let Some((i, v)) = h
                .weight()
                .iter()
                .enumerate()
                .find(|(_, v)| v.is_nan() || v.abs() > w_limit)
            {
                return Err(diverged(
                    "head.weight",
                    format!(
                        "holds {v:e} at {i}, beyond {w_limit:.3e} (sqrt(f32::MAX) / {} features)",
                        h.dim()
                    ),
                ));
            }
            if let Some((i, v)) = h
                .bias()
                .iter()
                .enumerate()
                .find(|(_, v)| v.is_nan() || v.abs() > limit)
            {
                return Err(diverged(
                    "head.bias",
                    format!("holds {v:e} at {i}, beyond {limit:.3e}"),
                ));
            }
        }
        Ok(())
    }

    /// Positions of the next training batch: consecutive slices of a per-epoch permutation
    /// drawn from (seed, epoch), so the order needs no stored random state.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let n = self.train.ids.len();
        let bs = self.cfg.batch_size.min(n);
        if self.order.len() != n || self.cursor + bs > n {
            if self.order.len() == n && self.cursor + bs > n {
                self.epoch += 1;
                self.cursor = 0;
            }
            self.order = epoch_order(self.cfg.seed, self.epoch, n);
        }
        let b = self.order[self.cursor..self.cursor + bs].to_vec();
        self.cursor += bs;
        b
    }

    /// Loss (and, for classification, accuracy and cross-entropy) over a split, at the current
    /// parameters. Labels are checked against the task's classes.
    pub fn evaluate(&mut self, split: &Split) -> Result<Eval> {
        let classes = match &self.objective {
            Objective::Classify { classes } => Some(*classes),
            Objective::Custom(_) => None,
        };
        check_split(&self.model, split, "evaluation", classes)?;
        let eb = self.cfg.eval_batch;
        let l2 = self.cfg.head_l2;
        let Self {
            model,
            cfg,
            objective,
            blocks,
            dim,
            theta,
            head,
            forward_passes,
            buf,
            feats,
            ..
        } = self;
        let mut fwd = Forward {
            model,
            blocks,
            rank: cfg.rank,
            buf,
            feats,
            dim: *dim,
            passes: forward_passes,
        };
        let (mut loss, mut ce, mut correct) = (0.0, 0.0, 0usize);
        let n = split.ids.len();
        for (c, ids) in split.ids.chunks(eb).enumerate() {
            fwd.run(ids, theta)?;
            let w = ids.len() as f64 / n as f64;
            match (&*objective, head.as_mut()) {
                (Objective::Custom(f), _) => loss += w * f(fwd.feats, ids),
                (_, Some(h)) => {
                    let labels = &split.labels[c * eb..c * eb + ids.len()];
                    let hl = h.loss_grad(fwd.feats, labels, l2, None)?;
                    ce += w * hl.cross_entropy;
                    correct += hl.correct;
                }
                (_, None) => return Err(Error::Usage("classifier without a head".into())),
            }
        }
        Ok(match objective {
            Objective::Custom(_) => Eval {
                loss,
                cross_entropy: None,
                accuracy: None,
                examples: n,
            },
            Objective::Classify { .. } => Eval {
                loss: ce,
                cross_entropy: Some(ce),
                accuracy: Some(correct as f64 / n as f64),
                examples: n,
            },
        })
    }

    /// Trains until `max_steps`, or until early stopping fires, evaluating every `eval_every`
    /// steps (on the validation split, or the mean training loss without one) and writing a
    /// checkpoint every `checkpoint_every` steps. At the end the best parameters are restored.
    /// Calling it on a resumed finetuner continues the interrupted run exactly.
    pub fn fit(&mut self, on_event: &mut dyn FnMut(&Event)) -> Result<FitReport> {
        self.fit_until(u64::MAX, on_event)
    }

    /// [`Finetuner::fit`], pausing once `pause_at` steps are done in total (a device that
    /// trains in slices: while idle, while charging). A paused run writes a checkpoint when a
    /// checkpoint path is set, keeps its current parameters (the best are restored only at the
    /// end of the run), and reports `paused`; continuing it gives the uninterrupted run.
    pub fn fit_until(
        &mut self,
        pause_at: u64,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<FitReport> {
        if self.cfg.eval_at_start && self.step == 0 && !self.early.best.is_finite() {
            self.evaluate_and_track(on_event)?;
        }
        while self.step < self.cfg.max_steps && !self.stopped {
            if self.step >= pause_at {
                // Not twice: the loop has just written one at a checkpoint step.
                let written = self.cfg.checkpoint_every > 0
                    && self.step > 0
                    && self.step.is_multiple_of(self.cfg.checkpoint_every);
                if let Some(p) = self.cfg.checkpoint_path.clone().filter(|_| !written) {
                    self.save_checkpoint(&p)?;
                    on_event(&Event::Checkpoint(self.step));
                }
                return Ok(FitReport {
                    steps: self.step,
                    forward_passes: self.forward_passes,
                    best_metric: self.early.best,
                    best_step: self.early.best_step,
                    stopped_early: false,
                    paused: true,
                });
            }
            let b = self.next_batch();
            let st = self.step(&b)?;
            on_event(&Event::Step(st));
            if self.step.is_multiple_of(self.cfg.eval_every) || self.step == self.cfg.max_steps {
                self.evaluate_and_track(on_event)?;
            }
            if self.cfg.checkpoint_every > 0
                && self.step.is_multiple_of(self.cfg.checkpoint_every)
                && let Some(p) = self.cfg.checkpoint_path.clone()
            {
                self.save_checkpoint(&p)?;
                on_event(&Event::Checkpoint(self.step));
            }
        }
        if self.early.best.is_finite() {
            self.theta.copy_from_slice(&self.best_theta);
            if let Some(h) = self.head.as_mut() {
                h.params_mut().copy_from_slice(&self.best_head);
            }
        }
        Ok(FitReport {
            steps: self.step,
            forward_passes: self.forward_passes,
            best_metric: self.early.best,
            best_step: self.early.best_step,
            stopped_early: self.stopped,
            paused: false,
        })
    }

    fn evaluate_and_track(&mut self, on_event: &mut dyn FnMut(&Event)) -> Result<()> {
        let (val, metric) = match self.val.take() {
            Some(v) => {
                let e = self.evaluate(&v);
                self.val = Some(v);
                let e = e?;
                (Some(e), e.loss)
            }
            // Without a validation split the metric is the mean training loss since the last
            // evaluation: with no step since, there is nothing to measure (a start evaluation
            // used to record 0.0 here, the best a loss can be, so the untrained start won).
            None if self.window_n == 0 => return Ok(()),
            None => (None, self.window_sum / self.window_n as f64),
        };
        self.window_sum = 0.0;
        self.window_n = 0;
        self.sched.observe(metric);
        let best = self.early.observe(metric, self.step);
        if best {
            self.best_theta.copy_from_slice(&self.theta);
            if let Some(h) = &self.head {
                self.best_head.copy_from_slice(h.params());
            }
        }
        self.stopped = self.early.should_stop();
        on_event(&Event::Eval {
            step: self.step,
            val,
            metric,
            best,
        });
        Ok(())
    }

    /// The trained head as a file's [`Head`] with class names `labels` (one per class);
    /// `None` without a head (a custom objective).
    pub fn labelled_head(&self, labels: &[String]) -> Result<Option<Head>> {
        let Some(h) = &self.head else {
            return Ok(None);
        };
        if labels.len() != h.classes() {
            return Err(Error::Usage(format!(
                "{} label names for a head of {} classes",
                labels.len(),
                h.classes()
            )));
        }
        let (c, d) = (h.classes(), h.dim());
        let w = h.weight();
        Ok(Some(Head {
            weight: Mat::from_fn(c, d, |i, j| w[i * d + j]),
            bias: h.bias().to_vec(),
            labels: labels.to_vec(),
        }))
    }

    /// The task as a coefficient file: the trained rank-r coefficients per module and, for
    /// classification, the head with `labels` (one per class; ignored without a head).
    pub fn to_coeff_file(
        &self,
        subspace_id: &str,
        task: &str,
        labels: &[String],
    ) -> Result<CoeffFile> {
        self.check_trained()?;
        let r = self.cfg.rank;
        let mut modules = BTreeMap::new();
        for b in &self.blocks {
            let a = &self.theta[b.theta..b.theta + r * b.k_a];
            let bb = &self.theta[b.theta + r * b.k_a..b.theta + r * (b.k_a + b.k_b)];
            modules.insert(
                b.name.clone(),
                Coefficients {
                    alpha_a: Mat::from_fn(r, b.k_a, |i, j| a[i * b.k_a + j]),
                    alpha_b: Mat::from_fn(b.k_b, r, |i, j| bb[i * r + j]),
                },
            );
        }
        let head = self.labelled_head(labels)?;
        Ok(CoeffFile {
            subspace_id: subspace_id.to_string(),
            task: task.to_string(),
            provenance: if self.cfg.zero_shot {
                Provenance::ZeroShot
            } else {
                Provenance::Finetuned
            },
            modules,
            head,
        })
    }

    /// Writes the task's `.elxc` (atomically, through [`CoeffFile::write`]).
    pub fn save(
        &self,
        path: &Path,
        subspace_id: &str,
        task: &str,
        labels: &[String],
    ) -> Result<()> {
        self.to_coeff_file(subspace_id, task, labels)?.write(path)
    }
}

/// The training order of epoch `epoch`: a Fisher–Yates permutation seeded by (seed, epoch).
fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng =
        GaussianRng::new(seed ^ 0x5EED_0F0D_A7A0_0000 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}
