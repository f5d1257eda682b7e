//! [`Finetuner`]: one run's state, its set-up (settings and data checked, coefficients
//! initialised), its accessors, the check of every trained tensor and the trained task out as
//! a coefficient file. The step is in `step.rs`, the training loop in `fit.rs`, checkpoints in
//! `checkpoint.rs`.

use super::head::LinearHead;
use super::objective::check_split;
use super::params::{Block, write_params};
use super::schedule::{Adam, EarlyStopping, LrSchedule};
use super::zo::SpsaScratch;
use super::{FinetuneConfig, ForwardModel, GradMode, Gradients, MAX_DIRECTIONS, Objective, Split};
use crate::bundle::{CoeffFile, Head, Provenance};
use crate::error::{Error, Result};
use crate::task::Coefficients;
use crate::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::Path;

/// Trains one task's coefficients and head. See the module documentation.
pub struct Finetuner<M: ForwardModel> {
    pub(super) model: M,
    pub(super) cfg: FinetuneConfig,
    pub(super) objective: Objective,
    pub(super) train: Split,
    pub(super) val: Option<Split>,
    pub(super) blocks: Vec<Block>,
    pub(super) dim: usize,
    pub(super) theta: Vec<f64>,
    pub(super) head: Option<LinearHead>,
    pub(super) adam_theta: Adam,
    pub(super) adam_head: Adam,
    pub(super) sched: LrSchedule,
    pub(super) early: EarlyStopping,
    pub(super) best_theta: Vec<f64>,
    pub(super) best_head: Vec<f64>,
    pub(super) step: u64,
    pub(super) epoch: u64,
    pub(super) cursor: usize,
    pub(super) order: Vec<usize>,
    pub(super) forward_passes: u64,
    pub(super) stopped: bool,
    pub(super) window_sum: f64,
    pub(super) window_n: u64,
    /// The caller's part of the checkpoint fingerprint ([`Finetuner::set_run_identity`]).
    pub(super) identity: String,
    // Scratch, reused every step.
    pub(super) buf: Vec<f32>,
    pub(super) feats: Vec<f32>,
    pub(super) grad_theta: Vec<f64>,
    pub(super) grad_head: Vec<f64>,
    pub(super) spsa: SpsaScratch,
    pub(super) exact: Gradients,
    pub(super) targets: Vec<f32>,
    pub(super) ids: Vec<usize>,
    pub(super) labels: Vec<usize>,
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
