//! Leave-one-out over a labelled text workload (the experiment behind `elx demo`).
//!
//! For each held-out task, the other tasks' adapters make the subspace, and the held-out task
//! is served on the same engine (the tract runtime, one patched graph per bundle) in every way
//! a user could serve it:
//!
//! | method | coefficients | head |
//! |---|---|---|
//! | head only | none (the base model) | trained on the device on the training examples |
//! | own LoRA | the task's adapter, unmerged (rank r, exact) | the adapter's own head |
//! | projected | the adapter projected into the subspace (zero-shot) | the adapter's own head |
//! | finetuned | trained on the device by SPSA, forward passes only | trained with them, from the head-only solution or from zero |
//! | random basis | the same training over a random orthonormal basis of the same K | idem |
//!
//! The last row is the control of DESIGN.md ("What honest numbers look like"): if it does as
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
use crate::finetune::seq::HiddenStateBackend;
use crate::finetune::seq::SequenceModel;
use crate::finetune::tract_backend::TractBackend;
use crate::finetune::{FinetuneConfig, Finetuner, ForwardModel, Objective, Split};
use crate::runtime::input::TextEncoder;
use crate::runtime::ort::ExecutionProvider;
use crate::runtime::tract::Runtime;
use crate::runtime::{self, ModelProto};
use crate::subspace::{self, ExtractOptions, KRule, Subspace};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Training examples (the first ones of the training file).
    pub train_examples: usize,
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
    /// Start the finetuned and random-basis rows from the head-only solution (LP-FT; the
    /// start is evaluated first, so they end no worse on validation), or from a zero head.
    pub warm_start_head: bool,
    /// Steps of the head-only baseline (its features are computed once and cached).
    pub head_steps: u64,
    /// Seed of the random orthonormal basis.
    pub random_seed: u64,
    /// Where bundles and coefficient files go (one folder per task).
    pub out_dir: PathBuf,
    /// The engine the finetuned and random-basis rows train on (every row is evaluated and
    /// served on tract).
    pub train_engine: TrainEngine,
}

/// The engine of the device training in [`run_task`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainEngine {
    /// tract, single-threaded: the two trainings run side by side, one thread each.
    #[default]
    Tract,
    /// ONNX Runtime (feature `ort`) on this provider, with its own intra-op threads: the two
    /// trainings run one after the other.
    Ort(ExecutionProvider),
}

/// A way of serving the held-out task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The base model with a head trained on the device.
    HeadOnly,
    /// The task's own LoRA adapter, unmerged, with its own head.
    OwnLora,
    /// The adapter projected into the other tasks' subspace, with its own head.
    Projected,
    /// Coefficients and head trained on the device in the recycled subspace.
    Finetuned,
    /// The same training in a random orthonormal basis of the same K (the control).
    RandomBasis,
}

impl Method {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Method::HeadOnly => "head only (base model)",
            Method::OwnLora => "own LoRA (unmerged)",
            Method::Projected => "EigenLoRAx zero-shot (projected)",
            Method::Finetuned => "EigenLoRAx finetuned on device",
            Method::RandomBasis => "random basis, same training",
        }
    }
}

/// One method's figures on one task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MethodResult {
    /// Which method.
    pub method: Method,
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
    /// Training examples used.
    pub train_examples: usize,
    /// One row per method, in [`Method`] order.
    pub methods: Vec<MethodResult>,
    /// The recycled bundle (bound to the base model).
    pub bundle: PathBuf,
    /// Wall time of the whole task, s.
    pub seconds: f64,
}

/// Most examples read from one file (bounds memory on a hostile file).
const MAX_EXAMPLES: usize = 1 << 20;

type Model = CachedFeatures<SequenceModel<TractBackend>>;

/// Opens `cfg.base` once: the model, its SHA-256 and the name used in bindings.
pub struct Base {
    model: ModelProto,
    sha256: String,
    name: String,
}

impl Base {
    /// Reads and hashes the base model.
    pub fn open(path: &Path) -> Result<Base> {
        let (model, sha256) = runtime::read_model(path)?;
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
    let dir = cfg.out_dir.join(&spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    // Subspaces: the other tasks' (recycled), a random one of the same K, the task's own.
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
    let recycled = write_bound(&dir.join("recycled.elxb"), &space, &sources, base)?;
    let random_bundle = write_bound(&dir.join("random.elxb"), &random, &[], base)?;
    let own_bundle = write_bound(
        &dir.join("own-lora.elxb"),
        &own,
        &[SourceAdapter::from(&adapter)],
        base,
    )?;
    log(&format!(
        "{}: subspace of the other {} adapters, K_A+K_B = {} over {} modules; holds {:.1}% of the held-out ΔW (random: {:.1}%)",
        spec.name,
        others.len(),
        cap.k_total,
        space.modules.len(),
        100.0 * cap.captured,
        100.0 * cap.random_captured
    ));

    // Data.
    let head = Head::read(&spec.head)?;
    let classes = head.labels.len();
    let enc = match &cfg.tokenizer {
        Some(p) => Some(TextEncoder::from_file(p, Some(cfg.max_length))?),
        None => None,
    };
    let opts = ReadOptions {
        max_len: cfg.max_length,
        truncate: true,
        max_examples: MAX_EXAMPLES,
    };
    let tokenize = |t: &str| match &enc {
        Some(e) => e.ids_truncated(t),
        None => Err(Error::Usage(
            "a text example, but no tokenizer was given".into(),
        )),
    };
    let (mut examples, mut labels) = read_labelled(&spec.train, &opts, &tokenize, classes)?;
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
    let (test_examples, test_labels) = read_labelled(&spec.test, &opts, &tokenize, classes)?;
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
    let train = split(0, cfg.train_examples);
    let val = by_length(split(cfg.train_examples, n_fit));
    let test = by_length(split(n_fit, n_fit + n_test));
    let pad = enc.as_ref().map_or(0, |e| i64::from(e.pad_id()));
    let objective = || Objective::Classify { classes };
    let label_names = head.labels.clone();
    let head_params = classes * (head.weight.ncols() + 1);

    // Own LoRA and the projection: fixed coefficients, the adapter's head.
    let mut methods = Vec::new();
    let own_rt = Arc::new(Runtime::load(&base_path(cfg), &own_bundle)?);
    let mut own_model = sequence_model(own_rt, examples.clone(), pad, cfg.max_length)?;
    let own_params = layout_params(own_model.layout(), &own_coeffs.coefficients)?;
    let (feats, d) = features(
        &mut own_model,
        &test.ids,
        &own_params,
        cfg.finetune.eval_batch,
    )?;
    drop(own_model);
    let lora_swap = timed(|| {
        let a = Adapter::open(&spec.adapter)?;
        for name in a.modules.keys() {
            a.load_module(name)?;
        }
        Head::read(&spec.head).map(|_| ())
    })?;
    methods.push(MethodResult {
        method: Method::OwnLora,
        trainable: cap.lora_params + head_params,
        file_bytes: file_len(&spec.adapter.join("adapter_model.safetensors"))
            + file_len(&spec.head),
        swap_ms: lora_swap,
        test: head_metrics(&head, &feats, d, &test.labels)?,
        engine_examples: 0,
        train_seconds: 0.0,
    });
    log(&format!("{}: own LoRA evaluated", spec.name));

    let rt = Arc::new(Runtime::load(&base_path(cfg), &recycled)?);
    let mut model = sequence_model(Arc::clone(&rt), examples.clone(), pad, cfg.max_length)?;
    let projected = layout_params(model.layout(), &cap.coefficients)?;
    let (feats, d) = features(&mut model, &test.ids, &projected, cfg.finetune.eval_batch)?;
    let projected_file = CoeffFile {
        subspace_id: recycled.manifest.subspace_id.clone(),
        task: spec.name.clone(),
        provenance: Provenance::Projected,
        modules: cap.coefficients.clone(),
        head: Some(head.clone()),
    };
    let projected_path = dir.join("projected.elxc");
    projected_file.write(&projected_path)?;
    methods.push(MethodResult {
        method: Method::Projected,
        trainable: cap.coeff_params + head_params,
        file_bytes: file_len(&projected_path),
        swap_ms: timed(|| rt.load_task(&projected_path).map(|_| ()))?,
        test: head_metrics(&head, &feats, d, &test.labels)?,
        engine_examples: 0,
        train_seconds: 0.0,
    });

    // Head only: zero-shot mode with α_B = 0 is exactly the base model, so only the head
    // trains; its features come from the cache after the first pass.
    let head_cfg = FinetuneConfig {
        zero_shot: true,
        zero_shot_b_std: 0.0,
        max_steps: cfg.head_steps,
        ..cfg.finetune.clone()
    };
    let (misses0, t0) = (model.hits_misses().1, Instant::now());
    let mut ft = Finetuner::new(
        model,
        head_cfg,
        objective(),
        train.clone(),
        Some(val.clone()),
    )?;
    ft.fit(&mut |_| {})?;
    let head_seconds = t0.elapsed().as_secs_f64();
    let head_engine = ft.model().hits_misses().1 - misses0;
    let head_eval = ft.evaluate(&test)?;
    let probe: Vec<f64> = ft.head().map(|h| h.params().to_vec()).unwrap_or_default();
    let mut head_file =
        ft.to_coeff_file(&recycled.manifest.subspace_id, &spec.name, &label_names)?;
    head_file.modules.clear();
    let head_path = dir.join("head-only.elxc");
    head_file.write(&head_path)?;
    drop(ft);
    methods.push(MethodResult {
        method: Method::HeadOnly,
        trainable: head_params,
        file_bytes: file_len(&head_path),
        swap_ms: timed(|| rt.load_task(&head_path).map(|_| ()))?,
        test: eval_metrics(&head_eval)?,
        engine_examples: head_engine,
        train_seconds: head_seconds,
    });
    log(&format!(
        "{}: head only trained ({head_seconds:.1} s)",
        spec.name
    ));

    // Finetuned in the recycled subspace and the random-basis control: on tract one thread
    // each (the runtime is Sync, and each thread builds its own engine inputs); on ONNX
    // Runtime one after the other, each session using the cores itself.
    let job = Job {
        cfg,
        examples: &examples,
        pad,
        splits: (&train, &val, &test),
        classes,
        labels: &label_names,
        task: &spec.name,
        probe: &probe,
    };
    let random_rt = Arc::new(Runtime::load(&base_path(cfg), &random_bundle)?);
    let finetuned_path = dir.join("finetuned.elxc");
    let random_path = dir.join("random-basis.elxc");
    let (finetuned, control) = if cfg.train_engine == TrainEngine::Tract {
        std::thread::scope(|s| {
            let ft = s.spawn(|| job.train(&rt, &recycled, &finetuned_path, Method::Finetuned));
            let rd = s.spawn(|| {
                job.train(
                    &random_rt,
                    &random_bundle,
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
            job.train(&rt, &recycled, &finetuned_path, Method::Finetuned),
            job.train(
                &random_rt,
                &random_bundle,
                &random_path,
                Method::RandomBasis,
            ),
        )
    };
    let (finetuned, control) = (finetuned?, control?);
    log(&format!(
        "{}: finetuned on device ({:.1} s) and the random-basis control ({:.1} s), {}",
        spec.name,
        finetuned.train_seconds,
        control.train_seconds,
        match cfg.train_engine {
            TrainEngine::Tract => "in parallel on tract".to_string(),
            TrainEngine::Ort(ep) => format!("one after the other on ONNX Runtime ({})", ep.name()),
        }
    ));
    methods.push(finetuned);
    methods.push(control);
    let order = |m: Method| m as usize;
    methods.sort_by_key(|m| order(m.method));

    Ok(TaskResult {
        task: spec.name.clone(),
        k_a: space.modules.values().map(|m| m.a.k_total()).sum(),
        k_b: space.modules.values().map(|m| m.b.k_total()).sum(),
        captured: cap.captured,
        random_captured: cap.random_captured,
        train_examples: cfg.train_examples,
        methods,
        bundle: recycled.path.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn base_path(cfg: &LooConfig) -> PathBuf {
    cfg.base.clone()
}

/// What the two coefficient trainings share.
struct Job<'a> {
    cfg: &'a LooConfig,
    examples: &'a [Example],
    pad: i64,
    splits: (&'a Split, &'a Split, &'a Split),
    classes: usize,
    labels: &'a [String],
    task: &'a str,
    probe: &'a [f64],
}

impl Job<'_> {
    /// SPSA training of coefficients + head on the configured engine for `bundle`, the head
    /// starting from the head-only solution (LP-FT) or from zero (`warm_start_head`),
    /// evaluated on the test split and saved to `path`; `rt` (tract, the same bundle) serves
    /// the file.
    fn train(
        &self,
        rt: &Arc<Runtime>,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let mut r = match self.cfg.train_engine {
            TrainEngine::Tract => {
                let model = sequence_model(
                    Arc::clone(rt),
                    self.examples.to_vec(),
                    self.pad,
                    self.cfg.max_length,
                )?;
                self.train_on(model, bundle, path, method)?
            }
            TrainEngine::Ort(ep) => self.train_on_ort(ep, bundle, path, method)?,
        };
        r.swap_ms = timed(|| rt.load_task(path).map(|_| ()))?;
        Ok(r)
    }

    #[cfg(feature = "ort")]
    fn train_on_ort(
        &self,
        ep: ExecutionProvider,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        use crate::finetune::ort_backend::OrtBackend;
        use crate::runtime::ort::OrtRuntime;
        let rt = Arc::new(OrtRuntime::load(&base_path(self.cfg), bundle, ep)?);
        let trt = rt.provider() == ExecutionProvider::TensorRt;
        let mut model =
            SequenceModel::new(OrtBackend::new(rt)?, self.examples.to_vec(), self.pad, None)?;
        // TensorRT builds an engine per input shape: a few power-of-two lengths.
        if trt {
            model = model.bucketed(self.cfg.max_length)?;
        }
        self.train_on(CachedFeatures::new(model), bundle, path, method)
    }

    #[cfg(not(feature = "ort"))]
    fn train_on_ort(
        &self,
        _: ExecutionProvider,
        _: &Bundle,
        _: &Path,
        _: Method,
    ) -> Result<MethodResult> {
        Err(crate::runtime::ort::not_built())
    }

    /// The training itself, on any engine; `swap_ms` is left at 0 for the caller.
    fn train_on<B: HiddenStateBackend>(
        &self,
        model: CachedFeatures<SequenceModel<B>>,
        bundle: &Bundle,
        path: &Path,
        method: Method,
    ) -> Result<MethodResult> {
        let cfg = self.cfg;
        let (train, val, test) = self.splits;
        let t0 = Instant::now();
        // A warm-started head is evaluated before the first step, so training can only
        // return something at least as good on validation as the head-only start.
        let mut ft = Finetuner::new(
            model,
            FinetuneConfig {
                eval_at_start: cfg.warm_start_head,
                head_lr: cfg.finetune_head_lr.unwrap_or(cfg.finetune.head_lr),
                ..cfg.finetune.clone()
            },
            Objective::Classify {
                classes: self.classes,
            },
            train.clone(),
            Some(val.clone()),
        )?;
        if cfg.warm_start_head {
            ft.warm_start_head(self.probe)?;
        }
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
    let binding = runtime::bind(
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
    rt: Arc<Runtime>,
    examples: Vec<Example>,
    pad: i64,
    max_length: usize,
) -> Result<Model> {
    // Engines that plan per input shape pad to power-of-two lengths: a handful of plans.
    let generic = rt.is_shape_generic();
    let mut model = SequenceModel::new(TractBackend::new(rt)?, examples, pad, None)?;
    if !generic {
        model = model.bucketed(max_length)?;
    }
    Ok(CachedFeatures::new(model))
}

/// Pooled features [n x d] of `ids` under fixed coefficient values.
fn features(
    model: &mut Model,
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
