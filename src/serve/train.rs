//! Exact gradients on the serving engine: [`ExactGradient`] builds training graphs
//! ([`crate::graph::grad`]) from the model the [`Engine`] serves, one per (batch, sequence
//! length), and runs them on the same engine (tract, or ONNX Runtime on its provider).
//!
//! A new shape costs one probe run of the patched model (the shapes of the values on the
//! gradient path) and one plan or session of the training graph; both are cached, so a
//! finetuning run pays it once per length bucket.

use super::backend::{FixedSession, Trainer};
use super::engine::Engine;
use super::family::{Encoder, ModelFamily, TokenFeed};
use super::hidden::{TokenBatch, check_tokens};
use super::input::{InputTensor, OutputTensor, TensorData};
use crate::error::{Error, Result};
use crate::graph::ModelProto;
use crate::graph::grad::{Analysis, Objective, Shapes, TrainingGraph, TrainingShape};
use crate::task::{CoeffLayout, check_params, module_params, write_alpha_a_t, write_alpha_b_t};
use std::collections::HashMap;

/// A training graph ready to run, with its output positions.
struct Prepared {
    session: Box<dyn FixedSession>,
    graph: TrainingGraph,
}

/// What one call of [`ExactGradient::loss_grad`] returns (buffers reused across calls).
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    /// Σ_i w_i · CE_i.
    pub loss: f64,
    /// Pooled features [batch x d].
    pub pooled: Vec<f32>,
    /// Width d of the features.
    pub dim: usize,
    /// d loss / d coefficients, in the flat layout of the parameters (per module α_A
    /// [r x K_A] then α_B [K_B x r]).
    pub params: Vec<f32>,
    /// d loss / d head weights [classes x d].
    pub head_weight: Vec<f32>,
    /// d loss / d head biases [classes].
    pub head_bias: Vec<f32>,
}

/// Initializers of at least this many values are fed as inputs, held once for every graph.
const WEIGHT_INPUT_MIN: usize = 4096;

/// Examples per run of a training graph: a batch is cut into runs of this many (the last
/// padded with zero-weight rows) and their gradients summed, which is exact and bounds the
/// activations kept for the backward pass.
pub const DEFAULT_MICRO_BATCH: usize = 4;

/// Exact gradients of a linear head's cross-entropy with respect to the coefficients and the
/// head, on an [`Engine`]. See the module documentation.
pub struct ExactGradient {
    analysis: Analysis,
    /// The engine's training sessions, over the base weights held once for every graph.
    trainer: Box<dyn Trainer>,
    micro: usize,
    threads: usize,
    layout: Vec<CoeffLayout>,
    feeds: Vec<(String, TokenFeed)>,
    prepared: HashMap<TrainingShape, Prepared>,
}

impl ExactGradient {
    /// Prepares exact gradients on `engine` for the [`Encoder`] family: the hidden state in
    /// its first output, pooled over its `attention_mask` input. A graph with an op that has
    /// no gradient rule gives [`Error::Unsupported`] naming every such node.
    pub fn new(engine: &Engine) -> Result<ExactGradient> {
        Self::for_family(engine, &Encoder)
    }

    /// [`ExactGradient::new`] for a model of `family`: its feeds give the token inputs, its
    /// [`ModelFamily::loss_reads`] the output, mask and objective of the loss (an encoder:
    /// [`ExactGradient::loss_grad`]; a decoder: [`ExactGradient::next_token_loss_grad`]).
    pub fn for_family(engine: &Engine, family: &dyn ModelFamily) -> Result<ExactGradient> {
        let patched = engine.patched_model()?;
        let names = patched.base_inputs.clone();
        let feeds = family.feeds(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
        let reads = family.loss_reads(engine.output_names())?;
        let layout = patched.coeff_inputs.iter().map(|c| c.layout()).collect();
        let mut analysis =
            Analysis::for_objective(patched, &reads.output, &reads.mask, reads.objective)?;
        let trainer = engine
            .backend_object()
            .trainer(analysis.externalize_weights(WEIGHT_INPUT_MIN)?)?;
        Ok(ExactGradient {
            analysis,
            trainer,
            micro: DEFAULT_MICRO_BATCH,
            threads: 1,
            layout,
            feeds: names.into_iter().zip(feeds).collect(),
            prepared: HashMap::new(),
        })
    }

    /// Runs training graphs on `n` examples at a time (default [`DEFAULT_MICRO_BATCH`]).
    pub fn with_micro_batch(mut self, n: usize) -> Self {
        self.micro = n.max(1);
        self.prepared.clear();
        self
    }

    /// Examples per run of a training graph.
    pub fn micro_batch(&self) -> usize {
        self.micro
    }

    /// Runs up to `n` micro-batches of a batch at once, one per thread (default 1). The
    /// gradients are summed in micro-batch order, so they do not depend on `n`; each extra
    /// thread keeps one more micro-batch's activations alive. On tract, whose runs are
    /// single-threaded, this is how one training uses several cores.
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Micro-batches run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The coefficient layout.
    pub fn layout(&self) -> &[CoeffLayout] {
        &self.layout
    }

    /// Differentiated nodes, and nodes of the model.
    pub fn differentiated_nodes(&self) -> (usize, usize) {
        self.analysis.differentiated_nodes()
    }

    /// The training graph for `shape` (built on first use). Its large weights are graph
    /// inputs ([`TrainingGraph::weight_inputs`]); [`ExactGradient::standalone_model`] puts
    /// them back.
    pub fn training_graph(&mut self, shape: &TrainingShape) -> Result<&TrainingGraph> {
        Ok(&self.prepare(shape)?.graph)
    }

    /// The training graph for `shape` as a self-contained model, its weights back as
    /// initializers: to save it, or to run it elsewhere (the f64 reference of the tests).
    pub fn standalone_model(&mut self, shape: &TrainingShape) -> Result<ModelProto> {
        let mut proto = self.prepare(shape)?.graph.proto.clone();
        let weights = self.trainer.weights()?;
        if let Some(g) = proto.graph.as_mut() {
            let names: std::collections::HashSet<&str> =
                weights.iter().map(|(n, _, _)| n.as_str()).collect();
            g.input.retain(|v| !names.contains(v.name.as_str()));
            for (n, d, v) in &weights {
                g.initializer.push(crate::graph::onnx::tensor_f32(n, d, v));
            }
        }
        Ok(proto)
    }

    fn token_inputs(&self, ids: &[i64], mask: &[i64], b: usize, s: usize) -> Vec<InputTensor> {
        self.feeds
            .iter()
            .map(|(name, f)| f.input(name, ids, mask, b, s))
            .collect()
    }

    fn coeff_inputs(&self, params: &[f32]) -> Vec<InputTensor> {
        let mut v = Vec::with_capacity(2 * self.layout.len());
        for (m, (l, c)) in self
            .layout
            .iter()
            .zip(&self.analysis.patched().coeff_inputs)
            .enumerate()
        {
            let (a, b) = module_params(&self.layout, params, m);
            let mut at = vec![0f32; l.k_a * l.r];
            write_alpha_a_t(l, a, &mut at);
            let mut bt = vec![0f32; l.r * l.k_b];
            write_alpha_b_t(l, b, &mut bt);
            v.push(InputTensor {
                name: c.alpha_a.clone(),
                shape: vec![1, l.k_a, l.r],
                data: TensorData::F32(at),
            });
            v.push(InputTensor {
                name: c.alpha_b.clone(),
                shape: vec![1, l.r, l.k_b],
                data: TensorData::F32(bt),
            });
        }
        v
    }

    fn prepare(&mut self, shape: &TrainingShape) -> Result<&Prepared> {
        if !self.prepared.contains_key(shape) {
            let (b, s) = (shape.batch, shape.seq);
            // Probe: the patched model on a batch of this shape (values do not matter).
            let mut like = self.token_inputs(&vec![0; b * s], &vec![1; b * s], b, s);
            let zeros: Vec<f32> = self
                .layout
                .iter()
                .flat_map(|l| vec![0.0; l.len()])
                .collect();
            like.extend(self.coeff_inputs(&zeros));
            let (probe, names) = self.analysis.probe_model();
            let outputs = self.trainer.session(&probe, &like)?.run(&like)?;
            let shapes: Shapes = names
                .into_iter()
                .zip(outputs)
                .map(|(n, o)| (n, o.shape))
                .collect();
            let graph = self.analysis.build(shape, &shapes)?;
            let d = graph.dim;
            let c = shape.classes;
            match graph.objective {
                Objective::PooledHead => {
                    like.push(f32_input(crate::graph::grad::HEAD_WEIGHT, &[c, d]));
                    like.push(f32_input(crate::graph::grad::HEAD_BIAS, &[c]));
                    like.push(f32_input(crate::graph::grad::TARGETS, &[b, c]));
                    like.push(f32_input(crate::graph::grad::EXAMPLE_WEIGHTS, &[b]));
                }
                Objective::NextToken => {
                    like.push(InputTensor {
                        name: crate::graph::grad::TOKEN_TARGETS.into(),
                        shape: vec![b, s],
                        data: TensorData::I64(vec![0; b * s]),
                    });
                    like.push(f32_input(crate::graph::grad::TOKEN_WEIGHTS, &[b, s]));
                }
            }
            let session = self.trainer.session(&graph.proto, &like)?;
            self.prepared
                .insert(shape.clone(), Prepared { session, graph });
        }
        self.prepared
            .get(shape)
            .ok_or_else(|| Error::Internal("training graph cache".into()))
    }

    /// The loss Σ_i w_i·CE_i of the head (`head_weight` [classes x d], `head_bias`
    /// [classes]) on the pooled last hidden state of the padded `ids` / `mask` [batch x seq],
    /// under the coefficients `params` (flat layout), for `targets` [batch x classes] and
    /// example weights `weights` [batch]; and its exact gradients, into `out`. The batch runs
    /// [`ExactGradient::micro_batch`] examples at a time; the sums are exact.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_grad(
        &mut self,
        ids: &[i64],
        mask: &[i64],
        batch: usize,
        seq: usize,
        params: &[f32],
        head_weight: &[f32],
        head_bias: &[f32],
        targets: &[f32],
        weights: &[f32],
        out: &mut Gradients,
    ) -> Result<()> {
        self.expect(Objective::PooledHead)?;
        check_tokens(ids, mask, batch, seq)?;
        check_params(&self.layout, params)?;
        let classes = head_bias.len();
        if classes == 0 || targets.len() != batch * classes || weights.len() != batch {
            return Err(Error::Usage(format!(
                "expected {batch}x{classes} targets and {batch} example weights, found {} and {}",
                targets.len(),
                weights.len()
            )));
        }
        let plan = self.plan(mask, batch, seq, classes)?;
        let d = plan.dim;
        if head_weight.len() != classes * d {
            return Err(Error::Usage(format!(
                "expected head weights [{classes} x {d}], found {} values",
                head_weight.len()
            )));
        }
        use crate::graph::grad::{EXAMPLE_WEIGHTS, HEAD_BIAS, HEAD_WEIGHT, TARGETS};
        let results = self.run_plan(&plan, ids, mask, seq, params, &|rows, m, _s| {
            let mut t = vec![0.0; m * classes];
            let mut w = vec![0.0; m];
            for (k, &row) in rows.iter().enumerate() {
                t[k * classes..(k + 1) * classes]
                    .copy_from_slice(&targets[row * classes..(row + 1) * classes]);
                w[k] = weights[row];
            }
            vec![
                f32_tensor(HEAD_WEIGHT, vec![classes, d], head_weight.to_vec()),
                f32_tensor(HEAD_BIAS, vec![classes], head_bias.to_vec()),
                f32_tensor(TARGETS, vec![m, classes], t),
                f32_tensor(EXAMPLE_WEIGHTS, vec![m], w),
            ]
        })?;
        out.loss = 0.0;
        out.dim = d;
        out.pooled.clear();
        out.pooled.resize(batch * d, 0.0);
        out.head_weight.clear();
        out.head_weight.resize(classes * d, 0.0);
        out.head_bias.clear();
        out.head_bias.resize(classes, 0.0);
        let mut graph_grads = self.zero_graph_grads();
        for (rows, outputs) in plan.runs.iter().map(|r| &r.rows).zip(results) {
            let mut it = outputs.into_iter().map(|o| o.data);
            let mut next = || it.next().unwrap_or_default();
            out.loss += f64::from(next().first().copied().unwrap_or(f32::NAN));
            let pooled = next();
            if pooled.len() < rows.len() * d {
                return Err(Error::Engine(format!(
                    "the training graph returned {} pooled values for {} rows of {d}",
                    pooled.len(),
                    rows.len()
                )));
            }
            for (k, &row) in rows.iter().enumerate() {
                out.pooled[row * d..(row + 1) * d].copy_from_slice(&pooled[k * d..(k + 1) * d]);
            }
            for (acc, v) in [(&mut out.head_weight, next()), (&mut out.head_bias, next())] {
                acc.iter_mut().zip(v).for_each(|(a, x)| *a += x);
            }
            for acc in graph_grads.iter_mut() {
                acc.iter_mut().zip(next()).for_each(|(a, x)| *a += x);
            }
        }
        self.params_from_graph(&graph_grads, params.len(), &mut out.params);
        Ok(())
    }

    /// The next-token loss −Σ_{b,s} w_{b,s} · log p(t_{b,s} | tokens before s+1) of a decoder
    /// on the padded `tokens` [batch x seq] (rows right-padded, each from position 0),
    /// under the coefficients `params`, with `targets` [batch x seq] the token each position
    /// should predict (usually `ids` shifted left) and `weights` [batch x seq] (non-zero on
    /// an answer's tokens, e.g. 1 / their count); and its exact gradient with respect to the
    /// coefficients, into `out` (`pooled` and the head's gradients stay empty). Runs
    /// [`ExactGradient::micro_batch`] rows at a time; the sums are exact.
    pub fn next_token_loss_grad(
        &mut self,
        tokens: TokenBatch<'_>,
        params: &[f32],
        targets: &[i64],
        weights: &[f32],
        out: &mut Gradients,
    ) -> Result<()> {
        self.expect(Objective::NextToken)?;
        let (ids, mask) = (tokens.ids(), tokens.mask());
        let (batch, seq) = (tokens.batch(), tokens.seq());
        check_params(&self.layout, params)?;
        if targets.len() != batch * seq || weights.len() != batch * seq {
            return Err(Error::Usage(format!(
                "expected {batch}x{seq} targets and weights, found {} and {}",
                targets.len(),
                weights.len()
            )));
        }
        if let Some(i) = (0..batch * seq).find(|&i| weights[i] != 0.0 && mask[i] == 0) {
            return Err(Error::Usage(format!(
                "row {}, position {}: a weighted target on a padding position",
                i / seq,
                i % seq
            )));
        }
        let plan = self.plan(mask, batch, seq, 0)?;
        let vocab = plan.dim;
        if let Some(&t) = targets.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            return Err(Error::Usage(format!(
                "target token id {t} is outside the vocabulary of {vocab} tokens"
            )));
        }
        use crate::graph::grad::{TOKEN_TARGETS, TOKEN_WEIGHTS};
        let results = self.run_plan(&plan, ids, mask, seq, params, &|rows, m, s| {
            let (mut t, mut w) = (vec![0i64; m * s], vec![0f32; m * s]);
            for (k, &row) in rows.iter().enumerate() {
                t[k * s..(k + 1) * s].copy_from_slice(&targets[row * seq..row * seq + s]);
                w[k * s..(k + 1) * s].copy_from_slice(&weights[row * seq..row * seq + s]);
            }
            vec![
                InputTensor {
                    name: TOKEN_TARGETS.into(),
                    shape: vec![m, s],
                    data: TensorData::I64(t),
                },
                f32_tensor(TOKEN_WEIGHTS, vec![m, s], w),
            ]
        })?;
        out.loss = 0.0;
        out.dim = 0;
        out.pooled.clear();
        out.head_weight.clear();
        out.head_bias.clear();
        let mut graph_grads = self.zero_graph_grads();
        for outputs in results {
            let mut it = outputs.into_iter().map(|o| o.data);
            out.loss += f64::from(
                it.next()
                    .and_then(|l| l.first().copied())
                    .unwrap_or(f32::NAN),
            );
            for acc in graph_grads.iter_mut() {
                let g = it.next().unwrap_or_default();
                acc.iter_mut().zip(g).for_each(|(a, x)| *a += x);
            }
        }
        self.params_from_graph(&graph_grads, params.len(), &mut out.params);
        Ok(())
    }

    fn expect(&self, objective: Objective) -> Result<()> {
        let have = self.analysis.objective();
        if have != objective {
            return Err(Error::Usage(format!(
                "this model trains with the {have:?} loss, not {objective:?}"
            )));
        }
        Ok(())
    }

    /// The runs of a batch, every training graph they need prepared; `dim` is the graphs'
    /// [`TrainingGraph::dim`].
    fn plan(&mut self, mask: &[i64], batch: usize, seq: usize, classes: usize) -> Result<Plan> {
        let m = self.micro;
        let runs = MicroBatches::new(mask, batch, seq, m, m * RUN_TOKENS_PER_ROW).runs;
        // Every shape prepared first: the jobs of run_plan borrow the cache.
        let mut dim = 0;
        for run in &runs {
            dim = self.prepare(&run.shape(classes))?.graph.dim;
        }
        Ok(Plan { runs, classes, dim })
    }

    /// Runs every micro-batch of `plan` (up to [`ExactGradient::threads`] at once): the
    /// token and coefficient inputs, then the loss inputs `extra(rows, batch, seq)` gives
    /// for its rows. Returns each run's outputs, in run order, checked finite.
    #[allow(clippy::too_many_arguments)]
    fn run_plan(
        &self,
        plan: &Plan,
        ids: &[i64],
        mask: &[i64],
        seq: usize,
        params: &[f32],
        extra: &LossInputs<'_>,
    ) -> Result<Vec<Vec<OutputTensor>>> {
        let coeffs = self.coeff_inputs(params);
        let mut jobs: Vec<crate::util::Job<'_, Vec<OutputTensor>>> = Vec::new();
        for run in &plan.runs {
            let (rows, m, s) = (&run.rows, run.batch, run.seq);
            let prepared = self
                .prepared
                .get(&run.shape(plan.classes))
                .ok_or_else(|| Error::Internal("training graph cache".into()))?;
            // The micro-batch's rows, cut to its own length (the columns dropped are padding
            // in every row); rows past the batch: padding tokens, no mask, weight 0.
            let (mut cid, mut cmask) = (vec![0; m * s], vec![0; m * s]);
            for (k, &row) in rows.iter().enumerate() {
                cid[k * s..(k + 1) * s].copy_from_slice(&ids[row * seq..row * seq + s]);
                cmask[k * s..(k + 1) * s].copy_from_slice(&mask[row * seq..row * seq + s]);
            }
            let mut inputs = self.token_inputs(&cid, &cmask, m, s);
            inputs.extend(coeffs.iter().cloned());
            inputs.extend(extra(rows, m, s));
            jobs.push(Box::new(move || {
                let outputs = prepared.session.run(&inputs)?;
                let expected = prepared.graph.output_names().len();
                if outputs.len() != expected {
                    return Err(Error::Engine(format!(
                        "the training graph returned {} outputs, expected {expected}",
                        outputs.len()
                    )));
                }
                if let Some(o) = outputs
                    .iter()
                    .find(|o| o.data.iter().any(|v| !v.is_finite()))
                {
                    return Err(Error::Numeric(format!(
                        "the training graph's output `{}` is not finite",
                        o.name
                    )));
                }
                Ok(outputs)
            }));
        }
        // Summed in micro-batch order whatever the threads: the result does not depend on them.
        crate::util::run_parallel(jobs, self.threads)
    }

    /// Zeroed accumulators for the graph's coefficient gradients (α_Aᵀ, α_Bᵀ per module).
    fn zero_graph_grads(&self) -> Vec<Vec<f32>> {
        self.layout
            .iter()
            .flat_map(|l| [vec![0.0; l.k_a * l.r], vec![0.0; l.r * l.k_b]])
            .collect()
    }

    /// The graph's gradients (α_Aᵀ [K_A, r], α_Bᵀ [r, K_B] per module) in the flat parameter
    /// layout (α_A [r, K_A], α_B [K_B, r] per module).
    fn params_from_graph(&self, graph_grads: &[Vec<f32>], n: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(n, 0.0);
        let mut at = 0;
        for (l, pair) in self.layout.iter().zip(graph_grads.chunks(2)) {
            let (ga_t, gb_t) = (&pair[0], &pair[1]);
            let (k_a, k_b, r) = (l.k_a, l.k_b, l.r);
            for j in 0..r {
                for k in 0..k_a {
                    out[at + j * k_a + k] = ga_t[k * r + j];
                }
            }
            let bb = at + r * k_a;
            for j in 0..r {
                for k in 0..k_b {
                    out[bb + k * r + j] = gb_t[j * k_b + k];
                }
            }
            at += l.len();
        }
    }
}

/// The loss inputs of one run, given its rows, its batch size and its sequence length.
type LossInputs<'a> = dyn Fn(&[usize], usize, usize) -> Vec<InputTensor> + Sync + 'a;

/// A batch cut into training-graph runs ([`MicroBatches`]), for one loss.
struct Plan {
    runs: Vec<Run>,
    classes: usize,
    dim: usize,
}

fn f32_tensor(name: &str, shape: Vec<usize>, data: Vec<f32>) -> InputTensor {
    InputTensor {
        name: name.to_string(),
        shape,
        data: TensorData::F32(data),
    }
}

/// Padded tokens a training-graph run may hold per row of the micro-batch: a run of rows
/// longer than this holds fewer rows, so that the activations kept for the backward pass (and
/// the peak memory) stay near those of a micro-batch of 32-token rows whatever the lengths
/// (MiniLM language_id: peak RSS 980 MB without the bound, 665 MB at 64, 478 MB at 32, at the
/// same speed; BENCHMARKS.md).
const RUN_TOKENS_PER_ROW: usize = 32;

/// How a padded batch is cut into training-graph runs: rows sorted by their length (the last
/// unmasked position + 1), each run padded only to its own longest row rounded up to a power
/// of two (at least 8, at most the batch's length), and holding at most `micro` rows and
/// `tokens` padded tokens (one row at least). Columns past a row's length are masked, so
/// dropping them leaves its loss and gradients unchanged, while short rows no longer pay for
/// the batch's longest; powers of two keep the training graphs to one per length.
struct MicroBatches {
    runs: Vec<Run>,
}

/// One training-graph run: batch rows (sorted by length, ties in batch order), padded with
/// zero-weight rows up to `batch`, each `seq` tokens long.
struct Run {
    rows: Vec<usize>,
    batch: usize,
    seq: usize,
}

impl Run {
    fn shape(&self, classes: usize) -> TrainingShape {
        TrainingShape {
            batch: self.batch,
            seq: self.seq,
            classes,
        }
    }
}

impl MicroBatches {
    fn new(mask: &[i64], batch: usize, seq: usize, micro: usize, tokens: usize) -> Self {
        let len = |row: usize| {
            mask[row * seq..(row + 1) * seq]
                .iter()
                .rposition(|&v| v != 0)
                .map_or(0, |p| p + 1)
        };
        let lens: Vec<usize> = (0..batch).map(len).collect();
        let mut order: Vec<usize> = (0..batch).collect();
        order.sort_by_key(|&row| lens[row]);
        let micro = micro.max(1);
        let bucket = |l: usize| l.max(8).next_power_of_two().min(seq);
        let rows_at = |s: usize| (tokens / s.max(1)).clamp(1, micro);
        let mut runs = Vec::new();
        let mut i = 0;
        while i < order.len() {
            // The most rows that fit at the length of the longest of them (the last: sorted).
            let mut k = micro.min(order.len() - i);
            while k > 1 && k > rows_at(bucket(lens[order[i + k - 1]])) {
                k -= 1;
            }
            let s = bucket(lens[order[i + k - 1]]);
            runs.push(Run {
                rows: order[i..i + k].to_vec(),
                batch: rows_at(s),
                seq: s,
            });
            i += k;
        }
        MicroBatches { runs }
    }
}

fn f32_input(name: &str, shape: &[usize]) -> InputTensor {
    InputTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        data: TensorData::F32(vec![0.0; shape.iter().product()]),
    }
}

#[cfg(test)]
mod tests {
    use super::MicroBatches;

    /// Rows of lengths 3, 100, 20, 60, 128, 5 (batch length 128), micro-batches of 4 and at most
    /// 256 tokens: sorted, each run at its own power of two, the 128-token rows two at a time.
    #[test]
    fn runs_follow_the_lengths() {
        let lens = [3, 100, 20, 60, 128, 5];
        let seq = 128;
        let mask: Vec<i64> = lens
            .iter()
            .flat_map(|&l| (0..seq).map(move |p| i64::from(p < l)))
            .collect();
        let plan = MicroBatches::new(&mask, lens.len(), seq, 4, 256);
        let runs: Vec<(Vec<usize>, usize, usize)> = plan
            .runs
            .iter()
            .map(|r| (r.rows.clone(), r.batch, r.seq))
            .collect();
        assert_eq!(
            runs,
            [(vec![0, 5, 2, 3], 4, 64), (vec![1, 4], 2, 128)],
            "rows by length: 3, 5, 20, 60 | 100, 128"
        );
        // Without the token bound: one run of 4 at 64, the rest (2 rows) padded to 4 at 128.
        let plan = MicroBatches::new(&mask, lens.len(), seq, 4, usize::MAX);
        assert_eq!(plan.runs[1].batch, 4);
        assert_eq!(plan.runs[1].rows, [1, 4]);
    }
}
