//! Training graphs: reverse-mode differentiation of a patched model, in ONNX itself.
//!
//! Given a patched model (whose coefficient inputs α_Aᵀ, α_Bᵀ are plain graph inputs), the
//! builder emits one ONNX graph that computes the forward pass, the loss (softmax
//! cross-entropy of a linear head on the masked-mean-pooled last hidden state, with the
//! head, targets and example weights as inputs, see [`loss`]) and the exact gradient of the
//! loss with respect to every coefficient input and the head. Any engine that serves the
//! patched graph runs it unchanged: tract, ONNX Runtime and its CUDA/TensorRT providers.
//!
//! How it is built:
//! 1. **Analysis** ([`Analysis::new`]): the nodes that depend on the coefficients *and* reach
//!    the hidden state are the only ones differentiated (no gradient for base weights, masks
//!    or shape computations). Any of them whose op has no rule is reported at once, all of
//!    them in one [`Error::Unsupported`] listing op types and node names.
//! 2. **Shapes**: the builder works with static shapes, one training graph per (batch,
//!    sequence length). The shapes of the values on the gradient path are measured by
//!    running [`Analysis::probe_model`] (the patched model with those values as outputs)
//!    once on the engine itself, so no shape inference of our own can disagree with it.
//! 3. **Emission** ([`Analysis::build`]): the forward graph is kept as is; the loss and its
//!    derivative are written by hand; then each differentiated node, in reverse topological
//!    order, gets its vector-Jacobian product ([`rules`]), gradients of values read by several
//!    nodes being summed.
//!
//! Memory: the training graph keeps the forward activations the backward nodes read, as any
//! reverse-mode pass does; cheap intermediates (LayerNormalization's mean and inverse
//! deviation, GELU's exponential) are recomputed in the backward nodes instead of being
//! kept. Measured peaks are in BENCHMARKS.md.

pub mod emit;
pub mod loss;
pub mod rules;

use super::onnx::{Dim, FLOAT, INT64, value_info};
use super::patch::{CoeffInput, PatchedModel};
use super::pb::{ModelProto, NodeProto, TypeProto, ValueInfoProto, type_proto};
use crate::error::{Error, Result};
use emit::{Emitter, PREFIX};
pub use loss::{
    EXAMPLE_WEIGHTS, HEAD_BIAS, HEAD_WEIGHT, LOSS, Objective, POOLED, TARGETS, TOKEN_TARGETS,
    TOKEN_WEIGHTS, grad_name,
};
use rules::{Consts, Ctx, DiffInputs, diff_inputs};
use std::collections::{HashMap, HashSet};

/// Shapes of graph values, by name.
pub type Shapes = HashMap<String, Vec<usize>>;

/// A weight moved out of the model: name, dims, values.
pub type Weight = (String, Vec<usize>, Vec<f32>);

/// The static shape of one training graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrainingShape {
    /// Examples per run.
    pub batch: usize,
    /// Tokens per example (every base input is [batch, seq]).
    pub seq: usize,
    /// Classes of the head.
    pub classes: usize,
}

/// A training graph and the names of its inputs and outputs.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// The model.
    pub proto: ModelProto,
    /// The base model's inputs ([batch, seq] each), as in the patched model.
    pub base_inputs: Vec<String>,
    /// The coefficient inputs, one per module (shapes [1, K_A, r] and [1, r, K_B]).
    pub coeff_inputs: Vec<CoeffInput>,
    /// The width d of the pooled features ([`Objective::PooledHead`]), or the vocabulary
    /// ([`Objective::NextToken`]).
    pub dim: usize,
    /// What the loss computes.
    pub objective: Objective,
    /// The shape it was built for.
    pub shape: TrainingShape,
    /// Weights fed as inputs (after [`TrainingGraph::input_names`]'s), with their dims.
    pub weight_inputs: Vec<(String, Vec<usize>)>,
}

impl TrainingGraph {
    /// The graph inputs a caller feeds per run, in order: base inputs, then α_Aᵀ, α_Bᵀ per
    /// module, then [`HEAD_WEIGHT`], [`HEAD_BIAS`], [`TARGETS`], [`EXAMPLE_WEIGHTS`]
    /// ([`Objective::PooledHead`]) or [`TOKEN_TARGETS`], [`TOKEN_WEIGHTS`]
    /// ([`Objective::NextToken`]); the externalized weights,
    /// [`TrainingGraph::weight_inputs`], follow.
    pub fn input_names(&self) -> Vec<String> {
        let mut v = self.base_inputs.clone();
        for c in &self.coeff_inputs {
            v.push(c.alpha_a.clone());
            v.push(c.alpha_b.clone());
        }
        match self.objective {
            Objective::PooledHead => {
                v.extend([HEAD_WEIGHT, HEAD_BIAS, TARGETS, EXAMPLE_WEIGHTS].map(String::from))
            }
            Objective::NextToken => v.extend([TOKEN_TARGETS, TOKEN_WEIGHTS].map(String::from)),
        }
        v
    }

    /// Every graph output in order: [`LOSS`] [1], then with [`Objective::PooledHead`]
    /// [`POOLED`] [batch, d] and the head's gradients [classes, d] and [classes]; then
    /// d loss / d α_Aᵀ and d loss / d α_Bᵀ per module.
    pub fn output_names(&self) -> Vec<String> {
        let mut v = vec![LOSS.to_string()];
        if self.objective == Objective::PooledHead {
            v.extend([
                POOLED.to_string(),
                grad_name(HEAD_WEIGHT),
                grad_name(HEAD_BIAS),
            ]);
        }
        for c in &self.coeff_inputs {
            v.push(grad_name(&c.alpha_a));
            v.push(grad_name(&c.alpha_b));
        }
        v
    }
}

/// The differentiated part of a patched model (see the module docs).
pub struct Analysis {
    patched: PatchedModel,
    hidden: String,
    mask: String,
    objective: Objective,
    opset: i64,
    /// Nodes (indices into the graph's node list) in topological order.
    order: Vec<usize>,
    /// Values that depend on the coefficients.
    active: HashSet<String>,
    /// Nodes differentiated (on a path from a coefficient input to the hidden state).
    on_path: HashSet<usize>,
    /// Values whose shapes the rules need.
    probe: Vec<String>,
    /// Initializers turned into graph inputs ([`Analysis::externalize_weights`]), with dims.
    external: Vec<(String, Vec<usize>)>,
}

/// A tensor declaration with an element type and an unknown shape.
fn value_of_unknown_shape(name: &str, elem_type: i32) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Analysis {
    /// Analyses `patched` (a single-task patch) for training on the graph output `hidden`
    /// (the last hidden state [batch, seq, d]) pooled over the base input `mask`.
    pub fn new(patched: PatchedModel, hidden: &str, mask: &str) -> Result<Analysis> {
        Self::for_objective(patched, hidden, mask, Objective::PooledHead)
    }

    /// [`Analysis::new`] for the loss `objective` on the graph output `output` (with
    /// [`Objective::NextToken`], the logits; `mask` is the attention mask).
    pub fn for_objective(
        patched: PatchedModel,
        hidden: &str,
        mask: &str,
        objective: Objective,
    ) -> Result<Analysis> {
        if patched.tasks != 1 {
            return Err(Error::Internal(
                "training graphs are built from a single-task patch".into(),
            ));
        }
        let graph = patched
            .proto
            .graph
            .as_ref()
            .ok_or_else(|| Error::Internal("patched model without a graph".into()))?;
        if !patched.base_inputs.iter().any(|n| n == mask) {
            return Err(Error::Usage(format!(
                "training needs the attention mask input `{mask}`; the model's inputs are {:?}",
                patched.base_inputs
            )));
        }
        if !graph.output.iter().any(|o| o.name == hidden) {
            return Err(Error::Usage(format!(
                "the model has no output `{hidden}` to pool"
            )));
        }
        let opset = patched
            .proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version);
        if opset < 13 {
            return Err(Error::Unsupported(format!(
                "training graphs need ONNX opset 13 or later; the model uses opset {opset}"
            )));
        }
        let reserved = [
            HEAD_WEIGHT,
            HEAD_BIAS,
            TARGETS,
            EXAMPLE_WEIGHTS,
            LOSS,
            POOLED,
            TOKEN_TARGETS,
            TOKEN_WEIGHTS,
        ];
        for n in &graph.node {
            for v in n.input.iter().chain(&n.output) {
                if v.starts_with(PREFIX) || v.starts_with("grad:") || reserved.contains(&v.as_str())
                {
                    return Err(Error::Unsupported(format!(
                        "the model already uses the name `{v}` (node `{}`), which training graphs reserve",
                        n.name
                    )));
                }
            }
        }

        let order = topological_order(&graph.node)?;
        // Forward: what depends on the coefficients.
        let mut active: HashSet<String> = patched
            .coeff_inputs
            .iter()
            .flat_map(|c| [c.alpha_a.clone(), c.alpha_b.clone()])
            .collect();
        for &i in &order {
            let n = &graph.node[i];
            if feeds_gradient(n).any(|v| active.contains(v)) && produces_reals(n) {
                for o in n.output.iter().filter(|o| !o.is_empty()) {
                    active.insert(o.clone());
                }
            }
        }
        if !active.contains(hidden) {
            return Err(Error::Usage(format!(
                "the output `{hidden}` does not depend on the coefficients"
            )));
        }
        // Backward: what reaches the hidden state.
        let mut needed: HashSet<&str> = HashSet::from([hidden]);
        let mut on_path = HashSet::new();
        for &i in order.iter().rev() {
            let n = &graph.node[i];
            if n.output.iter().any(|o| needed.contains(o.as_str()))
                && n.output.iter().any(|o| active.contains(o))
            {
                on_path.insert(i);
                for v in feeds_gradient(n).filter(|v| active.contains(*v)) {
                    needed.insert(v);
                }
            }
        }
        let mut missing: Vec<String> = on_path
            .iter()
            .map(|&i| &graph.node[i])
            .filter(|n| diff_inputs(&n.op_type).is_none_or(|d| d == DiffInputs::Never))
            .map(|n| format!("{} (`{}`)", n.op_type, n.name))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(Error::Unsupported(format!(
                "cannot build a training graph: no gradient rule for {} node(s) between the coefficients and `{hidden}`: {}",
                missing.len(),
                missing.join(", ")
            )));
        }
        // Shapes the rules need: each differentiated node's first output and the
        // non-constant operands it reads.
        let consts = constants(graph);
        let mut probe: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let mut want = |v: &str| {
            if !v.is_empty() && !consts.tensors.contains_key(v) && seen.insert(v.to_string()) {
                probe.push(v.to_string());
            }
        };
        for &i in &order {
            if !on_path.contains(&i) {
                continue;
            }
            let n = &graph.node[i];
            want(&n.output[0]);
            if n.op_type == "Split" {
                n.output.iter().for_each(|o| want(o));
            }
            match n.op_type.as_str() {
                "Pow" => want(&n.input[0]),
                _ => feeds_gradient(n).for_each(&mut want),
            }
        }
        Ok(Analysis {
            hidden: hidden.to_string(),
            mask: mask.to_string(),
            objective,
            opset,
            order,
            active,
            on_path,
            probe,
            patched,
            external: Vec::new(),
        })
    }

    /// Moves every f32 initializer of at least `min_elems` values out of the model: they
    /// become graph inputs of the probe and training graphs, and their values are returned
    /// (name, dims, values) for the caller to feed. One copy of the base weights then serves
    /// every training graph (one per shape) instead of one copy per graph.
    pub fn externalize_weights(&mut self, min_elems: usize) -> Result<Vec<Weight>> {
        let graph = self
            .patched
            .proto
            .graph
            .as_mut()
            .ok_or_else(|| Error::Internal("patched model without a graph".into()))?;
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(graph.initializer.len());
        for t in std::mem::take(&mut graph.initializer) {
            let numel: i64 = t.dims.iter().product();
            if t.data_type == FLOAT && numel >= min_elems as i64 && !super::onnx::is_external(&t) {
                let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
                let values = super::onnx::f32_data(&t, std::path::Path::new("patched model"))?;
                self.external.push((t.name.clone(), dims.clone()));
                out.push((t.name, dims, values));
            } else {
                // Own the small ones: a slice would keep the whole model file's buffer alive.
                let mut t = t;
                t.raw_data = prost::bytes::Bytes::copy_from_slice(&t.raw_data);
                kept.push(t);
            }
        }
        graph.initializer = kept;
        let moved: HashSet<&str> = self.external.iter().map(|(n, _)| n.as_str()).collect();
        graph.input.retain(|v| !moved.contains(v.name.as_str()));
        for (name, dims) in &self.external {
            let d: Vec<Dim> = dims.iter().map(|&n| Dim::Fixed(n)).collect();
            graph.input.push(value_info(name, FLOAT, &d));
        }
        Ok(out)
    }

    /// What the loss computes.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// How many nodes are differentiated, and how many the model has.
    pub fn differentiated_nodes(&self) -> (usize, usize) {
        (self.on_path.len(), self.order.len())
    }

    /// The patched model analysed.
    pub fn patched(&self) -> &PatchedModel {
        &self.patched
    }

    /// The patched model with the values whose shapes the builder needs as its outputs (f32,
    /// shape left to the engine). Run it once on inputs of the training shape and hand the
    /// shapes to [`Analysis::build`].
    pub fn probe_model(&self) -> (ModelProto, Vec<String>) {
        let mut proto = self.patched.proto.clone();
        if let Some(g) = proto.graph.as_mut() {
            g.output = self
                .probe
                .iter()
                .map(|v| value_of_unknown_shape(v, FLOAT))
                .collect();
        }
        (proto, self.probe.clone())
    }

    /// Builds the training graph for `shape`, given the probed `shapes` (see the module docs).
    pub fn build(&self, shape: &TrainingShape, shapes: &Shapes) -> Result<TrainingGraph> {
        let patched = &self.patched;
        let mut proto = patched.proto.clone();
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| Error::Internal("patched model without a graph".into()))?;
        let source = patched
            .proto
            .graph
            .as_ref()
            .ok_or_else(|| Error::Internal("patched model without a graph".into()))?;
        let consts = constants(source);
        let mut with_weights;
        let shapes = if self.external.is_empty() {
            shapes
        } else {
            with_weights = shapes.clone();
            for (n, d) in &self.external {
                with_weights.insert(n.clone(), d.clone());
            }
            &with_weights
        };
        let ctx = Ctx {
            shapes,
            consts: &consts,
            active: &self.active,
        };
        let hs = shapes.get(&self.hidden).ok_or_else(|| {
            Error::Internal(format!(
                "no probed shape for the hidden state `{}`",
                self.hidden
            ))
        })?;
        let &[b, q, d] = hs.as_slice() else {
            return Err(Error::Usage(format!(
                "expected the output `{}` the loss reads to be [batch, seq, d], found shape {hs:?}",
                self.hidden
            )));
        };
        if b != shape.batch || q != shape.seq {
            return Err(Error::Usage(format!(
                "expected the hidden state `{}` to be [{}, {}, d], found {hs:?}",
                self.hidden, shape.batch, shape.seq
            )));
        }

        let mut e = Emitter::new();
        let g_hidden = match self.objective {
            Objective::PooledHead => loss::emit(
                &mut e,
                &self.hidden,
                &self.mask,
                &loss::LossShape {
                    batch: b,
                    seq: q,
                    dim: d,
                },
            ),
            Objective::NextToken => loss::emit_next_token(&mut e, &self.hidden, b, q, d),
        };
        // Reverse pass.
        let mut grads: HashMap<String, Vec<String>> = HashMap::new();
        grads.insert(self.hidden.clone(), vec![g_hidden]);
        for &i in self.order.iter().rev() {
            if !self.on_path.contains(&i) {
                continue;
            }
            let n = &source.node[i];
            let gy: Vec<Option<String>> = n
                .output
                .iter()
                .map(|o| grads.remove(o).map(|parts| sum(&mut e, parts)))
                .collect();
            if gy.iter().all(Option::is_none) {
                continue;
            }
            let gx = rules::vjp(&mut e, n, &gy, &ctx, self.opset)?;
            for (v, gv) in n.input.iter().zip(gx) {
                if let Some(gv) = gv {
                    grads.entry(v.clone()).or_default().push(gv);
                }
            }
        }
        for c in &patched.coeff_inputs {
            for (input, dims) in [(&c.alpha_a, [1, c.k_a, c.r]), (&c.alpha_b, [1, c.r, c.k_b])] {
                let g = match grads.remove(input) {
                    Some(parts) => sum(&mut e, parts),
                    // A coefficient with no path to the loss has a zero gradient.
                    None => e.zeros(&dims),
                };
                e.op_into("Identity", &[&g], &grad_name(input), vec![]);
            }
        }

        // Inputs with fixed shapes, the extra inputs, the outputs.
        let fixed = |n: usize| Dim::Fixed(n);
        let mut inputs = Vec::new();
        for name in &patched.base_inputs {
            inputs.push(base_input_declaration(source, name, b, q)?);
        }
        for c in &patched.coeff_inputs {
            inputs.push(value_info(
                &c.alpha_a,
                FLOAT,
                &[fixed(1), fixed(c.k_a), fixed(c.r)],
            ));
            inputs.push(value_info(
                &c.alpha_b,
                FLOAT,
                &[fixed(1), fixed(c.r), fixed(c.k_b)],
            ));
        }
        let cl = shape.classes;
        match self.objective {
            Objective::PooledHead => {
                inputs.push(value_info(HEAD_WEIGHT, FLOAT, &[fixed(cl), fixed(d)]));
                inputs.push(value_info(HEAD_BIAS, FLOAT, &[fixed(cl)]));
                inputs.push(value_info(TARGETS, FLOAT, &[fixed(b), fixed(cl)]));
                inputs.push(value_info(EXAMPLE_WEIGHTS, FLOAT, &[fixed(b)]));
            }
            Objective::NextToken => {
                inputs.push(value_info(TOKEN_TARGETS, INT64, &[fixed(b), fixed(q)]));
                inputs.push(value_info(TOKEN_WEIGHTS, FLOAT, &[fixed(b), fixed(q)]));
            }
        }
        for (name, dims) in &self.external {
            let d: Vec<Dim> = dims.iter().map(|&n| Dim::Fixed(n)).collect();
            inputs.push(value_info(name, FLOAT, &d));
        }
        // Initializers stay; graph inputs that were only initializer declarations too.
        let init_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let kept: Vec<ValueInfoProto> = graph
            .input
            .iter()
            .filter(|v| init_names.contains(v.name.as_str()))
            .cloned()
            .collect();
        inputs.extend(kept);
        graph.input = inputs;
        let mut outputs = vec![value_info(LOSS, FLOAT, &[fixed(1)])];
        if self.objective == Objective::PooledHead {
            outputs.extend([
                value_info(POOLED, FLOAT, &[fixed(b), fixed(d)]),
                value_info(&grad_name(HEAD_WEIGHT), FLOAT, &[fixed(cl), fixed(d)]),
                value_info(&grad_name(HEAD_BIAS), FLOAT, &[fixed(cl)]),
            ]);
        }
        for c in &patched.coeff_inputs {
            outputs.push(value_info(
                &grad_name(&c.alpha_a),
                FLOAT,
                &[fixed(1), fixed(c.k_a), fixed(c.r)],
            ));
            outputs.push(value_info(
                &grad_name(&c.alpha_b),
                FLOAT,
                &[fixed(1), fixed(c.r), fixed(c.k_b)],
            ));
        }
        graph.output = outputs;
        // Intermediate declarations of the base model may carry symbolic or stale shapes.
        graph.value_info.clear();
        graph.node.extend(e.nodes);
        graph.initializer.extend(e.inits);
        Ok(TrainingGraph {
            proto,
            base_inputs: patched.base_inputs.clone(),
            coeff_inputs: patched.coeff_inputs.clone(),
            dim: d,
            objective: self.objective,
            shape: shape.clone(),
            weight_inputs: self.external.clone(),
        })
    }
}

/// The training graph's declaration of the base input `name`: token inputs (int64) are
/// [batch, seq], or [seq] where declared with one dimension; a float input is a decoder's past key or value, empty in training (a run
/// reads whole sequences): its declared [batch, heads, past, width] with batch `b`, past 0.
fn base_input_declaration(
    graph: &super::pb::GraphProto,
    name: &str,
    b: usize,
    q: usize,
) -> Result<ValueInfoProto> {
    let declared = graph.input.iter().find(|v| v.name == name);
    let tensor = declared
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        });
    let elem = tensor.map_or(INT64, |t| t.elem_type);
    let rank = tensor.and_then(|t| t.shape.as_ref()).map(|s| s.dim.len());
    if elem != FLOAT {
        // A one-dimensional token input is per position, shared by the rows (a decoder's
        // `logits_positions`).
        if rank == Some(1) {
            return Ok(value_info(name, INT64, &[Dim::Fixed(q)]));
        }
        return Ok(value_info(name, INT64, &[Dim::Fixed(b), Dim::Fixed(q)]));
    }
    let dims: Vec<Option<usize>> = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(super::pb::tensor_shape_proto::dimension::Value::DimValue(v))
                        if v >= 0 =>
                    {
                        Some(v as usize)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match dims.as_slice() {
        [_, Some(h), _, Some(w)] => Ok(value_info(
            name,
            FLOAT,
            &[Dim::Fixed(b), Dim::Fixed(*h), Dim::Fixed(0), Dim::Fixed(*w)],
        )),
        _ => Err(Error::Unsupported(format!(
            "training graphs take int64 token inputs and empty caches [batch, heads, 0, width]; the input `{name}` is declared f32 with dims {dims:?}"
        ))),
    }
}

/// Sums gradient contributions.
fn sum(e: &mut Emitter, mut parts: Vec<String>) -> String {
    let mut acc = parts.remove(0);
    for p in parts {
        acc = e.add(&acc, &p);
    }
    acc
}

/// The inputs of `n` that can carry gradient (every input for an op without a rule, so that
/// such an op on the path is found and reported).
fn feeds_gradient(n: &NodeProto) -> impl Iterator<Item = &str> {
    let which = diff_inputs(&n.op_type).unwrap_or(DiffInputs::All);
    n.input
        .iter()
        .enumerate()
        .filter(move |(i, v)| {
            !v.is_empty()
                && match which {
                    DiffInputs::All => true,
                    DiffInputs::Only(list) => list.contains(i),
                    DiffInputs::Never => false,
                }
        })
        .map(|(_, v)| v.as_str())
}

/// Whether `n`'s outputs are real-valued functions of its inputs (a cast to an integer type
/// is not).
fn produces_reals(n: &NodeProto) -> bool {
    match n.op_type.as_str() {
        "Cast" => super::onnx::get_attr_int(n, "to", 0) == i64::from(FLOAT),
        _ => diff_inputs(&n.op_type) != Some(DiffInputs::Never),
    }
}

/// The model's constants: initializers and `Constant` nodes with a tensor value.
fn constants(g: &super::pb::GraphProto) -> Consts<'_> {
    let mut tensors = HashMap::new();
    for t in &g.initializer {
        tensors.insert(t.name.as_str(), t);
    }
    for n in &g.node {
        if n.op_type == "Constant"
            && let (Some(out), Some(a)) = (n.output.first(), super::onnx::get_attr(n, "value"))
            && let Some(t) = a.t.as_ref()
        {
            tensors.insert(out.as_str(), t);
        }
    }
    Consts { tensors }
}

/// Node indices in an order where every value is produced before it is read (Kahn's
/// algorithm; a cycle is an error).
fn topological_order(nodes: &[NodeProto]) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o.as_str(), i);
        }
    }
    let mut indegree = vec![0usize; nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let mut deps: Vec<usize> = n
            .input
            .iter()
            .filter_map(|v| producer.get(v.as_str()).copied())
            .collect();
        deps.sort_unstable();
        deps.dedup();
        indegree[i] = deps.len();
        for p in deps {
            readers[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..nodes.len())
        .filter(|&i| indegree[i] == 0)
        .rev()
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &r in readers[i].iter().rev() {
            indegree[r] -= 1;
            if indegree[r] == 0 {
                ready.push(r);
            }
        }
    }
    if order.len() != nodes.len() {
        return Err(Error::Unsupported(
            "the model's graph has a cycle; cannot order it for differentiation".into(),
        ));
    }
    Ok(order)
}
