//! What a run reports: each step ([`StepStats`]), each evaluation ([`Eval`]), the progress
//! events of a fit ([`Event`]) and how it ended ([`FitReport`]).

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

/// Progress events of [`Finetuner::fit`](super::Finetuner::fit).
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

/// How a [`Finetuner::fit`](super::Finetuner::fit) call ended.
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
    /// Whether [`Finetuner::fit_until`](super::Finetuner::fit_until) paused the run before its
    /// end (the parameters are then the current ones, not the best; continue with another
    /// `fit_until` or `fit`, in this process or after
    /// [`Finetuner::resume`](super::Finetuner::resume)).
    pub paused: bool,
}
