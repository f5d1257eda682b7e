//! A finetune job: the one place that turns "this data, this model and bundle, this recipe, this
//! engine" into a ready [`Finetuner`] and a trained task into a checked `.elxc`.
//!
//! `elx finetune`, the C API's `elx_finetune_*` and the Python `Runtime.finetune` fill a
//! [`FinetuneSpec`] from their own arguments, then drive the [`FinetuneJob`] and print (as
//! ripgrep's `HiArgs` builds every object its `main` uses): reading and labelling the data,
//! the model's position limit, the padding id, the recipe's defaults, the head warm-up and
//! the checkpoint's run identity are written here once.

use super::cache::CachedFeatures;
use super::data::{Example, RawSet, ReadOptions, class_indices, label_set, read_jsonl_with};
use super::recipe;
use super::seq::SequenceModel;
use super::{Eval, Event, FinetuneConfig, Finetuner, FitReport, GradMode, Objective, Split};
use crate::bundle::{Bundle, CoeffFile, Manifest};
use crate::error::{Error, Result};
use crate::serve::input::{DEFAULT_MAX_LENGTH, TextEncoder, find_tokenizer};
use crate::serve::job::Runner;
use crate::serve::{Backend, Engine, HiddenState};
use std::path::{Path, PathBuf};

/// Most examples read from one file or given in memory (bounds memory).
pub const MAX_EXAMPLES: usize = 1_000_000;

/// Most training examples the final summary evaluates ([`FinetuneJob::summary`]).
pub const MAX_SUMMARY_EXAMPLES: usize = 4096;

/// Where the labelled examples come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    /// JSONL files (see [`super::data`]): pre-tokenized `input_ids` lines, or `text` lines
    /// when there is a tokenizer.
    Files {
        /// Training examples.
        train: PathBuf,
        /// Validation examples: evaluation, ReduceLROnPlateau and early stopping.
        val: Option<PathBuf>,
    },
    /// (text, label) pairs in memory, tokenized by the tokenizer.
    Texts {
        /// Training pairs.
        train: Vec<(String, String)>,
        /// Validation pairs (may be empty).
        val: Vec<(String, String)>,
    },
}

/// How texts become token ids and how long a sequence may be.
#[derive(Clone, Debug, Default)]
pub struct TextOptions {
    /// HF tokenizer.json (`None`: tokenizer.json next to the model when there is one). A
    /// job on a [`Runner`] uses the runner's tokenizer instead.
    pub tokenizer: Option<PathBuf>,
    /// Longest sequence the model accepts (`None`: the tokenizer's, else the model folder's
    /// config.json `max_position_embeddings`, else 512).
    pub max_length: Option<usize>,
    /// Cut longer examples instead of refusing them.
    pub truncate: bool,
    /// Padding id for pre-tokenized data (`None`: the tokenizer's, else 0).
    pub pad_id: Option<i64>,
}

/// The training recipe: the settings of `elx finetune`, with its defaults.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Coefficient rank (`None`: the bundle's smallest r_max).
    pub rank: Option<usize>,
    /// Maximum optimisation steps (`None`: the gradient mode's default).
    pub steps: Option<u64>,
    /// Exact gradients (SPSA where the graph has ops without a gradient rule) or SPSA.
    pub grad: GradMode,
    /// Micro-batches of an exact-gradient step run at once, one thread each.
    pub threads: usize,
    /// SPSA directions per step.
    pub directions: usize,
    /// Seed of the initialisation, the directions and the data order.
    pub seed: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate of the coefficients (`None`: [`FinetuneConfig`]'s).
    pub lr: Option<f64>,
    /// Peak learning rate of the head (`None`: the gradient mode's default).
    pub head_lr: Option<f64>,
    /// Steps training the head alone first on cached features (LP-FT; 0: none).
    pub head_warmup: u64,
    /// Peak learning rate of the head warm-up.
    pub warmup_head_lr: f64,
    /// Steps between evaluations (`None`: the gradient mode's default).
    pub eval_every: Option<u64>,
    /// Train the head only over random coefficients in the subspace (ELoRAx^ZS).
    pub zero_shot: bool,
    /// Write a checkpoint every N steps to `checkpoint`.
    pub checkpoint_every: Option<u64>,
    /// Checkpoint file (written atomically).
    pub checkpoint: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (same data and settings): the head warm-up
    /// is not run again, the checkpoint holds its result.
    pub resume: Option<PathBuf>,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            rank: None,
            steps: None,
            grad: GradMode::Exact,
            threads: 1,
            directions: recipe::Defaults::EXACT.directions,
            seed: 0,
            batch_size: recipe::Defaults::EXACT.batch_size,
            lr: None,
            head_lr: None,
            head_warmup: 0,
            warmup_head_lr: 1e-2,
            eval_every: None,
            zero_shot: false,
            checkpoint_every: None,
            checkpoint: None,
            resume: None,
        }
    }
}

/// Everything a finetune job is built from, besides the engine.
#[derive(Clone, Debug)]
pub struct FinetuneSpec {
    /// The labelled examples.
    pub data: DataSource,
    /// Tokenizer, length and padding.
    pub text: TextOptions,
    /// The training recipe.
    pub recipe: Recipe,
}

/// Token source for the data.
enum Tokens<'a> {
    /// Pre-tokenized `input_ids` only.
    Ids,
    /// `text` through a tokenizer (pre-tokenized lines are accepted too).
    Text(&'a TextEncoder),
}

/// The data of a run, read and checked before any engine sees it.
struct Data {
    /// Training examples, then the validation examples (ids index this list).
    examples: Vec<Example>,
    train: Split,
    val: Option<Split>,
    classes: Vec<String>,
    pad_id: i64,
    max_len: usize,
    /// SHA-256 (hex) of the training examples' tokens and labels, in order.
    train_digest: String,
    /// The same of the validation examples, "none" without any.
    val_digest: String,
    /// Where each example came from (file and line, or list and index), for errors.
    origins: Vec<String>,
    /// Where the padding id came from, for errors.
    pad_source: String,
}

/// A finetuning run of a new task on an engine, with its classes and the bundle it belongs
/// to. Drive it with [`fit_until`](Self::fit_until), then write or hand over the task.
pub struct FinetuneJob {
    ft: Finetuner<CachedFeatures<SequenceModel<HiddenState>>>,
    classes: Vec<String>,
    manifest: Manifest,
    train: Split,
    val: Option<Split>,
    rank: usize,
    max_steps: u64,
    zero_shot: bool,
}

impl FinetuneJob {
    /// `elx finetune`'s way: reads the bundle and the data (every data error comes before
    /// the engine loads), loads the engine for `model`, and sets up the run. `warn` receives
    /// what the user should know (truncated examples, SPSA instead of exact gradients).
    pub fn open(
        spec: &FinetuneSpec,
        model: &Path,
        bundle: &Path,
        backend: Backend,
        warn: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<FinetuneJob> {
        let bundle = Bundle::read(bundle)?;
        let tokenizer = find_tokenizer(model, spec.text.tokenizer.as_deref());
        let encoder = match &tokenizer {
            Some(p) => Some(TextEncoder::from_file(p, spec.text.max_length)?),
            None => None,
        };
        let tokens = match &encoder {
            Some(e) => Tokens::Text(e),
            None => Tokens::Ids,
        };
        let max_len = match &tokens {
            // The model folder's limit caps a tokenizer given from elsewhere too.
            Tokens::Text(t) if spec.text.max_length.is_none() => {
                config_max_positions(model).map_or(t.max_length(), |p| p.min(t.max_length()))
            }
            Tokens::Text(t) => t.max_length(),
            Tokens::Ids => spec
                .text
                .max_length
                .or_else(|| config_max_positions(model))
                .unwrap_or(DEFAULT_MAX_LENGTH),
        };
        let pad = match (spec.text.pad_id, &tokens, &tokenizer) {
            (Some(p), _, _) => (p, "the padding id (--pad-id)".to_string()),
            (None, Tokens::Text(t), Some(path)) => (
                i64::from(t.pad_id()),
                format!(
                    "the padding id of {} (override with --pad-id)",
                    path.display()
                ),
            ),
            _ => (0, "the default padding id 0 (give --pad-id)".to_string()),
        };
        let data = read_data(spec, &tokens, max_len, pad, warn)?;
        // A provider that cannot start falls back to the CPU; the engine says so on stderr.
        let engine = Engine::load(model, &bundle, backend)?;
        Self::build(spec, data, &engine, bundle.manifest, warn)
    }

    /// The C API's and the Python package's way: a run on an open [`Runner`]'s engine, texts
    /// through its tokenizer (at its maximum length; the padding id is the tokenizer's).
    pub fn on_runner(
        spec: &FinetuneSpec,
        runner: &Runner,
        warn: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<FinetuneJob> {
        let (tokens, max_len, pad) = match (&spec.data, runner.text_encoder()) {
            (_, Ok(enc)) => (
                Tokens::Text(enc),
                enc.max_length(),
                (
                    spec.text.pad_id.unwrap_or(i64::from(enc.pad_id())),
                    "the padding id of the runtime's tokenizer".to_string(),
                ),
            ),
            (DataSource::Texts { .. }, Err(e)) => return Err(e),
            (DataSource::Files { .. }, Err(_)) => (
                Tokens::Ids,
                spec.text.max_length.unwrap_or(DEFAULT_MAX_LENGTH),
                (
                    spec.text.pad_id.unwrap_or(0),
                    "the padding id (default 0)".to_string(),
                ),
            ),
        };
        let data = read_data(spec, &tokens, max_len, pad, warn)?;
        Self::build(spec, data, runner.engine(), runner.manifest().clone(), warn)
    }

    /// Builds the model on the engine, the head warm-up and the joint finetuner.
    fn build(
        spec: &FinetuneSpec,
        mut data: Data,
        engine: &Engine,
        manifest: Manifest,
        warn: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<FinetuneJob> {
        let r = &spec.recipe;
        let examples = std::mem::take(&mut data.examples);
        // Ids outside the model's vocabulary are named by where they came from, the padding
        // id by where it came from.
        let name = |i: usize| data.origins.get(i).cloned().unwrap_or_default();
        SequenceModel::check_token_ids(engine, &examples, data.pad_id, &data.pad_source, &name)?;
        // Engines that plan per input shape pad to power-of-two lengths: a handful of plans.
        let model =
            SequenceModel::for_training(engine, examples, data.pad_id, data.max_len, r.grad)?
                .with_gradient_threads(r.threads);
        if let Some(why) = model.exact_unavailable() {
            warn(&format!("{why}; training with SPSA (forward passes only)"))?;
        }
        let rank = r.rank.unwrap_or(engine.min_rank());
        let defaults = FinetuneConfig::default();
        let schedule = recipe::Defaults::for_gradient(r.grad);
        let max_steps = r.steps.unwrap_or(schedule.steps);
        let mut cfg = FinetuneConfig {
            rank,
            zero_shot: r.zero_shot,
            seed: r.seed,
            lr: r.lr.unwrap_or(defaults.lr),
            head_lr: r.head_lr.unwrap_or(schedule.head_lr),
            directions: r.directions,
            grad: r.grad,
            batch_size: r.batch_size,
            max_steps,
            eval_every: r.eval_every.unwrap_or(schedule.eval_every),
            checkpoint_every: r.checkpoint_every.unwrap_or(0),
            checkpoint_path: r.checkpoint.clone(),
            ..defaults
        };
        let objective = || Objective::Classify {
            classes: data.classes.len(),
        };
        // Features are cached while the coefficients stay put: the head warm-up costs one
        // engine pass per example. A resumed run restores its head from the checkpoint instead.
        let mut model = CachedFeatures::new(model);
        let mut warm_head = None;
        if r.head_warmup > 0 && !r.zero_shot {
            cfg.eval_at_start = true;
        }
        if r.head_warmup > 0 && !r.zero_shot && r.resume.is_none() {
            let head_only = recipe::fit_head_only(
                model,
                &cfg,
                r.head_warmup,
                r.warmup_head_lr,
                objective(),
                data.train.clone(),
                data.val.clone(),
            )?;
            warm_head = head_only.head().map(|h| h.params().to_vec());
            model = head_only.into_model();
        }
        let mut ft = recipe::joint(
            model,
            cfg,
            objective(),
            data.train.clone(),
            data.val.clone(),
            warm_head.as_deref(),
        )?;
        // A checkpoint is tied to the data it trained on and to the settings the finetuner
        // does not see (the warm-up shapes the head it starts from; padding and length shape
        // the inputs).
        ft.set_run_identity(&[
            ("--train", short(&data.train_digest)),
            ("--val", short(&data.val_digest)),
            ("--head-warmup", r.head_warmup.to_string()),
            ("--warmup-head-lr", format!("{:e}", r.warmup_head_lr)),
            ("--pad-id", data.pad_id.to_string()),
            ("--max-length", data.max_len.to_string()),
            ("labels", short(&classes_digest(&data.classes))),
        ]);
        if let Some(p) = &r.resume {
            ft.resume(p)?;
        }
        Ok(FinetuneJob {
            ft,
            classes: data.classes,
            manifest,
            train: data.train,
            val: data.val,
            rank,
            max_steps,
            zero_shot: r.zero_shot,
        })
    }

    /// Trains until step `pause_at` or the end of the run (max steps or early stopping).
    pub fn fit_until(
        &mut self,
        pause_at: u64,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<FitReport> {
        self.ft.fit_until(pause_at, on_event)
    }

    /// The finetuner (evaluation, checkpoints, the trained parameters).
    pub fn finetuner(&mut self) -> &mut Finetuner<CachedFeatures<SequenceModel<HiddenState>>> {
        &mut self.ft
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.ft.steps()
    }

    /// The run's step limit.
    pub fn max_steps(&self) -> u64 {
        self.max_steps
    }

    /// The coefficient rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The class names, in class-index order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The subspace id of the bundle the task belongs to.
    pub fn subspace_id(&self) -> &str {
        &self.manifest.subspace_id
    }

    /// The validation split, when there are validation examples.
    pub fn validation(&self) -> Option<&Split> {
        self.val.as_ref()
    }

    /// What the trained coefficients were computed with: "exact gradients", "SPSA" or "head
    /// only" (zero-shot).
    pub fn gradient_name(&self) -> &'static str {
        match self.ft.gradient() {
            GradMode::Exact if self.zero_shot => "head only",
            GradMode::Exact => "exact gradients",
            GradMode::Spsa => "SPSA",
        }
    }

    /// The task as trained so far, named `task`.
    pub fn coeff_file(&self, task: &str) -> Result<CoeffFile> {
        self.ft
            .to_coeff_file(&self.manifest.subspace_id, task, &self.classes)
    }

    /// Writes the task atomically to `path`, after the check a runtime applies at load: a
    /// task that would be refused is not written.
    pub fn write_task(&self, path: &Path, task: &str) -> Result<CoeffFile> {
        // The finetuner checked every trained tensor (finite, within the loosest bound); the
        // bundle knows each module's inputs, so the file must also pass the load check.
        let file = self.coeff_file(task)?;
        file.check_for(path, &self.manifest).map_err(|e| {
            Error::Numeric(format!(
                "the trained task would be refused at load ({e}); nothing was written: lower the learning rate"
            ))
        })?;
        file.write(path)?;
        Ok(file)
    }

    /// The final figures: the training split on a bounded, evenly spaced sample (a full
    /// pass over 192k rows took longer than the run it summarises) and the validation split.
    pub fn summary(&mut self) -> Result<Summary> {
        let sample = even_sample(&self.train, MAX_SUMMARY_EXAMPLES);
        let train = self.ft.evaluate(&sample)?;
        let val = match &self.val {
            Some(v) => Some(self.ft.evaluate(v)?),
            None => None,
        };
        Ok(Summary {
            train,
            train_examples: self.train.ids.len(),
            val,
        })
    }
}

/// The final figures of a run ([`FinetuneJob::summary`]).
#[derive(Clone, Debug)]
pub struct Summary {
    /// Loss and accuracy on the training sample (`train.examples` of them).
    pub train: Eval,
    /// All training examples.
    pub train_examples: usize,
    /// Loss and accuracy on the validation split.
    pub val: Option<Eval>,
}

/// Reads (or tokenizes) the training and validation data: tokens, labels and the classes.
fn read_data(
    spec: &FinetuneSpec,
    tokens: &Tokens<'_>,
    max_len: usize,
    (pad_id, pad_source): (i64, String),
    warn: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Data> {
    let opts = ReadOptions {
        max_len,
        truncate: spec.text.truncate,
        max_examples: MAX_EXAMPLES,
    };
    let (train_name, train, val) = match &spec.data {
        DataSource::Files { train, val } => {
            let t = read_file(train, tokens, &opts, warn)?;
            let v = match val {
                Some(p) => Some((p.clone(), read_file(p, tokens, &opts, warn)?)),
                None => None,
            };
            (train.clone(), t, v)
        }
        DataSource::Texts { train, val } => {
            let Tokens::Text(enc) = tokens else {
                return Err(Error::Internal("texts without a tokenizer".into()));
            };
            let t = labelled_texts(enc, train, "train", &opts)?;
            let v = if val.is_empty() {
                None
            } else {
                Some((
                    PathBuf::from("<val labels>"),
                    labelled_texts(enc, val, "val", &opts)?,
                ))
            };
            (PathBuf::from("<train labels>"), t, v)
        }
    };
    let in_memory = matches!(spec.data, DataSource::Texts { .. });
    let origin = |name: &Path, set: &RawSet, k: usize| {
        if in_memory {
            let what = if name == Path::new("<val labels>") {
                "val"
            } else {
                "train"
            };
            format!("{what} example {k}")
        } else {
            let line = set.lines.get(k).copied().unwrap_or(0);
            format!("{}: example {} (line {line})", name.display(), k + 1)
        }
    };
    let classes = label_set(&train);
    if classes.len() < 2 {
        return Err(Error::bad_file(
            &train_name,
            format!("expected at least 2 distinct labels to train a classifier, found {classes:?}"),
        ));
    }
    let train_labels = class_indices(&train_name, &train, &classes)?;
    let n_train = train.examples.len();
    let train_digest = data_digest(&train.examples, &train_labels);
    let mut origins: Vec<String> = (0..n_train)
        .map(|k| origin(&train_name, &train, k))
        .collect();
    let mut examples = train.examples;
    let mut val_digest = "none".to_string();
    let val = match val {
        Some((p, v)) => {
            let labels = class_indices(&p, &v, &classes)?;
            val_digest = data_digest(&v.examples, &labels);
            origins.extend((0..v.examples.len()).map(|k| origin(&p, &v, k)));
            let ids = (examples.len()..examples.len() + v.examples.len()).collect();
            examples.extend(v.examples);
            Some(Split { ids, labels })
        }
        None => None,
    };
    Ok(Data {
        examples,
        train: Split {
            ids: (0..n_train).collect(),
            labels: train_labels,
        },
        val,
        classes,
        pad_id,
        max_len,
        train_digest,
        val_digest,
        origins,
        pad_source,
    })
}

/// Reads one data file; texts go through the tokenizer. Truncation is reported by `warn`.
fn read_file(
    path: &Path,
    tokens: &Tokens<'_>,
    opts: &ReadOptions,
    warn: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<RawSet> {
    let set = match tokens {
        Tokens::Ids => read_jsonl_with(path, opts, None)?,
        Tokens::Text(enc) => {
            let tokenize = |t: &str| enc.ids_truncated(t);
            read_jsonl_with(path, opts, Some(&tokenize))?
        }
    };
    if set.truncated > 0 {
        warn(&format!(
            "{}: {} of {} examples were longer than {} tokens and were truncated",
            path.display(),
            set.truncated,
            set.examples.len(),
            opts.max_len
        ))?;
    }
    Ok(set)
}

/// Labelled texts as examples (tokenized, never padded) and their labels; `what` ("train",
/// "val") names them in errors as `{what}_texts[i]`, `{what}_labels[i]`.
pub fn labelled_texts(
    enc: &TextEncoder,
    pairs: &[(String, String)],
    what: &str,
    opts: &ReadOptions,
) -> Result<RawSet> {
    if pairs.len() > opts.max_examples {
        return Err(Error::Usage(format!(
            "{what}: expected at most {} examples, found {}",
            opts.max_examples,
            pairs.len()
        )));
    }
    let mut set = RawSet::default();
    for (i, (t, l)) in pairs.iter().enumerate() {
        if l.is_empty() {
            return Err(Error::Usage(format!("{what}_labels[{i}] is empty")));
        }
        let (ids, cut) = enc.ids_truncated(t)?;
        // The tokenizer cuts at its own limit; a shorter limit cuts here.
        let (ids, cut) = if ids.len() > opts.max_len {
            (ids[..opts.max_len].to_vec(), true)
        } else {
            (ids, cut)
        };
        if cut && !opts.truncate {
            return Err(Error::Usage(format!(
                "{what}_texts[{i}] has more than the {} tokens the model accepts; set truncate to cut it",
                opts.max_len
            )));
        }
        set.truncated += usize::from(cut);
        set.examples.push(Example {
            attention_mask: vec![1; ids.len()],
            input_ids: ids.into_iter().map(i64::from).collect(),
        });
        set.labels.push(l.clone());
        set.lines.push(i + 1);
    }
    Ok(set)
}

/// At most `max` examples of `split`, evenly spaced over it (all of them when it is smaller).
pub fn even_sample(split: &Split, max: usize) -> Split {
    let n = split.ids.len();
    if n <= max {
        return split.clone();
    }
    let pick: Vec<usize> = (0..max).map(|i| i * n / max).collect();
    Split {
        ids: pick.iter().map(|&i| split.ids[i]).collect(),
        labels: pick.iter().map(|&i| split.labels[i]).collect(),
    }
}

/// The first 16 bytes (32 hex digits) of a digest: enough to tell data apart, short enough
/// to read in an error.
fn short(digest: &str) -> String {
    digest.chars().take(32).collect()
}

/// SHA-256 (hex) of the class names, in class-index order.
fn classes_digest(classes: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in classes {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of examples' token ids and labels: what a checkpoint's resume must see again.
fn data_digest(examples: &[Example], labels: &[usize]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((examples.len() as u64).to_le_bytes());
    for (e, y) in examples.iter().zip(labels) {
        h.update((e.input_ids.len() as u64).to_le_bytes());
        for id in &e.input_ids {
            h.update(id.to_le_bytes());
        }
        h.update((*y as u64).to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `max_position_embeddings` of a HF config.json beside the model, if any.
fn config_max_positions(model: &Path) -> Option<usize> {
    crate::serve::input::text::max_position_embeddings(model.parent()?)
}
