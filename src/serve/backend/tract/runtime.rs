//! The tract runtime: pure Rust, CPU, portable.
//!
//! [`Runtime::load`] verifies the base model's hash against the bundle's binding, patches it
//! and builds one optimized plan for single-task runs (`tasks = 1`, batch and sequence sizes
//! left symbolic; when tract cannot optimize the graph with symbolic shapes, one plan per
//! input shape instead, built on first use or at load for [`RuntimeOptions::shapes`]). Plans for mixed-task batches (`tasks = B`, the batch axis fixed to B) are
//! built lazily on the first mixed run of each batch size and cached, or at load for the sizes
//! listed in [`RuntimeOptions::mixed_batches`].
//!
//! The task store holds each task's coefficients once, as one f32 buffer. A run copies the
//! task's values into coefficient tensors taken from a pool (one set per concurrent run,
//! reused): a single-task run into [1, K, r] tensors, a mixed run row i's task into row i of
//! [B, K, r] tensors kept per batch size. Once warm, switching tasks allocates nothing and
//! rebuilds nothing; the copy is K·r values per module (at most tens of KB), against a whole
//! copy of every task's coefficients kept as tract tensors before.
//!
//! The runtime is `Sync`: any number of threads may run it at once, each with its own task.

use crate::bundle::{Bundle, CoeffFile};
use crate::error::{Error, Result};
use crate::graph::check::{IndexLimit, index_limits};
use crate::graph::onnx::encode_model;
use crate::graph::patch::{CoeffInput, PER_ROW, PatchedModel, load_base, patch_owned};
use crate::serve::backend::tract::weights;
use crate::serve::backend::{WeightFormat, engine_call};
use crate::serve::input::{InputSpec, input_specs, output_names};
use crate::serve::store::{Task, TaskData, TaskId, TaskStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

/// The input tensors a run takes and the outputs it returns.
pub use tract_onnx::prelude::{TValue, Tensor};

/// Options of [`Runtime::load_with`].
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Mixed-batch sizes whose plans are built at load (others are built on first use).
    pub mixed_batches: Vec<usize>,
    /// Input shapes (one per base input) whose single-task plans are built at load when the
    /// model needs per-shape plans (element type taken as i64, the type of token inputs).
    pub shapes: Vec<Vec<Vec<usize>>>,
    /// One symbolic plan with one task per row ([`crate::graph::patch::PER_ROW`]) for every
    /// run, single-task or mixed, of any batch size; an error at load if tract cannot
    /// optimize the graph with symbolic shapes.
    pub per_row_tasks: bool,
    /// How the plans store the base model's matrix-product weights.
    pub weights: WeightFormat,
}

/// Where each plan input comes from.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// The caller's i-th input.
    Base(usize),
    /// The task's j-th coefficient tensor.
    Coeff(usize),
}

/// One optimized plan and its input order.
struct Plan {
    runnable: Arc<TypedRunnableModel>,
    order: Vec<Slot>,
}

/// Sets of coefficient tensors, one per concurrent run; reused, so a warm run allocates no
/// coefficient buffers.
type TensorPool = Mutex<Vec<Vec<Arc<Tensor>>>>;

/// A mixed-batch plan and its pool of stacked [B, K, r] coefficient tensors.
struct Mixed {
    plan: Plan,
    pool: TensorPool,
}

/// A patched base model on tract with a store of tasks.
///
/// The base model itself is not kept: it is as large as the plan's weights, so a later plan
/// (another input shape, a mixed batch size) re-reads the file, checking its hash again.
pub struct Runtime {
    base_path: PathBuf,
    bundle: Bundle,
    base_inputs: Vec<String>,
    /// The base inputs' declarations, read from the model at load (or why they could not be).
    input_specs: std::result::Result<Vec<InputSpec>, String>,
    /// The table each base input indexes, if any (token ids: checked before every run).
    index_limits: Vec<Option<IndexLimit>>,
    output_names: Vec<String>,
    coeff_inputs: Vec<CoeffInput>,
    single: Singles,
    mixed: Mutex<HashMap<usize, Arc<Mixed>>>,
    /// Coefficient tensors for single-task runs ([1, K, r]; [B, K, r] per row with
    /// `per_row`).
    single_pool: TensorPool,
    store: TaskStore,
    /// Whether the single plan takes one task per row (see [`RuntimeOptions::per_row_tasks`]).
    per_row: bool,
    /// How every plan stores the base weights.
    weights: WeightFormat,
}

fn tract_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Builds one optimized plan; `shapes` (one per base input, with its element type taken from
/// `like`) fixes the base inputs' shapes, otherwise they stay as the graph declares them.
/// The patched model is consumed: it is dropped once encoded, and the encoding once tract
/// has built its model from it, so the load peak stays close to tract's own on the base.
fn build_plan(
    p: PatchedModel,
    path: &Path,
    like: Option<&[TValue]>,
    weights: WeightFormat,
) -> Result<Plan> {
    engine_call("building the tract plan", || {
        build_plan_unguarded(p, path, like, weights)
    })
}

fn build_plan_unguarded(
    mut p: PatchedModel,
    path: &Path,
    like: Option<&[TValue]>,
    weights: WeightFormat,
) -> Result<Plan> {
    if let Some(graph) = p.proto.graph.as_mut() {
        weights::unshare_gathered_initializers(graph);
    }
    let bytes = encode_model(&p.proto);
    let PatchedModel {
        proto,
        base_inputs,
        coeff_inputs,
        ..
    } = p;
    drop(proto);
    let bad = |stage: &str, e: TractError| {
        Error::bad_file(
            path,
            format!("expected a model tract can {stage} once patched: {e:#}"),
        )
    };
    // Decode from our buffer itself: tract's `model_for_read` would first copy it, holding the
    // weights once more while it builds its own model.
    let proto = {
        use prost::Message;
        tract_onnx::pb::ModelProto::decode(prost::bytes::Bytes::from(bytes))
            .map_err(|e| bad("load", TractError::from(e)))?
    };
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .map_err(|e| bad("load", e))?;
    drop(proto);
    let mut order = Vec::new();
    for o in model.input_outlets().map_err(|e| bad("inspect", e))? {
        let name = &model.node(o.node).name;
        if let Some(i) = base_inputs.iter().position(|n| n == name) {
            order.push(Slot::Base(i));
        } else if let Some(j) = coeff_inputs.iter().position(|c| &c.alpha_a == name) {
            order.push(Slot::Coeff(2 * j));
        } else if let Some(j) = coeff_inputs.iter().position(|c| &c.alpha_b == name) {
            order.push(Slot::Coeff(2 * j + 1));
        } else {
            return Err(Error::bad_file(
                path,
                format!("expected graph inputs of the base model or coefficients, found `{name}`"),
            ));
        }
    }
    if let Some(like) = like {
        for (k, s) in order.clone().iter().enumerate() {
            if let Slot::Base(i) = *s {
                let x = like
                    .get(i)
                    .ok_or_else(|| Error::Internal("missing input for a plan".into()))?;
                model = model
                    .with_input_fact(k, InferenceFact::dt_shape(x.datum_type(), x.shape()))
                    .map_err(|e| bad("load", e))?;
            }
        }
    }
    let typed = weights::optimize(model, weights).map_err(|e| bad("optimize", e))?;
    let runnable = typed.into_runnable().map_err(|e| bad("plan", e))?;
    Ok(Plan { runnable, order })
}

/// Single-task plans: one with the graph's symbolic shapes when tract can optimize it that
/// way, else one per input shape, built on first use (some exports, e.g. the torch legacy
/// BERT attention-mask path, do not optimize with both batch and sequence symbolic).
/// Plans keyed by the base inputs' shapes.
type ShapePlans = Mutex<Vec<(Vec<Vec<usize>>, Arc<Plan>)>>;

enum Singles {
    Symbolic(Plan),
    PerShape { why: String, plans: ShapePlans },
}

impl Runtime {
    /// Loads `base` for `bundle` with default options (see the module docs).
    pub fn load(base: &Path, bundle: &Bundle) -> Result<Runtime> {
        Self::load_with(base, bundle, &RuntimeOptions::default())
    }

    /// Loads `base` for `bundle`: checks the model's SHA-256 against the binding, patches it
    /// and builds the single-task plan (and the listed mixed-batch plans).
    pub fn load_with(base: &Path, bundle: &Bundle, options: &RuntimeOptions) -> Result<Runtime> {
        let model = load_base(base, bundle)?;
        let per_row = options.per_row_tasks;
        let tasks = if per_row { PER_ROW } else { 1 };
        let patched = patch_owned(model, bundle, tasks).map_err(|e| rename(e, base))?;
        let (base_inputs, coeff_inputs) =
            (patched.base_inputs.clone(), patched.coeff_inputs.clone());
        // The patch keeps the base model's input and output declarations.
        let input_specs = input_specs(&patched.proto, &base_inputs).map_err(|e| e.to_string());
        let index_limits = index_limits(&patched.proto, &base_inputs);
        let output_names = output_names(&patched.proto);
        let single = match build_plan(patched, base, None, options.weights) {
            Ok(p) => Singles::Symbolic(p),
            // A per-shape plan per batch and cache length would rebuild at every step.
            Err(e) if per_row => return Err(e),
            Err(e) => Singles::PerShape {
                why: e.to_string(),
                plans: Mutex::new(Vec::new()),
            },
        };
        let store = TaskStore::new(&bundle.manifest, &coeff_inputs);
        let rt = Runtime {
            base_path: base.to_path_buf(),
            bundle: bundle.clone(),
            base_inputs,
            input_specs,
            index_limits,
            output_names,
            coeff_inputs,
            single,
            mixed: Mutex::new(HashMap::new()),
            single_pool: Mutex::new(Vec::new()),
            store,
            per_row,
            weights: options.weights,
        };
        for &b in &options.mixed_batches {
            rt.mixed_plan(b)?;
        }
        for shapes in &options.shapes {
            let like: Vec<TValue> = shapes
                .iter()
                .map(|s| {
                    Tensor::zero_dt(DatumType::I64, s)
                        .map(TValue::from)
                        .map_err(|e| Error::Engine(tract_err(e)))
                })
                .collect::<Result<_>>()?;
            rt.single_plan(&like)?;
        }
        Ok(rt)
    }

    /// Names of the inputs a run takes, in order (the base model's own inputs).
    pub fn input_names(&self) -> &[String] {
        &self.base_inputs
    }

    /// The declarations of the inputs a run takes, in [`Runtime::input_names`] order; an
    /// error when one is not a float32 or int64 tensor (such a model runs only on tract
    /// values built by the caller).
    pub fn input_specs(&self) -> Result<&[InputSpec]> {
        self.input_specs
            .as_deref()
            .map_err(|e| Error::Usage(e.clone()))
    }

    /// The graph outputs, in the order runs return them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// The coefficient inputs of the patched graph.
    pub fn coeff_inputs(&self) -> &[CoeffInput] {
        &self.coeff_inputs
    }

    /// The task store (load, insert, replace, find tasks).
    pub fn store(&self) -> &TaskStore {
        &self.store
    }

    /// Loads a coefficient file as a new task.
    pub fn load_task(&self, path: &Path) -> Result<TaskId> {
        self.store.load(path)
    }

    /// Adds in-memory coefficients as a new task.
    pub fn insert_task(&self, coeffs: &CoeffFile) -> Result<TaskId> {
        self.store.insert(coeffs)
    }

    /// Selects a task: an `Arc` clone of its prepared coefficients (no allocation).
    pub fn task(&self, id: TaskId) -> Result<Arc<Task>> {
        self.store.get(id)
    }

    /// A task's coefficients as fresh tract tensors, one per coefficient input in
    /// [`Runtime::coeff_inputs`] order (α_Aᵀ then α_Bᵀ): for feeding other plans of the same
    /// graph (benchmarks, tests); runs do not need them.
    pub fn coeff_values(&self, task: &TaskData) -> Result<Vec<TValue>> {
        task.check(&self.coeff_inputs)?;
        task.tensors(&self.coeff_inputs)
            .map(|t| {
                Tensor::from_shape(&t.shape, t.data)
                    .map(TValue::from)
                    .map_err(|e| {
                        Error::Engine(format!("coefficient tensor `{}`: {}", t.name, tract_err(e)))
                    })
            })
            .collect()
    }

    /// Runs the base inputs (in [`Runtime::input_names`] order) with one task for every row.
    pub fn run(&self, inputs: &[TValue], task: TaskId) -> Result<TVec<TValue>> {
        let t = self.store.get(task)?;
        self.run_task(inputs, &t)
    }

    /// [`Runtime::run`] with a task already selected, or coefficients that are not in the
    /// store (the finetuner's trial coefficients).
    pub fn run_task(&self, inputs: &[TValue], task: &TaskData) -> Result<TVec<TValue>> {
        self.check_inputs(inputs)?;
        task.check(&self.coeff_inputs)?;
        let held;
        let plan: &Plan = match &self.single {
            Singles::Symbolic(p) => p,
            Singles::PerShape { .. } => {
                held = self.single_plan(inputs)?;
                &held
            }
        };
        if self.per_row {
            let b = inputs
                .first()
                .and_then(|x| x.shape().first())
                .copied()
                .unwrap_or(1);
            return self.run_pooled(plan, &self.single_pool, inputs, (0..b).map(|_| Ok(task)));
        }
        self.run_pooled(plan, &self.single_pool, inputs, std::iter::once(Ok(task)))
    }

    /// Runs row i of `inputs` with `tasks[i]` (coefficients pinned by the caller): on the
    /// per-row plan when loaded with [`RuntimeOptions::per_row_tasks`], else on the mixed plan
    /// of this batch size.
    pub fn run_rows(&self, inputs: &[TValue], tasks: &[&TaskData]) -> Result<TVec<TValue>> {
        self.check_inputs(inputs)?;
        self.check_rows(inputs, tasks.len())?;
        for t in tasks {
            t.check(&self.coeff_inputs)?;
        }
        self.run_each_row(inputs, tasks.iter().map(|&t| Ok(t)))
    }

    /// Runs row i of `inputs` with the i-th task of `rows` (inputs and row count checked):
    /// on the per-row plan, or the mixed plan of this batch size. `rows` is an iterator so
    /// that a warm run allocates nothing here.
    fn run_each_row<T: std::ops::Deref<Target = TaskData>>(
        &self,
        inputs: &[TValue],
        rows: impl ExactSizeIterator<Item = Result<T>>,
    ) -> Result<TVec<TValue>> {
        match &self.single {
            Singles::Symbolic(plan) if self.per_row => {
                self.run_pooled(plan, &self.single_pool, inputs, rows)
            }
            _ => {
                let mixed = self.mixed_plan(rows.len())?;
                self.run_pooled(&mixed.plan, &mixed.pool, inputs, rows)
            }
        }
    }

    /// Checks that every input of two or more dimensions has `b` rows (one per task), and
    /// at least one. An input of one dimension is shared by the rows (a decoder's
    /// `logits_positions`).
    fn check_rows(&self, inputs: &[TValue], b: usize) -> Result<()> {
        if b == 0 {
            return Err(Error::Usage("mixed run: expected at least one task".into()));
        }
        for (x, name) in inputs.iter().zip(&self.base_inputs) {
            if x.rank() > 1 && x.shape().first() != Some(&b) {
                return Err(Error::Usage(format!(
                    "mixed run: input `{name}` has shape {:?}, expected {b} rows (one per task)",
                    x.shape()
                )));
            }
        }
        Ok(())
    }

    /// Runs `plan` on the base inputs and the coefficients of `rows` (one task per row),
    /// stacked into a set of coefficient tensors taken from `pool` (allocated once per batch
    /// size; a set is owned by one run at a time) and given back after the run.
    fn run_pooled<T: std::ops::Deref<Target = TaskData>>(
        &self,
        plan: &Plan,
        pool: &TensorPool,
        inputs: &[TValue],
        rows: impl ExactSizeIterator<Item = Result<T>>,
    ) -> Result<TVec<TValue>> {
        let b = rows.len();
        let mut set = {
            let mut pool = pool
                .lock()
                .map_err(|_| Error::Internal("coefficient pool lock poisoned".into()))?;
            // A set of this batch size (per-row plans see several sizes).
            let same = pool
                .iter()
                .rposition(|s| s.first().is_none_or(|t| t.shape().first() == Some(&b)));
            same.map(|i| pool.swap_remove(i))
        }
        .map_or_else(|| self.stack_set(b), Ok)?;
        let filled = fill_rows(&mut set, rows, &self.coeff_inputs);
        let result = filled.and_then(|()| {
            let mut v: TVec<TValue> = TVec::with_capacity(plan.order.len());
            for s in &plan.order {
                let x = match *s {
                    Slot::Base(i) => inputs.get(i).cloned(),
                    Slot::Coeff(j) => set.get(j).map(|t| TValue::from_const(Arc::clone(t))),
                };
                v.push(x.ok_or_else(|| Error::Internal("plan input out of range".into()))?);
            }
            run_plan(plan, v)
        });
        // The plan has dropped its references: the set goes back for the next run.
        if let Ok(mut pool) = pool.lock() {
            pool.push(set);
        }
        result
    }

    /// Whether single-task runs use one plan for every input shape (else one per shape).
    pub fn is_shape_generic(&self) -> bool {
        matches!(self.single, Singles::Symbolic(_))
    }

    /// The per-shape single-task plan for these inputs, built on first use. The lookup
    /// compares shapes in place, so a warm run allocates nothing here.
    fn single_plan(&self, inputs: &[TValue]) -> Result<Arc<Plan>> {
        let Singles::PerShape { why, plans } = &self.single else {
            return Err(Error::Internal(
                "per-shape plan asked of a symbolic runtime".into(),
            ));
        };
        let same = |shapes: &Vec<Vec<usize>>| {
            shapes.len() == inputs.len()
                && shapes
                    .iter()
                    .zip(inputs)
                    .all(|(s, x)| s.as_slice() == x.shape())
        };
        let mut plans = plans
            .lock()
            .map_err(|_| Error::Internal("plan cache lock poisoned".into()))?;
        if let Some((_, p)) = plans.iter().find(|(s, _)| same(s)) {
            return Ok(Arc::clone(p));
        }
        let plan = Arc::new(
            build_plan(
                self.patched(1)?,
                &self.base_path,
                Some(inputs),
                self.weights,
            )
            .map_err(|e| {
                Error::Engine(format!("{e} (the shape-generic plan failed too: {why})"))
            })?,
        );
        plans.push((
            inputs.iter().map(|x| x.shape().to_vec()).collect(),
            Arc::clone(&plan),
        ));
        Ok(plan)
    }

    /// Runs a mixed batch: row i of every input uses `tasks[i]`. The inputs' first axis must
    /// have `tasks.len()` rows.
    pub fn run_mixed(&self, inputs: &[TValue], tasks: &[TaskId]) -> Result<TVec<TValue>> {
        self.check_inputs(inputs)?;
        self.check_rows(inputs, tasks.len())?;
        self.run_each_row(inputs, tasks.iter().map(|&id| self.store.get(id)))
    }

    /// A fresh set of stacked coefficient tensors for mixed batches of `b` rows.
    fn stack_set(&self, b: usize) -> Result<Vec<Arc<Tensor>>> {
        let mut set = Vec::with_capacity(2 * self.coeff_inputs.len());
        for c in &self.coeff_inputs {
            for shape in [[b, c.k_a, c.r], [b, c.r, c.k_b]] {
                let t = Tensor::zero::<f32>(&shape).map_err(|e| {
                    Error::Engine(format!(
                        "mixed run: stacking coefficients: {}",
                        tract_err(e)
                    ))
                })?;
                set.push(Arc::new(t));
            }
        }
        Ok(set)
    }

    /// Checks the input count, and every id of an input that indexes a table (tract panics on
    /// an id outside it).
    fn check_inputs(&self, inputs: &[TValue]) -> Result<()> {
        if inputs.len() != self.base_inputs.len() {
            return Err(Error::Usage(format!(
                "expected {} inputs ({}), found {}",
                self.base_inputs.len(),
                self.base_inputs.join(", "),
                inputs.len()
            )));
        }
        for ((x, name), limit) in inputs.iter().zip(&self.base_inputs).zip(&self.index_limits) {
            let Some(limit) = limit else { continue };
            if !x.datum_type().is_integer() {
                return Err(Error::Usage(format!(
                    "input `{name}` indexes `{}` and takes integer ids, found {:?} values",
                    limit.table,
                    x.datum_type()
                )));
            }
            // Borrowed for i64 (the usual type): no copy on the hot path.
            let ids = x
                .cast_to::<i64>()
                .map_err(|e| Error::Usage(format!("input `{name}`: {}", tract_err(e))))?;
            let view = ids
                .try_as_plain_ram()
                .map_err(|e| Error::Usage(format!("input `{name}`: {}", tract_err(e))))?;
            let values = view
                .as_slice::<i64>()
                .map_err(|e| Error::Usage(format!("input `{name}`: {}", tract_err(e))))?;
            limit.check(name, x.shape(), values)?;
        }
        Ok(())
    }

    /// The base model re-read (hash checked) and patched for `tasks` tasks, for a new plan.
    pub(crate) fn patched(&self, tasks: usize) -> Result<PatchedModel> {
        let model = load_base(&self.base_path, &self.bundle)?;
        patch_owned(model, &self.bundle, tasks).map_err(|e| rename(e, &self.base_path))
    }

    /// The plan for mixed batches of `b` rows, built on first use.
    fn mixed_plan(&self, b: usize) -> Result<Arc<Mixed>> {
        let mut plans = self
            .mixed
            .lock()
            .map_err(|_| Error::Internal("plan cache lock poisoned".into()))?;
        if let Some(p) = plans.get(&b) {
            return Ok(Arc::clone(p));
        }
        let plan = Arc::new(Mixed {
            plan: build_plan(self.patched(b)?, &self.base_path, None, self.weights)?,
            pool: Mutex::new(Vec::with_capacity(2)),
        });
        plans.insert(b, Arc::clone(&plan));
        Ok(plan)
    }
}

/// Runs a plan, a panic inside tract becoming [`Error::Engine`].
fn run_plan(plan: &Plan, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
    engine_call("tract run", || {
        plan.runnable
            .run(inputs)
            .map_err(|e| Error::Engine(format!("tract run failed: {e:#}")))
    })
}

/// Copies row i's task coefficients into row i of every tensor of `set` ([B, K, r], B the
/// number of rows), in place (a tensor still shared, which a finished run never leaves, is
/// replaced by a fresh one). Rows come as an iterator, so a warm run allocates nothing here.
fn fill_rows<T: std::ops::Deref<Target = TaskData>>(
    set: &mut [Arc<Tensor>],
    rows: impl ExactSizeIterator<Item = Result<T>>,
    inputs: &[CoeffInput],
) -> Result<()> {
    let b = rows.len();
    let stack_err =
        |e: TractError| Error::Engine(format!("stacking coefficients: {}", tract_err(e)));
    for (i, task) in rows.enumerate() {
        let task = task?;
        task.check(inputs)?;
        for (slot, src) in set.iter_mut().zip(task.tensors(inputs)) {
            if Arc::get_mut(slot).is_none() {
                let shape = slot.shape().to_vec();
                *slot = Arc::new(Tensor::zero::<f32>(&shape).map_err(stack_err)?);
            }
            let mut view = Arc::get_mut(slot)
                .ok_or_else(|| Error::Internal("shared coefficient buffer".into()))?
                .try_as_plain_ram_mut()
                .map_err(stack_err)?;
            let dst = view.as_slice_mut::<f32>().map_err(stack_err)?;
            let n = src.data.len();
            if dst.len() != b * n {
                return Err(Error::Internal(format!(
                    "coefficient tensor `{}` holds {} values, expected {b} x {n}",
                    src.name,
                    dst.len()
                )));
            }
            dst[i * n..(i + 1) * n].copy_from_slice(src.data);
        }
    }
    Ok(())
}

/// Names the model's full path in a patch error.
fn rename(e: Error, path: &Path) -> Error {
    match e {
        Error::BadInput {
            path: p,
            tensor,
            message,
        } if !p.exists() => Error::BadInput {
            path: path.to_path_buf(),
            tensor,
            message,
        },
        other => other,
    }
}
