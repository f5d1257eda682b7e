#!/usr/bin/env python3
"""Rebuild what `elx demo` commits of the WordNet generation family (models/wordnet_gen/demo/):
for one held-out task, the subspace of the other 29 adapters and the task's own adapter.

    python3 tools/workload/make_wordnet_gen_demo.py --adapters ADAPTERS [--task verb_to_noun] \
        [--k 16] [--elx target/release/elx]

ADAPTERS holds the 30 PEFT adapters that `tools/workload/train_wordnet_gen.py train` rebuilds
(models/wordnet_gen/PROVENANCE.md). Writes:
- demo/<task>.others.elxb: `elx extract` of the other adapters, K per side fixed, bases in f16;
- demo/<task>/: the task's adapter_config.json, and its adapter_model.safetensors in f16.

Needs numpy and safetensors (tools/test.sh installs both into .cache/py).
"""
import argparse
import json
import pathlib
import subprocess

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters", required=True, type=pathlib.Path)
    ap.add_argument("--task", default="verb_to_noun")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--elx", default=str(ROOT / "target/release/elx"))
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "models/wordnet_gen/demo")
    a = ap.parse_args()
    tasks = sorted(p.name for p in a.adapters.iterdir() if (p / "adapter_config.json").is_file())
    if a.task not in tasks:
        raise SystemExit(f"{a.adapters}: no adapter for {a.task}")
    others = [str(a.adapters / t) for t in tasks if t != a.task]
    a.out.mkdir(parents=True, exist_ok=True)
    bundle = a.out / f"{a.task}.others.elxb"
    subprocess.run([a.elx, "extract", *others, "--k", str(a.k), "--dtype", "f16", "-o", str(bundle)],
                   check=True, stdout=subprocess.DEVNULL)
    own = a.out / a.task
    own.mkdir(exist_ok=True)
    src = a.adapters / a.task
    config = json.loads((src / "adapter_config.json").read_text())
    (own / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in sorted(tensors.items())},
              str(own / "adapter_model.safetensors"))
    print(f"{bundle}: the other {len(others)} adapters at K = {a.k} per side (f16)")
    print(f"{own}: {len(tensors)} tensors in f16")


if __name__ == "__main__":
    main()
