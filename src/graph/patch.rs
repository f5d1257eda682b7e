//! The graph patch shared by every backend: base `ModelProto` in, patched `ModelProto` out.
//!
//! For each bound module with activation X and output Y (the binding's `output`), the patch
//! inserts, right after Y's producer,
//!
//! ```text
//! FA = MatMul(<m>.V_A_T, <m>.alpha_A)   V_Aᵀ [in x K_A] (f32 initializer) · alpha_Aᵀ
//!                                        [tasks, K_A, r] (graph input, no initializer)
//! H  = MatMul(X, FA)                     [.., rows, r]
//! FB = MatMul(<m>.alpha_B, <m>.V_B_T)    alpha_Bᵀ [tasks, r, K_B] (graph input) · V_Bᵀ
//!                                        [K_B x out] (f32 initializer)
//! T  = MatMul(H, FB)
//! Y  = Add(Y_base, T)
//! ```
//!
//! FA and FB are the task's rank-r LoRA factors, formed per run from the resident components
//! and the task's coefficients (d·K·r multiply-adds each, whatever the batch), so the per-row
//! cost is that of a rank-r LoRA branch. [`PatchForm::Activations`] evaluates the same product
//! as `((X·V_Aᵀ)·alpha_Aᵀ)·alpha_Bᵀ·V_Bᵀ` instead (two [rows x d]·[d x K] products per side;
//! slower on the synthetic benchmark graph, within the noise on MiniLM; kept for comparison,
//! see BENCHMARKS.md).
//!
//! The producer's output is renamed `Y_base`, so every consumer of Y (graph outputs included)
//! now reads Y + T. r is the module's r_max (the store zero-pads smaller ranks), so all shapes
//! are fixed, as TensorRT wants.
//!
//! * `tasks = 1`: the coefficient inputs are [1, K, r]; a Reshape drops the task axis so one
//!   task applies to every row with a plain matrix product.
//! * `tasks = B`: row i of the batch uses task i, by MatMul batch broadcasting: the factors
//!   are [B, in, r] and [B, r, out], and [B, S, in] x [B, in, r] applies row i's. A rank-2 activation (Gemm, [B, in]) is reshaped to [B, 1, in]
//!   and back. The first axis of every graph input and output, when symbolic, is fixed to B.
//!
//! * `tasks = PER_ROW` (0): as `tasks = B`, with the task axis the base inputs' symbolic
//!   batch axis instead of a fixed B, so one graph serves batches of every size.
//!
//! All-zero coefficients give T = 0 and so exactly the base outputs.

use super::onnx::{self, Dim, node, tensor_f32, tensor_i64, value_info, value_info_dims};
use super::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::bundle::format::ModuleBinding;
use crate::bundle::{Binding, Bundle};
use crate::error::{Error, Result};
use crate::subspace::ModuleSubspace;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// One bound module's coefficient inputs in the patched graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoeffInput {
    /// Module name.
    pub module: String,
    /// Graph input holding alpha_Aᵀ, shape [tasks, k_a, r].
    pub alpha_a: String,
    /// Graph input holding alpha_Bᵀ, shape [tasks, r, k_b].
    pub alpha_b: String,
    /// K_A of the module.
    pub k_a: usize,
    /// K_B of the module.
    pub k_b: usize,
    /// The padded rank (the module's r_max).
    pub r: usize,
}

impl CoeffInput {
    /// The module's coefficient layout (name, K_A, K_B, r).
    pub fn layout(&self) -> crate::task::CoeffLayout {
        crate::task::CoeffLayout {
            name: self.module.clone(),
            k_a: self.k_a,
            k_b: self.k_b,
            r: self.r,
        }
    }
}

/// A patched model and the coefficient inputs it expects, in graph-input order (after the
/// base model's own inputs).
#[derive(Clone, Debug)]
pub struct PatchedModel {
    /// The patched model.
    pub proto: ModelProto,
    /// Coefficient inputs, one per bound module, in binding (module name) order.
    pub coeff_inputs: Vec<CoeffInput>,
    /// How many tasks the coefficient inputs hold (their leading axis); [`PER_ROW`]: one per
    /// row of a batch of any size.
    pub tasks: usize,
    /// Names of the base model's own graph inputs (the first inputs of the patched graph).
    pub base_inputs: Vec<String>,
}

/// The bundle's binding, or an error telling the user to bind it.
pub fn binding_of(bundle: &Bundle) -> Result<&Binding> {
    bundle.manifest.binding.as_ref().ok_or_else(|| {
        Error::bad_file(
            &bundle.path,
            "expected a bundle bound to a base model; run `elx bind` on it first",
        )
    })
}

/// Checks a model's SHA-256 against the bundle's binding (an error naming both hashes).
pub fn check_base_hash(path: &Path, sha256: &str, bundle: &Bundle) -> Result<()> {
    let binding = binding_of(bundle)?;
    if binding.base_sha256 != sha256 {
        return Err(Error::bad_file(
            path,
            format!(
                "expected the base model the bundle {} was bound to (`{}`, SHA-256 {}), found a model with SHA-256 {}",
                bundle.path.display(),
                binding.base_file,
                binding.base_sha256,
                sha256
            ),
        ));
    }
    Ok(())
}

/// Reads the base model file and checks it is the one the bundle was bound to.
pub fn load_base(path: &Path, bundle: &Bundle) -> Result<ModelProto> {
    Ok(load_base_mapped(path, bundle)?.0)
}

/// [`load_base`], with the handle on the file's mapped pages ([`onnx::map_model`]), so that
/// a caller that has converted the weights lets go of them.
pub fn load_base_mapped(path: &Path, bundle: &Bundle) -> Result<(ModelProto, onnx::MappedPages)> {
    let (model, sha, pages) = onnx::map_model(path)?;
    check_base_hash(path, &sha, bundle)?;
    Ok((model, pages))
}

/// [`load_base`] then [`patch`]: the way a device loads a model.
pub fn patch_file(path: &Path, bundle: &Bundle, tasks: usize) -> Result<PatchedModel> {
    let model = load_base(path, bundle)?;
    patch(&model, bundle, tasks).map_err(|e| match e {
        Error::BadInput {
            tensor, message, ..
        } => Error::BadInput {
            path: path.to_path_buf(),
            tensor,
            message,
        },
        other => other,
    })
}

/// Patches `base` for `bundle` (see the module docs). The caller has checked the model's
/// hash ([`load_base`] / [`patch_file`] do); a model lacking a bound node is an error naming
/// the module and the node.
pub fn patch(base: &ModelProto, bundle: &Bundle, tasks: usize) -> Result<PatchedModel> {
    patch_with(base, bundle, tasks, PatchForm::default())
}

/// How the patch evaluates the correction (the same math, different association).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatchForm {
    /// `((X·V_Aᵀ)·alpha_Aᵀ)·alpha_Bᵀ·V_Bᵀ`: two products of the activations with the [d x K]
    /// components: per row d·K + K·r multiply-adds per side.
    Activations,
    /// `(X·(V_Aᵀ·alpha_Aᵀ))·(alpha_Bᵀ·V_Bᵀ)`: the task's rank-r factors are formed once per run
    /// (d·K·r each, independent of the batch and sequence), then applied like a LoRA branch,
    /// per row d·r multiply-adds per side. Fewer multiply-adds whenever rows > K·r/(K−r);
    /// the default (measured in BENCHMARKS.md).
    #[default]
    Factors,
}

/// [`patch`] with an explicit [`PatchForm`] (benchmarks compare the forms).
pub fn patch_with(
    base: &ModelProto,
    bundle: &Bundle,
    tasks: usize,
    form: PatchForm,
) -> Result<PatchedModel> {
    patch_owned_with(base.clone(), bundle, tasks, form)
}

/// [`patch`] consuming the base model, so that its weights are not copied (a runtime that
/// does not keep the base model saves one copy of them at load).
pub fn patch_owned(model: ModelProto, bundle: &Bundle, tasks: usize) -> Result<PatchedModel> {
    patch_owned_with(model, bundle, tasks, PatchForm::default())
}

/// [`patch_owned`] with an explicit [`PatchForm`].
pub fn patch_owned_with(
    mut model: ModelProto,
    bundle: &Bundle,
    tasks: usize,
    form: PatchForm,
) -> Result<PatchedModel> {
    let binding = binding_of(bundle)?;
    let file = binding.base_file.as_str();
    // A model that is not what the binding assumes must not reach an engine (issue 13).
    super::check::check_model(&model, &bundle.manifest, binding, file)?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::bad_file(file, "expected an ONNX model with a graph, found none"))?;

    let base_inputs = base_input_names(graph);
    let names = names_in_use(graph);
    let declared = declared_dims(graph);
    // The task axis: fixed, or (tasks = 0) the base inputs' own symbolic batch axis.
    let task_dim = if tasks == PER_ROW {
        let batch = base_inputs
            .first()
            .and_then(|n| declared.get(n))
            .and_then(|d| d.first())
            .and_then(|d| match d {
                Dim::Param(p) if !p.is_empty() => Some(p.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                Error::bad_file(
                    file,
                    "expected a symbolic batch axis on the first input, for coefficients given per row",
                )
            })?;
        Dim::Param(batch)
    } else {
        Dim::Fixed(tasks)
    };

    let mut inserts: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut new_inputs: Vec<ValueInfoProto> = Vec::new();
    let mut coeff_inputs = Vec::new();
    let mut outputs_seen: HashSet<&str> = HashSet::new();

    for (m, mb) in &binding.modules {
        let sub = module_components(bundle, m)?;
        let (din, dout) = (sub.in_features, sub.out_features);
        let (k_a, k_b, r) = (sub.v_a.nrows(), sub.v_b.ncols(), sub.r_max);
        let (ni, pi) = bound_node(graph, file, m, mb)?;
        if !outputs_seen.insert(mb.output.as_str()) {
            return Err(Error::bad_file(
                &bundle.path,
                format!(
                    "expected distinct outputs per module; `{}` is bound twice",
                    mb.output
                ),
            ));
        }
        // A rank-2 activation (Gemm, or a declared 2-D MatMul input) needs an explicit row axis
        // for per-row tasks.
        let rank2 = graph.node[ni].op_type == "Gemm"
            || declared.get(&mb.input).is_some_and(|d| d.len() == 2);
        let n = PatchNames::new(m, &mb.output);
        n.check_free(&names, file)?;

        new_inits.extend(component_tensors(sub, &n));
        new_inputs.push(value_info(
            &n.in_a,
            onnx::FLOAT,
            &[task_dim.clone(), Dim::Fixed(k_a), Dim::Fixed(r)],
        ));
        new_inputs.push(value_info(
            &n.in_b,
            onnx::FLOAT,
            &[task_dim.clone(), Dim::Fixed(r), Dim::Fixed(k_b)],
        ));
        let shape = Shape {
            din,
            dout,
            k_a,
            k_b,
            r,
        };
        let nodes = correction_nodes(
            &n,
            &mb.input,
            &mb.output,
            shape,
            tasks,
            rank2,
            form,
            &mut new_inits,
        );
        inserts.entry(pi).or_default().extend(nodes);

        // The producer now writes Y_base; the Add writes Y, so all consumers read Y + T.
        if let Some(o) = graph.node[pi].output.iter_mut().find(|o| **o == mb.output) {
            *o = n.y_base;
        }
        coeff_inputs.push(CoeffInput {
            module: m.clone(),
            alpha_a: n.in_a,
            alpha_b: n.in_b,
            k_a,
            k_b,
            r,
        });
    }

    splice(&mut graph.node, inserts);
    graph.initializer.extend(new_inits);
    graph.input.extend(new_inputs);

    if tasks > 1 {
        fix_batch_axis(&mut graph.input, &mut graph.output, tasks);
    }
    Ok(PatchedModel {
        proto: model,
        coeff_inputs,
        tasks,
        base_inputs,
    })
}

/// The prefix of every node name the patch adds (engines tell the base's own products from
/// the patch's by it: tract quantizes only the former).
pub const NODE_PREFIX: &str = "eigenlorax/";

/// `tasks` for a patch whose coefficient inputs take one task per row, their leading axis the
/// base inputs' own symbolic batch axis: one graph (and one engine plan) serves single-task
/// and mixed-task batches of any size. A decoder serves this way, since its batches change
/// size from step to step and one plan holds its weights once.
pub const PER_ROW: usize = 0;

/// The graph inputs that are not initializers: the base model's own inputs.
fn base_input_names(graph: &GraphProto) -> Vec<String> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .map(|v| v.name.clone())
        .collect()
}

/// Every name in use, to refuse collisions with the names the patch adds.
fn names_in_use(graph: &GraphProto) -> HashSet<String> {
    let mut names: HashSet<String> = HashSet::new();
    for n in &graph.node {
        names.extend(n.input.iter().cloned());
        names.extend(n.output.iter().cloned());
    }
    names.extend(graph.initializer.iter().map(|t| t.name.clone()));
    names.extend(graph.input.iter().map(|v| v.name.clone()));
    names
}

/// The declared shapes of the graph's inputs, value infos and outputs.
fn declared_dims(graph: &GraphProto) -> HashMap<String, Vec<Dim>> {
    graph
        .input
        .iter()
        .chain(graph.value_info.iter())
        .chain(graph.output.iter())
        .filter_map(|v| value_info_dims(v).map(|d| (v.name.clone(), d)))
        .collect()
}

/// The bundle's components of bound module `m`, checked for consistent shapes.
fn module_components<'a>(bundle: &'a Bundle, m: &str) -> Result<&'a ModuleSubspace> {
    let sub = bundle.subspace.modules.get(m).ok_or_else(|| {
        Error::bad_file(
            &bundle.path,
            format!("expected components for bound module `{m}`, found none"),
        )
    })?;
    let (din, dout, r) = (sub.in_features, sub.out_features, sub.r_max);
    if sub.v_a.ncols() != din || sub.v_b.nrows() != dout || r == 0 {
        return Err(Error::bad_tensor(
            &bundle.path,
            format!("{m}.V_A"),
            format!(
                "expected V_A [K_A x {din}], V_B [{dout} x K_B], r_max > 0; found V_A {}x{}, V_B {}x{}, r_max {r}",
                sub.v_a.nrows(),
                sub.v_a.ncols(),
                sub.v_b.nrows(),
                sub.v_b.ncols()
            ),
        ));
    }
    Ok(sub)
}

/// The bound MatMul/Gemm node of module `m` and the node producing its output, checked
/// against the binding: (bound node index, producer index).
fn bound_node(
    graph: &GraphProto,
    file: &str,
    m: &str,
    mb: &ModuleBinding,
) -> Result<(usize, usize)> {
    let lacks = |what: &str| {
        Error::bad_file(
            file,
            format!(
                "module `{m}` is bound to node `{}`, but the model {what}",
                mb.node
            ),
        )
    };
    let ni = graph
        .node
        .iter()
        .position(|n| n.name == mb.node)
        .ok_or_else(|| lacks("has no node of that name"))?;
    let bnode = &graph.node[ni];
    if !matches!(bnode.op_type.as_str(), "MatMul" | "Gemm") {
        return Err(lacks(&format!(
            "has it as a {} (expected MatMul or Gemm)",
            bnode.op_type
        )));
    }
    if bnode.input.first() != Some(&mb.input) {
        return Err(lacks(&format!(
            "feeds it `{:?}` rather than `{}`",
            bnode.input.first(),
            mb.input
        )));
    }
    let pi = graph
        .node
        .iter()
        .position(|n| n.output.contains(&mb.output))
        .ok_or_else(|| lacks(&format!("has no node producing `{}`", mb.output)))?;
    Ok((ni, pi))
}

/// The names the patch adds for one module.
struct PatchNames {
    va_t: String,
    vb_t: String,
    in_a: String,
    in_b: String,
    /// Prefix of the module's node names.
    p: String,
    y_base: String,
    h0: String,
    h1: String,
    h2: String,
    h3: String,
    t: String,
    t2: String,
    ra: String,
    rb: String,
    sh_a: String,
    sh_b: String,
    sh_x: String,
    sh_y: String,
}

impl PatchNames {
    fn new(m: &str, output: &str) -> Self {
        let p = format!("{NODE_PREFIX}{m}/");
        PatchNames {
            va_t: format!("{m}.V_A_T"),
            vb_t: format!("{m}.V_B_T"),
            in_a: format!("{m}.alpha_A"),
            in_b: format!("{m}.alpha_B"),
            y_base: format!("{output}.eigenlorax_base"),
            h0: format!("{p}x3"),
            h1: format!("{p}h1"),
            h2: format!("{p}h2"),
            h3: format!("{p}h3"),
            t: format!("{p}t"),
            t2: format!("{p}t2"),
            ra: format!("{p}alpha_A_2d"),
            rb: format!("{p}alpha_B_2d"),
            sh_a: format!("{p}shape_A"),
            sh_b: format!("{p}shape_B"),
            sh_x: format!("{p}shape_x3"),
            sh_y: format!("{p}shape_y2"),
            p,
        }
    }

    /// Refuses a model that already uses one of these names.
    fn check_free(&self, names: &HashSet<String>, file: &str) -> Result<()> {
        for n in [
            &self.va_t,
            &self.vb_t,
            &self.in_a,
            &self.in_b,
            &self.y_base,
            &self.h0,
            &self.h1,
            &self.h2,
            &self.h3,
            &self.t,
            &self.t2,
            &self.ra,
            &self.rb,
            &self.sh_a,
            &self.sh_b,
            &self.sh_x,
            &self.sh_y,
        ] {
            if names.contains(n.as_str()) {
                return Err(Error::bad_file(
                    file,
                    format!("expected no tensor named `{n}` (the patch adds it), found one"),
                ));
            }
        }
        Ok(())
    }
}

/// V_Aᵀ [in x K_A] and V_Bᵀ [K_B x out], row-major f32 initializers.
fn component_tensors(sub: &ModuleSubspace, n: &PatchNames) -> [TensorProto; 2] {
    let (din, dout) = (sub.in_features, sub.out_features);
    let (k_a, k_b) = (sub.v_a.nrows(), sub.v_b.ncols());
    let mut a = Vec::with_capacity(din * k_a);
    for i in 0..din {
        for k in 0..k_a {
            a.push(sub.v_a[(k, i)] as f32);
        }
    }
    let mut b = Vec::with_capacity(k_b * dout);
    for k in 0..k_b {
        for o in 0..dout {
            b.push(sub.v_b[(o, k)] as f32);
        }
    }
    [
        tensor_f32(&n.va_t, &[din, k_a], &a),
        tensor_f32(&n.vb_t, &[k_b, dout], &b),
    ]
}

/// One module's sizes.
#[derive(Clone, Copy)]
struct Shape {
    din: usize,
    dout: usize,
    k_a: usize,
    k_b: usize,
    r: usize,
}

/// The nodes computing `output = Y_base + T` for one module (T the low-rank correction in
/// `form`), with the reshape constants they need pushed onto `inits`.
#[allow(clippy::too_many_arguments)]
fn correction_nodes(
    n: &PatchNames,
    input: &str,
    output: &str,
    s: Shape,
    tasks: usize,
    rank2: bool,
    form: PatchForm,
    inits: &mut Vec<TensorProto>,
) -> Vec<NodeProto> {
    let Shape {
        din,
        dout,
        k_a,
        k_b,
        r,
    } = s;
    let p = &n.p;
    let mut nodes = Vec::new();
    let mut x = input.to_string();
    let (mut alpha_a, mut alpha_b) = (n.in_a.clone(), n.in_b.clone());
    let mixed_rank2 = tasks != 1 && rank2;
    if tasks == 1 {
        inits.push(tensor_i64(&n.sh_a, &[2], &[k_a as i64, r as i64]));
        inits.push(tensor_i64(&n.sh_b, &[2], &[r as i64, k_b as i64]));
        nodes.push(node(
            "Reshape",
            &format!("{p}reshape_A"),
            &[&n.in_a, &n.sh_a],
            &[&n.ra],
            vec![],
        ));
        nodes.push(node(
            "Reshape",
            &format!("{p}reshape_B"),
            &[&n.in_b, &n.sh_b],
            &[&n.rb],
            vec![],
        ));
        alpha_a = n.ra.clone();
        alpha_b = n.rb.clone();
    } else if mixed_rank2 {
        inits.push(tensor_i64(&n.sh_x, &[3], &[-1, 1, din as i64]));
        inits.push(tensor_i64(&n.sh_y, &[2], &[-1, dout as i64]));
        nodes.push(node(
            "Reshape",
            &format!("{p}reshape_x"),
            &[input, &n.sh_x],
            &[&n.h0],
            vec![],
        ));
        x = n.h0.clone();
    }
    match form {
        PatchForm::Activations => {
            nodes.push(node(
                "MatMul",
                &format!("{p}down_V_A"),
                &[&x, &n.va_t],
                &[&n.h1],
                vec![],
            ));
            nodes.push(node(
                "MatMul",
                &format!("{p}alpha_A"),
                &[&n.h1, &alpha_a],
                &[&n.h2],
                vec![],
            ));
            nodes.push(node(
                "MatMul",
                &format!("{p}alpha_B"),
                &[&n.h2, &alpha_b],
                &[&n.h3],
                vec![],
            ));
        }
        PatchForm::Factors => {
            // A'ᵀ = V_Aᵀ·alpha_Aᵀ [.., in, r], B'ᵀ = alpha_Bᵀ·V_Bᵀ [.., r, out]: independent of
            // X, so the per-row cost is that of a rank-r LoRA branch.
            nodes.push(node(
                "MatMul",
                &format!("{p}factor_A"),
                &[&n.va_t, &alpha_a],
                &[&n.h1],
                vec![],
            ));
            nodes.push(node(
                "MatMul",
                &format!("{p}down_A"),
                &[&x, &n.h1],
                &[&n.h2],
                vec![],
            ));
            nodes.push(node(
                "MatMul",
                &format!("{p}factor_B"),
                &[&alpha_b, &n.vb_t],
                &[&n.h3],
                vec![],
            ));
        }
    }
    // The last product: H3·V_Bᵀ (activations) or H2·B'ᵀ (factors).
    let (up_l, up_r) = match form {
        PatchForm::Activations => (&n.h3, &n.vb_t),
        PatchForm::Factors => (&n.h2, &n.h3),
    };
    if mixed_rank2 {
        nodes.push(node(
            "MatMul",
            &format!("{p}up_V_B"),
            &[up_l, up_r],
            &[&n.t2],
            vec![],
        ));
        nodes.push(node(
            "Reshape",
            &format!("{p}reshape_y"),
            &[&n.t2, &n.sh_y],
            &[&n.t],
            vec![],
        ));
    } else {
        nodes.push(node(
            "MatMul",
            &format!("{p}up_V_B"),
            &[up_l, up_r],
            &[&n.t],
            vec![],
        ));
    }
    nodes.push(node(
        "Add",
        &format!("{p}add"),
        &[&n.y_base, &n.t],
        &[output],
        vec![],
    ));
    nodes
}

/// Rebuilds the node list with each insertion right after its producer (keeps the graph
/// topologically sorted: the inserted nodes read only X, Y_base and new tensors).
fn splice(graph_nodes: &mut Vec<NodeProto>, mut inserts: HashMap<usize, Vec<NodeProto>>) {
    let old = std::mem::take(graph_nodes);
    let mut nodes = Vec::with_capacity(old.len() + inserts.values().map(Vec::len).sum::<usize>());
    for (i, n) in old.into_iter().enumerate() {
        nodes.push(n);
        if let Some(extra) = inserts.remove(&i) {
            nodes.extend(extra);
        }
    }
    *graph_nodes = nodes;
}

/// Fixes every symbolic size named like a graph input's first axis to `tasks`, in the graph
/// inputs and outputs (a mixed batch has exactly one row per task).
fn fix_batch_axis(inputs: &mut [ValueInfoProto], outputs: &mut [ValueInfoProto], tasks: usize) {
    use super::pb::{tensor_shape_proto::dimension::Value as DV, type_proto::Value as TV};
    let mut params: HashSet<String> = HashSet::new();
    for v in inputs.iter() {
        if let Some(d) = value_info_dims(v)
            && let Some(Dim::Param(p)) = d.first()
            && !p.is_empty()
        {
            params.insert(p.clone());
        }
    }
    for v in inputs.iter_mut().chain(outputs.iter_mut()) {
        if let Some(TV::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(s) = t.shape.as_mut()
        {
            for d in &mut s.dim {
                if let Some(DV::DimParam(p)) = &d.value
                    && params.contains(p)
                {
                    d.value = Some(DV::DimValue(tasks as i64));
                }
            }
        }
    }
}
