//! Appends the nodes and constants of a training graph: fresh names, small constants, and
//! the few composite steps every rule needs (sum back to a broadcast operand's shape,
//! transpose the last two axes, reshape to a known shape).

use crate::graph::onnx::{attr_int, attr_ints, node, tensor_f32, tensor_i64};
use crate::graph::pb::{AttributeProto, NodeProto, TensorProto};

/// Prefix of every name the builder adds, so they cannot collide with the model's own
/// (checked at build: a model that already uses it is refused).
pub const PREFIX: &str = "elx_train/";

/// Collects the added nodes and initializers.
#[derive(Default)]
pub struct Emitter {
    /// Nodes, in the order they must run.
    pub nodes: Vec<NodeProto>,
    /// Constants (shapes, axes, scalars).
    pub inits: Vec<TensorProto>,
    next: usize,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh value name containing `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{PREFIX}{hint}/{}", self.next)
    }

    /// Appends a one-output node and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.op_into(op, inputs, &out, attrs);
        out
    }

    /// Appends a one-output node writing `out`.
    pub fn op_into(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) {
        let name = format!("{out}:{op}");
        self.nodes.push(node(op, &name, inputs, &[out], attrs));
    }

    /// An i64 constant.
    pub fn ints(&mut self, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh("i64");
        self.inits.push(tensor_i64(&name, dims, data));
        name
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, v: f32) -> String {
        let name = self.fresh("f32");
        self.inits.push(tensor_f32(&name, &[], &[v]));
        name
    }

    /// An f32 constant of zeros.
    pub fn zeros(&mut self, dims: &[usize]) -> String {
        let name = self.fresh("zeros");
        let n = dims.iter().product();
        self.inits.push(tensor_f32(&name, dims, &vec![0.0; n]));
        name
    }

    /// `x` reshaped to `shape`.
    pub fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.ints(&[dims.len()], &dims);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `x` with its axes permuted.
    pub fn transpose(&mut self, x: &str, perm: &[usize]) -> String {
        let p: Vec<i64> = perm.iter().map(|&a| a as i64).collect();
        self.op("Transpose", &[x], vec![attr_ints("perm", &p)])
    }

    /// `x` (of rank `rank` ≥ 2) with its last two axes swapped.
    pub fn swap_last(&mut self, x: &str, rank: usize) -> String {
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(rank - 2, rank - 1);
        self.transpose(x, &perm)
    }

    /// Sum of `x` over `axes` (opset-13 form: the axes are an input).
    pub fn reduce_sum(&mut self, x: &str, axes: &[usize], keepdims: bool) -> String {
        let a: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let axes = self.ints(&[a.len()], &a);
        self.op(
            "ReduceSum",
            &[x, &axes],
            vec![attr_int("keepdims", i64::from(keepdims))],
        )
    }

    /// `g` (of shape `from`, the broadcast result) summed back to the shape `to` of the
    /// operand that was broadcast: over the leading axes `to` lacks and the axes where `to`
    /// has size 1, then reshaped to `to`.
    pub fn unbroadcast(&mut self, g: &str, from: &[usize], to: &[usize]) -> String {
        if from == to {
            return g.to_string();
        }
        let lead = from.len().saturating_sub(to.len());
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, &t) in to.iter().enumerate() {
            if t == 1 && from.get(lead + i).is_some_and(|&f| f != 1) {
                axes.push(lead + i);
            }
        }
        let summed = if axes.is_empty() {
            g.to_string()
        } else {
            self.reduce_sum(g, &axes, true)
        };
        self.reshape(&summed, to)
    }

    /// `a + b` (no broadcasting needed by the callers).
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    /// `a · b` elementwise.
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }
}
