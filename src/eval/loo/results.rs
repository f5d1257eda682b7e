//! What a leave-one-out run returns: per held-out task, each method's figures
//! ([`MethodResult`]) and the share of the head-only → own-LoRA gap a row recovers
//! ([`gap_recovered`]).

use crate::eval::Metrics;
use std::path::PathBuf;

/// A way of serving the held-out task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The base model with the head trained beside the adapter on the full training set
    /// (`head_only.safetensors` of the workload): the reference of the zero-shot gap.
    HeadOnlyFull,
    /// The base model with a head trained on the device on the few-shot examples.
    HeadOnly,
    /// The task's own LoRA adapter, unmerged, with its own head.
    OwnLora,
    /// The adapter projected into the other tasks' subspace, with its own head.
    Projected,
    /// The adapter projected into the span of the other tasks' mean direction alone.
    MeanOnly,
    /// The adapter projected into a random orthonormal basis of the recycled K.
    RandomProjected,
    /// The projected adapter of [`Method::Projected`] under a head refit on the device on the
    /// training examples (the head-only recipe; the reference is [`Method::HeadOnly`]).
    ProjectedRefit,
    /// [`Method::MeanOnly`]'s coefficients under a refit head.
    MeanOnlyRefit,
    /// [`Method::RandomProjected`]'s coefficients under a refit head.
    RandomProjectedRefit,
    /// Coefficients and head trained on the device in the recycled subspace.
    Finetuned,
    /// The same training in a random orthonormal basis of the same K (the control).
    RandomBasis,
}

impl Method {
    /// Whether this row's head was refit on the device over fixed zero-shot coefficients;
    /// its gap starts from [`Method::HeadOnly`] (the same recipe on the base model).
    pub fn is_refit(self) -> bool {
        matches!(
            self,
            Method::ProjectedRefit | Method::MeanOnlyRefit | Method::RandomProjectedRefit
        )
    }

    /// The zero-shot rows whose gap is reported: with the adapter's own head, then refit.
    pub const ZERO_SHOT: [Method; 6] = [
        Method::Projected,
        Method::MeanOnly,
        Method::RandomProjected,
        Method::ProjectedRefit,
        Method::MeanOnlyRefit,
        Method::RandomProjectedRefit,
    ];

    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Method::HeadOnlyFull => "head only (full training set)",
            Method::HeadOnly => "head only (trained on the device)",
            Method::OwnLora => "own LoRA (unmerged)",
            Method::Projected => "zero-shot: recycled subspace",
            Method::MeanOnly => "zero-shot: mean direction only",
            Method::RandomProjected => "zero-shot: random basis",
            Method::ProjectedRefit => "zero-shot + head refit: recycled",
            Method::MeanOnlyRefit => "zero-shot + head refit: mean only",
            Method::RandomProjectedRefit => "zero-shot + head refit: random basis",
            Method::Finetuned => "finetuned in the recycled subspace",
            Method::RandomBasis => "finetuned in a random basis",
        }
    }
}

/// One method's figures on one task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MethodResult {
    /// Which method.
    pub method: Method,
    /// Training examples it was trained on by the device (0: nothing trained here).
    pub train_examples: usize,
    /// Numbers trained for the task (coefficients + head, or LoRA A, B + head).
    pub trainable: usize,
    /// Bytes of the task's file(s) on disk.
    pub file_bytes: u64,
    /// Cold swap: reading the task's file(s) until the tensors are ready to run, ms.
    pub swap_ms: f64,
    /// Quality on the test examples.
    pub test: Metrics,
    /// Examples that went through the engine while training (0 when nothing was trained).
    pub engine_examples: u64,
    /// Training wall time, s.
    pub train_seconds: f64,
}

/// The device-trained rows at one training-set size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FewShot {
    /// Training examples (the first ones of the training file).
    pub examples: usize,
    /// Head only on the base model.
    pub head_only: MethodResult,
    /// Coefficients + head in the recycled subspace.
    pub finetuned: MethodResult,
    /// The same in a random basis of the same K.
    pub random_basis: MethodResult,
}

/// The share of a CE gap a method recovers: (CE_from − CE_method) / (CE_from − CE_to).
/// `None` when the gap is not positive (nothing to recover).
pub fn gap_recovered(from: f64, to: f64, method: f64) -> Option<f64> {
    let gap = from - to;
    (gap > 0.0 && gap.is_finite()).then(|| (from - method) / gap)
}

/// The figures of one held-out task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskResult {
    /// Held-out task.
    pub task: String,
    /// Σ K_A and Σ K_B over the modules of the other tasks' subspace.
    pub k_a: usize,
    /// See `k_a`.
    pub k_b: usize,
    /// Share of the held-out adapter's ||ΔW||² inside that subspace.
    pub captured: f64,
    /// The same inside a random subspace of the same K.
    pub random_captured: f64,
    /// The same inside the span of the others' mean direction.
    pub mean_only_captured: f64,
    /// The zero-shot rows and their references, in [`Method`] order: head only on the full
    /// training set (when the workload has it), head only refit on the device, own LoRA,
    /// projected, mean only, random, and the three again with a refit head.
    pub methods: Vec<MethodResult>,
    /// The device-trained rows, one entry per training-set size, ascending.
    pub few_shot: Vec<FewShot>,
    /// The head-only CE that zero-shot gaps start from: the full-training-set head when
    /// the workload has one, else the head refit on the device on the training examples.
    pub reference_ce: f64,
    /// The recycled bundle (bound to the base model).
    pub bundle: PathBuf,
    /// Wall time of the whole task, s.
    pub seconds: f64,
}

impl TaskResult {
    /// The row of `method` among the zero-shot rows.
    pub fn row(&self, method: Method) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.method == method)
    }

    /// Share of the head-only → own-LoRA CE gap that `method` (a zero-shot row) recovers.
    /// A refit row's gap starts from the head refit the same way on the base model
    /// ([`Method::HeadOnly`]), the others' from [`TaskResult::reference_ce`].
    pub fn zero_shot_gap(&self, method: Method) -> Option<f64> {
        let lora = self.row(Method::OwnLora)?.test.cross_entropy;
        let from = if method.is_refit() {
            self.row(Method::HeadOnly)?.test.cross_entropy
        } else {
            self.reference_ce
        };
        gap_recovered(from, lora, self.row(method)?.test.cross_entropy)
    }
}
