//! One optimisation step of a [`Finetuner`]: the head's exact gradient and the coefficients'
//! SPSA estimate ([`Finetuner::step`]), or both from one run of a training graph (exact
//! gradients), then one AdamW update of each at the scheduled rate.

use super::params::{Forward, write_params};
use super::zo::{self, SpsaSettings};
use super::{Finetuner, ForwardModel, GradMode, GradQuery, Objective, StepStats};
use crate::error::{Error, Result};

impl<M: ForwardModel> Finetuner<M> {
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

    /// [`Finetuner::step`] with exact gradients: one run of the training graph gives the pooled
    /// features and d CE / d coefficients; the head's gradient (and the reported loss and
    /// accuracy) come from the same features through
    /// [`LinearHead::loss_grad`](super::head::LinearHead::loss_grad).
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
}
