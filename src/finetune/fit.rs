//! The training loop of a [`Finetuner`]: batches in a per-epoch order, evaluation over a
//! split, [`Finetuner::fit`] with early stopping and checkpoints, and
//! [`Finetuner::fit_until`], which pauses a run to continue it later.

use super::objective::check_split;
use super::params::Forward;
use super::{Eval, Event, Finetuner, FitReport, ForwardModel, Objective, Split};
use crate::error::{Error, Result};
use crate::util::GaussianRng;

impl<M: ForwardModel> Finetuner<M> {
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
}

/// The training order of epoch `epoch`: a Fisher–Yates permutation seeded by (seed, epoch).
pub(super) fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng =
        GaussianRng::new(seed ^ 0x5EED_0F0D_A7A0_0000 ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}
