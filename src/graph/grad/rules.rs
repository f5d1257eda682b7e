//! Vector-Jacobian products, one per ONNX op: given the gradient of a node's outputs, the
//! nodes that compute the gradient of its differentiable inputs.
//!
//! Shapes are static: every value on the gradient path has the shape measured for the
//! training graph's batch and sequence length ([`super::Shapes`]), so broadcasting is undone
//! with a fixed [`Emitter::unbroadcast`] and reshapes use constant shapes. Each rule
//! recomputes what it needs from the forward values (e.g. LayerNormalization's mean and
//! inverse deviation) instead of asking the forward pass to keep more.

use super::emit::Emitter;
use crate::error::{Error, Result};
use crate::graph::onnx::{attr_int, get_attr, get_attr_float, get_attr_int};
use crate::graph::pb::NodeProto;
use std::collections::{HashMap, HashSet};

/// Which inputs of an op carry gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffInputs {
    /// Every input.
    All,
    /// Only these (the others are shapes, indices, conditions or constants).
    Only(&'static [usize]),
    /// None: the op's outputs are piecewise constant or not real-valued (Shape, Equal, ...).
    Never,
}

/// The differentiable inputs of `op`, or `None` for an op without a rule (unknown ops count
/// every input, so an unknown op on the gradient path is reported).
pub fn diff_inputs(op: &str) -> Option<DiffInputs> {
    use DiffInputs::*;
    Some(match op {
        "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Concat" => All,
        "Gemm" | "LayerNormalization" => Only(&[0, 1, 2]),
        "Where" => Only(&[1, 2]),
        "Split" | "Gather" => Only(&[0]),
        "Reshape" | "Expand" | "Slice" | "Squeeze" | "Unsqueeze" | "Transpose" | "Flatten"
        | "Identity" | "Dropout" | "Cast" | "Erf" | "Tanh" | "Sigmoid" | "Relu" | "Exp" | "Log"
        | "Neg" | "Sqrt" | "Reciprocal" | "Softmax" | "LogSoftmax" | "ReduceSum" | "ReduceMean" => {
            Only(&[0])
        }
        "Shape" | "Size" | "Equal" | "Greater" | "GreaterOrEqual" | "Less" | "LessOrEqual"
        | "Not" | "And" | "Or" | "Xor" | "ArgMax" | "ArgMin" | "NonZero" | "ConstantOfShape"
        | "Range" | "Constant" | "IsNaN" | "IsInf" | "Sign" | "Floor" | "Ceil" | "Round" => Never,
        _ => return None,
    })
}

/// Constant tensors of the model (initializers and `Constant` nodes), by value name.
pub struct Consts<'a> {
    /// Value name -> (dims, ONNX element type, the tensor).
    pub tensors: HashMap<&'a str, &'a crate::graph::pb::TensorProto>,
}

impl Consts<'_> {
    /// The dims of constant `name`.
    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    /// The values of an integer constant (int64 or int32).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.tensors.get(name)?;
        match t.data_type {
            7 if !t.raw_data.is_empty() => Some(
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            7 => Some(t.int64_data.clone()),
            6 if !t.raw_data.is_empty() => Some(
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
                    .collect(),
            ),
            6 => Some(t.int32_data.iter().map(|&v| i64::from(v)).collect()),
            _ => None,
        }
    }
}

/// What a rule may read: shapes of the values, the constants, and which values carry
/// gradient.
pub struct Ctx<'a> {
    /// Measured shapes of the non-constant values on and beside the gradient path.
    pub shapes: &'a HashMap<String, Vec<usize>>,
    /// The model's constants.
    pub consts: &'a Consts<'a>,
    /// Values that depend on the coefficients (gradient flows into them).
    pub active: &'a HashSet<String>,
}

impl Ctx<'_> {
    /// The shape of value `v`.
    pub fn shape(&self, node: &NodeProto, v: &str) -> Result<Vec<usize>> {
        self.shapes
            .get(v)
            .cloned()
            .or_else(|| self.consts.dims(v))
            .ok_or_else(|| {
                Error::Internal(format!(
                    "gradient graph: no shape for `{v}` (input of {} node `{}`)",
                    node.op_type, node.name
                ))
            })
    }

    fn active(&self, v: &str) -> bool {
        self.active.contains(v)
    }
}

fn unsupported(node: &NodeProto, why: &str) -> Error {
    Error::Unsupported(format!(
        "cannot differentiate {} node `{}`: {why}",
        node.op_type, node.name
    ))
}

/// Normalizes a possibly negative axis of a rank-`rank` tensor.
fn axis(node: &NodeProto, a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(unsupported(
            node,
            &format!("axis {a} out of range for rank {rank}"),
        ));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// The gradients of `node`'s inputs (None where an input is not differentiated), given the
/// gradients `gy` of its outputs (None where an output receives none).
pub fn vjp(
    e: &mut Emitter,
    node: &NodeProto,
    gy: &[Option<String>],
    ctx: &Ctx<'_>,
    opset: i64,
) -> Result<Vec<Option<String>>> {
    let n_in = node.input.len();
    let mut gx: Vec<Option<String>> = vec![None; n_in];
    let want = |i: usize| {
        node.input
            .get(i)
            .is_some_and(|v| !v.is_empty() && ctx.active(v))
    };
    if node.op_type == "Split" {
        return split(e, node, gy, ctx);
    }
    if gy.iter().skip(1).any(Option::is_some) && node.op_type != "Dropout" {
        return Err(unsupported(
            node,
            "only its first output may be on the gradient path",
        ));
    }
    let Some(g) = gy.first().cloned().flatten() else {
        return Ok(gx);
    };
    let g = g.as_str();
    let inp = |i: usize| node.input[i].as_str();
    let out = node.output[0].as_str();
    let sy = ctx.shape(node, out)?;
    match node.op_type.as_str() {
        "Identity" | "Dropout" => gx[0] = Some(g.to_string()),
        "Cast" => {
            if get_attr_int(node, "to", 0) != i64::from(crate::graph::onnx::FLOAT) {
                return Err(unsupported(node, "only casts to f32 carry gradient"));
            }
            gx[0] = Some(g.to_string());
        }
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            let sx = ctx.shape(node, inp(0))?;
            gx[0] = Some(e.reshape(g, &sx));
        }
        "Expand" => {
            let sx = ctx.shape(node, inp(0))?;
            gx[0] = Some(e.unbroadcast(g, &sy, &sx));
        }
        "Transpose" => {
            let rank = sy.len();
            let perm: Vec<usize> = match get_attr(node, "perm") {
                Some(a) => a.ints.iter().map(|&p| p.max(0) as usize).collect(),
                None => (0..rank).rev().collect(),
            };
            let mut inv = vec![0; rank];
            for (i, &p) in perm.iter().enumerate() {
                if p >= rank {
                    return Err(unsupported(node, "bad permutation"));
                }
                inv[p] = i;
            }
            gx[0] = Some(e.transpose(g, &inv));
        }
        "Add" | "Sub" => {
            for (i, slot) in gx.iter_mut().enumerate().take(2) {
                if want(i) {
                    let si = ctx.shape(node, inp(i))?;
                    let gi = e.unbroadcast(g, &sy, &si);
                    *slot = Some(if i == 1 && node.op_type == "Sub" {
                        e.op("Neg", &[&gi], vec![])
                    } else {
                        gi
                    });
                }
            }
        }
        "Mul" => {
            for (i, slot) in gx.iter_mut().enumerate().take(2) {
                if want(i) {
                    let si = ctx.shape(node, inp(i))?;
                    let p = e.mul(g, inp(1 - i));
                    *slot = Some(e.unbroadcast(&p, &sy, &si));
                }
            }
        }
        "Div" => {
            // d(a/b)/da = 1/b; d(a/b)/db = -(a/b)/b = -y/b.
            let q = e.op("Div", &[g, inp(1)], vec![]);
            if want(0) {
                let sa = ctx.shape(node, inp(0))?;
                gx[0] = Some(e.unbroadcast(&q, &sy, &sa));
            }
            if want(1) {
                let sb = ctx.shape(node, inp(1))?;
                let qy = e.mul(&q, out);
                let n = e.op("Neg", &[&qy], vec![]);
                gx[1] = Some(e.unbroadcast(&n, &sy, &sb));
            }
        }
        "Pow" => {
            if want(1) {
                return Err(unsupported(node, "a differentiated exponent"));
            }
            // d(x^p)/dx = p·x^(p-1)
            let one = e.scalar(1.0);
            let pm1 = e.op("Sub", &[inp(1), &one], vec![]);
            let xp = e.op("Pow", &[inp(0), &pm1], vec![]);
            let d = e.mul(&xp, inp(1));
            let p = e.mul(g, &d);
            let sx = ctx.shape(node, inp(0))?;
            gx[0] = Some(e.unbroadcast(&p, &sy, &sx));
        }
        "Neg" => gx[0] = Some(e.op("Neg", &[g], vec![])),
        "Exp" => gx[0] = Some(e.mul(g, out)),
        "Log" => gx[0] = Some(e.op("Div", &[g, inp(0)], vec![])),
        "Sqrt" => {
            let half = e.scalar(0.5);
            let h = e.mul(g, &half);
            gx[0] = Some(e.op("Div", &[&h, out], vec![]));
        }
        "Reciprocal" => {
            let yy = e.mul(out, out);
            let p = e.mul(g, &yy);
            gx[0] = Some(e.op("Neg", &[&p], vec![]));
        }
        "Erf" => {
            // d erf(x)/dx = 2/√π · exp(-x²)
            let xx = e.mul(inp(0), inp(0));
            let n = e.op("Neg", &[&xx], vec![]);
            let ex = e.op("Exp", &[&n], vec![]);
            let c = e.scalar(std::f32::consts::FRAC_2_SQRT_PI);
            let d = e.mul(&ex, &c);
            gx[0] = Some(e.mul(g, &d));
        }
        "Tanh" => {
            let one = e.scalar(1.0);
            let yy = e.mul(out, out);
            let d = e.op("Sub", &[&one, &yy], vec![]);
            gx[0] = Some(e.mul(g, &d));
        }
        "Sigmoid" => {
            let one = e.scalar(1.0);
            let c = e.op("Sub", &[&one, out], vec![]);
            let d = e.mul(out, &c);
            gx[0] = Some(e.mul(g, &d));
        }
        "Relu" => {
            let zero = e.scalar(0.0);
            let pos = e.op("Greater", &[inp(0), &zero], vec![]);
            gx[0] = Some(e.op("Where", &[&pos, g, &zero], vec![]));
        }
        "Where" => {
            let zero = e.scalar(0.0);
            for (i, (t, f)) in [(1, (g, zero.as_str())), (2, (zero.as_str(), g))] {
                if want(i) {
                    let si = ctx.shape(node, inp(i))?;
                    let w = e.op("Where", &[inp(0), t, f], vec![]);
                    // `Where` broadcasts the condition too: sum back over what it added.
                    gx[i] = Some(e.unbroadcast(&w, &sy, &si));
                }
            }
        }
        "MatMul" => matmul(e, node, g, &sy, ctx, &mut gx)?,
        "Gemm" => gemm(e, node, g, ctx, &mut gx)?,
        "Softmax" | "LogSoftmax" => {
            let rank = sy.len();
            let default = if opset >= 13 { -1 } else { 1 };
            let a = axis(node, get_attr_int(node, "axis", default), rank)?;
            if opset < 13 && a != rank - 1 {
                return Err(unsupported(
                    node,
                    "before opset 13 only the last axis is supported",
                ));
            }
            gx[0] = Some(if node.op_type == "Softmax" {
                // y ⊙ (g − Σ g⊙y)
                let gy_ = e.mul(g, out);
                let s = e.reduce_sum(&gy_, &[a], true);
                let d = e.op("Sub", &[g, &s], vec![]);
                e.mul(out, &d)
            } else {
                // g − softmax · Σ g
                let s = e.reduce_sum(g, &[a], true);
                let p = e.op("Exp", &[out], vec![]);
                let ps = e.mul(&p, &s);
                e.op("Sub", &[g, &ps], vec![])
            });
        }
        "ReduceSum" | "ReduceMean" => {
            let sx = ctx.shape(node, inp(0))?;
            let axes_v: Option<Vec<i64>> = match get_attr(node, "axes") {
                Some(a) => Some(a.ints.clone()),
                None if node.input.len() > 1 && !node.input[1].is_empty() => Some(
                    ctx.consts
                        .ints(&node.input[1])
                        .ok_or_else(|| unsupported(node, "axes that are not a constant"))?,
                ),
                None => None,
            };
            let axes: Vec<usize> = match axes_v {
                Some(v) if !v.is_empty() => v
                    .iter()
                    .map(|&a| axis(node, a, sx.len()))
                    .collect::<Result<_>>()?,
                _ if get_attr_int(node, "noop_with_empty_axes", 0) != 0 => Vec::new(),
                _ => (0..sx.len()).collect(),
            };
            let kept: Vec<usize> = sx
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            let gk = e.reshape(g, &kept);
            let dims: Vec<i64> = sx.iter().map(|&d| d as i64).collect();
            let shape = e.ints(&[dims.len()], &dims);
            let mut gxv = e.op("Expand", &[&gk, &shape], vec![]);
            if node.op_type == "ReduceMean" {
                let n: usize = axes.iter().map(|&a| sx[a]).product();
                let c = e.scalar(1.0 / n.max(1) as f32);
                gxv = e.mul(&gxv, &c);
            }
            gx[0] = Some(gxv);
        }
        "Concat" => {
            let rank = sy.len();
            let a = axis(node, get_attr_int(node, "axis", 0), rank)?;
            let mut offset = 0usize;
            for (i, slot) in gx.iter_mut().enumerate() {
                let si = ctx.shape(node, inp(i))?;
                let len = si.get(a).copied().unwrap_or(0);
                if want(i) {
                    let starts = e.ints(&[1], &[offset as i64]);
                    let ends = e.ints(&[1], &[(offset + len) as i64]);
                    let axes = e.ints(&[1], &[a as i64]);
                    *slot = Some(e.op("Slice", &[g, &starts, &ends, &axes], vec![]));
                }
                offset += len;
            }
        }
        "Slice" => gx[0] = Some(slice(e, node, g, ctx)?),
        "Gather" => gx[0] = Some(gather(e, node, g, &sy, ctx)?),
        "LayerNormalization" => {
            if want(1) || want(2) {
                return Err(unsupported(node, "a differentiated scale or bias"));
            }
            gx[0] = Some(layer_norm(e, node, g, ctx)?);
        }
        _ => return Err(unsupported(node, "no gradient rule for this op")),
    }
    Ok(gx)
}

/// `Y = A·B` with numpy broadcasting of the batch axes: dA = G·Bᵀ, dB = Aᵀ·G, each summed
/// back over the batch axes its operand was broadcast along.
fn matmul(
    e: &mut Emitter,
    node: &NodeProto,
    g: &str,
    sy: &[usize],
    ctx: &Ctx<'_>,
    gx: &mut [Option<String>],
) -> Result<()> {
    let (a, b) = (node.input[0].as_str(), node.input[1].as_str());
    let (sa, sb) = (ctx.shape(node, a)?, ctx.shape(node, b)?);
    if sa.len() < 2 || sb.len() < 2 || sy.len() < 2 {
        return Err(unsupported(node, "a rank-1 operand"));
    }
    let batch = &sy[..sy.len() - 2];
    if ctx.active(a) {
        let bt = e.swap_last(b, sb.len());
        let full = e.op("MatMul", &[g, &bt], vec![]);
        let shape: Vec<usize> = batch.iter().chain(&sa[sa.len() - 2..]).copied().collect();
        gx[0] = Some(e.unbroadcast(&full, &shape, &sa));
    }
    if ctx.active(b) {
        let at = e.swap_last(a, sa.len());
        let full = e.op("MatMul", &[&at, g], vec![]);
        let shape: Vec<usize> = batch.iter().chain(&sb[sb.len() - 2..]).copied().collect();
        gx[1] = Some(e.unbroadcast(&full, &shape, &sb));
    }
    Ok(())
}

/// `Split` along `axis`: the input's gradient is its outputs' gradients put back together,
/// zeros for an output that receives none.
fn split(
    e: &mut Emitter,
    node: &NodeProto,
    gy: &[Option<String>],
    ctx: &Ctx<'_>,
) -> Result<Vec<Option<String>>> {
    let mut gx: Vec<Option<String>> = vec![None; node.input.len()];
    let x = node.input[0].as_str();
    if gy.iter().all(Option::is_none) || !ctx.active(x) {
        return Ok(gx);
    }
    let sx = ctx.shape(node, x)?;
    let a = axis(node, get_attr_int(node, "axis", 0), sx.len())?;
    let mut parts = Vec::with_capacity(node.output.len());
    for (o, g) in node.output.iter().zip(gy) {
        parts.push(match g {
            Some(g) => g.clone(),
            None => e.zeros(&ctx.shape(node, o)?),
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    gx[0] = Some(e.op("Concat", &refs, vec![attr_int("axis", a as i64)]));
    Ok(gx)
}

/// `Y = α·op(A)·op(B) + β·C` (2-D).
fn gemm(
    e: &mut Emitter,
    node: &NodeProto,
    g: &str,
    ctx: &Ctx<'_>,
    gx: &mut [Option<String>],
) -> Result<()> {
    let alpha = get_attr_float(node, "alpha", 1.0);
    let beta = get_attr_float(node, "beta", 1.0);
    let ta = get_attr_int(node, "transA", 0) != 0;
    let tb = get_attr_int(node, "transB", 0) != 0;
    let (a, b) = (node.input[0].as_str(), node.input[1].as_str());
    let ga = if alpha == 1.0 {
        g.to_string()
    } else {
        let s = e.scalar(alpha);
        e.mul(g, &s)
    };
    let gemm = |e: &mut Emitter, x: &str, y: &str, tx: bool, ty: bool| {
        e.op(
            "Gemm",
            &[x, y],
            vec![
                attr_int("transA", i64::from(tx)),
                attr_int("transB", i64::from(ty)),
            ],
        )
    };
    if ctx.active(a) {
        // op(A) = G·op(B)ᵀ; A = op(A) or its transpose.
        gx[0] = Some(if ta {
            gemm(e, b, &ga, tb, true)
        } else {
            gemm(e, &ga, b, false, !tb)
        });
    }
    if ctx.active(b) {
        // op(B) = op(A)ᵀ·G.
        gx[1] = Some(if tb {
            gemm(e, &ga, a, true, ta)
        } else {
            gemm(e, a, &ga, !ta, false)
        });
    }
    if node.input.len() > 2 && !node.input[2].is_empty() && ctx.active(&node.input[2]) {
        let sy = ctx.shape(node, &node.output[0])?;
        let sc = ctx.shape(node, &node.input[2])?;
        let gc = if beta == 1.0 {
            g.to_string()
        } else {
            let s = e.scalar(beta);
            e.mul(g, &s)
        };
        gx[2] = Some(e.unbroadcast(&gc, &sy, &sc));
    }
    Ok(())
}

/// Slice with constant starts/ends/axes and unit steps: the gradient is G zero-padded back.
fn slice(e: &mut Emitter, node: &NodeProto, g: &str, ctx: &Ctx<'_>) -> Result<String> {
    let sx = ctx.shape(node, &node.input[0])?;
    let rank = sx.len();
    let konst = |i: usize, what: &str| -> Result<Option<Vec<i64>>> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(v) => ctx
                .consts
                .ints(v)
                .map(Some)
                .ok_or_else(|| unsupported(node, &format!("{what} that are not constants"))),
        }
    };
    let starts = konst(1, "starts")?.unwrap_or_default();
    let ends = konst(2, "ends")?.unwrap_or_default();
    let axes = konst(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = konst(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(unsupported(
            node,
            "starts, ends, axes and steps differ in length",
        ));
    }
    let mut pads = vec![0i64; 2 * rank];
    for k in 0..starts.len() {
        if steps[k] != 1 {
            return Err(unsupported(node, "a step other than 1"));
        }
        let a = axis(node, axes[k], rank)?;
        let d = sx[a] as i64;
        let clamp = |v: i64| {
            if v < 0 {
                (v + d).clamp(0, d)
            } else {
                v.clamp(0, d)
            }
        };
        let (s, t) = (clamp(starts[k]), clamp(ends[k]));
        let t = t.max(s);
        pads[a] = s;
        pads[rank + a] = d - t;
    }
    let p = e.ints(&[2 * rank], &pads);
    Ok(e.op("Pad", &[g, &p], vec![]))
}

/// `Y = Gather(X, I, axis)`: every slice of X is the sum of the gradients of the outputs
/// that read it (an index may repeat). With X viewed as [pre, S, post] and G as
/// [pre, n, post] (n = the indices' count), dX = P·G, where P [S, n] is the one-hot matrix
/// P[s, j] = (I[j] = s or I[j] = s − S, a negative index counting from the end). The
/// indices may be a graph input (a decoder's `logits_positions`); their count is static,
/// as every shape here.
fn gather(
    e: &mut Emitter,
    node: &NodeProto,
    g: &str,
    sy: &[usize],
    ctx: &Ctx<'_>,
) -> Result<String> {
    let sx = ctx.shape(node, &node.input[0])?;
    let a = axis(node, get_attr_int(node, "axis", 0), sx.len())?;
    let (pre, s, post) = (
        sx[..a].iter().product::<usize>(),
        sx[a],
        sx[a + 1..].iter().product::<usize>(),
    );
    // The indices' count, from the output: only float values are probed.
    let out: usize = sy.iter().product();
    if pre * post == 0 || !out.is_multiple_of(pre * post) {
        return Err(unsupported(
            node,
            "an output shape that is not the gathered one",
        ));
    }
    let n = out / (pre * post);
    let here: Vec<i64> = (0..s as i64).collect();
    let from_end: Vec<i64> = (0..s as i64).map(|v| v - s as i64).collect();
    let here = e.ints(&[s, 1], &here);
    let from_end = e.ints(&[s, 1], &from_end);
    let idx = e.reshape(&node.input[1], &[1, n]);
    let hit = e.op("Equal", &[&here, &idx], vec![]);
    let hit_end = e.op("Equal", &[&from_end, &idx], vec![]);
    let hit = e.op("Or", &[&hit, &hit_end], vec![]);
    let one_hot = e.op(
        "Cast",
        &[&hit],
        vec![attr_int("to", i64::from(crate::graph::onnx::FLOAT))],
    );
    let g3 = e.reshape(g, &[pre, n, post]);
    let dx = e.op("MatMul", &[&one_hot, &g3], vec![]);
    Ok(e.reshape(&dx, &sx))
}

/// LayerNormalization over the axes from `axis` on:
/// dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂)), ĝ = g⊙scale, x̂ = (x − μ)·r, r = 1/√(var + ε),
/// with μ, var and r recomputed from x.
fn layer_norm(e: &mut Emitter, node: &NodeProto, g: &str, ctx: &Ctx<'_>) -> Result<String> {
    let x = node.input[0].as_str();
    let sx = ctx.shape(node, x)?;
    let a = axis(node, get_attr_int(node, "axis", -1), sx.len())?;
    let axes: Vec<usize> = (a..sx.len()).collect();
    let n: usize = sx[a..].iter().product();
    let eps = get_attr_float(node, "epsilon", 1e-5);
    let inv_n = e.scalar(1.0 / n.max(1) as f32);
    let mean = |e: &mut Emitter, v: &str| {
        let s = e.reduce_sum(v, &axes, true);
        e.mul(&s, &inv_n)
    };
    let mu = mean(e, x);
    let xc = e.op("Sub", &[x, &mu], vec![]);
    let sq = e.mul(&xc, &xc);
    let var = mean(e, &sq);
    let epsv = e.scalar(eps);
    let ve = e.add(&var, &epsv);
    let sd = e.op("Sqrt", &[&ve], vec![]);
    let r = e.op("Reciprocal", &[&sd], vec![]);
    let xhat = e.mul(&xc, &r);
    let gs = match node.input.get(1).filter(|s| !s.is_empty()) {
        Some(scale) => e.mul(g, scale),
        None => g.to_string(),
    };
    let m1 = mean(e, &gs);
    let gx = e.mul(&gs, &xhat);
    let m2 = mean(e, &gx);
    let t = e.mul(&xhat, &m2);
    let d1 = e.op("Sub", &[&gs, &m1], vec![]);
    let d2 = e.op("Sub", &[&d1, &t], vec![]);
    Ok(e.mul(&r, &d2))
}

#[cfg(all(test, feature = "tract"))]
mod tests {
    use super::*;
    use crate::graph::onnx::{Dim, FLOAT, INT64, encode_model, node, value_info};
    use crate::graph::pb::{GraphProto, ModelProto, OperatorSetIdProto};
    use tract_onnx::prelude::*;

    /// dX of `Y = Gather(X, I, axis 1)` for X [2, 4, 3], through the rule's nodes on tract,
    /// against the sum over the outputs that read each slice.
    #[test]
    fn gather_gradient_sums_repeated_and_negative_indices() {
        let (b, s, w) = (2usize, 4usize, 3usize);
        let idx: Vec<i64> = vec![1, 3, 1, -1, 0];
        let n = idx.len();
        let gather = node(
            "Gather",
            "g",
            &["x", "i"],
            &["y"],
            vec![attr_int("axis", 1)],
        );
        let shapes: HashMap<String, Vec<usize>> = [
            ("x".to_string(), vec![b, s, w]),
            ("y".to_string(), vec![b, n, w]),
        ]
        .into();
        let consts = Consts {
            tensors: HashMap::new(),
        };
        let active: HashSet<String> = ["x".to_string(), "y".to_string()].into();
        let ctx = Ctx {
            shapes: &shapes,
            consts: &consts,
            active: &active,
        };
        let mut e = Emitter::new();
        let gx = vjp(&mut e, &gather, &[Some("gy".into())], &ctx, 17).expect("rule");
        let gx = gx[0].clone().expect("dX");
        assert!(gx.starts_with(super::super::emit::PREFIX));
        let mut nodes = e.nodes;
        nodes.push(node("Identity", "out", &[&gx], &["dx"], vec![]));
        let fixed = |d: &[usize]| d.iter().map(|&v| Dim::Fixed(v)).collect::<Vec<_>>();
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "gather_vjp".into(),
                node: nodes,
                initializer: e.inits,
                input: vec![
                    value_info("gy", FLOAT, &fixed(&[b, n, w])),
                    value_info("i", INT64, &fixed(&[n])),
                ],
                output: vec![value_info("dx", FLOAT, &fixed(&[b, s, w]))],
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &encode_model(&model)[..])
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("plan");
        let gy: Vec<f32> = (0..b * n * w).map(|v| 1.0 + v as f32 * 0.5).collect();
        let out = plan
            .run(tvec![
                Tensor::from_shape(&[b, n, w], &gy).expect("gy").into(),
                Tensor::from_shape(&[n], &idx).expect("i").into(),
            ])
            .expect("run");
        let dx: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect();
        let mut want = vec![0f32; b * s * w];
        for r in 0..b {
            for (j, &i) in idx.iter().enumerate() {
                let at = i.rem_euclid(s as i64) as usize;
                for c in 0..w {
                    want[(r * s + at) * w + c] += gy[(r * n + j) * w + c];
                }
            }
        }
        assert_eq!(dx, want);
        // Position 2 is read by no output: its gradient is zero.
        assert!(dx[2 * w..3 * w].iter().all(|&v| v == 0.0));
    }
}
