#!/usr/bin/env python3
"""Independent f64 reference for the exact gradients of `elx finetune --grad exact`:
central finite differences of a training graph's loss, evaluated in float64 by ONNX Runtime.

    python3 tools/grad_fd_reference.py TRAINING.onnx INPUTS.safetensors OUT.safetensors [--h 1e-4]

TRAINING.onnx is a training graph written by eigenlorax (`graph::grad`): its `loss` output is
sum_i w_i * CE_i of a linear head on the pooled last hidden state. INPUTS.safetensors holds one
tensor per graph input (int64 token inputs, f32 everything else). The script
  * keeps only the nodes the `loss` output needs (the forward pass and the loss; the
    gradient nodes eigenlorax emitted are dropped, so nothing of them is trusted);
  * converts that graph to float64: f32 initializers, inputs and casts become f64. ONNX
    Runtime has no f64 `Erf` kernel (nor has tract), so each `Erf` becomes
    sign(x) * (1 - erfc(|x|)) with the Chebyshev fit of Numerical Recipes' erfcc
    (fractional error < 1.2e-7; its derivative is within ~1e-6 relative of the exact one,
    far below the 1e-4 the checks allow);
  * for every f32 input except the targets and example weights (the coefficient inputs and
    the head), estimates d loss / d x for every entry by (L(x+h) - L(x-h)) / 2h in f64;
and writes `loss` and `grad:<input>` (float64) to OUT.safetensors.
"""
import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

# Loss inputs, not parameters: no gradient is asked of them.
SKIP = {"targets", "example_weights", "token_weights"}
# Numerical Recipes erfcc: erfc(z) = t * exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0.
ERFCC = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
         0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277]


def needed_nodes(graph, outputs):
    want = set(outputs)
    keep = []
    for node in reversed(graph.node):
        if any(o in want for o in node.output):
            keep.append(node)
            want.update(i for i in node.input if i)
    keep.reverse()
    return keep, want


def erf_nodes(x, y, tag):
    """Nodes computing y = erf(x) in float64 from ops ORT has f64 kernels for."""
    c = lambda v: f"{tag}/c{v}"  # noqa: E731
    consts = []
    nodes = []

    def const(name, value):
        consts.append(numpy_helper.from_array(np.array(value, dtype=np.float64), name))
        return name

    one = const(c("one"), 1.0)
    half = const(c("half"), 0.5)
    z = f"{tag}/z"
    nodes.append(helper.make_node("Abs", [x], [z]))
    zh = f"{tag}/zh"
    nodes.append(helper.make_node("Mul", [z, half], [zh]))
    den = f"{tag}/den"
    nodes.append(helper.make_node("Add", [zh, one], [den]))
    t = f"{tag}/t"
    nodes.append(helper.make_node("Div", [one, den], [t]))
    # Horner: P(t) = a0 + t*(a1 + t*(... a9))
    acc = const(c("a9"), ERFCC[9])
    for k in range(8, -1, -1):
        m = f"{tag}/m{k}"
        nodes.append(helper.make_node("Mul", [acc, t], [m]))
        a = f"{tag}/p{k}"
        nodes.append(helper.make_node("Add", [m, const(c(f"a{k}"), ERFCC[k])], [a]))
        acc = a
    zz = f"{tag}/zz"
    nodes.append(helper.make_node("Mul", [z, z], [zz]))
    ex = f"{tag}/ex"
    nodes.append(helper.make_node("Sub", [acc, zz], [ex]))
    e = f"{tag}/e"
    nodes.append(helper.make_node("Exp", [ex], [e]))
    erfc = f"{tag}/erfc"
    nodes.append(helper.make_node("Mul", [t, e], [erfc]))
    om = f"{tag}/om"
    nodes.append(helper.make_node("Sub", [one, erfc], [om]))
    s = f"{tag}/s"
    nodes.append(helper.make_node("Sign", [x], [s]))
    nodes.append(helper.make_node("Mul", [s, om], [y]))
    return nodes, consts


def to_f64(model):
    g = model.graph
    keep, used = needed_nodes(g, ["loss"])
    nodes = []
    extra = []
    for i, n in enumerate(keep):
        if n.op_type == "Erf":
            ns, cs = erf_nodes(n.input[0], n.output[0], f"erf64/{i}")
            nodes.extend(ns)
            extra.extend(cs)
            continue
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.DOUBLE
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(
                        numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
        nodes.append(n)
    inits = []
    for t in g.initializer:
        if t.name not in used:
            continue
        if t.data_type == TensorProto.FLOAT:
            inits.append(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
        else:
            inits.append(t)
    inputs = []
    for v in g.input:
        if v.name not in used or any(t.name == v.name for t in g.initializer):
            continue
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
        inputs.append(v)
    out = helper.make_tensor_value_info("loss", TensorProto.DOUBLE, None)
    graph = helper.make_graph(nodes, "fd64", inputs, [out], inits + extra)
    m = helper.make_model(graph, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("out")
    ap.add_argument("--h", type=float, default=1e-4)
    args = ap.parse_args()
    model = to_f64(onnx.load(args.model))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # Graph optimizations may fuse in f32-only kernels; evaluate the graph as written.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    raw = load_file(args.inputs)
    feed = {}
    for n in names:
        if n not in raw:
            sys.exit(f"{args.inputs}: no tensor for graph input `{n}`")
        v = raw[n]
        feed[n] = v.astype(np.float64) if v.dtype == np.float32 else v

    def loss(f):
        return float(sess.run(["loss"], f)[0].reshape(-1)[0])

    result = {"loss": np.array([loss(feed)], dtype=np.float64)}
    h = args.h
    for n in names:
        if feed[n].dtype != np.float64 or n in SKIP:
            continue
        x = feed[n]
        grad = np.zeros_like(x)
        flat = x.reshape(-1)
        gflat = grad.reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + h
            lp = loss(feed)
            flat[k] = keep - h
            lm = loss(feed)
            flat[k] = keep
            gflat[k] = (lp - lm) / (2 * h)
        result[f"grad:{n}"] = grad
    save_file(result, args.out)


if __name__ == "__main__":
    main()
