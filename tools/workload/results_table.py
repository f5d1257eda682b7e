#!/usr/bin/env python3
"""Print models/minilm/results.json as the markdown table used in
models/minilm/PROVENANCE.md."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "models/minilm/results.json"
with open(path, encoding="utf-8") as fh:
    res = json.load(fh)["tasks"]
print("| task | C | train/test | seed | steps (epochs) | train CPU s / wall s | LoRA acc | LoRA CE "
      "| head-only acc | head-only CE | head-only long acc | head-only long CE (steps) | ln C |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t, m in res.items():
    lo, hs, hl = m["lora"], m["head_only_same_steps"], m["head_only_long"]
    print(f"| {t} | {m['classes']} | {m['train_examples']}/{m['test_examples']} | {m['seed']} "
          f"| {m['steps']} ({m['epochs']}) | {m['train_cpu_s']} / {m['train_wall_s']} "
          f"| {lo['accuracy']:.3f} | {lo['ce']:.3f} | {hs['accuracy']:.3f} | {hs['ce']:.3f} "
          f"| {hl['accuracy']:.3f} | {hl['ce']:.3f} ({hl['steps']}) | {m['chance_ce']:.3f} |")
