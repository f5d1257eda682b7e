//! Generation with a decoder ([`crate::serve::family::Decoder`]): a KV cache per request, a
//! task per request, and batches whose rows use different tasks.
//!
//! A [`Generator`] holds one engine loaded with one task per row
//! ([`LoadOptions::per_row_tasks`]): a single plan, holding the weights once, runs batches of
//! every size, and each row's coefficients are the only thing that differs between rows. A
//! [`Sequence`] is one request: its task's coefficients, pinned when it starts (a task
//! replaced or unloaded meanwhile does not change a request in flight), and its own KV cache.
//!
//! [`Generator::feed`] runs any set of sequences, each with its own new tokens, as one batch:
//! rows are left-padded (cache and new tokens), the padding masked out of attention, each
//! token given its own row's position, so that a row's logits are those of the request run
//! alone (to float rounding: the sums run over masked zeros as well). Switching tasks between
//! requests, or mixing them in a batch, rebuilds nothing.

pub mod sampler;
pub mod text;

pub use sampler::{Pick, Sampler, SamplingOptions, argmax, logprob};
pub use text::{DecoderFiles, PromptTokenizer, TextGenerator, TextPiece, TextStream};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::graph::llama::INPUT_IDS;
use crate::serve::backend::WeightFormat;
use crate::serve::engine::{Backend, Engine, LoadOptions};
use crate::serve::family::Decoder;
use crate::serve::input::{InputTensor, TensorData};
use crate::serve::store::{Task, TaskData, TaskId};
use std::path::Path;
use std::sync::Arc;

/// Token positions (rows × new tokens) one engine call computes by default: see
/// [`Generator::set_tokens_per_call`].
pub const DEFAULT_TOKENS_PER_CALL: usize = 64;

/// Receives (row, that row's logits in one engine call, `[tokens × vocab]`).
type LogitsSink<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// A decoder on one engine (see the module documentation).
#[derive(Clone, Debug)]
pub struct Generator {
    engine: Engine,
    decoder: Decoder,
    vocab: usize,
    tokens_per_call: usize,
}

/// One request: its pinned task and its KV cache.
#[derive(Clone)]
pub struct Sequence {
    task: Arc<Task>,
    /// Per layer key then value, each `[kv_heads, len, head_dim]` row-major.
    cache: Vec<Vec<f32>>,
    len: usize,
    logits: Vec<f32>,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("task", &self.task.name)
            .field("len", &self.len)
            .finish()
    }
}

impl Sequence {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The logits after the last token fed (empty before the first feed).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The request's task name.
    pub fn task_name(&self) -> &str {
        &self.task.name
    }
}

/// A token produced by [`Generator::generate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Token {
    /// Token id.
    pub id: u32,
    /// The model's log-probability of it.
    pub logprob: f32,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was drawn (not emitted).
    Stop,
    /// `max_tokens` tokens were emitted.
    Length,
    /// The model's context is full.
    Context,
    /// The token callback asked to stop.
    Caller,
}

impl Finish {
    /// The reason as a word (`stop`, `length`, `context`, `caller`).
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Context => "context",
            Finish::Caller => "caller",
        }
    }
}

/// What [`Generator::generate`] does after the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens emitted.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: SamplingOptions,
    /// Tokens that end generation (the tokenizer's end of sequence / turn).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingOptions::default(),
            stop_tokens: Vec::new(),
        }
    }
}

/// One request of [`Generator::generate_batch`].
#[derive(Clone, Debug)]
pub struct Request {
    /// Its task.
    pub task: TaskId,
    /// Its prompt's token ids.
    pub prompt: Vec<u32>,
    /// Its options.
    pub options: GenerateOptions,
}

/// What [`Generator::generate_batch`] produced for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The tokens emitted.
    pub tokens: Vec<Token>,
    /// Why it stopped.
    pub finish: Finish,
}

impl Generator {
    /// Loads `base` (a decoder graph) for the bound `bundle` on `backend`, with one task per
    /// row.
    pub fn load(base: &Path, bundle: &Bundle, backend: Backend) -> Result<Generator> {
        Generator::load_with(base, bundle, backend, WeightFormat::F32)
    }

    /// [`Generator::load`] with the base weights stored in `weights`.
    pub fn load_with(
        base: &Path,
        bundle: &Bundle,
        backend: Backend,
        weights: WeightFormat,
    ) -> Result<Generator> {
        let options = LoadOptions {
            per_row_tasks: true,
            weights,
        };
        Generator::new(Engine::load_with(base, bundle, backend, &options)?)
    }

    /// Loads `base` alone, with no subspace ([`Bundle::without_subspace`]): every task is the
    /// base model. Returns the generator and its one task.
    pub fn load_base(base: &Path, backend: Backend) -> Result<(Generator, TaskId)> {
        Generator::load_base_with(base, backend, WeightFormat::F32)
    }

    /// [`Generator::load_base`] with the base weights stored in `weights`.
    pub fn load_base_with(
        base: &Path,
        backend: Backend,
        weights: WeightFormat,
    ) -> Result<(Generator, TaskId)> {
        let sha = crate::util::sha256_file(base)?;
        let name = base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bundle = Bundle::without_subspace(&name, sha);
        let g = Generator::load_with(base, &bundle, backend, weights)?;
        let id = g.engine().insert_task(&crate::bundle::CoeffFile::base(
            &bundle.manifest.subspace_id,
        ))?;
        Ok((g, id))
    }

    /// A generator over `engine`, whose model must be a decoder
    /// ([`Decoder::from_specs`]); an engine loaded without one task per row serves mixed
    /// batches with one plan per batch size.
    pub fn new(engine: Engine) -> Result<Generator> {
        let specs = engine.specs()?;
        let decoder = Decoder::from_specs(specs, engine.output_names())?;
        let vocab = specs
            .iter()
            .find(|s| s.name == INPUT_IDS)
            .and_then(|s| s.index_limit.as_ref())
            .map(|l| l.rows)
            .ok_or_else(|| {
                Error::Usage(
                    "expected a decoder whose `input_ids` index its token embedding".into(),
                )
            })?;
        Ok(Generator {
            engine,
            decoder,
            vocab,
            tokens_per_call: DEFAULT_TOKENS_PER_CALL,
        })
    }

    /// Bounds the token positions (rows × new tokens) of one engine call: a longer prompt,
    /// or a batch of them, is fed in consecutive calls, each growing the caches. The results
    /// are those of one call (to float rounding); what changes is memory: a call's
    /// activations, and where every position's logits are read ([`Generator::score`],
    /// [`Generator::token_nll_batch`], or a model without `logits_positions`) its logits,
    /// vocabulary × 4 bytes a position (197 KB for SmolLM2: 100 MB for a 512-token prompt
    /// fed at once, and the engine keeps that much of its arena after). At least 1 (then a
    /// batch runs one position a call).
    pub fn set_tokens_per_call(&mut self, tokens: usize) {
        self.tokens_per_call = tokens.max(1);
    }

    /// See [`Generator::set_tokens_per_call`].
    pub fn tokens_per_call(&self) -> usize {
        self.tokens_per_call
    }

    /// The engine (to load, replace or unload tasks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The decoder's cache shape.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The vocabulary size (the logits' width).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// A new request on task `id`, its coefficients pinned now, with an empty cache.
    pub fn sequence(&self, id: TaskId) -> Result<Sequence> {
        Ok(Sequence {
            task: self.engine.task(id)?,
            cache: vec![Vec::new(); 2 * self.decoder.layers],
            len: 0,
            logits: Vec::new(),
        })
    }

    /// Feeds `tokens[i]` (at least one) to `rows[i]`, all rows in one engine call, and
    /// keeps each row's next-token logits and grown cache. A row whose cache would exceed
    /// the model's context, or a token outside the vocabulary, is an error naming it, and
    /// no row changes.
    pub fn feed(&self, rows: &mut [&mut Sequence], tokens: &[&[u32]]) -> Result<()> {
        self.feed_in_calls(rows, tokens, None)
    }

    /// The logits at every position of `ids` ([len x vocab], row-major) on task `id`, from
    /// an empty cache: what a next-token loss or a per-token NLL reads.
    pub fn score(&self, id: TaskId, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Usage("score: no tokens".into()));
        }
        let mut seq = self.sequence(id)?;
        let mut all = Vec::with_capacity(ids.len() * self.vocab);
        self.feed_in_calls(
            &mut [&mut seq],
            &[ids],
            Some(&mut |_, logits: &[f32]| all.extend_from_slice(logits)),
        )?;
        Ok(all)
    }

    /// The negative log-likelihood (nats) of each of `ids[1..]` given the tokens before it,
    /// on task `id`: a next-token loss, or a perplexity (`exp` of the mean).
    pub fn token_nll(&self, id: TaskId, ids: &[u32]) -> Result<Vec<f64>> {
        if ids.len() < 2 {
            return Err(Error::Usage(
                "token_nll: expected at least two tokens (a context and a target)".into(),
            ));
        }
        let mut rows = self.token_nll_batch(&[(id, ids)])?;
        Ok(rows.pop().unwrap_or_default())
    }

    /// [`Generator::token_nll`] of several sequences, each on its own task, in one engine
    /// call (left-padded under the mask, as [`Generator::feed`] batches): what a validation
    /// loss over many examples reads. Each row's values are what it gets alone, to float
    /// rounding.
    pub fn token_nll_batch(&self, rows: &[(TaskId, &[u32])]) -> Result<Vec<Vec<f64>>> {
        if let Some(i) = rows.iter().position(|(_, ids)| ids.len() < 2) {
            return Err(Error::Usage(format!(
                "token_nll_batch: row {i}: expected at least two tokens (a context and a target)"
            )));
        }
        let mut seqs = rows
            .iter()
            .map(|&(id, _)| self.sequence(id))
            .collect::<Result<Vec<_>>>()?;
        let inputs: Vec<&[u32]> = rows.iter().map(|(_, ids)| &ids[..ids.len() - 1]).collect();
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        // Each call's logits become NLLs at once: 8 bytes a position kept, not the vocabulary.
        let mut nll: Vec<Vec<f64>> = rows
            .iter()
            .map(|(_, ids)| Vec::with_capacity(ids.len()))
            .collect();
        let vocab = self.vocab;
        self.feed_in_calls(
            &mut refs,
            &inputs,
            Some(&mut |r, logits: &[f32]| {
                let done = nll[r].len();
                let targets = &rows[r].1[1 + done..];
                nll[r].extend(
                    logits
                        .chunks_exact(vocab)
                        .zip(targets)
                        .map(|(row, &t)| -f64::from(logprob(row, t as usize))),
                );
            }),
        )?;
        Ok(nll)
    }

    /// Feeds `tokens` to `rows` in calls of at most [`Generator::tokens_per_call`] positions
    /// (rows × new tokens): call `i` gives every row with more than `i·n` new tokens its next
    /// `n` (n = tokens_per_call / rows, at least 1), so each row's cache grows in order and its
    /// last call leaves its next-token logits. `each` receives (row, logits of that row's
    /// tokens in the call, [tokens × vocab]) in the order of its tokens. The checks of
    /// [`Generator::feed`] run on the whole request first; an engine error in a later call
    /// leaves the rows fed so far (a request is dropped on error anyway).
    fn feed_in_calls(
        &self,
        rows: &mut [&mut Sequence],
        tokens: &[&[u32]],
        mut each: Option<LogitsSink<'_>>,
    ) -> Result<()> {
        self.check_feed(rows, tokens)?;
        let per_row = (self.tokens_per_call / rows.len()).max(1);
        let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
        if longest <= per_row {
            return self.feed_call(rows, tokens, each);
        }
        let mut start = 0;
        while start < longest {
            let active: Vec<usize> = (0..rows.len())
                .filter(|&r| tokens[r].len() > start)
                .collect();
            let slices: Vec<&[u32]> = active
                .iter()
                .map(|&r| &tokens[r][start..tokens[r].len().min(start + per_row)])
                .collect();
            let mut subset: Vec<&mut Sequence> = rows
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| tokens[*r].len() > start)
                .map(|(_, s)| &mut **s)
                .collect();
            match each.as_deref_mut() {
                Some(sink) => self.feed_call(
                    &mut subset,
                    &slices,
                    Some(&mut |i, l: &[f32]| sink(active[i], l)),
                )?,
                None => self.feed_call(&mut subset, &slices, None)?,
            }
            start += per_row;
        }
        Ok(())
    }

    /// The checks of [`Generator::feed`], before any engine call.
    fn check_feed(&self, rows: &[&mut Sequence], tokens: &[&[u32]]) -> Result<()> {
        let b = rows.len();
        if b == 0 || tokens.len() != b {
            return Err(Error::Usage(format!(
                "feed: expected one token list per sequence, found {} sequences and {} lists",
                b,
                tokens.len()
            )));
        }
        for (i, (row, t)) in rows.iter().zip(tokens).enumerate() {
            if t.is_empty() {
                return Err(Error::Usage(format!("feed: row {i} has no new tokens")));
            }
            if let Some(&bad) = t.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(Error::Usage(format!(
                    "feed: row {i}: token id {bad} is outside the vocabulary of {} tokens",
                    self.vocab
                )));
            }
            if let Some(max) = self.decoder.max_position
                && row.len + t.len() > max
            {
                return Err(Error::Usage(format!(
                    "feed: row {i}: {} cached + {} new tokens exceed the model's context of {max}",
                    row.len,
                    t.len()
                )));
            }
        }
        Ok(())
    }

    /// One engine call feeding `tokens[i]` to `rows[i]` (checked by [`Generator::check_feed`]);
    /// `each` as in [`Generator::feed_in_calls`].
    fn feed_call(
        &self,
        rows: &mut [&mut Sequence],
        tokens: &[&[u32]],
        each: Option<LogitsSink<'_>>,
    ) -> Result<()> {
        let b = rows.len();
        let d = &self.decoder;
        let (kvh, hd) = (d.kv_heads, d.head_dim);
        let lmax = rows.iter().map(|r| r.len).max().unwrap_or(0);
        let smax = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
        let total = lmax + smax;

        let mut ids = vec![0i64; b * smax];
        let mut pos = vec![0i64; b * smax];
        let mut mask = vec![0i64; b * total];
        for (r, (row, t)) in rows.iter().zip(tokens).enumerate() {
            let new_pad = smax - t.len();
            for (i, &id) in t.iter().enumerate() {
                ids[r * smax + new_pad + i] = i64::from(id);
                pos[r * smax + new_pad + i] = (row.len + i) as i64;
            }
            mask[r * total + lmax - row.len..r * total + lmax].fill(1);
            mask[r * total + lmax + new_pad..(r + 1) * total].fill(1);
        }
        let mut inputs = vec![
            InputTensor {
                name: INPUT_IDS.into(),
                shape: vec![b, smax],
                data: TensorData::I64(ids),
            },
            InputTensor {
                name: crate::graph::llama::ATTENTION_MASK.into(),
                shape: vec![b, total],
                data: TensorData::I64(mask),
            },
            InputTensor {
                name: crate::graph::llama::POSITION_IDS.into(),
                shape: vec![b, smax],
                data: TensorData::I64(pos),
            },
        ];
        // One sequence alone: its cache is the past as it is, and the present is the new
        // cache, so both move instead of being copied (a decode step's largest cost after
        // the products: the cache is layers × 2 × kv_heads × len × head_dim floats).
        let alone = b == 1;
        for (j, name) in (0..d.layers)
            .flat_map(|l| {
                [
                    crate::graph::llama::past_key(l),
                    crate::graph::llama::past_value(l),
                ]
            })
            .enumerate()
        {
            let past = if alone {
                std::mem::take(&mut rows[0].cache[j])
            } else {
                // Each row's cache right-aligned in [b, kv_heads, lmax, head_dim].
                let mut past = vec![0f32; b * kvh * lmax * hd];
                for (r, row) in rows.iter().enumerate() {
                    let pad = lmax - row.len;
                    let src = &row.cache[j];
                    for h in 0..kvh {
                        let from = &src[h * row.len * hd..(h + 1) * row.len * hd];
                        let at = ((r * kvh + h) * lmax + pad) * hd;
                        past[at..at + row.len * hd].copy_from_slice(from);
                    }
                }
                past
            };
            inputs.push(InputTensor {
                name,
                shape: vec![b, kvh, lmax, hd],
                data: TensorData::F32(past),
            });
        }
        // Logits at every new position where a sink reads them, else at the last only (rows
        // are left-padded, so the last position is every row's newest token).
        let n = if d.logits_positions {
            let first = if each.is_some() { 0 } else { smax - 1 };
            inputs.push(InputTensor {
                name: crate::graph::llama::LOGITS_POSITIONS.into(),
                shape: vec![smax - first],
                data: TensorData::I64((first as i64..smax as i64).collect()),
            });
            smax - first
        } else {
            smax
        };
        let tasks: Vec<&TaskData> = rows.iter().map(|r| &*r.task).collect();
        // The logits are checked; the cache outputs reach them at the next step.
        let run = self.engine.run_rows_checking(&inputs, &tasks, 1);
        drop(tasks);
        let checked = run.and_then(|outputs| {
            let logits = &outputs[0];
            if logits.shape != [b, n, self.vocab] || outputs.len() != 1 + 2 * d.layers {
                return Err(Error::Engine(format!(
                    "expected logits [{b}, {n}, {}] and {} cache outputs, found {:?} and {}",
                    self.vocab,
                    2 * d.layers,
                    logits.shape,
                    outputs.len().saturating_sub(1)
                )));
            }
            Ok(outputs)
        });
        let mut outputs = match checked {
            Ok(o) => o,
            Err(e) => {
                // The sequence stays as it was: give its cache back.
                if alone {
                    for (j, t) in inputs.into_iter().skip(3).take(2 * d.layers).enumerate() {
                        if let TensorData::F32(v) = t.data {
                            rows[0].cache[j] = v;
                        }
                    }
                }
                return Err(e);
            }
        };
        let presents = outputs.split_off(1);
        let logits = &outputs[0];
        let mut each = each;
        for (r, (row, t)) in rows.iter_mut().zip(tokens).enumerate() {
            let last = (r * n + n - 1) * self.vocab;
            row.logits.clear();
            row.logits
                .extend_from_slice(&logits.data[last..last + self.vocab]);
            let new_pad = smax - t.len();
            if let Some(sink) = each.as_deref_mut() {
                // A sink has every position's logits (n = smax).
                let first = (r * n + new_pad) * self.vocab;
                sink(r, &logits.data[first..last + self.vocab]);
            }
            let len = row.len + t.len();
            row.len = len;
            if alone {
                break;
            }
            let kept: Vec<usize> = (lmax - (len - t.len())..lmax)
                .chain(lmax + new_pad..total)
                .collect();
            for (j, p) in presents.iter().enumerate() {
                let mut c = Vec::with_capacity(kvh * len * hd);
                for h in 0..kvh {
                    for &k in &kept {
                        let at = ((r * kvh + h) * total + k) * hd;
                        c.extend_from_slice(&p.data[at..at + hd]);
                    }
                }
                row.cache[j] = c;
            }
        }
        if alone {
            // [1, kv_heads, total, head_dim] with no padding is the cache's own layout.
            for (c, p) in rows[0].cache.iter_mut().zip(presents) {
                *c = p.data;
            }
        }
        Ok(())
    }

    /// Generates after `prompt` on task `id`, calling `on_token` with every token emitted
    /// (as soon as it is picked); `on_token` returning false stops generation.
    pub fn generate(
        &self,
        id: TaskId,
        prompt: &[u32],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(Token) -> bool,
    ) -> Result<Finish> {
        let mut seq = self.sequence(id)?;
        let mut sampler = Sampler::new(options.sampling.clone())?;
        if prompt.is_empty() {
            return Err(Error::Usage("generate: the prompt has no tokens".into()));
        }
        self.feed(&mut [&mut seq], &[prompt])?;
        let mut emitted = 0;
        loop {
            if emitted == options.max_tokens {
                return Ok(Finish::Length);
            }
            let pick = sampler.pick(seq.logits());
            if options.stop_tokens.contains(&pick.id) {
                return Ok(Finish::Stop);
            }
            emitted += 1;
            if !on_token(Token {
                id: pick.id,
                logprob: pick.logprob,
            }) {
                return Ok(Finish::Caller);
            }
            if emitted == options.max_tokens {
                return Ok(Finish::Length);
            }
            if self.decoder.max_position.is_some_and(|m| seq.len() >= m) {
                return Ok(Finish::Context);
            }
            self.feed(&mut [&mut seq], &[&[pick.id]])?;
        }
    }

    /// Serves `requests` together: each prompt is fed on its own, then every request still
    /// running advances one token per step, all of them in one batch whatever their tasks.
    /// Each request's output is what [`Generator::generate`] gives it alone (greedy: the
    /// same tokens; sampled: the same draws from its own seed).
    pub fn generate_batch(&self, requests: &[Request]) -> Result<Vec<Generated>> {
        let mut seqs = Vec::with_capacity(requests.len());
        let mut samplers = Vec::with_capacity(requests.len());
        for r in requests {
            if r.prompt.is_empty() {
                return Err(Error::Usage("generate: a prompt has no tokens".into()));
            }
            let mut s = self.sequence(r.task)?;
            self.feed(&mut [&mut s], &[&r.prompt])?;
            seqs.push(s);
            samplers.push(Sampler::new(r.options.sampling.clone())?);
        }
        let mut out: Vec<Generated> = requests
            .iter()
            .map(|_| Generated {
                tokens: Vec::new(),
                finish: Finish::Length,
            })
            .collect();
        let mut running: Vec<bool> = vec![true; requests.len()];
        loop {
            let mut next: Vec<(usize, u32)> = Vec::new();
            for (i, r) in requests.iter().enumerate() {
                if !running[i] {
                    continue;
                }
                let o = &r.options;
                if out[i].tokens.len() == o.max_tokens {
                    running[i] = false;
                    continue;
                }
                let pick = samplers[i].pick(seqs[i].logits());
                if o.stop_tokens.contains(&pick.id) {
                    out[i].finish = Finish::Stop;
                    running[i] = false;
                    continue;
                }
                out[i].tokens.push(Token {
                    id: pick.id,
                    logprob: pick.logprob,
                });
                if out[i].tokens.len() == o.max_tokens {
                    running[i] = false;
                } else if self
                    .decoder
                    .max_position
                    .is_some_and(|m| seqs[i].len() >= m)
                {
                    out[i].finish = Finish::Context;
                    running[i] = false;
                } else {
                    next.push((i, pick.id));
                }
            }
            if next.is_empty() {
                return Ok(out);
            }
            let toks: Vec<[u32; 1]> = next.iter().map(|&(_, t)| [t]).collect();
            let tok_refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
            let mut rows: Vec<&mut Sequence> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| next.iter().any(|&(j, _)| j == *i))
                .map(|(_, s)| s)
                .collect();
            self.feed(&mut rows, &tok_refs)?;
        }
    }
}
