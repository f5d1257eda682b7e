//! Optimizer and learning-rate schedule: AdamW moments, linear warm-up then
//! ReduceLROnPlateau (the paper's Table 11: lr 4e-3–5e-3, weight decay 0.1, warm-up ratio 0.06,
//! "RLrP"), and early stopping on a validation metric.

/// Adam moments with decoupled weight decay (AdamW).
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    /// First-moment estimates.
    pub m: Vec<f64>,
    /// Second-moment estimates.
    pub v: Vec<f64>,
    /// Updates taken (for bias correction).
    pub t: u64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε in the denominator.
    pub eps: f64,
}

impl Adam {
    /// Zero moments for `n` parameters.
    pub fn new(n: usize, beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            beta1,
            beta2,
            eps,
        }
    }

    /// One AdamW update of `params` with gradient (or gradient estimate) `grad`:
    /// p ← p − lr·(m̂/(√v̂+ε) + wd·p).
    pub fn update(&mut self, params: &mut [f64], grad: &[f64], lr: f64, weight_decay: f64) {
        self.update_split(params, grad, lr, weight_decay, params.len());
    }

    /// [`update`](Self::update) with the weight decay applied to the first `decayed`
    /// parameters only (a head's weights, not its bias).
    pub fn update_split(
        &mut self,
        params: &mut [f64],
        grad: &[f64],
        lr: f64,
        weight_decay: f64,
        decayed: usize,
    ) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t.min(i32::MAX as u64) as i32);
        for (i, (((p, g), m), v)) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
            .enumerate()
        {
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            let step = (*m / bc1) / ((*v / bc2).sqrt() + self.eps);
            let wd = if i < decayed { weight_decay } else { 0.0 };
            *p -= lr * (step + wd * *p);
        }
    }
}

/// ReduceLROnPlateau settings (on a metric where lower is better).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlateauConfig {
    /// Multiplier applied on a plateau (0 < factor < 1).
    pub factor: f64,
    /// Evaluations without improvement tolerated before reducing.
    pub patience: usize,
    /// Relative improvement that counts (PyTorch's `threshold_mode='rel'`).
    pub threshold: f64,
    /// Floor of the learning rate.
    pub min_lr: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        // PyTorch's defaults are factor 0.1, patience 10; with few evaluations on a device a
        // gentler factor and shorter patience react within one short run.
        Self {
            factor: 0.5,
            patience: 2,
            threshold: 1e-4,
            min_lr: 1e-5,
        }
    }
}

/// Linear warm-up over `warmup_steps`, then a multiplier lowered by plateaus.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Steps of linear warm-up (0: none).
    pub warmup_steps: u64,
    /// Plateau settings.
    pub plateau: PlateauConfig,
    /// Current plateau multiplier (starts at 1).
    pub multiplier: f64,
    /// Best metric seen by the plateau logic.
    pub best: f64,
    /// Evaluations since the last improvement.
    pub bad_evals: usize,
}

impl LrSchedule {
    /// A schedule at the start of training.
    pub fn new(base_lr: f64, warmup_steps: u64, plateau: PlateauConfig) -> Self {
        Self {
            base_lr,
            warmup_steps,
            plateau,
            multiplier: 1.0,
            best: f64::INFINITY,
            bad_evals: 0,
        }
    }

    /// Learning rate for update number `step` (0-based): (step+1)/warmup of the peak during
    /// warm-up, then peak·multiplier, never below `min_lr` after warm-up.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        (self.base_lr * self.multiplier).max(self.plateau.min_lr.min(self.base_lr))
    }

    /// Feeds one evaluation of the monitored metric; returns true when the rate was reduced.
    pub fn observe(&mut self, metric: f64) -> bool {
        if metric < self.best * (1.0 - self.plateau.threshold)
            || self.best == f64::INFINITY && metric.is_finite()
        {
            self.best = metric;
            self.bad_evals = 0;
            return false;
        }
        self.bad_evals += 1;
        if self.bad_evals > self.plateau.patience {
            self.bad_evals = 0;
            let floor = self.plateau.min_lr / self.base_lr;
            let next = (self.multiplier * self.plateau.factor).max(floor);
            let reduced = next < self.multiplier;
            self.multiplier = next;
            return reduced;
        }
        false
    }
}

/// Early stopping on a metric where lower is better.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping (0: never stop).
    pub patience: usize,
    /// Best metric so far.
    pub best: f64,
    /// Step at which the best metric was measured.
    pub best_step: u64,
    /// Evaluations since the best.
    pub bad_evals: usize,
}

impl EarlyStopping {
    /// A fresh tracker.
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: f64::INFINITY,
            best_step: 0,
            bad_evals: 0,
        }
    }

    /// Feeds one evaluation; returns whether it is a new best (the caller then keeps a copy of
    /// the parameters).
    pub fn observe(&mut self, metric: f64, step: u64) -> bool {
        if metric < self.best {
            self.best = metric;
            self.best_step = step;
            self.bad_evals = 0;
            true
        } else {
            self.bad_evals += 1;
            false
        }
    }

    /// Whether training should stop now.
    pub fn should_stop(&self) -> bool {
        self.patience > 0 && self.bad_evals >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_plateau() {
        let mut s = LrSchedule::new(
            4e-3,
            4,
            PlateauConfig {
                factor: 0.5,
                patience: 1,
                threshold: 0.0,
                min_lr: 1e-3,
            },
        );
        assert_eq!(s.lr(0), 1e-3);
        assert_eq!(s.lr(3), 4e-3);
        assert_eq!(s.lr(10), 4e-3);
        assert!(!s.observe(1.0));
        assert!(!s.observe(1.0)); // first bad evaluation: within patience
        assert!(s.observe(1.0)); // second: reduce
        assert_eq!(s.lr(10), 2e-3);
        s.observe(2.0);
        s.observe(2.0);
        s.observe(2.0);
        s.observe(2.0);
        assert_eq!(s.lr(10), 1e-3, "floored at min_lr");
    }

    #[test]
    fn adam_first_step_is_lr_sized() {
        // With bias correction the first update is lr·sign(g) (up to ε).
        let mut a = Adam::new(2, 0.9, 0.999, 1e-12);
        let mut p = vec![1.0, 1.0];
        a.update(&mut p, &[0.5, -3.0], 0.1, 0.0);
        assert!(
            (p[0] - 0.9).abs() < 1e-9 && (p[1] - 1.1).abs() < 1e-9,
            "{p:?}"
        );
    }
}
