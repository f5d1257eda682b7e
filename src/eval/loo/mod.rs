//! Leave-one-out over a labelled text workload (the experiment behind `elx demo`).
//!
//! For each held-out task, the other tasks' adapters make the subspace, and the held-out task
//! is served on the same engine ([`LooConfig::serve_engine`], tract in `elx demo`; one patched
//! graph per bundle) in every way
//! a user could serve it:
//!
//! | method | coefficients | head |
//! |---|---|---|
//! | head only, full training set | none (the base model) | trained beside the adapter (`head_only.safetensors`), when the workload has it |
//! | own LoRA | the task's adapter, unmerged (rank r, exact) | the adapter's own head |
//! | zero-shot: recycled | the adapter projected into the other tasks' subspace | the adapter's own head |
//! | zero-shot: mean only | the adapter projected into the span of the others' mean direction | idem |
//! | zero-shot: random basis | the adapter projected into a random basis of the same K | idem |
//!
//! The adapter's own head was trained for the full ΔW, so it fits a projection that keeps part
//! of ΔW poorly. Each zero-shot row therefore also has a *head refit* twin: the same fixed
//! coefficients under a head trained on the device on the training examples (the head-only
//! recipe), next to the head alone trained the same way on the base model:
//!
//! | method | coefficients | head |
//! |---|---|---|
//! | head only, refit | none (the base model) | trained on the device on the training examples |
//! | zero-shot + head refit: recycled, mean only, random basis | as above, fixed | idem, on the features under those coefficients |
//!
//! and, for each few-shot training-set size (16, 64, 150 examples in the demo):
//!
//! | method | coefficients | head |
//! |---|---|---|
//! | head only | none (the base model) | trained on the device |
//! | finetuned | trained on the device with exact gradients (training graphs on the engine; SPSA when asked, or where the graph has none) | trained with them, from the head-only solution or from zero |
//! | random basis | the same training over a random orthonormal basis of the same K | idem |
//!
//! The headline figure is the share of the head-only → own-LoRA cross-entropy gap a row
//! recovers ([`gap_recovered`]), never a raw score ratio.
//!
//! The last row is the control of `docs/ARCHITECTURE.md` ("Honest numbers"): if it does as
//! well as the recycled subspace, recycling did not help on this task.
//!
//! The own-LoRA row runs the adapter through the same patch as everything else: the exact
//! rank-r "subspace" of that single adapter (V_A = Vᵀ, V_B = U of its ΔW = U·S·Vᵀ) with the
//! coefficients α_A = α_B = √S, so the graph computes B·(A·x) up to an r x r rotation, with
//! two extra r x r products per module.
//!
//! Where things are: the figures a run returns (`results.rs`), one held-out task
//! ([`run_task`], `task.rs`), the zero-shot and trained rows (`rows.rs`), what every row is
//! served through (`serving.rs`), the workload's data files (`data.rs`), and the in-sample
//! serving of a whole family ([`in_sample`], `in_sample.rs`).

mod data;
mod in_sample;
mod results;
mod rows;
mod serving;
mod task;

pub use in_sample::{InSampleRow, InSampleTask, in_sample};
pub use results::{FewShot, Method, MethodResult, TaskResult, gap_recovered};
pub(crate) use serving::write_bound;
pub(crate) use task::mean_direction_subspace;
pub use task::run_task;

use crate::error::Result;
use crate::finetune::FinetuneConfig;
use crate::graph::{self, ModelProto};
use crate::serve::Backend;
use crate::subspace::ExtractOptions;
use std::path::{Path, PathBuf};

/// One task of the workload.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// Task name.
    pub name: String,
    /// The task's PEFT adapter folder.
    pub adapter: PathBuf,
    /// The head trained with the adapter (`head.weight`, `head.bias`, labels).
    pub head: PathBuf,
    /// Training examples: JSONL with `text` and an integer `label` (a class index).
    pub train: PathBuf,
    /// Test examples, same format.
    pub test: PathBuf,
}

/// Settings of a leave-one-out run.
#[derive(Clone, Debug)]
pub struct LooConfig {
    /// The base ONNX model the adapters were trained on.
    pub base: PathBuf,
    /// Its tokenizer.json; without one the data files must be pre-tokenized (`input_ids`).
    pub tokenizer: Option<PathBuf>,
    /// Longest token sequence (longer texts are truncated).
    pub max_length: usize,
    /// How the subspace of the other tasks is extracted.
    pub extract: ExtractOptions,
    /// Training examples read (the first ones of the training file); the largest few-shot
    /// size.
    pub train_examples: usize,
    /// Training-set sizes of the device-trained rows (each a prefix of the training
    /// examples); empty: no device-trained rows (the zero-shot rows alone).
    pub few_shot: Vec<usize>,
    /// Validation examples for early stopping (the next ones of the training file).
    pub val_examples: usize,
    /// Test examples (the first ones of the test file).
    pub test_examples: usize,
    /// Training of the finetuned and random-basis rows (its `head_lr` also trains the
    /// head-only baseline, whose solution warm-starts them).
    pub finetune: FinetuneConfig,
    /// The head's learning rate while the coefficients train; `None`: `finetune.head_lr`.
    /// Small values keep the head from re-fitting the training set on its own, so the
    /// coefficients and the head adapt together (BENCHMARKS.md).
    pub finetune_head_lr: Option<f64>,
    /// Start the finetuned and random-basis rows from the head-only solution (LP-FT), or from
    /// a zero head.
    pub warm_start_head: bool,
    /// With a warm start, evaluate the start before the first step so that it competes for
    /// the best validation loss (the trained rows then end no worse than the head alone on
    /// validation, and often return it unchanged). Off: the rows keep the best *trained*
    /// step, which shows what training in each basis does even where it does not help.
    pub start_competes: bool,
    /// Steps of the head-only baseline (its features are computed once and cached).
    pub head_steps: u64,
    /// Seed of the random orthonormal basis.
    pub random_seed: u64,
    /// Where bundles and coefficient files go (one folder per task).
    pub out_dir: PathBuf,
    /// The engine every row is evaluated and served on (`elx demo`: tract).
    pub serve_engine: Backend,
    /// The engine the finetuned and random-basis rows train on (every row is evaluated and
    /// served on [`LooConfig::serve_engine`]). On tract, single-threaded, the two trainings run side by side, one
    /// thread each; on ONNX Runtime, with its own intra-op threads, one after the other.
    pub train_engine: Backend,
}

/// Opens `cfg.base` once: the model, its SHA-256 and the name used in bindings.
pub struct Base {
    model: ModelProto,
    sha256: String,
    name: String,
}

impl Base {
    /// Reads and hashes the base model.
    pub fn open(path: &Path) -> Result<Base> {
        let (model, sha256) = graph::read_model(path)?;
        Ok(Base {
            model,
            sha256,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }
}
