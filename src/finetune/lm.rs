//! Language-model finetuning of a decoder task: the coefficients alone (a decoder has no
//! head), trained on prompt/answer pairs by the exact gradient of the next-token
//! cross-entropy over the answer's tokens ([`ExactGradient::next_token_loss_grad`]).
//!
//! The recipe is the host's PEFT recipe for the generation family
//! (`tools/workload/train_wordnet_gen.py`), so that the two train the same thing: batches
//! drawn without replacement from a seeded permutation per epoch, the loss the mean over the
//! batch's answer tokens (the end-of-turn token included), AdamW without weight decay or
//! warm-up, the validation NLL per answer token once per epoch, stop after `patience`
//! evaluations without improvement, and the best evaluated coefficients kept. Only the
//! learning rate differs: the coefficients keep the library's default
//! ([`super::FinetuneConfig`]'s `lr`), not LoRA's.
//!
//! Initialisation as in [`crate::finetune`]: α_A ~ N(0, 1/K_A), α_B = 0, so training starts
//! from the base model.

use super::data::for_each_line;
use super::schedule::Adam;
use crate::bundle::{Bundle, CoeffFile, Manifest, Provenance};
use crate::error::{Error, Result};
use crate::serve::family::Decoder;
use crate::serve::generate::Generator;
use crate::serve::generate::text::{DecoderFiles, PromptTokenizer};
use crate::serve::hidden::TokenBatch;
use crate::serve::input::chat::{ChatMessage, ChatTemplate};
use crate::serve::input::text::max_position_embeddings;
use crate::serve::train::{ExactGradient, Gradients};
use crate::serve::{Backend, Engine};
use crate::subspace::Coefficients;
use crate::task::CoeffLayout;
use crate::util::GaussianRng;
use faer::Mat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Padded lengths are rounded up to a multiple of this: a handful of shapes for engines that
/// plan per input shape. Right padding changes nothing under a causal mask.
const PAD_MULTIPLE: usize = 16;

/// One example: the prompt's ids and the answer's (its end-of-turn token included). The loss
/// reads the answer's tokens only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptAnswer {
    /// Prompt token ids (the chat template already applied, if any).
    pub prompt: Vec<u32>,
    /// Answer token ids, ending with the end-of-turn token.
    pub answer: Vec<u32>,
}

/// Settings of a language-model run.
#[derive(Clone, Debug)]
pub struct LmConfig {
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// AdamW learning rate of the coefficients.
    pub lr: f64,
    /// Examples per step.
    pub batch_size: usize,
    /// Most optimisation steps.
    pub max_steps: u64,
    /// Steps between validation evaluations (`None`: one epoch).
    pub eval_every: Option<u64>,
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// Examples per validation run.
    pub eval_batch: usize,
    /// Micro-batches of a step run at once, one thread each.
    pub threads: usize,
}

impl Default for LmConfig {
    fn default() -> Self {
        LmConfig {
            seed: 0,
            lr: super::FinetuneConfig::default().lr,
            batch_size: 8,
            max_steps: 400,
            eval_every: None,
            patience: 3,
            eval_batch: 25,
            threads: 1,
        }
    }
}

/// Examples per engine call of a [`Validation::Serving`] evaluation: the serving path keeps
/// the logits of every position (rows x tokens x vocabulary floats), so batches stay small.
const SERVING_EVAL_BATCH: usize = 8;

/// Where a run measures its validation NLL.
#[derive(Clone, Copy)]
pub enum Validation<'g> {
    /// On the training graphs: a forward and a backward pass per evaluation batch, and
    /// nothing needed besides the trainer.
    TrainingGraphs,
    /// On the forward-only serving path of a generator whose engine is bound to the run's
    /// bundle: the same NLL to float rounding, for the cost of a forward pass (about a third),
    /// while the generator's engine holds the base weights a second time.
    Serving(&'g Generator),
}

/// What a run reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum LmEvent {
    /// A training step: its loss (per answer token of the batch).
    Step {
        /// Steps taken.
        step: u64,
        /// The batch's loss.
        loss: f64,
    },
    /// A validation evaluation: mean training loss since the last one, validation NLL per
    /// answer token, and whether it is the best so far.
    Eval {
        /// Steps taken.
        step: u64,
        /// Mean training loss (per answer token) of the steps since the last evaluation.
        train_loss: f64,
        /// Validation NLL per answer token.
        val_nll: f64,
        /// The best validation NLL so far (these coefficients are kept).
        best: bool,
    },
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct LmReport {
    /// Steps taken.
    pub steps: u64,
    /// Validation NLL per answer token before the first step (the base model).
    pub start_val_nll: f64,
    /// The best validation NLL, and the step it was reached at (the kept coefficients).
    pub best_val_nll: f64,
    /// Step of the best evaluation (0: the base model was never beaten).
    pub best_step: u64,
    /// Whether early stopping ended the run (else the step limit).
    pub early_stopped: bool,
}

/// A language-model finetuning run on a decoder engine.
pub struct LmTrainer {
    grad: ExactGradient,
    cfg: LmConfig,
    train: Vec<PromptAnswer>,
    val: Vec<PromptAnswer>,
    params: Vec<f64>,
    best: Vec<f64>,
    adam: Adam,
    rng: GaussianRng,
    order: Vec<usize>,
    cursor: usize,
    step: u64,
    scratch: Scratch,
}

/// Buffers of one padded batch.
#[derive(Default)]
struct Scratch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    targets: Vec<i64>,
    weights: Vec<f32>,
    params: Vec<f32>,
    grads: Gradients,
}

impl LmTrainer {
    /// Sets up a run on `engine` (a decoder loaded with a bound bundle): checks the settings
    /// and the data, builds the training graphs and initialises the coefficients.
    pub fn new(
        engine: &Engine,
        train: Vec<PromptAnswer>,
        val: Vec<PromptAnswer>,
        cfg: LmConfig,
    ) -> Result<LmTrainer> {
        let bad = |m: String| Err(Error::Usage(format!("language-model finetuning: {m}")));
        if cfg.batch_size == 0 || cfg.eval_batch == 0 || cfg.eval_every == Some(0) {
            return bad(
                "batch size, evaluation batch and evaluation interval must be at least 1".into(),
            );
        }
        if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
            return bad(format!(
                "the learning rate must be positive and finite, found {}",
                cfg.lr
            ));
        }
        if train.is_empty() || val.is_empty() {
            return bad(format!(
                "expected training and validation examples, found {} and {}",
                train.len(),
                val.len()
            ));
        }
        for (what, set) in [("training", &train), ("validation", &val)] {
            if let Some(i) = set
                .iter()
                .position(|e| e.prompt.is_empty() || e.answer.is_empty())
            {
                return bad(format!(
                    "{what} example {}: expected a non-empty prompt and answer",
                    i + 1
                ));
            }
        }
        let family = Decoder::from_specs(engine.specs()?, engine.output_names())?;
        let grad = ExactGradient::for_family(engine, &family)?.with_threads(cfg.threads);
        let layout = grad.layout().to_vec();
        if layout.is_empty() {
            return bad("the bundle adapts no module of this model".into());
        }
        let n: usize = layout.iter().map(CoeffLayout::len).sum();
        let mut rng = GaussianRng::new(cfg.seed ^ 0x1A17_C0EF_F1C1_E475);
        let mut params = vec![0.0; n];
        let mut at = 0;
        for l in &layout {
            let sa = 1.0 / (l.k_a.max(1) as f64).sqrt();
            for p in &mut params[at..at + l.r * l.k_a] {
                *p = sa * rng.next_normal();
            }
            at += l.len();
        }
        Ok(LmTrainer {
            grad,
            best: params.clone(),
            adam: Adam::new(n, 0.9, 0.999, 1e-8),
            params,
            rng,
            order: Vec::new(),
            cursor: 0,
            step: 0,
            train,
            val,
            cfg,
            scratch: Scratch::default(),
        })
    }

    /// The module layout of the coefficients.
    pub fn layout(&self) -> &[CoeffLayout] {
        self.grad.layout()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The current coefficients, in the flat layout of [`crate::finetune::ForwardModel`].
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// Validation NLL per answer token under the current coefficients, measured as
    /// `validation` says.
    pub fn validation_nll_with(&mut self, validation: Validation) -> Result<f64> {
        match validation {
            Validation::TrainingGraphs => self.validation_nll(),
            Validation::Serving(g) => self.serving_validation_nll(g),
        }
    }

    /// [`LmTrainer::validation_nll_with`] on the serving path of `g`: the current
    /// coefficients inserted as a task for the evaluation, then unloaded.
    fn serving_validation_nll(&self, g: &Generator) -> Result<f64> {
        let file = self.coeff_file(g.engine().subspace_id(), "validation")?;
        let id = g.engine().insert_task(&file)?;
        let nll = self.serving_nll_of(g, id);
        g.engine().unload_task(id)?;
        nll
    }

    fn serving_nll_of(&self, g: &Generator, id: crate::serve::store::TaskId) -> Result<f64> {
        let total: usize = self.val.iter().map(|e| e.answer.len()).sum();
        let seqs: Vec<(Vec<u32>, usize)> = self
            .val
            .iter()
            .map(|e| ([&e.prompt[..], &e.answer[..]].concat(), e.answer.len()))
            .collect();
        let chunk_sum = |chunk: &[(Vec<u32>, usize)]| -> Result<f64> {
            let rows: Vec<_> = chunk.iter().map(|(ids, _)| (id, &ids[..])).collect();
            let nll = g.token_nll_batch(&rows)?;
            Ok(nll
                .iter()
                .zip(chunk)
                .map(|(v, (_, answer))| v[v.len() - answer..].iter().sum::<f64>())
                .sum())
        };
        let chunks: Vec<&[(Vec<u32>, usize)]> = seqs.chunks(SERVING_EVAL_BATCH).collect();
        let threads = self.cfg.threads.clamp(1, chunks.len());
        // Chunk sums are added in chunk order, so the value does not depend on the threads.
        let sums: Vec<Result<f64>> = if threads == 1 {
            chunks.iter().map(|c| chunk_sum(c)).collect()
        } else {
            let mut sums: Vec<Option<Result<f64>>> = (0..chunks.len()).map(|_| None).collect();
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (chunks, chunk_sum) = (&chunks, &chunk_sum);
                        scope.spawn(move || {
                            (t..chunks.len())
                                .step_by(threads)
                                .map(|i| (i, chunk_sum(chunks[i])))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(done) => done.into_iter().for_each(|(i, s)| sums[i] = Some(s)),
                        Err(_) => {
                            sums.push(Some(Err(Error::Internal(
                                "a validation thread panicked".into(),
                            ))));
                        }
                    }
                }
            });
            sums.into_iter().flatten().collect()
        };
        let mut sum = 0.0;
        for s in sums {
            sum += s?;
        }
        Ok(sum / total as f64)
    }

    /// Validation NLL per answer token under the current coefficients (one exact-gradient
    /// pass per evaluation batch: the graphs are the training graphs).
    pub fn validation_nll(&mut self) -> Result<f64> {
        let total: usize = self.val.iter().map(|e| e.answer.len()).sum();
        let val = std::mem::take(&mut self.val);
        let mut sum = 0.0;
        let r = (|| {
            for chunk in val.chunks(self.cfg.eval_batch) {
                let rows: Vec<&PromptAnswer> = chunk.iter().collect();
                sum += self.loss_grad(&rows, total)?;
            }
            Ok(sum)
        })();
        self.val = val;
        r
    }

    /// Trains until the step limit or early stopping; `on_event` sees every evaluation. The
    /// kept coefficients are the best evaluated ones. Validation runs on the training graphs.
    pub fn fit(&mut self, on_event: &mut dyn FnMut(&LmEvent)) -> Result<LmReport> {
        self.fit_with(Validation::TrainingGraphs, on_event)
    }

    /// [`LmTrainer::fit`], with the validation NLL measured as `validation` says.
    pub fn fit_with(
        &mut self,
        validation: Validation,
        on_event: &mut dyn FnMut(&LmEvent),
    ) -> Result<LmReport> {
        let epoch = self.train.len().div_ceil(self.cfg.batch_size) as u64;
        let every = self.cfg.eval_every.unwrap_or(epoch).max(1);
        let start = self.validation_nll_with(validation)?;
        let (mut best, mut best_step, mut bad) = (start, 0, 0);
        self.best.clone_from(&self.params);
        let (mut window, mut window_n) = (0.0, 0u64);
        let mut early_stopped = false;
        while self.step < self.cfg.max_steps {
            let batch = self.next_batch();
            let train = std::mem::take(&mut self.train);
            let rows: Vec<&PromptAnswer> = batch.iter().map(|&i| &train[i]).collect();
            let total = rows.iter().map(|e| e.answer.len()).sum();
            let loss = self.loss_grad(&rows, total);
            self.train = train;
            let loss = loss?;
            let grad: Vec<f64> = self
                .scratch
                .grads
                .params
                .iter()
                .map(|&g| f64::from(g))
                .collect();
            if let Some(i) = grad.iter().position(|g| !g.is_finite()) {
                return Err(Error::Numeric(format!(
                    "step {}: a non-finite gradient (coefficient {i}); lower the learning rate",
                    self.step + 1
                )));
            }
            self.adam.update(&mut self.params, &grad, self.cfg.lr, 0.0);
            self.step += 1;
            on_event(&LmEvent::Step {
                step: self.step,
                loss,
            });
            window += loss;
            window_n += 1;
            if self.step.is_multiple_of(every) || self.step == self.cfg.max_steps {
                let val_nll = self.validation_nll_with(validation)?;
                let improved = val_nll < best - 1e-4;
                if improved {
                    (best, best_step, bad) = (val_nll, self.step, 0);
                    self.best.clone_from(&self.params);
                } else {
                    bad += 1;
                }
                on_event(&LmEvent::Eval {
                    step: self.step,
                    train_loss: window / window_n as f64,
                    val_nll,
                    best: improved,
                });
                (window, window_n) = (0.0, 0);
                if !improved && bad >= self.cfg.patience {
                    early_stopped = true;
                    break;
                }
            }
        }
        self.params.clone_from(&self.best);
        Ok(LmReport {
            steps: self.step,
            start_val_nll: start,
            best_val_nll: best,
            best_step,
            early_stopped,
        })
    }

    /// The task as a coefficient file (no head) for the bundle `subspace_id`.
    pub fn coeff_file(&self, subspace_id: &str, task: &str) -> Result<CoeffFile> {
        let mut modules = BTreeMap::new();
        let mut at = 0;
        for l in self.grad.layout() {
            let p = &self.params[at..at + l.len()];
            if let Some(i) = p.iter().position(|x| !x.is_finite()) {
                return Err(Error::Numeric(format!(
                    "module {}: coefficient {i} is not finite",
                    l.name
                )));
            }
            let (a, b) = p.split_at(l.r * l.k_a);
            modules.insert(
                l.name.clone(),
                Coefficients {
                    alpha_a: Mat::from_fn(l.r, l.k_a, |i, j| a[i * l.k_a + j]),
                    alpha_b: Mat::from_fn(l.k_b, l.r, |i, j| b[i * l.r + j]),
                },
            );
            at += l.len();
        }
        Ok(CoeffFile {
            subspace_id: subspace_id.to_string(),
            task: task.to_string(),
            provenance: Provenance::Finetuned,
            modules,
            head: None,
        })
    }

    /// The next training batch: a seeded permutation per epoch, cut into batches (the last
    /// batch of an epoch may be short).
    fn next_batch(&mut self) -> Vec<usize> {
        if self.cursor >= self.order.len() {
            self.order = (0..self.train.len()).collect();
            for i in (1..self.order.len()).rev() {
                let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
            self.cursor = 0;
        }
        let end = (self.cursor + self.cfg.batch_size).min(self.order.len());
        let batch = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        batch
    }

    /// Σ over `rows`' answer tokens of their NLL / `total` under the current coefficients;
    /// its gradient is left in `scratch.grads.params`.
    fn loss_grad(&mut self, rows: &[&PromptAnswer], total: usize) -> Result<f64> {
        let longest = rows.iter().map(|e| e.prompt.len() + e.answer.len()).max();
        let seq = longest.unwrap_or(1).div_ceil(PAD_MULTIPLE) * PAD_MULTIPLE;
        let s = &mut self.scratch;
        let n = rows.len() * seq;
        s.ids.clear();
        s.ids.resize(n, 0);
        s.mask.clear();
        s.mask.resize(n, 0);
        s.targets.clear();
        s.targets.resize(n, 0);
        s.weights.clear();
        s.weights.resize(n, 0.0);
        let w = 1.0 / total as f32;
        for (b, e) in rows.iter().enumerate() {
            let row = b * seq;
            let p = e.prompt.len();
            for (k, &t) in e.prompt.iter().chain(&e.answer).enumerate() {
                s.ids[row + k] = i64::from(t);
                s.mask[row + k] = 1;
            }
            // Position p - 1 + k predicts answer token k.
            for (k, &t) in e.answer.iter().enumerate() {
                s.targets[row + p - 1 + k] = i64::from(t);
                s.weights[row + p - 1 + k] = w;
            }
        }
        s.params.clear();
        s.params.extend(self.params.iter().map(|&x| x as f32));
        let tokens = TokenBatch::new(&s.ids, &s.mask, rows.len(), seq)?;
        self.grad
            .next_token_loss_grad(tokens, &s.params, &s.targets, &s.weights, &mut s.grads)?;
        Ok(s.grads.loss)
    }
}

/// Most examples read from one file.
pub const MAX_LM_EXAMPLES: usize = 1_000_000;

/// A language-model finetune job's inputs besides the engine: `elx finetune --objective lm`'s
/// arguments.
#[derive(Clone, Debug)]
pub struct LmSpec {
    /// Training pairs: JSONL lines with string fields `prompt` and `answer`.
    pub train: PathBuf,
    /// Validation pairs (same format): evaluation and early stopping.
    pub val: PathBuf,
    /// Wrap each prompt as a user turn in the model's chat template (else the prompt is taken
    /// as written, e.g. already templated).
    pub chat: bool,
    /// The run's settings.
    pub config: LmConfig,
}

/// A language-model finetuning run on a decoder folder with a bound bundle: the data read
/// and tokenized before the engine loads, the trainer, and the bundle the task belongs to.
pub struct LmJob {
    trainer: LmTrainer,
    manifest: Manifest,
    train_examples: usize,
    val_examples: usize,
}

impl LmJob {
    /// Reads the bundle, the decoder's files (tokenizer, end-of-turn token, chat template)
    /// and both data files (every data error comes before the engine loads), then loads the
    /// engine for the model and sets up the run.
    pub fn open(spec: &LmSpec, model: &Path, bundle: &Path, backend: Backend) -> Result<LmJob> {
        let bundle = Bundle::read(bundle)?;
        let files = DecoderFiles::open(model)?;
        let tok_path = files.tokenizer.clone().ok_or_else(|| {
            Error::bad_file(
                &files.model,
                "expected a tokenizer.json beside the model (`elx import-gguf` writes one), found none",
            )
        })?;
        let tokenizer = PromptTokenizer::open(&tok_path)?;
        // The answer ends with the token that ends the assistant's turn, as generation stops.
        let end = files.end_of_turn(&tokenizer)?;
        let template = if spec.chat {
            let source = files.chat_template.as_deref().ok_or_else(|| {
                Error::bad_file(
                    &files.model,
                    "--chat: expected a chat template in the tokenizer_config.json beside the model, found none",
                )
            })?;
            Some(ChatTemplate::new(
                source,
                files.bos_token.as_deref().unwrap_or(""),
                files.eos_token.as_deref().unwrap_or(""),
            )?)
        } else {
            None
        };
        let max_len = max_position_embeddings(model_dir(&files.model)).unwrap_or(usize::MAX);
        let read = |p: &Path| read_prompt_answers(p, &tokenizer, template.as_ref(), end, max_len);
        let train = read(&spec.train)?;
        let val = read(&spec.val)?;
        let (train_examples, val_examples) = (train.len(), val.len());
        let engine = Engine::load(&files.model, &bundle, backend)?;
        let trainer = LmTrainer::new(&engine, train, val, spec.config.clone())?;
        Ok(LmJob {
            trainer,
            manifest: bundle.manifest,
            train_examples,
            val_examples,
        })
    }

    /// The trainer (fit, validation NLL, coefficients).
    pub fn trainer(&mut self) -> &mut LmTrainer {
        &mut self.trainer
    }

    /// Training and validation examples read.
    pub fn examples(&self) -> (usize, usize) {
        (self.train_examples, self.val_examples)
    }

    /// Writes the task atomically to `path`, after the check a runtime applies at load: a
    /// task that would be refused is not written.
    pub fn write_task(&self, path: &Path, task: &str) -> Result<CoeffFile> {
        let file = self.trainer.coeff_file(&self.manifest.subspace_id, task)?;
        file.check_for(path, &self.manifest).map_err(|e| {
            Error::Numeric(format!(
                "the trained task would be refused at load ({e}); nothing was written: lower the learning rate"
            ))
        })?;
        file.write(path)?;
        Ok(file)
    }
}

fn model_dir(model: &Path) -> &Path {
    model.parent().unwrap_or(Path::new("."))
}

/// Reads prompt/answer pairs from the JSONL file `path` ([`read_prompt_answer_texts`]): the
/// prompt encoded as generation encodes it (through `template` as a user turn when given), the
/// answer without special tokens and followed by `end`. Errors name the file and the line.
pub fn read_prompt_answers(
    path: &Path,
    tokenizer: &PromptTokenizer,
    template: Option<&ChatTemplate>,
    end: u32,
    max_len: usize,
) -> Result<Vec<PromptAnswer>> {
    let mut out = Vec::new();
    for (line, prompt, answer) in read_prompt_answer_texts(path)? {
        let at = |m: String| Error::bad_file(path, format!("line {line}: {m}"));
        let prompt = match template {
            Some(t) => t.render(&[ChatMessage::new("user", prompt.as_str())], true)?,
            None => prompt,
        };
        let prompt = tokenizer
            .encode(&prompt, true)
            .map_err(|e| at(e.to_string()))?;
        let mut answer = tokenizer
            .encode(&answer, false)
            .map_err(|e| at(e.to_string()))?;
        answer.push(end);
        if prompt.is_empty() {
            return Err(at("the prompt has no tokens".into()));
        }
        if prompt.len() + answer.len() > max_len {
            return Err(at(format!(
                "{} prompt and answer tokens, more than the {max_len} positions the model has",
                prompt.len() + answer.len()
            )));
        }
        out.push(PromptAnswer { prompt, answer });
    }
    Ok(out)
}

/// The (line, prompt, answer) texts of the JSONL file `path`: string fields `prompt` and
/// `answer` (other fields are ignored), at least one line. Errors name the file and the line.
pub fn read_prompt_answer_texts(path: &Path) -> Result<Vec<(usize, String, String)>> {
    let mut out = Vec::new();
    for_each_line(path, MAX_LM_EXAMPLES, &mut |line, text| {
        let at = |m: String| Error::bad_file(path, format!("line {line}: {m}"));
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            at(format!(
                "expected a JSON object with `prompt` and `answer` ({e})"
            ))
        })?;
        let field = |name: &str| match v.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(at(format!(
                "expected `{name}` to be a non-empty string, found {other}"
            ))),
            None => Err(at(format!("expected a string field `{name}`"))),
        };
        out.push((line, field("prompt")?, field("answer")?));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::bad_file(
            path,
            "expected at least one prompt/answer pair, found an empty file",
        ));
    }
    Ok(out)
}
