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

use super::{Metrics, capture, head_metrics, layout_params};
use crate::adapter::Adapter;
use crate::bundle::diagnostics::random_subspace;
use crate::bundle::{Bundle, CoeffFile, Head, Provenance, SourceAdapter, StorageDtype};
use crate::error::{Error, Result};
use crate::finetune::cache::CachedFeatures;
use crate::finetune::data::{Example, ReadOptions, Tokenize, read_jsonl_with};
use crate::finetune::pinned::PinnedCoefficients;
use crate::finetune::seq::SequenceModel;
use crate::finetune::{FinetuneConfig, ForwardModel, Objective, Split, recipe};
use crate::graph::{self, ModelProto};
use crate::serve::input::TextEncoder;
use crate::serve::{Backend, Engine, HiddenState};
use crate::subspace::{self, ExtractOptions, KRule, Subspace};
use crate::util::{Job, eval_threads, run_parallel};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Most examples read from one file (bounds memory on a hostile file).
const MAX_EXAMPLES: usize = 1 << 20;

type Model = CachedFeatures<SequenceModel<HiddenState>>;

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

/// The sizes of the few-shot rows: `cfg.few_shot` sorted (none when it is empty).
fn few_shot_sizes(cfg: &LooConfig) -> Result<Vec<usize>> {
    let mut sizes = cfg.few_shot.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.first() == Some(&0) || sizes.last().is_some_and(|&n| n > cfg.train_examples) {
        return Err(Error::Usage(format!(
            "few-shot sizes {sizes:?} must lie in 1..={} (the training examples)",
            cfg.train_examples
        )));
    }
    Ok(sizes)
}

/// The held-out task's coefficients in each zero-shot subspace and their bound bundles.
struct Spaces {
    recycled: Bundle,
    random: Bundle,
    mean_only: Option<Bundle>,
    own: Bundle,
}

/// Runs the leave-one-out evaluation of `tasks[held]` (see the module documentation).
/// `log` receives one line per phase.
pub fn run_task(
    cfg: &LooConfig,
    base: &Base,
    tasks: &[TaskSpec],
    held: usize,
    log: &mut dyn FnMut(&str),
) -> Result<TaskResult> {
    let started = Instant::now();
    let spec = tasks
        .get(held)
        .ok_or_else(|| Error::Usage(format!("no task {held} among {}", tasks.len())))?;
    let sizes = few_shot_sizes(cfg)?;
    let dir = cfg.out_dir.join(&spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    // Subspaces: the other tasks' (recycled), a random one of the same K, the span of the
    // others' mean direction, the task's own.
    let adapter = Adapter::open(&spec.adapter)?;
    let others: Vec<Adapter> = tasks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != held)
        .map(|(_, t)| Adapter::open(&t.adapter))
        .collect::<Result<_>>()?;
    let quiet = |_: usize, _: usize, _: &str| {};
    let space = subspace::extract(&others, &cfg.extract, &quiet)?;
    let random = random_subspace(&space, cfg.random_seed);
    let cap = capture(&adapter, &space, &random)?;
    let random_cap = capture(&adapter, &random, &random)?;
    let mean_space = mean_direction_subspace(&others, &cfg.extract)?;
    let mean_cap = match &mean_space {
        Some(m) => Some(capture(&adapter, m, m)?),
        None => None,
    };
    let r_lora = adapter.modules.values().map(|m| m.rank).max().unwrap_or(0);
    let own_options = ExtractOptions {
        canonicalize: true,
        center: false,
        k_rule_a: KRule::Fixed(r_lora),
        k_rule_b: KRule::Fixed(r_lora),
        pseudo: 0,
        ..cfg.extract.clone()
    };
    let own = subspace::extract(std::slice::from_ref(&adapter), &own_options, &quiet)?;
    let own_coeffs = capture(&adapter, &own, &own)?;
    let sources: Vec<SourceAdapter> = others.iter().map(SourceAdapter::from).collect();
    let bundles = Spaces {
        recycled: write_bound(&dir.join("recycled.elxb"), &space, &sources, base)?,
        random: write_bound(&dir.join("random.elxb"), &random, &[], base)?,
        mean_only: match &mean_space {
            Some(m) => Some(write_bound(&dir.join("mean-only.elxb"), m, &sources, base)?),
            None => None,
        },
        own: write_bound(
            &dir.join("own-lora.elxb"),
            &own,
            &[SourceAdapter::from(&adapter)],
            base,
        )?,
    };
    log(&format!(
        "{}: subspace of the other {} adapters, K_A+K_B = {} over {} modules; holds {:.1}% of the held-out ΔW (random: {:.2}%, mean direction: {:.1}%)",
        spec.name,
        others.len(),
        cap.k_total,
        space.modules.len(),
        100.0 * cap.captured,
        100.0 * cap.random_captured,
        100.0 * mean_cap.as_ref().map_or(0.0, |m| m.captured)
    ));

    // Data: the first `train_examples` training examples (each few-shot size a prefix),
    // then the validation examples, then the test examples.
    let head = Head::read(&spec.head)?;
    let classes = head.labels.len();
    let reader = Reader::new(cfg)?;
    let (mut examples, mut labels) = reader.read(&spec.train, classes)?;
    let n_fit = cfg.train_examples + cfg.val_examples;
    if examples.len() < n_fit || cfg.train_examples == 0 || cfg.val_examples == 0 {
        return Err(Error::bad_file(
            &spec.train,
            format!(
                "expected at least {} training + {} validation examples, found {}",
                cfg.train_examples,
                cfg.val_examples,
                examples.len()
            ),
        ));
    }
    examples.truncate(n_fit);
    labels.truncate(n_fit);
    let (test_examples, test_labels) = reader.read(&spec.test, classes)?;
    let n_test = test_examples.len().min(cfg.test_examples);
    examples.extend(test_examples.into_iter().take(n_test));
    labels.extend(test_labels.into_iter().take(n_test));
    let split = |from: usize, to: usize| Split {
        ids: (from..to).collect(),
        labels: labels[from..to].to_vec(),
    };
    // Evaluation batches of similar lengths pad less; the order does not change the metrics.
    let by_length = |s: Split| {
        let mut order: Vec<usize> = (0..s.ids.len()).collect();
        order.sort_by_key(|&i| examples[s.ids[i]].input_ids.len());
        Split {
            ids: order.iter().map(|&i| s.ids[i]).collect(),
            labels: order.iter().map(|&i| s.labels[i]).collect(),
        }
    };
    let val = by_length(split(cfg.train_examples, n_fit));
    let test = by_length(split(n_fit, n_fit + n_test));
    let pad = reader.pad();
    let label_names = head.labels.clone();
    let head_params = classes * (head.weight.ncols() + 1);
    let refit_train = split(0, cfg.train_examples);
    let zero_shot = ZeroShot {
        cfg,
        examples: &examples,
        pad,
        train: &refit_train,
        val: &val,
        test: &test,
        head: &head,
        classes,
        head_params,
    };

    // Zero-shot rows: fixed coefficients, the adapter's own head, then a head refit on them;
    // independent jobs, one engine each, run side by side.
    let mut jobs: Vec<Job<'_, Vec<MethodResult>>> = Vec::new();
    // One engine for the own-LoRA bundle: the own LoRA, and the base model itself (zero
    // coefficients) under the full-training-set head and under a head refit on the device.
    jobs.push(Box::new(|| {
        let own_engine = Engine::load(&cfg.base, &bundles.own, cfg.serve_engine)?;
        let own_params = layout_params(&own_engine.layout(), &own_coeffs.coefficients)?;
        let mut own_row = zero_shot.row(
            Method::OwnLora,
            &mut zero_shot.model(&own_engine, &own_params)?,
        )?;
        own_row.trainable = cap.lora_params + head_params;
        own_row.file_bytes =
            file_len(&spec.adapter.join("adapter_model.safetensors")) + file_len(&spec.head);
        own_row.swap_ms = timed(|| {
            let a = Adapter::open(&spec.adapter)?;
            for name in a.modules.keys() {
                a.load_module(name)?;
            }
            Head::read(&spec.head).map(|_| ())
        })?;
        let mut rows = vec![own_row];
        let mut base_model = zero_shot.model(&own_engine, &vec![0.0; own_params.len()])?;
        let head_only_full = spec.head.with_file_name("head_only.safetensors");
        if head_only_full.is_file() {
            let full = Head::read(&head_only_full)?;
            let zs = ZeroShot {
                head: &full,
                ..zero_shot
            };
            let mut row = zs.row(Method::HeadOnlyFull, &mut base_model)?;
            row.file_bytes = file_len(&head_only_full);
            row.swap_ms = timed(|| Head::read(&head_only_full).map(|_| ()))?;
            rows.push(row);
        }
        rows.push(zero_shot.refit(Method::HeadOnly, base_model)?.0);
        Ok(rows)
    }));
    for (method, refit, bundle, coeffs, file_name) in [
        (
            Method::Projected,
            Method::ProjectedRefit,
            Some(&bundles.recycled),
            Some(&cap),
            "projected",
        ),
        (
            Method::MeanOnly,
            Method::MeanOnlyRefit,
            bundles.mean_only.as_ref(),
            mean_cap.as_ref(),
            "mean-only",
        ),
        (
            Method::RandomProjected,
            Method::RandomProjectedRefit,
            Some(&bundles.random),
            Some(&random_cap),
            "random-projected",
        ),
    ] {
        let (Some(bundle), Some(c)) = (bundle, coeffs) else {
            continue;
        };
        let (zero_shot, head, dir) = (&zero_shot, &head, &dir);
        jobs.push(Box::new(move || {
            let rt = Engine::load(&cfg.base, bundle, cfg.serve_engine)?;
            let params = layout_params(&rt.layout(), &c.coefficients)?;
            let mut model = zero_shot.model(&rt, &params)?;
            let own_head_row = zero_shot.row(method, &mut model)?;
            let (refit_row, refit_head) = zero_shot.refit(refit, model)?;
            // The same coefficients in two files: under the adapter's own head, and refit.
            let mut rows = Vec::new();
            for (mut row, head, path) in [
                (
                    own_head_row,
                    head.clone(),
                    dir.join(format!("{file_name}.elxc")),
                ),
                (
                    refit_row,
                    refit_head,
                    dir.join(format!("{file_name}-refit.elxc")),
                ),
            ] {
                let file = CoeffFile {
                    subspace_id: bundle.manifest.subspace_id.clone(),
                    task: spec.name.clone(),
                    provenance: Provenance::Projected,
                    modules: c.coefficients.clone(),
                    head: Some(head),
                };
                file.write(&path)?;
                row.trainable = c.coeff_params + head_params;
                row.file_bytes = file_len(&path);
                row.swap_ms = timed(|| rt.load_task(&path).map(|_| ()))?;
                rows.push(row);
            }
            Ok(rows)
        }));
    }
    let mut methods: Vec<MethodResult> = run_parallel(jobs, eval_threads())?
        .into_iter()
        .flatten()
        .collect();
    methods.sort_by_key(|m| m.method as usize);
    log(&format!("{}: zero-shot rows evaluated", spec.name));

    // Few-shot rows: per size, the head alone, then coefficients + head in the recycled
    // subspace and in the random basis (on tract one thread each: the runtime is Sync, and
    // each thread builds its own engine inputs; on ONNX Runtime one after the other, each
    // session using the cores itself).
    let rt = Engine::load(&cfg.base, &bundles.recycled, cfg.serve_engine)?;
    let random_rt = Engine::load(&cfg.base, &bundles.random, cfg.serve_engine)?;
    let mut head_model = sequence_model(&rt, examples.clone(), pad, cfg.max_length)?;
    let mut few_shot = Vec::new();
    for &n in &sizes {
        let train = split(0, n);
        let (misses0, t0) = (head_model.hits_misses().1, Instant::now());
        let mut ft = recipe::fit_head_only(
            head_model,
            &cfg.finetune,
            cfg.head_steps,
            cfg.finetune.head_lr,
            Objective::Classify { classes },
            train.clone(),
            Some(val.clone()),
        )?;
        let head_seconds = t0.elapsed().as_secs_f64();
        let head_engine = ft.model().hits_misses().1 - misses0;
        let head_eval = ft.evaluate(&test)?;
        let probe: Vec<f64> = ft.head().map(|h| h.params().to_vec()).unwrap_or_default();
        let mut head_file = ft.to_coeff_file(
            &bundles.recycled.manifest.subspace_id,
            &spec.name,
            &label_names,
        )?;
        head_file.modules.clear();
        let head_path = dir.join(format!("head-only-n{n}.elxc"));
        head_file.write(&head_path)?;
        head_model = ft.into_model();
        let head_only = MethodResult {
            method: Method::HeadOnly,
            train_examples: n,
            trainable: head_params,
            file_bytes: file_len(&head_path),
            swap_ms: timed(|| rt.load_task(&head_path).map(|_| ()))?,
            test: eval_metrics(&head_eval)?,
            engine_examples: head_engine,
            train_seconds: head_seconds,
        };
        let job = Training {
            cfg,
            examples: &examples,
            pad,
            splits: (&train, &val, &test),
            classes,
            labels: &label_names,
            task: &spec.name,
            probe: &probe,
        };
        let finetuned_path = dir.join(format!("finetuned-n{n}.elxc"));
        let random_path = dir.join(format!("random-basis-n{n}.elxc"));
        let (finetuned, control) = if cfg.train_engine == Backend::Tract {
            std::thread::scope(|s| {
                let ft = s.spawn(|| {
                    job.train(&rt, &bundles.recycled, &finetuned_path, Method::Finetuned)
                });
                let rd = s.spawn(|| {
                    job.train(
                        &random_rt,
                        &bundles.random,
                        &random_path,
                        Method::RandomBasis,
                    )
                });
                let join = |h: std::thread::ScopedJoinHandle<'_, Result<MethodResult>>| {
                    h.join()
                        .map_err(|_| Error::Usage("a training thread panicked".into()))?
                };
                (join(ft), join(rd))
            })
        } else {
            (
                job.train(&rt, &bundles.recycled, &finetuned_path, Method::Finetuned),
                job.train(
                    &random_rt,
                    &bundles.random,
                    &random_path,
                    Method::RandomBasis,
                ),
            )
        };
        let (finetuned, random_basis) = (finetuned?, control?);
        log(&format!(
            "{}: {n} examples: head only ({head_seconds:.1} s), finetuned ({:.1} s) and the random-basis control ({:.1} s), {}",
            spec.name,
            finetuned.train_seconds,
            random_basis.train_seconds,
            match cfg.train_engine {
                Backend::Tract => "in parallel on tract".to_string(),
                Backend::Ort(ep) => format!("one after the other on ONNX Runtime ({})", ep.name()),
            }
        ));
        few_shot.push(FewShot {
            examples: n,
            head_only,
            finetuned,
            random_basis,
        });
    }
    let reference_ce = methods
        .iter()
        .find(|m| m.method == Method::HeadOnlyFull)
        .or_else(|| methods.iter().find(|m| m.method == Method::HeadOnly))
        .map_or(f64::NAN, |m| m.test.cross_entropy);

    Ok(TaskResult {
        task: spec.name.clone(),
        k_a: space.modules.values().map(|m| m.a.k_total()).sum(),
        k_b: space.modules.values().map(|m| m.b.k_total()).sum(),
        captured: cap.captured,
        random_captured: cap.random_captured,
        mean_only_captured: mean_cap.as_ref().map_or(0.0, |m| m.captured),
        methods,
        few_shot,
        reference_ce,
        bundle: bundles.recycled.path.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The span of the other adapters' mean direction alone, one vector per side (centering
/// with no principal direction kept); `None` when no module has a non-zero mean on both
/// sides. Modules whose mean vanishes on a side are left out.
fn mean_direction_subspace(
    others: &[Adapter],
    extract: &ExtractOptions,
) -> Result<Option<Subspace>> {
    let options = ExtractOptions {
        center: true,
        k_rule_a: KRule::Fixed(0),
        k_rule_b: KRule::Fixed(0),
        pseudo: 0,
        ..extract.clone()
    };
    let quiet = |_: usize, _: usize, _: &str| {};
    let mut s = subspace::extract(others, &options, &quiet)?;
    s.modules
        .retain(|_, m| m.v_a.nrows() == 1 && m.v_b.ncols() == 1);
    Ok((!s.modules.is_empty()).then_some(s))
}

/// The base model pinned at fixed coefficients, its features cached.
type Pinned = PinnedCoefficients<Model>;

/// What the zero-shot rows share: fixed coefficients evaluated on the test split, under the
/// given head or under a head refit on the training split.
#[derive(Clone, Copy)]
struct ZeroShot<'a> {
    cfg: &'a LooConfig,
    examples: &'a [Example],
    pad: i64,
    train: &'a Split,
    val: &'a Split,
    test: &'a Split,
    head: &'a Head,
    classes: usize,
    head_params: usize,
}

impl ZeroShot<'_> {
    /// The model of `rt` pinned at `params` (its layout).
    fn model(&self, rt: &Engine, params: &[f32]) -> Result<Pinned> {
        PinnedCoefficients::new(
            sequence_model(rt, self.examples.to_vec(), self.pad, self.cfg.max_length)?,
            params.to_vec(),
        )
    }

    /// Test metrics of the head under `model`'s coefficients; size and swap fields are left
    /// for the caller.
    fn row(&self, method: Method, model: &mut Pinned) -> Result<MethodResult> {
        let (feats, d) = features(model, &self.test.ids, &[], self.cfg.finetune.eval_batch)?;
        Ok(MethodResult {
            method,
            train_examples: 0,
            trainable: self.head_params,
            file_bytes: 0,
            swap_ms: 0.0,
            test: head_metrics(self.head, &feats, d, &self.test.labels)?,
            engine_examples: 0,
            train_seconds: 0.0,
        })
    }

    /// A head fitted on the training split under `model`'s coefficients (the head-only
    /// recipe, early-stopped on validation), evaluated on the test split, and the head; size
    /// and swap fields are left for the caller.
    fn refit(&self, method: Method, model: Pinned) -> Result<(MethodResult, Head)> {
        let (mut model, t0) = (model, Instant::now());
        let misses0 = model.inner().hits_misses().1;
        let mut ft = recipe::fit_head_only(
            model,
            &self.cfg.finetune,
            self.cfg.head_steps,
            self.cfg.finetune.head_lr,
            Objective::Classify {
                classes: self.classes,
            },
            self.train.clone(),
            Some(self.val.clone()),
        )?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let eval = ft.evaluate(self.test)?;
        let head = ft
            .labelled_head(&self.head.labels)?
            .ok_or_else(|| Error::Usage("a classifier without a head".into()))?;
        model = ft.into_model();
        let row = MethodResult {
            method,
            train_examples: self.train.ids.len(),
            trainable: self.head_params,
            file_bytes: 0,
            swap_ms: 0.0,
            test: eval_metrics(&eval)?,
            engine_examples: model.inner().hits_misses().1 - misses0,
            train_seconds,
        };
        Ok((row, head))
    }
}

/// What the two coefficient trainings share.
struct Training<'a> {
    cfg: &'a LooConfig,
    examples: &'a [Example],
    pad: i64,
    splits: (&'a Split, &'a Split, &'a Split),
    classes: usize,
    labels: &'a [String],
    task: &'a str,
    probe: &'a [f64],
}

impl Training<'_> {
    /// Training of coefficients + head on the configured engine for `bundle`, the head
    /// starting from the head-only solution (LP-FT) or from zero (`warm_start_head`),
    /// evaluated on the test split and saved to `path`; `rt` (the serving engine, the same bundle) serves
    /// the file, and trains too when the configured engine is tract.
    fn train(
        &self,
        rt: &Engine,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let engine = if self.cfg.train_engine == self.cfg.serve_engine {
            rt.clone()
        } else {
            Engine::load(&self.cfg.base, bundle, self.cfg.train_engine)?
        };
        let model = CachedFeatures::new(SequenceModel::for_training(
            &engine,
            self.examples.to_vec(),
            self.pad,
            self.cfg.max_length,
            self.cfg.finetune.grad,
        )?);
        let mut r = self.train_on(model, bundle, path, method)?;
        r.swap_ms = timed(|| rt.load_task(path).map(|_| ()))?;
        Ok(r)
    }

    /// The training itself, on any engine; `swap_ms` is left at 0 for the caller.
    fn train_on(
        &self,
        model: Model,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let cfg = self.cfg;
        let (train, val, test) = self.splits;
        let t0 = Instant::now();
        // A warm-started head is evaluated before the first step, so training can only
        // return something at least as good on validation as the head-only start.
        let mut ft = recipe::joint(
            model,
            FinetuneConfig {
                eval_at_start: cfg.warm_start_head && cfg.start_competes,
                head_lr: cfg.finetune_head_lr.unwrap_or(cfg.finetune.head_lr),
                ..cfg.finetune.clone()
            },
            Objective::Classify {
                classes: self.classes,
            },
            train.clone(),
            Some(val.clone()),
            cfg.warm_start_head.then_some(self.probe),
        )?;
        ft.fit(&mut |_| {})?;
        let seconds = t0.elapsed().as_secs_f64();
        let engine_examples = ft.model().hits_misses().1;
        let eval = ft.evaluate(test)?;
        ft.save(path, &bundle.manifest.subspace_id, self.task, self.labels)?;
        let trainable = ft
            .model()
            .layout()
            .iter()
            .map(|l| cfg.finetune.rank * (l.k_a + l.k_b))
            .sum::<usize>()
            + ft.head().map(|h| h.params().len()).unwrap_or(0);
        Ok(MethodResult {
            method,
            train_examples: train.ids.len(),
            trainable,
            file_bytes: file_len(path),
            swap_ms: 0.0,
            test: eval_metrics(&eval)?,
            engine_examples,
            train_seconds: seconds,
        })
    }
}

fn eval_metrics(e: &crate::finetune::Eval) -> Result<Metrics> {
    match (e.accuracy, e.cross_entropy) {
        (Some(accuracy), Some(cross_entropy)) => Ok(Metrics {
            accuracy,
            cross_entropy,
            examples: e.examples,
        }),
        _ => Err(Error::Usage(
            "a classifier evaluation without accuracy".into(),
        )),
    }
}

/// Writes `space` as an f32 bundle bound to the base model and reads it back.
fn write_bound(
    path: &Path,
    space: &Subspace,
    sources: &[SourceAdapter],
    base: &Base,
) -> Result<Bundle> {
    let manifest = Bundle::write(path, space, sources, StorageDtype::F32, None)?;
    let binding = graph::bind(
        &base.model,
        base.sha256.clone(),
        &base.name,
        &manifest,
        None,
    )?;
    Bundle::write(path, space, sources, StorageDtype::F32, Some(&binding))?;
    Bundle::read(path)
}

fn sequence_model(
    engine: &Engine,
    examples: Vec<Example>,
    pad: i64,
    max_length: usize,
) -> Result<Model> {
    Ok(CachedFeatures::new(SequenceModel::on_engine(
        engine, examples, pad, max_length,
    )?))
}

/// Pooled features [n x d] of `ids` under fixed coefficient values.
fn features<M: ForwardModel>(
    model: &mut M,
    ids: &[usize],
    params: &[f32],
    batch: usize,
) -> Result<(Vec<f32>, usize)> {
    let (mut all, mut chunk, mut d) = (Vec::new(), Vec::new(), 0);
    for part in ids.chunks(batch.max(1)) {
        d = model.features(part, params, &mut chunk)?;
        all.extend_from_slice(&chunk);
    }
    Ok((all, d))
}

/// The workload's labelled data files: read through its tokenizer (when given), truncated to
/// the maximum length.
struct Reader {
    enc: Option<TextEncoder>,
    opts: ReadOptions,
}

impl Reader {
    fn new(cfg: &LooConfig) -> Result<Reader> {
        let enc = match &cfg.tokenizer {
            Some(p) => Some(TextEncoder::from_file(p, Some(cfg.max_length))?),
            None => None,
        };
        let opts = ReadOptions {
            max_len: cfg.max_length,
            truncate: true,
            max_examples: MAX_EXAMPLES,
        };
        Ok(Reader { enc, opts })
    }

    /// The examples of `path` and their class indices (below `classes`).
    fn read(&self, path: &Path, classes: usize) -> Result<(Vec<Example>, Vec<usize>)> {
        let tokenize = |t: &str| match &self.enc {
            Some(e) => e.ids_truncated(t),
            None => Err(Error::Usage(
                "a text example, but no tokenizer was given".into(),
            )),
        };
        read_labelled(path, &self.opts, &tokenize, classes)
    }

    /// The padding token id (0 without a tokenizer).
    fn pad(&self) -> i64 {
        self.enc.as_ref().map_or(0, |e| i64::from(e.pad_id()))
    }
}

/// Reads a JSONL file whose labels are class indices below `classes`.
fn read_labelled(
    path: &Path,
    opts: &ReadOptions,
    tokenize: Tokenize<'_>,
    classes: usize,
) -> Result<(Vec<Example>, Vec<usize>)> {
    let set = read_jsonl_with(path, opts, Some(tokenize))?;
    let labels = set
        .labels
        .iter()
        .zip(&set.lines)
        .map(|(l, line)| match l.parse::<usize>() {
            Ok(c) if c < classes => Ok(c),
            _ => Err(Error::bad_file(
                path,
                format!("line {line}: expected a class index below {classes}, found {l:?}"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((set.examples, labels))
}

/// Milliseconds `f` takes.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// One energy share of [`in_sample`]: every task of a family served from one bundle of all
/// the family's adapters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InSampleRow {
    /// The energy share each side keeps.
    pub energy: f64,
    /// Σ (K_A + K_B) over the modules.
    pub k_total: usize,
    /// Per task: its own LoRA and the projection into this bundle, both with its own head.
    pub tasks: Vec<InSampleTask>,
    /// Bytes resident for all tasks: the bases (f32) plus every task's coefficients (f32).
    pub resident_bytes: u64,
    /// Bytes of every task's LoRA A and B (f32), what serving the LoRAs keeps resident.
    pub lora_bytes: u64,
}

/// One task of an [`InSampleRow`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct InSampleTask {
    /// Task name.
    pub task: String,
    /// Share of the task's ΔW inside the bundle.
    pub captured: f64,
    /// The task's own LoRA.
    pub lora: Metrics,
    /// The task served from the bundle.
    pub served: Metrics,
}

/// Serves every task of `tasks` from one bundle of all their adapters at each energy share,
/// against each task's own LoRA (both with the task's own head, on the first `test_examples`
/// test examples). The own LoRA runs through the same patch, as the span of all the
/// adapters holds each of them exactly (energy 1). The bundles go to `dir`.
pub fn in_sample(
    cfg: &LooConfig,
    base: &Base,
    tasks: &[TaskSpec],
    energies: &[f64],
    test_examples: usize,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<InSampleRow>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let adapters: Vec<Adapter> = tasks
        .iter()
        .map(|t| Adapter::open(&t.adapter))
        .collect::<Result<_>>()?;
    let reader = Reader::new(cfg)?;
    let pad = reader.pad();
    // Every task's test examples in one list: (task, ids range, labels, head).
    let mut examples = Vec::new();
    let mut per_task = Vec::new();
    for t in tasks {
        let head = Head::read(&t.head)?;
        let (ex, labels) = reader.read(&t.test, head.labels.len())?;
        let n = ex.len().min(test_examples);
        let from = examples.len();
        examples.extend(ex.into_iter().take(n));
        per_task.push((from..from + n, labels[..n].to_vec(), head));
    }
    let quiet = |_: usize, _: usize, _: &str| {};
    let sources: Vec<SourceAdapter> = adapters.iter().map(SourceAdapter::from).collect();
    let lora_bytes: u64 = adapters
        .iter()
        .flat_map(|a| a.modules.values())
        .map(|m| (4 * m.rank * (m.in_features + m.out_features)) as u64)
        .sum();
    let mut reference: Option<Vec<Metrics>> = None;
    let mut rows = Vec::new();
    // Energy 1 first: the exact span, which serves every own LoRA.
    let mut all = vec![1.0];
    all.extend(energies.iter().copied().filter(|&e| e < 1.0));
    for energy in all {
        let options = ExtractOptions {
            k_rule_a: KRule::Energy(energy),
            k_rule_b: KRule::Energy(energy),
            center: false,
            pseudo: 0,
            ..cfg.extract.clone()
        };
        let space = subspace::extract(&adapters, &options, &quiet)?;
        let bundle = write_bound(
            &dir.join(format!("all-{:.0}.elxb", 1000.0 * energy)),
            &space,
            &sources,
            base,
        )?;
        let rt = Engine::load(&cfg.base, &bundle, cfg.serve_engine)?;
        // The tasks in contiguous chunks, one thread and one model each.
        let tasks_per_job = per_task.len().div_ceil(eval_threads()).max(1);
        let jobs: Vec<Job<'_, Vec<(Metrics, f64, usize)>>> = adapters
            .chunks(tasks_per_job)
            .zip(per_task.chunks(tasks_per_job))
            .map(|(adapters, per_task)| {
                let (rt, examples, space) = (&rt, &examples, &space);
                Box::new(move || {
                    let mut model = sequence_model(rt, examples.clone(), pad, cfg.max_length)?;
                    let mut out = Vec::new();
                    for (a, (range, labels, head)) in adapters.iter().zip(per_task) {
                        let cap = capture(a, space, space)?;
                        let params = layout_params(model.layout(), &cap.coefficients)?;
                        let ids: Vec<usize> = range.clone().collect();
                        let (feats, d) =
                            features(&mut model, &ids, &params, cfg.finetune.eval_batch)?;
                        let served = head_metrics(head, &feats, d, labels)?;
                        out.push((served, cap.captured, cap.coeff_params));
                    }
                    Ok(out)
                }) as Job<'_, _>
            })
            .collect();
        let mut served = Vec::new();
        let mut captured = Vec::new();
        let mut coeff_bytes = 0u64;
        for (metrics, cap, coeff_params) in
            run_parallel(jobs, eval_threads())?.into_iter().flatten()
        {
            served.push(metrics);
            captured.push(cap);
            coeff_bytes += 4 * coeff_params as u64;
        }
        let k_total = space
            .modules
            .values()
            .map(|m| m.a.k_total() + m.b.k_total())
            .sum();
        let bases: u64 = space
            .modules
            .values()
            .map(|m| 4 * (m.v_a.nrows() * m.in_features + m.out_features * m.v_b.ncols()) as u64)
            .sum();
        log(&format!(
            "in-sample: energy {:.0}%: K_A+K_B = {k_total}, {} tasks served",
            100.0 * energy,
            tasks.len()
        ));
        let lora = match &reference {
            None => {
                reference = Some(served.clone());
                continue;
            }
            Some(r) => r.clone(),
        };
        rows.push(InSampleRow {
            energy,
            k_total,
            tasks: tasks
                .iter()
                .zip(lora)
                .zip(served)
                .zip(captured)
                .map(|(((t, lora), served), captured)| InSampleTask {
                    task: t.name.clone(),
                    captured,
                    lora,
                    served,
                })
                .collect(),
            resident_bytes: bases + coeff_bytes,
            lora_bytes,
        });
    }
    Ok(rows)
}
