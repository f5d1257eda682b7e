//! Leave-one-out over a family of decoder generation tasks (issue 27; the paper's
//! Lots-of-LoRAs experiment, `elx leave-one-out`).
//!
//! For each held-out task the other tasks' adapters make the subspace, and the held-out task is
//! served on one engine every way a user could serve it, each row scored on the test pairs by
//! greedy Rouge-L, exact match and the references' NLL per token ([`crate::eval::generation`]):
//!
//! | method | coefficients | prompt |
//! |---|---|---|
//! | base model | none | the test prompt |
//! | in-context | none | the task's first training pairs as earlier turns of the chat, then the test prompt |
//! | own LoRA | the task's adapter through the exact rank-r subspace of its own ΔW | the test prompt |
//! | zero-shot: recycled | the adapter projected into the other tasks' subspace | idem |
//! | zero-shot: mean only | the adapter projected into the span of the others' mean direction | idem |
//! | zero-shot: random basis | the adapter projected into a random orthonormal basis of the same K | idem |
//!
//! With a K sweep ([`LmLooConfig::k_sweep`]) the recycled and random-basis zero-shot rows are
//! also scored at fixed K per side, each K its own extraction of the other adapters: how few
//! coefficients still carry the task (the paper's "12–95x fewer parameters").
//!
//! For each few-shot size N: coefficients trained on the device from the first N
//! training pairs (next-token loss, exact gradients, [`crate::finetune::lm`]) in the recycled
//! subspace and, as the control, in the random basis, with their validation curves.
//!
//! The headline is the share of the base → own-LoRA gap a row recovers ([`LmRow::share`]), by
//! Rouge-L and by NLL, never a raw ratio of scores. The own-LoRA row serves the adapter as the
//! encoder leave-one-out does ([`crate::eval::loo`]): V_A = Vᵀ, V_B = U of ΔW = U·S·Vᵀ with
//! α_A = α_B = √S, so the graph computes B·(A·x) up to an r x r rotation.

mod few_shot;
mod prompts;

pub use few_shot::{FewShotCell, HostLoraCurve, LowestPoint, few_shot_cells};

use super::generation::{GenerationScores, ScoreOptions, score_pairs};
use super::loo::{Base, mean_direction_subspace, write_bound};
use super::{Capture, capture};
use crate::adapter::Adapter;
use crate::bundle::random_control::random_subspace;
use crate::bundle::{Bundle, CoeffFile, Provenance, SourceAdapter};
use crate::error::{Error, Result};
use crate::finetune::lm::{
    LmConfig, LmEvent, LmTrainer, Validation, read_prompt_answer_texts, read_prompt_answers,
};
use crate::serve::Backend;
use crate::serve::generate::text::{DecoderFiles, TextGenerator};
use crate::serve::input::chat::ChatTemplate;
use crate::serve::input::text::max_position_embeddings;
use crate::serve::store::TaskId;
use crate::subspace::{self, ExtractOptions, KRule};
use crate::util::{Job, run_parallel, write_atomic};
use prompts::in_context_pairs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One generation task of the family.
#[derive(Clone, Debug)]
pub struct LmTaskSpec {
    /// Task name.
    pub name: String,
    /// The task's PEFT adapter folder.
    pub adapter: PathBuf,
    /// Training pairs (JSONL `prompt`, `answer`); few-shot sets and in-context examples are
    /// its first lines.
    pub train: PathBuf,
    /// Validation pairs: early stopping of the trained rows.
    pub validation: PathBuf,
    /// Test pairs: every row's scores.
    pub test: PathBuf,
    /// Most new tokens of an answer.
    pub max_tokens: usize,
}

/// Settings of a generation leave-one-out run.
#[derive(Clone, Debug)]
pub struct LmLooConfig {
    /// The decoder folder (`elx import-gguf`'s: model.onnx, tokenizer, chat template).
    pub model: PathBuf,
    /// Prompts are the user's text, to wrap in the chat template (else already rendered).
    pub chat: bool,
    /// How the other tasks' subspace is extracted.
    pub extract: ExtractOptions,
    /// Training pairs shown in the in-context row's prompt (0: no in-context row).
    pub in_context: usize,
    /// Test pairs scored (the first of the test file).
    pub test_examples: usize,
    /// Sizes of the device-trained rows (prefixes of the training file); empty: none.
    pub few_shot: Vec<usize>,
    /// Fixed K per side at which the zero-shot recycled and random-basis rows are scored
    /// again (beside the rows at `extract`'s rule); empty: none.
    pub k_sweep: Vec<usize>,
    /// The device training's recipe (its batch is capped at the few-shot size).
    pub lm: LmConfig,
    /// Seed of the random basis.
    pub random_seed: u64,
    /// The engine every row is served and trained on.
    pub backend: Backend,
    /// Rows evaluated side by side (one engine each).
    pub threads: usize,
    /// Where bundles, coefficient files and predictions go (one folder per task).
    pub out_dir: PathBuf,
}

/// A way of serving the held-out task.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LmMethod {
    /// The base model on the test prompt.
    Base,
    /// The base model with training pairs as earlier turns of the chat.
    InContext,
    /// The task's own LoRA.
    OwnLora,
    /// The adapter projected into the other tasks' subspace.
    Projected,
    /// The adapter projected into the span of the others' mean direction.
    MeanOnly,
    /// The adapter projected into a random orthonormal basis of the recycled K.
    RandomProjected,
    /// Coefficients trained on the device in the recycled subspace.
    Finetuned,
    /// The same training in the random basis (the control).
    RandomBasis,
}

impl LmMethod {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            LmMethod::Base => "base model",
            LmMethod::InContext => "base model, in-context examples",
            LmMethod::OwnLora => "own LoRA",
            LmMethod::Projected => "zero-shot: recycled subspace",
            LmMethod::MeanOnly => "zero-shot: mean direction only",
            LmMethod::RandomProjected => "zero-shot: random basis",
            LmMethod::Finetuned => "trained in the recycled subspace",
            LmMethod::RandomBasis => "trained in a random basis",
        }
    }

    /// The name of the row's files.
    fn file_stem(self) -> &'static str {
        match self {
            LmMethod::Base => "base",
            LmMethod::InContext => "in-context",
            LmMethod::OwnLora => "own-lora",
            LmMethod::Projected => "projected",
            LmMethod::MeanOnly => "mean-only",
            LmMethod::RandomProjected => "random-projected",
            LmMethod::Finetuned => "finetuned",
            LmMethod::RandomBasis => "random-basis",
        }
    }
}

/// One validation evaluation of a trained row.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// Steps taken.
    pub step: u64,
    /// Validation NLL per answer token.
    pub val_nll: f64,
    /// Mean training loss since the previous evaluation (NaN at step 0; JSON writes it null).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
}

/// JSON has no NaN (serde_json writes it as null): read null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One row of a held-out task.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LmRow {
    /// How the task was served.
    pub method: LmMethod,
    /// Training pairs used (in-context: shown in the prompt; trained rows: trained on).
    pub train_examples: usize,
    /// Numbers that make the task: LoRA A and B, or the coefficients (0 for the base model).
    pub parameters: usize,
    /// Bytes of the task's file (the adapter's safetensors, or the coefficient file).
    pub file_bytes: u64,
    /// Mean test Rouge-L F1.
    pub rouge_l: f64,
    /// Mean test exact match.
    pub exact_match: f64,
    /// Test NLL per reference token.
    pub nll: f64,
    /// Seconds of training (0 for fixed rows).
    pub train_seconds: f64,
    /// Seconds of scoring.
    pub score_seconds: f64,
    /// Trained rows: the validation curve, step 0 (the base model) first.
    pub curve: Vec<CurvePoint>,
    /// Trained rows: the step whose coefficients were kept.
    pub best_step: u64,
    /// Rows of the K sweep: the fixed K per side of their basis (`None`: the extraction
    /// rule's K).
    pub fixed_k: Option<usize>,
}

impl LmRow {
    /// The share of the `from` → `to` gap this row recovers, by Rouge-L and by NLL: 0 at
    /// `from`, 1 at `to`; `None` where a gap is not positive.
    pub fn share(&self, from: &LmRow, to: &LmRow) -> (Option<f64>, Option<f64>) {
        let share = |gap: f64, got: f64| (gap > 0.0 && gap.is_finite()).then(|| got / gap);
        (
            share(to.rouge_l - from.rouge_l, self.rouge_l - from.rouge_l),
            share(from.nll - to.nll, from.nll - self.nll),
        )
    }
}

/// The figures of one held-out task.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LmTaskResult {
    /// Held-out task.
    pub task: String,
    /// Adapters the subspace was extracted from.
    pub sources: usize,
    /// Σ K_A and Σ K_B over the modules of the other tasks' subspace.
    pub k_a: usize,
    /// See `k_a`.
    pub k_b: usize,
    /// Share of the held-out adapter's ΔW energy inside the recycled subspace.
    pub captured: f64,
    /// The same in the random basis.
    pub random_captured: f64,
    /// The same in the span of the mean direction.
    pub mean_only_captured: f64,
    /// The subspaces of the K sweep, by K.
    pub k_sweep: Vec<SweepCapture>,
    /// Every row, in [`LmMethod`] order (trained rows by size).
    pub rows: Vec<LmRow>,
    /// Wall seconds of the whole task.
    pub seconds: f64,
}

impl LmTaskResult {
    /// The row of `method` (the first, for trained rows), at the extraction rule's K.
    pub fn row(&self, method: LmMethod) -> Option<&LmRow> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.fixed_k.is_none())
    }

    /// The zero-shot row of `method` at K per side of the K sweep.
    pub fn swept(&self, method: LmMethod, k: usize) -> Option<&LmRow> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.fixed_k == Some(k))
    }

    /// The trained row of `method` at `n` training pairs.
    pub fn trained(&self, method: LmMethod, n: usize) -> Option<&LmRow> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.train_examples == n)
    }

    /// Adds the rows of another run on the same task (say, its 64-pair rows to a 16-pair run)
    /// that this one lacks. A row both runs have must agree: the fixed rows are deterministic,
    /// so a difference means the runs differ in model, adapters or test set, and merging them
    /// would mix two experiments.
    pub fn merge(&mut self, other: LmTaskResult) -> std::result::Result<(), String> {
        if other.task != self.task {
            return Err(format!("tasks differ: {} and {}", self.task, other.task));
        }
        if (other.sources, other.k_a, other.k_b) != (self.sources, self.k_a, self.k_b) {
            return Err(format!(
                "{}: the recycled subspaces differ ({} adapters, K_A+K_B = {} against {} \
                 adapters, K_A+K_B = {})",
                self.task,
                self.sources,
                self.k_a + self.k_b,
                other.sources,
                other.k_a + other.k_b
            ));
        }
        for row in other.rows {
            let same = |r: &&LmRow| {
                r.method == row.method
                    && r.fixed_k == row.fixed_k
                    && r.train_examples == row.train_examples
            };
            match self.rows.iter().find(same) {
                Some(mine) => {
                    if (mine.nll - row.nll).abs() > 1e-6 * mine.nll.abs().max(1.0)
                        || mine.rouge_l != row.rouge_l
                    {
                        return Err(format!(
                            "{}: row `{}` ({} pairs) differs between the runs (NLL {:.6} vs {:.6}, \
                             Rouge-L {:.4} vs {:.4})",
                            self.task,
                            row.method.label(),
                            row.train_examples,
                            mine.nll,
                            row.nll,
                            mine.rouge_l,
                            row.rouge_l
                        ));
                    }
                }
                None => self.rows.push(row),
            }
        }
        // Table order: by method, trained rows by size.
        self.rows
            .sort_by_key(|r| (r.method, r.fixed_k, r.train_examples));
        for k in other.k_sweep {
            if !self.k_sweep.iter().any(|x| x.k == k.k) {
                self.k_sweep.push(k);
            }
        }
        self.k_sweep.sort_by_key(|x| x.k);
        self.seconds += other.seconds;
        Ok(())
    }
}

/// One fixed-K subspace of the K sweep: its size and what it holds of the held-out ΔW.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct SweepCapture {
    /// K per side asked for (a module of lower rank keeps its rank).
    pub k: usize,
    /// Σ (K_A + K_B) over the modules.
    pub k_total: usize,
    /// Share of the held-out adapter's ΔW energy inside the recycled subspace.
    pub captured: f64,
    /// The same in a random basis of the same K.
    pub random_captured: f64,
}

/// The test pairs and how every row scores them.
struct TestSet<'a> {
    cfg: &'a LmLooConfig,
    spec: &'a LmTaskSpec,
    pairs: Vec<(usize, String, String)>,
    dir: &'a Path,
}

impl TestSet<'_> {
    /// Scores `task` of `generator` on `pairs` (the test pairs, or their in-context
    /// versions) and writes the predictions to `<dir>/<stem>.predictions.jsonl`.
    fn score(
        &self,
        generator: &TextGenerator,
        task: TaskId,
        pairs: &[(usize, String, String)],
        stem: &str,
    ) -> Result<(GenerationScores, f64)> {
        self.score_as(generator, task, pairs, stem, self.cfg.chat)
    }

    /// [`TestSet::score`], the prompts wrapped in the chat template or not (`chat`).
    fn score_as(
        &self,
        generator: &TextGenerator,
        task: TaskId,
        pairs: &[(usize, String, String)],
        stem: &str,
        chat: bool,
    ) -> Result<(GenerationScores, f64)> {
        let options = ScoreOptions {
            max_tokens: self.spec.max_tokens,
            chat,
            batch: 8,
        };
        let t0 = Instant::now();
        let mut lines = String::new();
        let scores = score_pairs(
            generator,
            task,
            pairs,
            &self.spec.test,
            &options,
            &mut |p| {
                lines.push_str(
                    &serde_json::json!({
                        "line": p.line, "prediction": p.prediction, "reference": p.reference,
                        "rouge_l": p.rouge_l, "exact_match": p.exact_match,
                        "nll": p.nll_sum / p.reference_tokens as f64,
                    })
                    .to_string(),
                );
                lines.push('\n');
                Ok(())
            },
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        write_atomic(
            &self.dir.join(format!("{stem}.predictions.jsonl")),
            lines.as_bytes(),
        )?;
        Ok((scores, seconds))
    }

    /// The in-context row: the base model on `pairs`, the test pairs with `n` training pairs
    /// as earlier turns (rendered already, so scored as written). The first prompt is kept in
    /// `in-context.prompt.txt`, to read what the model saw.
    fn in_context_row(
        &self,
        generator: &TextGenerator,
        pairs: &[(usize, String, String)],
        n: usize,
    ) -> Result<LmRow> {
        if let Some((_, first, _)) = pairs.first() {
            write_atomic(&self.dir.join("in-context.prompt.txt"), first.as_bytes())?;
        }
        let (s, seconds) = self.score_as(
            generator,
            generator.base_task(),
            pairs,
            LmMethod::InContext.file_stem(),
            false,
        )?;
        Ok(row(LmMethod::InContext, n, 0, 0, &s, seconds))
    }

    /// A fixed row: `task` scored on the test prompts.
    fn fixed_row(
        &self,
        generator: &TextGenerator,
        task: TaskId,
        method: LmMethod,
        parameters: usize,
        file_bytes: u64,
    ) -> Result<LmRow> {
        let (s, seconds) = self.score(generator, task, &self.pairs, method.file_stem())?;
        Ok(row(method, 0, parameters, file_bytes, &s, seconds))
    }

    /// A zero-shot row of the K sweep: `c` written as `<stem>-k<K>.elxc` of `bundle`, served
    /// on a fresh engine and scored on the test prompts.
    fn sweep_row(
        &self,
        open: &dyn Fn(&Bundle) -> Result<TextGenerator>,
        bundle: &Bundle,
        c: &Capture,
        method: LmMethod,
        k: usize,
    ) -> Result<LmRow> {
        let g = open(bundle)?;
        let stem = format!("{}-k{k}", method.file_stem());
        let path = self.dir.join(format!("{stem}.elxc"));
        let id = load_coefficients(&g, bundle, c, &self.spec.name, &path)?;
        let (s, seconds) = self.score(&g, id, &self.pairs, &stem)?;
        let mut r = row(method, 0, c.coeff_params, file_len(&path), &s, seconds);
        r.fixed_k = Some(k);
        Ok(r)
    }
}

fn row(
    method: LmMethod,
    train_examples: usize,
    parameters: usize,
    file_bytes: u64,
    s: &GenerationScores,
    score_seconds: f64,
) -> LmRow {
    LmRow {
        method,
        train_examples,
        parameters,
        file_bytes,
        rouge_l: s.rouge_l,
        exact_match: s.exact_match,
        nll: s.nll,
        train_seconds: 0.0,
        score_seconds,
        curve: Vec::new(),
        best_step: 0,
        fixed_k: None,
    }
}

/// Bytes of the file at `p` (0 when it cannot be read).
fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Writes `coefficients` as the task `name` of `bundle` to `path` and loads it on
/// `generator`.
fn load_coefficients(
    generator: &TextGenerator,
    bundle: &Bundle,
    c: &Capture,
    name: &str,
    path: &Path,
) -> Result<TaskId> {
    CoeffFile {
        subspace_id: bundle.manifest.subspace_id.clone(),
        task: name.to_string(),
        provenance: Provenance::Projected,
        modules: c.coefficients.clone(),
        head: None,
    }
    .write(path)?;
    generator.generator().engine().load_task(path)
}

/// Where a held-out task's recycled subspace comes from.
#[derive(Clone, Copy, Debug)]
pub enum Recycled<'a> {
    /// Extracted here from these tasks' adapters (the other tasks of the family).
    Adapters(&'a [LmTaskSpec]),
    /// Read from a bundle extracted from them elsewhere, when the adapters are not at hand
    /// (`elx demo`'s committed one): no mean-direction row and no K sweep.
    Bundle(&'a Bundle),
}

/// Runs the leave-one-out evaluation of `tasks[held]` (see the module documentation);
/// `log` receives one line per phase.
pub fn run_task(
    cfg: &LmLooConfig,
    base: &Base,
    tasks: &[LmTaskSpec],
    held: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<LmTaskResult> {
    let spec = tasks
        .get(held)
        .ok_or_else(|| Error::Usage(format!("no task {held} among {}", tasks.len())))?;
    let others: Vec<LmTaskSpec> = tasks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != held)
        .map(|(_, t)| t.clone())
        .collect();
    run_held_out(cfg, base, spec, Recycled::Adapters(&others), log)
}

/// Evaluates the task `spec` held out of the subspace `recycled` (see the module
/// documentation); `log` receives one line per phase.
pub fn run_held_out(
    cfg: &LmLooConfig,
    base: &Base,
    spec: &LmTaskSpec,
    recycled: Recycled<'_>,
    log: &(dyn Fn(&str) + Sync),
) -> Result<LmTaskResult> {
    let started = Instant::now();
    let mut sizes = cfg.few_shot.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.first() == Some(&0) {
        return Err(Error::Usage("few-shot sizes must be at least 1".into()));
    }
    let dir = cfg.out_dir.join(&spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    // Data first, so that a bad file fails before any extraction or engine.
    let files = DecoderFiles::open(&cfg.model)?;
    let train_texts = read_prompt_answer_texts(&spec.train)?;
    let mut test_pairs = read_prompt_answer_texts(&spec.test)?;
    test_pairs.truncate(cfg.test_examples);
    let largest = sizes.last().copied().unwrap_or(0).max(cfg.in_context);
    if train_texts.len() < largest {
        return Err(Error::bad_file(
            &spec.train,
            format!(
                "expected at least {largest} training pairs (few-shot sizes and in-context examples), found {}",
                train_texts.len()
            ),
        ));
    }

    let template = chat_template(&files)?;
    let in_context = match (&template, cfg.in_context) {
        (_, 0) => None,
        (Some(t), n) => Some(in_context_pairs(
            t,
            cfg.chat,
            &train_texts[..n],
            &spec.train,
            &test_pairs,
            &spec.test,
        )?),
        (None, _) => {
            return Err(Error::bad_file(
                &files.model,
                "the in-context row needs the model's chat template, and none is beside the model (--in-context 0 leaves the row out)",
            ));
        }
    };

    // Subspaces: the other tasks' (recycled), a random one of the same K, the span of the
    // others' mean direction, the task's own.
    let adapter = Adapter::open(&spec.adapter)?;
    let quiet = |_: usize, _: usize, _: &str| {};
    let (others, space, sources) = match recycled {
        Recycled::Adapters(specs) => {
            let others: Vec<Adapter> = specs
                .iter()
                .map(|t| Adapter::open(&t.adapter))
                .collect::<Result<_>>()?;
            let space = subspace::extract(&others, &cfg.extract, &quiet)?;
            let sources: Vec<SourceAdapter> = others.iter().map(SourceAdapter::from).collect();
            (others, space, sources)
        }
        Recycled::Bundle(b) => {
            if !cfg.k_sweep.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: the K sweep extracts from the other tasks' adapters, and only their bundle is given",
                    b.path.display()
                )));
            }
            (Vec::new(), b.subspace.clone(), b.manifest.sources.clone())
        }
    };
    let random = random_subspace(&space, cfg.random_seed);
    let cap = capture(&adapter, &space, &random)?;
    let random_cap = capture(&adapter, &random, &random)?;
    let mean_space = if others.is_empty() {
        None
    } else {
        mean_direction_subspace(&others, &cfg.extract)?
    };
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
    let recycled = write_bound(&dir.join("recycled.elxb"), &space, &sources, base)?;
    let random_bundle = write_bound(&dir.join("random.elxb"), &random, &[], base)?;
    let mean_bundle = match &mean_space {
        Some(m) => Some(write_bound(&dir.join("mean-only.elxb"), m, &sources, base)?),
        None => None,
    };
    let own_bundle = write_bound(
        &dir.join("own-lora.elxb"),
        &own,
        &[SourceAdapter::from(&adapter)],
        base,
    )?;
    // The K sweep: each K its own extraction, random basis and bound bundles.
    let mut sweep = Vec::new();
    for &k in &cfg.k_sweep {
        let options = ExtractOptions {
            k_rule_a: KRule::Fixed(k),
            k_rule_b: KRule::Fixed(k),
            ..cfg.extract.clone()
        };
        let space = subspace::extract(&others, &options, &quiet)?;
        let random = random_subspace(&space, cfg.random_seed);
        let cap = capture(&adapter, &space, &random)?;
        let random_cap = capture(&adapter, &random, &random)?;
        let recycled = write_bound(
            &dir.join(format!("recycled-k{k}.elxb")),
            &space,
            &sources,
            base,
        )?;
        let random_bundle =
            write_bound(&dir.join(format!("random-k{k}.elxb")), &random, &[], base)?;
        log(&format!(
            "{}: K = {k} per side (K_A+K_B = {}): holds {:.1}% of the held-out ΔW (random: {:.2}%)",
            spec.name,
            cap.k_total,
            100.0 * cap.captured,
            100.0 * cap.random_captured
        ));
        sweep.push((k, recycled, cap, random_bundle, random_cap));
    }
    log(&format!(
        "{}: subspace of the other {} adapters, K_A+K_B = {} over {} modules; holds {:.1}% of the held-out ΔW (random: {:.2}%{})",
        spec.name,
        sources.len(),
        cap.k_total,
        space.modules.len(),
        100.0 * cap.captured,
        100.0 * cap.random_captured,
        mean_cap.as_ref().map_or_else(String::new, |m| format!(
            ", mean direction: {:.1}%",
            100.0 * m.captured
        ))
    ));

    let test = TestSet {
        cfg,
        spec,
        pairs: test_pairs,
        dir: &dir,
    };
    let (test, dir) = (&test, &dir);
    let open = |b: &Bundle| TextGenerator::open(&cfg.model, Some(&b.path), cfg.backend);
    let training = Training {
        cfg,
        spec,
        files: &files,
        test,
        sizes: &sizes,
        log,
    };

    // Each job holds one engine; the trained rows share the engine of their basis.
    let mut jobs: Vec<Job<'_, Vec<LmRow>>> = Vec::new();
    jobs.push(Box::new(|| {
        let g = open(&recycled)?;
        let id = load_coefficients(&g, &recycled, &cap, &spec.name, &dir.join("projected.elxc"))?;
        let mut rows = vec![test.fixed_row(
            &g,
            id,
            LmMethod::Projected,
            cap.coeff_params,
            file_len(&dir.join("projected.elxc")),
        )?];
        log(&format!("{}: zero-shot recycled row scored", spec.name));
        rows.extend(training.rows(&g, &recycled, LmMethod::Finetuned)?);
        Ok(rows)
    }));
    jobs.push(Box::new(|| {
        let g = open(&random_bundle)?;
        let path = dir.join("random-projected.elxc");
        let id = load_coefficients(&g, &random_bundle, &random_cap, &spec.name, &path)?;
        let mut rows = vec![test.fixed_row(
            &g,
            id,
            LmMethod::RandomProjected,
            random_cap.coeff_params,
            file_len(&path),
        )?];
        log(&format!("{}: zero-shot random-basis row scored", spec.name));
        rows.extend(training.rows(&g, &random_bundle, LmMethod::RandomBasis)?);
        Ok(rows)
    }));
    jobs.push(Box::new(|| {
        let g = open(&own_bundle)?;
        let path = dir.join("own-lora.elxc");
        let id = load_coefficients(&g, &own_bundle, &own_coeffs, &spec.name, &path)?;
        let own_row = test.fixed_row(
            &g,
            id,
            LmMethod::OwnLora,
            own_coeffs.lora_params,
            file_len(&spec.adapter.join("adapter_model.safetensors")),
        )?;
        let mut rows = vec![
            own_row,
            test.fixed_row(&g, g.base_task(), LmMethod::Base, 0, 0)?,
        ];
        if let Some(pairs) = &in_context {
            rows.push(test.in_context_row(&g, pairs, cfg.in_context)?);
        }
        log(&format!(
            "{}: base, in-context and own-LoRA rows scored",
            spec.name
        ));
        Ok(rows)
    }));
    if let (Some(bundle), Some(c)) = (&mean_bundle, &mean_cap) {
        jobs.push(Box::new(move || {
            let g = open(bundle)?;
            let path = dir.join("mean-only.elxc");
            let id = load_coefficients(&g, bundle, c, &spec.name, &path)?;
            let row =
                test.fixed_row(&g, id, LmMethod::MeanOnly, c.coeff_params, file_len(&path))?;
            log(&format!(
                "{}: zero-shot mean-direction row scored",
                spec.name
            ));
            Ok(vec![row])
        }));
    }
    if sizes.is_empty() {
        // Without trained rows the own-LoRA engine's three rows are the longest job: start
        // it first, so the others fill the other threads meanwhile.
        jobs.rotate_right(usize::from(mean_bundle.is_some()) + 1);
    }
    // The K sweep's jobs last: the rotation above is about the others.
    for (k, recycled, cap, random_bundle, random_cap) in &sweep {
        jobs.push(Box::new(move || {
            let rows = vec![
                test.sweep_row(&open, recycled, cap, LmMethod::Projected, *k)?,
                test.sweep_row(
                    &open,
                    random_bundle,
                    random_cap,
                    LmMethod::RandomProjected,
                    *k,
                )?,
            ];
            log(&format!("{}: zero-shot rows at K = {k} scored", spec.name));
            Ok(rows)
        }));
    }
    let mut rows: Vec<LmRow> = run_parallel(jobs, cfg.threads.max(1))?
        .into_iter()
        .flatten()
        .collect();
    rows.sort_by_key(|r| (r.method, r.fixed_k, r.train_examples));
    Ok(LmTaskResult {
        task: spec.name.clone(),
        sources: sources.len(),
        k_a: space.modules.values().map(|m| m.a.k_total()).sum(),
        k_b: space.modules.values().map(|m| m.b.k_total()).sum(),
        captured: cap.captured,
        random_captured: cap.random_captured,
        mean_only_captured: mean_cap.as_ref().map_or(0.0, |m| m.captured),
        k_sweep: sweep
            .iter()
            .map(|(k, _, cap, _, _)| SweepCapture {
                k: *k,
                k_total: cap.k_total,
                captured: cap.captured,
                random_captured: cap.random_captured,
            })
            .collect(),
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the trained rows of one basis share.
struct Training<'a> {
    cfg: &'a LmLooConfig,
    spec: &'a LmTaskSpec,
    files: &'a DecoderFiles,
    test: &'a TestSet<'a>,
    sizes: &'a [usize],
    log: &'a (dyn Fn(&str) + Sync),
}

impl Training<'_> {
    /// Per few-shot size, coefficients trained on `g`'s engine (bound to `bundle`) from the
    /// first N training pairs, early-stopped on validation, saved and scored on the test
    /// pairs.
    fn rows(&self, g: &TextGenerator, bundle: &Bundle, method: LmMethod) -> Result<Vec<LmRow>> {
        if self.sizes.is_empty() {
            return Ok(Vec::new());
        }
        let tok = g.tokenizer();
        let end = self.files.end_of_turn(tok)?;
        let template = match chat_template(self.files)? {
            Some(t) if self.cfg.chat => Some(t),
            None if self.cfg.chat => {
                return Err(Error::bad_file(
                    &self.files.model,
                    "--chat: expected a chat template beside the model, found none",
                ));
            }
            _ => None,
        };
        let dir = self.files.model.parent().unwrap_or(Path::new("."));
        let max_len = max_position_embeddings(dir).unwrap_or(usize::MAX);
        let read = |p: &Path| read_prompt_answers(p, tok, template.as_ref(), end, max_len);
        let train = read(&self.spec.train)?;
        let val = read(&self.spec.validation)?;
        let mut rows = Vec::new();
        for &n in self.sizes {
            let cfg = LmConfig {
                batch_size: self.cfg.lm.batch_size.min(n),
                ..self.cfg.lm.clone()
            };
            let t0 = Instant::now();
            let mut trainer = LmTrainer::new(
                g.generator().engine(),
                train[..n].to_vec(),
                val.clone(),
                cfg,
            )?;
            let mut curve = Vec::new();
            // Validation on the serving engine the rows are scored on: a forward pass, not
            // the training graphs' forward and backward.
            let report = trainer.fit_with(Validation::Serving(g.generator()), &mut |e| {
                if let LmEvent::Eval {
                    step,
                    train_loss,
                    val_nll,
                    ..
                } = *e
                {
                    (self.log)(&format!(
                        "{}: {} at {n} pairs: step {step}, validation NLL {val_nll:.4} ({:.0} s)",
                        self.spec.name,
                        method.label(),
                        t0.elapsed().as_secs_f64()
                    ));
                    curve.push(CurvePoint {
                        step,
                        val_nll,
                        train_loss,
                    });
                }
            })?;
            let train_seconds = t0.elapsed().as_secs_f64();
            curve.insert(
                0,
                CurvePoint {
                    step: 0,
                    val_nll: report.start_val_nll,
                    train_loss: f64::NAN,
                },
            );
            let stem = format!("{}-n{n}", method.file_stem());
            let path = self.test.dir.join(format!("{stem}.elxc"));
            let file = trainer.coeff_file(&bundle.manifest.subspace_id, &self.spec.name)?;
            file.write(&path)?;
            let id = g.generator().engine().load_task(&path)?;
            let (s, seconds) = self.test.score(g, id, &self.test.pairs, &stem)?;
            let parameters = trainer.params().len();
            let mut r = row(method, n, parameters, file_len(&path), &s, seconds);
            r.train_seconds = train_seconds;
            r.curve = curve;
            r.best_step = report.best_step;
            (self.log)(&format!(
                "{}: {} at {n} pairs: {} steps ({train_seconds:.0} s), validation NLL {:.3} -> {:.3} (step {}), test Rouge-L {:.3}",
                self.spec.name,
                method.label(),
                report.steps,
                report.start_val_nll,
                report.best_val_nll,
                report.best_step,
                s.rouge_l
            ));
            rows.push(r);
        }
        Ok(rows)
    }
}

/// The model's chat template, when it has one.
fn chat_template(files: &DecoderFiles) -> Result<Option<ChatTemplate>> {
    files
        .chat_template
        .as_deref()
        .map(|source| {
            ChatTemplate::new(
                source,
                files.bos_token.as_deref().unwrap_or(""),
                files.eos_token.as_deref().unwrap_or(""),
            )
        })
        .transpose()
}
