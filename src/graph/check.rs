//! What a base model accepts, checked before an engine sees it (issue 13): a user's model or
//! input must never reach tract or ONNX Runtime in a form that makes them panic.
//!
//! * [`check_model`]: at bind and at every load, the initializers have a loadable type and
//!   the bytes their dims promise, and every bound node has the op, input count, weight,
//!   ranks and element types the patch assumes (a MatMul rewired to an Unsqueeze of the
//!   attention mask, or a string initializer, is a named error, not a panic in tract).
//! * [`index_limits`]: for each graph input that indexes a table (token ids into the
//!   embedding `Gather`), the table's row count; [`IndexLimit::check`] refuses ids outside it
//!   (tract panics on them, and negative ids silently wrap to the end of the table).
//!
//! Shapes are inferred only through the common ops listed in [`infer_shapes`]; where the
//! inference stops, nothing is refused: only provable mismatches are errors.

use super::onnx::{self, Dim, get_attr, get_attr_int, is_external, value_info_dims};
use super::pb::{GraphProto, ModelProto, NodeProto, TensorProto, type_proto};
use crate::bundle::{Binding, Manifest, WeightLayout};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// The table an integer graph input indexes: ids must lie in `0..rows`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLimit {
    /// The initializer indexed (e.g. the word embeddings).
    pub table: String,
    /// Its rows along the gathered axis (the vocabulary size for token ids).
    pub rows: usize,
}

impl IndexLimit {
    /// Checks every id of the graph input `input` (values `ids`, row-major `shape`): an id
    /// outside `0..rows` is an error naming the input, the id, its position and the table.
    pub fn check(&self, input: &str, shape: &[usize], ids: &[i64]) -> Result<()> {
        let rows = i64::try_from(self.rows).unwrap_or(i64::MAX);
        let Some(at) = ids.iter().position(|&v| v < 0 || v >= rows) else {
            return Ok(());
        };
        // The flat position as an index per axis, e.g. [row, token].
        let mut index = vec![0usize; shape.len()];
        let mut rest = at;
        for (i, &d) in shape.iter().enumerate().rev() {
            if d > 0 {
                index[i] = rest % d;
                rest /= d;
            }
        }
        Err(Error::Usage(format!(
            "input `{input}`: id {} at {index:?} is outside the model's table: expected 0 <= id < {} (the rows of `{}`)",
            ids[at], self.rows, self.table
        )))
    }
}

/// Ops that pass an integer tensor's values on unchanged (only the shape or type changes).
const VALUE_PRESERVING: &[&str] = &[
    "Cast",
    "Identity",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
];

/// For each of `inputs` (graph input names), the table it indexes through a `Gather` of a
/// constant table (directly, or after ops that keep its values), or `None` when it indexes
/// none. An input feeding several tables gets the smallest.
pub fn index_limits(model: &ModelProto, inputs: &[String]) -> Vec<Option<IndexLimit>> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![None; inputs.len()];
    };
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    let mut producer: HashMap<&str, &NodeProto> = HashMap::new();
    for n in &graph.node {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(n);
        }
        for o in &n.output {
            producer.insert(o.as_str(), n);
        }
    }
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    inputs
        .iter()
        .map(|name| {
            let mut best: Option<IndexLimit> = None;
            // Breadth-first over value-preserving ops, a few levels deep.
            let mut frontier = vec![name.as_str()];
            for _ in 0..4 {
                let mut next = Vec::new();
                for v in frontier {
                    for n in consumers.get(v).into_iter().flatten() {
                        if !is_default_domain(n) {
                            continue;
                        }
                        if n.op_type == "Gather" && n.input.get(1).map(String::as_str) == Some(v) {
                            if let Some(limit) = gathered_rows(n, &inits, &producer)
                                && best.as_ref().is_none_or(|b| limit.rows < b.rows)
                            {
                                best = Some(limit);
                            }
                        } else if VALUE_PRESERVING.contains(&n.op_type.as_str())
                            && n.input.first().map(String::as_str) == Some(v)
                        {
                            next.extend(n.output.iter().map(String::as_str));
                        }
                    }
                }
                frontier = next;
            }
            best
        })
        .collect()
}

/// The rows along the gathered axis of a Gather's table, when the table is a constant
/// (an initializer, possibly behind a Cast or Identity).
fn gathered_rows(
    n: &NodeProto,
    inits: &HashMap<&str, &TensorProto>,
    producer: &HashMap<&str, &NodeProto>,
) -> Option<IndexLimit> {
    let mut data = n.input.first()?.as_str();
    for _ in 0..3 {
        if inits.contains_key(data) {
            break;
        }
        let p = producer.get(data)?;
        if !matches!(p.op_type.as_str(), "Cast" | "Identity") {
            return None;
        }
        data = p.input.first()?.as_str();
    }
    let t = inits.get(data)?;
    let rank = i64::try_from(t.dims.len()).ok()?;
    let mut axis = get_attr_int(n, "axis", 0);
    if axis < 0 {
        axis += rank;
    }
    let rows = *t.dims.get(usize::try_from(axis).ok()?)?;
    Some(IndexLimit {
        table: t.name.clone(),
        rows: usize::try_from(rows).ok()?,
    })
}

fn is_default_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// Bytes per element of the ONNX element types an engine can load, `None` for the others
/// (strings, complex numbers, the 8-bit and 4-bit float formats, unknown codes).
fn elem_size(data_type: i32) -> Option<usize> {
    match data_type {
        2 | 3 | 9 => Some(1),       // uint8, int8, bool
        4 | 5 | 10 | 16 => Some(2), // uint16, int16, float16, bfloat16
        1 | 6 | 12 => Some(4),      // float, int32, uint32
        7 | 11 | 13 => Some(8),     // int64, double, uint64
        _ => None,
    }
}

/// Checks one constant tensor: a loadable element type, non-negative dims, and as many
/// values (raw bytes or typed fields) as the dims promise.
fn check_tensor(t: &TensorProto, file: &str) -> Result<()> {
    let bad = |m: String| Error::bad_tensor(file, &t.name, m);
    let size = elem_size(t.data_type).ok_or_else(|| {
        bad(format!(
            "expected a numeric or boolean tensor an engine can load, found ONNX element type {}{}",
            t.data_type,
            if t.data_type == 8 { " (string)" } else { "" }
        ))
    })?;
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| bad(format!("expected non-negative dims, found {:?}", t.dims)))?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| bad(format!("dims {:?} overflow", t.dims)))?;
    }
    if is_external(t) {
        return Ok(());
    }
    let found = if !t.raw_data.is_empty() {
        let want = n.saturating_mul(size);
        if t.raw_data.len() != want {
            return Err(bad(format!(
                "expected {want} bytes of raw data for dims {:?}, found {}",
                t.dims,
                t.raw_data.len()
            )));
        }
        return Ok(());
    } else {
        match t.data_type {
            1 => t.float_data.len(),
            7 => t.int64_data.len(),
            11 => t.double_data.len(),
            12 | 13 => t.uint64_data.len(),
            _ => t.int32_data.len(),
        }
    };
    if found != n {
        return Err(bad(format!(
            "expected {n} values for dims {:?}, found {found}",
            t.dims
        )));
    }
    Ok(())
}

/// Checks `model` (named `file` in errors) for the bundle `manifest` bound by `binding`:
/// every initializer and constant is loadable, and every bound module's node is what the
/// patch assumes: a MatMul (2 inputs) or Gemm (2 or 3, `transA` = 0) whose first input is
/// the binding's activation X and whose weight is the binding's 2-D f32 initializer of the
/// module's shape; X, where its shape can be inferred, has rank >= 2 (exactly 2 for Gemm)
/// and the module's input features on its last axis; X and the bound output are f32 where
/// declared.
pub fn check_model(
    model: &ModelProto,
    manifest: &Manifest,
    binding: &Binding,
    file: &str,
) -> Result<()> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::bad_file(file, "expected an ONNX model with a graph, found none"))?;
    for t in &graph.initializer {
        check_tensor(t, file)?;
    }
    for n in &graph.node {
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref() {
                check_tensor(t, file)?;
            }
        }
    }
    let shapes = infer_shapes(graph);
    let declared_types = declared_elem_types(graph);
    for (m, mb) in &binding.modules {
        let mm = manifest.modules.get(m).ok_or_else(|| {
            Error::Usage(format!(
                "the binding names module `{m}`, which the bundle does not have"
            ))
        })?;
        let bad = |what: String| {
            Error::bad_file(
                file,
                format!("module `{m}` is bound to node `{}`, but {what}", mb.node),
            )
        };
        let node = graph
            .node
            .iter()
            .find(|n| n.name == mb.node)
            .ok_or_else(|| bad("the model has no node of that name".into()))?;
        let inputs_ok = match node.op_type.as_str() {
            "MatMul" => node.input.len() == 2,
            "Gemm" => matches!(node.input.len(), 2 | 3) && get_attr_int(node, "transA", 0) == 0,
            other => {
                return Err(bad(format!(
                    "the model has it as a {other} (expected MatMul or Gemm)"
                )));
            }
        };
        if !inputs_ok || node.output.len() != 1 {
            return Err(bad(format!(
                "the {} has {} inputs and {} outputs (expected a plain {} with X, W{} and one output)",
                node.op_type,
                node.input.len(),
                node.output.len(),
                node.op_type,
                if node.op_type == "Gemm" { " (, C)" } else { "" }
            )));
        }
        if node.input[0] != mb.input {
            return Err(bad(format!(
                "the model feeds it `{}` rather than `{}`",
                node.input[0], mb.input
            )));
        }
        check_weight(
            graph,
            node,
            mb.weight.as_str(),
            mb.layout,
            (mm.in_features, mm.out_features),
        )
        .map_err(bad)?;
        if !graph.node.iter().any(|n| n.output.contains(&mb.output)) {
            return Err(bad(format!("no node produces its output `{}`", mb.output)));
        }
        for (what, name) in [("activation", &mb.input), ("output", &mb.output)] {
            if let Some(&code) = declared_types.get(name.as_str())
                && code != onnx::FLOAT
            {
                return Err(bad(format!(
                    "its {what} `{name}` is declared with ONNX element type {code} (expected float32, 1)"
                )));
            }
        }
        if let Some(Some(x)) = shapes.get(mb.input.as_str()) {
            let rank_ok = match node.op_type.as_str() {
                "Gemm" => x.len() == 2,
                _ => x.len() >= 2,
            };
            if !rank_ok {
                return Err(bad(format!(
                    "its activation `{}` has rank {} (expected {} with the features last)",
                    mb.input,
                    x.len(),
                    if node.op_type == "Gemm" { "2" } else { ">= 2" }
                )));
            }
            match x.last() {
                Some(InferredDim::Fixed(d)) if *d != mm.in_features => {
                    return Err(bad(format!(
                        "its activation `{}` has {d} features on its last axis (expected {})",
                        mb.input, mm.in_features
                    )));
                }
                Some(InferredDim::Symbol(s)) => {
                    return Err(bad(format!(
                        "its activation `{}` has the input-dependent size `{s}` on its last axis (expected {} features)",
                        mb.input, mm.in_features
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks that the bound node's second input is the binding's weight, a 2-D f32
/// initializer (through a Transpose for [`WeightLayout::OutIn`] MatMuls) of `(in, out)`.
fn check_weight(
    graph: &GraphProto,
    node: &NodeProto,
    weight: &str,
    layout: WeightLayout,
    (din, dout): (usize, usize),
) -> std::result::Result<(), String> {
    let w = node.input[1].as_str();
    let direct = w == weight;
    let through_transpose = !direct
        && graph.node.iter().any(|p| {
            p.op_type == "Transpose"
                && p.output.iter().any(|o| o == w)
                && p.input.first().map(String::as_str) == Some(weight)
                && get_attr(p, "perm").is_none_or(|a| a.ints == [1, 0])
        });
    if !direct && !through_transpose {
        return Err(format!(
            "its weight input is `{w}`, not the bound weight `{weight}`"
        ));
    }
    let t = graph
        .initializer
        .iter()
        .find(|t| t.name == weight)
        .ok_or_else(|| format!("its weight `{weight}` is not an initializer"))?;
    if t.data_type != onnx::FLOAT {
        return Err(format!(
            "its weight `{weight}` has ONNX element type {} (expected float32, 1)",
            t.data_type
        ));
    }
    let transposed_gemm = node.op_type == "Gemm" && get_attr_int(node, "transB", 0) != 0;
    let stored_out_in = through_transpose || transposed_gemm;
    let want: [i64; 2] = match (layout, stored_out_in) {
        (WeightLayout::InOut, false) => [din as i64, dout as i64],
        (WeightLayout::OutIn, true) => [dout as i64, din as i64],
        _ => {
            return Err(format!(
                "its weight `{weight}` is laid out otherwise than the binding says ({layout:?})"
            ));
        }
    };
    if t.dims != want {
        return Err(format!(
            "its weight `{weight}` has dims {:?} (expected {want:?} for {din} -> {dout} features)",
            t.dims
        ));
    }
    Ok(())
}

/// The element types declared for graph inputs, outputs and value infos.
fn declared_elem_types(graph: &GraphProto) -> HashMap<&str, i32> {
    graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
        .filter_map(|v| match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) if t.elem_type != 0 => {
                Some((v.name.as_str(), t.elem_type))
            }
            _ => None,
        })
        .collect()
}

/// One axis of an inferred shape.
#[derive(Clone, Debug, PartialEq, Eq)]
enum InferredDim {
    /// A known size.
    Fixed(usize),
    /// A size that depends on the input (a named graph-input axis, e.g. `sequence`).
    Symbol(String),
    /// Not known.
    Unknown,
}

/// Inferred shapes: `None` where even the rank is not known.
type Shapes<'a> = HashMap<&'a str, Option<Vec<InferredDim>>>;

/// Shapes of the graph's values, inferred in node order from the declared inputs, the
/// initializers and constants through: element-wise unary ops (Cast, Identity, Dropout, Erf,
/// Sqrt, Relu, Tanh, Sigmoid, Softmax, LayerNormalization, ...), broadcasting binary ops (Add,
/// Sub, Mul, Div, Pow, Where, ...), MatMul, Gemm, Gather, Unsqueeze, Squeeze (with axes) and
/// Transpose. Any other op's outputs are unknown.
fn infer_shapes(graph: &GraphProto) -> Shapes<'_> {
    let mut s: Shapes<'_> = HashMap::new();
    for v in &graph.input {
        let dims = value_info_dims(v).map(|d| {
            d.into_iter()
                .map(|d| match d {
                    Dim::Fixed(n) => InferredDim::Fixed(n),
                    Dim::Param(p) if !p.is_empty() => InferredDim::Symbol(p),
                    Dim::Param(_) => InferredDim::Unknown,
                })
                .collect()
        });
        s.insert(v.name.as_str(), dims);
    }
    let fixed = |t: &TensorProto| -> Option<Vec<InferredDim>> {
        t.dims
            .iter()
            .map(|&d| usize::try_from(d).ok().map(InferredDim::Fixed))
            .collect()
    };
    // Int64 constants (initializers and Constant nodes): the axes of Unsqueeze and Squeeze.
    let mut ints: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == onnx::INT64)
        .map(|t| (t.name.as_str(), t))
        .collect();
    for t in &graph.initializer {
        s.insert(t.name.as_str(), fixed(t));
    }
    for n in &graph.node {
        let get = |i: usize| -> Option<Vec<InferredDim>> {
            s.get(n.input.get(i)?.as_str()).cloned().flatten()
        };
        let out: Option<Vec<InferredDim>> = if !is_default_domain(n) {
            None
        } else {
            match n.op_type.as_str() {
                "Constant" => get_attr(n, "value")
                    .and_then(|a| a.t.as_ref())
                    .and_then(fixed),
                "Cast" | "Identity" | "Dropout" | "Erf" | "Sqrt" | "Relu" | "Tanh" | "Sigmoid"
                | "Softmax" | "LayerNormalization" | "Neg" | "Abs" | "Exp" | "Log"
                | "Reciprocal" | "Not" | "Gelu" => get(0),
                "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Where" | "Equal" | "Less" | "Greater"
                | "And" | "Or" | "Max" | "Min" => (0..n.input.len())
                    .map(get)
                    .try_fold(Vec::new(), |acc, x| Some(broadcast(&acc, &x?))),
                "MatMul" => match (get(0), get(1)) {
                    (Some(a), Some(b)) if a.len() >= 2 && b.len() >= 2 => {
                        let mut d = broadcast(&a[..a.len() - 2], &b[..b.len() - 2]);
                        d.push(a[a.len() - 2].clone());
                        d.push(b[b.len() - 1].clone());
                        Some(d)
                    }
                    _ => None,
                },
                "Gemm" => match (get(0), get(1)) {
                    (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
                        let ta = usize::from(get_attr_int(n, "transA", 0) != 0);
                        let tb = usize::from(get_attr_int(n, "transB", 0) != 0);
                        Some(vec![a[ta].clone(), b[1 - tb].clone()])
                    }
                    _ => None,
                },
                "Gather" => match (get(0), get(1)) {
                    (Some(d), Some(i)) => {
                        let r = d.len() as i64;
                        let mut axis = get_attr_int(n, "axis", 0);
                        if axis < 0 {
                            axis += r;
                        }
                        usize::try_from(axis)
                            .ok()
                            .filter(|&a| a < d.len())
                            .map(|a| [&d[..a], &i[..], &d[a + 1..]].concat())
                    }
                    _ => None,
                },
                "Unsqueeze" | "Squeeze" => {
                    let axes: Option<Vec<i64>> = match get_attr(n, "axes") {
                        Some(a) => Some(a.ints.clone()),
                        None => n
                            .input
                            .get(1)
                            .and_then(|x| ints.get(x.as_str()))
                            .and_then(|t| int64_values(t)),
                    };
                    match (get(0), axes) {
                        (Some(x), Some(axes)) if n.op_type == "Unsqueeze" => unsqueeze(x, &axes),
                        (Some(x), Some(axes)) => squeeze(x, &axes),
                        _ => None,
                    }
                }
                "Transpose" => get(0).and_then(|x| {
                    let perm: Vec<usize> = match get_attr(n, "perm") {
                        Some(a) => a
                            .ints
                            .iter()
                            .map(|&p| usize::try_from(p).ok())
                            .collect::<Option<_>>()?,
                        None => (0..x.len()).rev().collect(),
                    };
                    perm.iter().map(|&p| x.get(p).cloned()).collect()
                }),
                _ => None,
            }
        };
        if n.op_type == "Constant"
            && let (Some(t), Some(o)) = (
                get_attr(n, "value").and_then(|a| a.t.as_ref()),
                n.output.first(),
            )
            && t.data_type == onnx::INT64
        {
            ints.insert(o.as_str(), t);
        }
        for (k, o) in n.output.iter().enumerate() {
            // Multi-output ops (Dropout's mask, LayerNormalization's statistics) are only
            // known on their first output.
            s.insert(o.as_str(), if k == 0 { out.clone() } else { None });
        }
    }
    s
}

/// The values of an int64 constant (raw or typed).
fn int64_values(t: &TensorProto) -> Option<Vec<i64>> {
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(8) {
            return None;
        }
        return Some(
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        );
    }
    Some(t.int64_data.clone())
}

/// Numpy broadcasting of two shapes, right-aligned.
fn broadcast(a: &[InferredDim], b: &[InferredDim]) -> Vec<InferredDim> {
    use InferredDim::*;
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = (i + a.len()).checked_sub(n).map(|j| &a[j]);
            let y = (i + b.len()).checked_sub(n).map(|j| &b[j]);
            match (x, y) {
                (Some(d), None) | (None, Some(d)) => d.clone(),
                (Some(Fixed(1)), Some(d)) | (Some(d), Some(Fixed(1))) => d.clone(),
                (Some(Fixed(p)), Some(Fixed(q))) if p == q => Fixed(*p),
                (Some(Fixed(p)), Some(_)) | (Some(_), Some(Fixed(p))) => Fixed(*p),
                (Some(Symbol(p)), Some(Symbol(q))) if p == q => Symbol(p.clone()),
                _ => Unknown,
            }
        })
        .collect()
}

fn normalize_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut v: Vec<usize> = axes
        .iter()
        .map(|&a| usize::try_from(if a < 0 { a + rank as i64 } else { a }).ok())
        .collect::<Option<_>>()?;
    v.sort_unstable();
    v.dedup();
    (v.len() == axes.len() && v.iter().all(|&a| a < rank)).then_some(v)
}

fn unsqueeze(x: Vec<InferredDim>, axes: &[i64]) -> Option<Vec<InferredDim>> {
    let rank = x.len() + axes.len();
    let axes = normalize_axes(axes, rank)?;
    let mut rest = x.into_iter();
    (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                Some(InferredDim::Fixed(1))
            } else {
                rest.next()
            }
        })
        .collect()
}

fn squeeze(x: Vec<InferredDim>, axes: &[i64]) -> Option<Vec<InferredDim>> {
    let axes = normalize_axes(axes, x.len())?;
    Some(
        x.into_iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use InferredDim::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = vec![Symbol("b".into()), Fixed(1), Fixed(8)];
        let b = vec![Fixed(4), Fixed(1)];
        assert_eq!(
            broadcast(&a, &b),
            vec![Symbol("b".into()), Fixed(4), Fixed(8)]
        );
    }

    #[test]
    fn unsqueeze_and_squeeze_move_axes() {
        let x = vec![Symbol("b".into()), Symbol("s".into())];
        let u = unsqueeze(x.clone(), &[1, 2]).expect("unsqueeze");
        assert_eq!(
            u,
            vec![Symbol("b".into()), Fixed(1), Fixed(1), Symbol("s".into())]
        );
        assert_eq!(squeeze(u.clone(), &[-3, 2]), Some(x));
        assert_eq!(squeeze(u, &[-3, 1]), None, "the same axis twice");
        assert_eq!(unsqueeze(vec![Fixed(2)], &[5]), None);
    }

    #[test]
    fn an_id_outside_the_table_is_named_with_its_position() {
        let limit = IndexLimit {
            table: "emb".into(),
            rows: 10,
        };
        assert!(limit.check("ids", &[2, 3], &[0, 1, 9, 2, 3, 4]).is_ok());
        let e = limit
            .check("ids", &[2, 3], &[0, 1, 9, 2, 10, 4])
            .expect_err("10 is outside")
            .to_string();
        assert!(
            e.contains("`ids`") && e.contains("id 10 at [1, 1]") && e.contains("`emb`"),
            "{e}"
        );
        let e = limit
            .check("ids", &[3], &[0, -1, 2])
            .expect_err("negative")
            .to_string();
        assert!(e.contains("id -1 at [1]"), "{e}");
    }

    #[test]
    fn a_string_tensor_and_short_raw_data_are_refused() {
        let s = TensorProto {
            name: "s".into(),
            data_type: 8,
            dims: vec![1],
            string_data: vec![b"x".to_vec()],
            ..Default::default()
        };
        let e = check_tensor(&s, "m.onnx").expect_err("string").to_string();
        assert!(
            e.contains("m.onnx") && e.contains("`s`") && e.contains("(string)"),
            "{e}"
        );
        let mut f = onnx::tensor_f32("w", &[2, 3], &[0.0; 6]);
        assert!(check_tensor(&f, "m.onnx").is_ok());
        f.dims = vec![2, 4];
        let e = check_tensor(&f, "m.onnx").expect_err("short").to_string();
        assert!(
            e.contains("expected 32 bytes") && e.contains("found 24"),
            "{e}"
        );
    }
}
