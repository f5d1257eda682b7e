//! Training checkpoints: every number a resumed run needs to continue bit for bit.
//!
//! The file is safetensors: f64 tensors for the parameter vectors and optimizer moments, and
//! the scalars in the `__metadata__` JSON under `elx_finetune_state`. Floating-point scalars
//! are stored as their IEEE bit patterns (u64), because a decimal round trip through JSON is
//! not guaranteed to be exact. The run's random state needs no storing: directions are
//! regenerated from (seed, step, direction) and each epoch's data order from (seed, epoch).
//!
//! The metadata also holds the SHA-256 of the whole state (the scalars' JSON and every
//! vector), checked on read: a checkpoint modified or damaged after it was written is refused.
//! A resume then checks every number: finite, and consistent with the run (issue 13: a NaN
//! schedule multiplier, an Inf in the best head, or a best loss at step 0 used to resume
//! silently).

use super::fit::epoch_order;
use super::{Finetuner, ForwardModel};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key holding the scalar state.
pub const STATE_KEY: &str = "elx_finetune_state";
/// The metadata key holding the SHA-256 of the state ([`state_sha256`]).
pub const HASH_KEY: &str = "elx_finetune_sha256";
const FORMAT: &str = "elx-finetune-checkpoint";
/// Version 2 added [`HASH_KEY`]; version 3 ties the run to its data: the fingerprint holds
/// SHA-256 digests of the training and validation splits (and whatever the caller adds with
/// [`Finetuner::set_run_identity`], such as the token data and the command's flags).
const VERSION: u32 = 3;

/// SHA-256 (hex) of a checkpoint's state: the scalars' JSON as stored, then each vector's
/// name and little-endian f64 bytes, in [`TENSORS`] order.
pub fn state_sha256(state_json: &str, tensors: &[Vec<f64>; 8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((state_json.len() as u64).to_le_bytes());
    h.update(state_json.as_bytes());
    for (name, t) in TENSORS.iter().zip(tensors) {
        h.update(name.as_bytes());
        h.update((t.len() as u64).to_le_bytes());
        for v in t {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Scalars of the training state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scalars {
    /// Always "elx-finetune-checkpoint".
    pub format: String,
    /// Format version (3).
    pub version: u32,
    /// What the run was configured as and trained on (`key=value` pairs separated by
    /// spaces: settings, digests of the data); a resume that differs is refused, naming
    /// the keys that changed.
    pub fingerprint: String,
    /// Optimisation steps taken.
    pub step: u64,
    /// Current epoch of the data order.
    pub epoch: u64,
    /// Position in the current epoch's order.
    pub cursor: u64,
    /// Forward passes so far.
    pub forward_passes: u64,
    /// Adam update counts (coefficients, head).
    pub adam_t: [u64; 2],
    /// Plateau multiplier, bit pattern.
    pub sched_multiplier: u64,
    /// Plateau best metric, bit pattern.
    pub sched_best: u64,
    /// Plateau evaluations without improvement.
    pub sched_bad: u64,
    /// Early-stopping best metric, bit pattern.
    pub early_best: u64,
    /// Step of the best metric.
    pub early_best_step: u64,
    /// Early-stopping evaluations without improvement.
    pub early_bad: u64,
    /// Whether early stopping fired.
    pub stopped: bool,
    /// Sum of training losses since the last evaluation, bit pattern.
    pub window_sum: u64,
    /// Steps since the last evaluation.
    pub window_n: u64,
}

/// Names of the stored vectors, in a fixed order.
pub const TENSORS: [&str; 8] = [
    "theta",
    "head",
    "adam_theta_m",
    "adam_theta_v",
    "adam_head_m",
    "adam_head_v",
    "best_theta",
    "best_head",
];

/// A whole checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Scalar state.
    pub scalars: Scalars,
    /// Vectors named as in [`TENSORS`], same order.
    pub tensors: [Vec<f64>; 8],
}

impl Checkpoint {
    /// A checkpoint from its parts (the format fields are filled in).
    pub fn new(mut scalars: Scalars, tensors: [Vec<f64>; 8]) -> Self {
        scalars.format = FORMAT.into();
        scalars.version = VERSION;
        Self { scalars, tensors }
    }

    /// Encodes and writes atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|t| t.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(TENSORS.len());
        for ((name, t), b) in TENSORS.iter().zip(&self.tensors).zip(&bytes) {
            let view = TensorView::new(Dtype::F64, vec![t.len()], b)
                .map_err(|e| Error::Usage(format!("checkpoint tensor {name}: {e}")))?;
            views.push((*name, view));
        }
        let state = serde_json::to_string(&self.scalars)
            .map_err(|e| Error::Usage(format!("checkpoint state: {e}")))?;
        let hash = state_sha256(&state, &self.tensors);
        let meta = HashMap::from([(STATE_KEY.to_string(), state), (HASH_KEY.to_string(), hash)]);
        let out = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Usage(format!("checkpoint {}: {e}", path.display())))?;
        crate::util::write_atomic(path, &out)
    }

    /// Reads a checkpoint; `sizes` are the expected lengths of the vectors, so a file from
    /// another run (or a truncated one) is refused before anything is allocated from it.
    pub fn read(path: &Path, sizes: &[usize; 8]) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::bad_file(path, format!("a safetensors checkpoint ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::bad_file(path, format!("a safetensors checkpoint ({e})")))?;
        let state = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STATE_KEY))
            .ok_or_else(|| {
                Error::bad_tensor(path, STATE_KEY, "metadata with the training state")
            })?;
        let scalars: Scalars = serde_json::from_str(state).map_err(|e| {
            Error::bad_tensor(path, STATE_KEY, format!("the training state as JSON ({e})"))
        })?;
        if scalars.format != FORMAT || scalars.version != VERSION {
            return Err(Error::bad_tensor(
                path,
                STATE_KEY,
                format!(
                    "format {FORMAT} version {VERSION}, found {} version {} (a checkpoint of an older elx, which did not record its data, cannot be resumed; restart the run)",
                    scalars.format, scalars.version
                ),
            ));
        }
        let recorded = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HASH_KEY))
            .ok_or_else(|| Error::bad_tensor(path, HASH_KEY, "the SHA-256 of the state"))?
            .clone();
        let mut tensors: [Vec<f64>; 8] = Default::default();
        for ((name, slot), &n) in TENSORS.iter().zip(&mut tensors).zip(sizes) {
            let t = st
                .tensor(name)
                .map_err(|_| Error::bad_tensor(path, *name, "present"))?;
            if t.dtype() != Dtype::F64 || t.shape() != [n] {
                return Err(Error::bad_tensor(
                    path,
                    *name,
                    format!(
                        "F64 of shape [{n}], found {:?} {:?} (a checkpoint of another run?)",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            *slot = t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
        }
        let actual = state_sha256(state, &tensors);
        if actual != recorded {
            return Err(Error::bad_tensor(
                path,
                HASH_KEY,
                format!(
                    "a state that hashes to its recorded SHA-256 {recorded}, but it hashes to {actual}: the checkpoint was modified or is corrupt"
                ),
            ));
        }
        Ok(Self { scalars, tensors })
    }

    /// Checks that every number is finite and consistent with a run of `max_steps` steps
    /// over `n_train` examples (evaluating at step 0 when `eval_at_start`): the error names
    /// the field and what was expected.
    pub fn check_consistent(
        &self,
        path: &Path,
        n_train: u64,
        max_steps: u64,
        eval_at_start: bool,
    ) -> Result<()> {
        let s = &self.scalars;
        let bad = |field: &str, what: String| Error::bad_tensor(path, field, what);
        if s.cursor > n_train || s.step > max_steps {
            return Err(bad(
                STATE_KEY,
                format!(
                    "a step and data position inside this run (step <= {max_steps}, position <= {n_train}), found step {} position {}",
                    s.step, s.cursor
                ),
            ));
        }
        for (name, t) in TENSORS.iter().zip(&self.tensors) {
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                return Err(bad(name, format!("finite values, found {} at {i}", t[i])));
            }
        }
        for name in ["adam_theta_v", "adam_head_v"] {
            let t = &self.tensors[TENSORS.iter().position(|n| *n == name).unwrap_or(0)];
            if let Some(i) = t.iter().position(|v| *v < 0.0) {
                return Err(bad(
                    name,
                    format!("non-negative second moments, found {} at {i}", t[i]),
                ));
            }
        }
        let multiplier = f64::from_bits(s.sched_multiplier);
        if !(multiplier > 0.0 && multiplier <= 1.0) {
            return Err(bad(
                "sched_multiplier",
                format!("a learning-rate multiplier in (0, 1], found {multiplier}"),
            ));
        }
        let window = f64::from_bits(s.window_sum);
        if !(window.is_finite() && window >= 0.0) || s.window_n > s.step {
            return Err(bad(
                "window_sum",
                format!(
                    "a finite, non-negative sum of at most {} step losses, found {window} over {} steps",
                    s.step, s.window_n
                ),
            ));
        }
        // Losses are >= 0; +inf means "no evaluation yet". A finite best needs an evaluation:
        // at a step >= 1, or at step 0 when the run evaluates its start.
        for (field, best) in [("sched_best", s.sched_best), ("early_best", s.early_best)] {
            let best = f64::from_bits(best);
            if best.is_nan() || best < 0.0 {
                return Err(bad(
                    field,
                    format!("a best loss >= 0 (or +inf before any evaluation), found {best}"),
                ));
            }
        }
        let early = f64::from_bits(s.early_best);
        let evaluated = early.is_finite();
        if s.early_best_step > s.step
            || (evaluated && s.early_best_step == 0 && !eval_at_start)
            || (!evaluated && s.early_best_step != 0)
        {
            return Err(bad(
                "early_best",
                format!(
                    "a best loss measured at an evaluation of this run (at a step in 1..={}{}), found {early} at step {}",
                    s.step,
                    if eval_at_start { ", or 0" } else { "" },
                    s.early_best_step,
                ),
            ));
        }
        Ok(())
    }
}

/// Saving and resuming a run: the part of [`Finetuner`] that reads and writes checkpoints.
/// SHA-256 (hex, first 16 bytes) of a split: its example ids and labels.
fn split_digest(s: &super::Split) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for list in [&s.ids, &s.labels] {
        h.update((list.len() as u64).to_le_bytes());
        for v in list {
            h.update((*v as u64).to_le_bytes());
        }
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a fingerprint key stands for, in an error.
fn describe(key: &str) -> String {
    match key {
        "train_split" => "the training examples or their labels".into(),
        "val_split" => "the validation split (added, removed or changed)".into(),
        "n_train" => "the number of training examples".into(),
        k => format!("`{k}`"),
    }
}

/// The keys of two fingerprints (`key=value` pairs separated by spaces) whose values differ,
/// described with both values: "the training data: checkpoint 1a2b…, this run 3c4d…".
pub fn fingerprint_changes(checkpoint: &str, now: &str) -> Vec<String> {
    let parse = |s: &str| -> std::collections::BTreeMap<String, String> {
        s.split(' ')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect()
    };
    let (old, new) = (parse(checkpoint), parse(now));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(none)".to_string(), |v| v.clone());
            format!(
                "{}: checkpoint {}, this run {}",
                describe(k),
                show(old.get(k)),
                show(new.get(k))
            )
        })
        .collect()
}

impl<M: ForwardModel> Finetuner<M> {
    /// Ties this run's checkpoints to what the finetuner cannot see by itself: `pairs` of
    /// (key, value) recorded in every checkpoint's fingerprint and compared at
    /// [`resume`](Self::resume), which names the keys that differ. `elx finetune` records
    /// the SHA-256 of the training and validation token data and the flags that shape the
    /// run (head warm-up, padding id, maximum length); the finetuner itself records its
    /// settings and digests of the splits' ids and labels. Spaces and `=` in keys and
    /// values are replaced by `_`.
    pub fn set_run_identity(&mut self, pairs: &[(&str, String)]) {
        let clean = |s: &str| s.replace([' ', '='], "_");
        self.identity = pairs
            .iter()
            .map(|(k, v)| format!(" {}={}", clean(k), clean(v)))
            .collect();
    }

    /// The run's settings as `key=value` words. Floats print in Rust's shortest round-trip
    /// form, so two settings compare equal exactly when their bits do, and a mismatch names
    /// readable values (`lr`: checkpoint 0.001, this run 0.002).
    fn fingerprint(&self) -> String {
        let c = &self.cfg;
        format!(
            "seed={} rank={} zero_shot={} n_theta={} n_head={} n_train={} batch={} dirs={} dir={:?} eps={:?} lr={:?} head_lr={:?} wd={:?} l2={:?} max_steps={} eval_every={} grad={:?} eval_at_start={} train_split={} val_split={}{}",
            c.seed,
            c.rank,
            c.zero_shot,
            self.theta.len(),
            self.grad_head.len(),
            self.train.ids.len(),
            c.batch_size,
            c.directions,
            c.direction,
            c.spsa_eps,
            c.lr,
            c.head_lr,
            c.weight_decay,
            c.head_l2,
            c.max_steps,
            c.eval_every,
            c.grad,
            c.eval_at_start,
            split_digest(&self.train),
            self.val.as_ref().map_or("none".into(), split_digest),
            self.identity
        )
    }

    fn sizes(&self) -> [usize; 8] {
        let (nt, nh) = (self.theta.len(), self.grad_head.len());
        [nt, nh, nt, nt, nh, nh, nt, nh]
    }

    /// Writes the whole training state atomically (see the module documentation).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        self.check_trained()?;
        let scalars = Scalars {
            format: String::new(),
            version: 0,
            fingerprint: self.fingerprint(),
            step: self.step,
            epoch: self.epoch,
            cursor: self.cursor as u64,
            forward_passes: self.forward_passes,
            adam_t: [self.adam_theta.t, self.adam_head.t],
            sched_multiplier: self.sched.multiplier.to_bits(),
            sched_best: self.sched.best.to_bits(),
            sched_bad: self.sched.bad_evals as u64,
            early_best: self.early.best.to_bits(),
            early_best_step: self.early.best_step,
            early_bad: self.early.bad_evals as u64,
            stopped: self.stopped,
            window_sum: self.window_sum.to_bits(),
            window_n: self.window_n,
        };
        let head = self
            .head
            .as_ref()
            .map_or(Vec::new(), |h| h.params().to_vec());
        Checkpoint::new(
            scalars,
            [
                self.theta.clone(),
                head,
                self.adam_theta.m.clone(),
                self.adam_theta.v.clone(),
                self.adam_head.m.clone(),
                self.adam_head.v.clone(),
                self.best_theta.clone(),
                self.best_head.clone(),
            ],
        )
        .write(path)
    }

    /// Restores the training state written by [`save_checkpoint`](Self::save_checkpoint) into
    /// a finetuner built with the same model, settings and data (refused otherwise).
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let ck = Checkpoint::read(path, &self.sizes())?;
        let s = &ck.scalars;
        let now = self.fingerprint();
        if s.fingerprint != now {
            let changes = fingerprint_changes(&s.fingerprint, &now);
            return Err(Error::bad_tensor(
                path,
                STATE_KEY,
                format!(
                    "a checkpoint of this run, found one of another; what changed: {}. Resume with the checkpoint's data and settings, or start a new run",
                    changes.join("; ")
                ),
            ));
        }
        let n = self.train.ids.len() as u64;
        ck.check_consistent(path, n, self.cfg.max_steps, self.cfg.eval_at_start)?;
        let [theta, head, atm, atv, ahm, ahv, bt, bh] = ck.tensors.clone();
        self.theta = theta;
        if let Some(h) = self.head.as_mut() {
            h.params_mut().copy_from_slice(&head);
        }
        self.adam_theta.m = atm;
        self.adam_theta.v = atv;
        self.adam_theta.t = s.adam_t[0];
        self.adam_head.m = ahm;
        self.adam_head.v = ahv;
        self.adam_head.t = s.adam_t[1];
        self.best_theta = bt;
        self.best_head = bh;
        self.step = s.step;
        self.epoch = s.epoch;
        self.cursor = s.cursor as usize;
        self.order = if s.cursor > 0 || s.epoch > 0 {
            epoch_order(self.cfg.seed, s.epoch, n as usize)
        } else {
            Vec::new()
        };
        self.forward_passes = s.forward_passes;
        self.sched.multiplier = f64::from_bits(s.sched_multiplier);
        self.sched.best = f64::from_bits(s.sched_best);
        self.sched.bad_evals = s.sched_bad as usize;
        self.early.best = f64::from_bits(s.early_best);
        self.early.best_step = s.early_best_step;
        self.early.bad_evals = s.early_bad as usize;
        self.stopped = s.stopped;
        self.window_sum = f64::from_bits(s.window_sum);
        self.window_n = s.window_n;
        Ok(())
    }
}
