#!/usr/bin/env python3
"""Rouge-L F1 and exact match of (prediction, reference) pairs by the host scripts' own
definitions (tools/workload/train_wordnet_gen.py), for tests/decoder/score.rs.

    echo '[["pred", "ref"], ...]' | python3 tools/rouge_reference.py   # -> [[rouge_l, exact], ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload"))
from train_wordnet_gen import exact, rouge_l  # noqa: E402 (torch is imported lazily there)

pairs = json.load(sys.stdin)
json.dump([[rouge_l(p, r), exact(p, r)] for p, r in pairs], sys.stdout)
