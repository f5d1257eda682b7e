#!/usr/bin/env python3
"""Extraction benchmark workload and the numpy reference's timings on it.

  python3 tools/bench_reference.py --dir /tmp/elx-bench [--n 10 50 200] [--generate-only] [--json out.json]
                                   [--dim 4096 --layers 32]   (the Lots-of-LoRAs shape: 64 modules of 4096)

Generates (once, deterministically) max(N) synthetic PEFT LoRA folders under DIR/adapters/
(a000, a001, ...): r = 16, lora_alpha = 32, 24 modules `model.layers.{0..11}.self_attn.{q,v}_proj`
with in = out = 1024, stored as F32. Adapters share a 32-dim latent subspace per module and side
plus isotropic noise, so that the spectrum has a real head and a tail (seeded per adapter).

Then, for each N, runs `tools/elx_reference.py extract` on the first N adapters (--k 16,
canonicalized) in a fresh process and reports its wall time and peak RSS (resource.getrusage of
that process). The same folders serve the Rust benchmark (`elx extract DIR/adapters/a0*`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

# Single-threaded BLAS unless the caller says otherwise: results do not depend on the thread
# count, and OpenBLAS threads spin badly on a shared, loaded machine (100x slower seen here).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from elx_reference import write_safetensors  # noqa: E402

R, ALPHA, DIM, LAYERS, LATENT = 16, 32, 1024, 12, 32
SEED = 20240601


def module_names():
    return [f"model.layers.{l}.self_attn.{p}" for l in range(LAYERS) for p in ("q_proj", "v_proj")]


def shared_bases():
    """Per module: latent row basis for A [LATENT x DIM] and column basis for B [DIM x LATENT]."""
    rng = np.random.default_rng(SEED)
    out = {}
    for name in module_names():
        qa, _ = np.linalg.qr(rng.standard_normal((DIM, LATENT)))
        qb, _ = np.linalg.qr(rng.standard_normal((DIM, LATENT)))
        out[name] = (qa.T.copy(), qb)
    return out


def generate(dir_: str, n: int):
    """Writes adapters a000..a{n-1} that are not there yet."""
    os.makedirs(os.path.join(dir_, "adapters"), exist_ok=True)
    bases = None
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "use_rslora": False, "fan_in_fan_out": False,
           "target_modules": ["q_proj", "v_proj"], "rank_pattern": {}, "alpha_pattern": {},
           "base_model_name_or_path": f"synthetic-{DIM}", "bias": "none", "lora_dropout": 0.0}
    for t in range(n):
        d = os.path.join(dir_, "adapters", f"a{t:03d}")
        if os.path.exists(os.path.join(d, "adapter_model.safetensors")):
            continue
        bases = bases or shared_bases()
        rng = np.random.default_rng(SEED + 1 + t)
        tensors = {}
        for name in module_names():
            sa, sb = bases[name]
            a = rng.standard_normal((R, LATENT)) @ sa + 0.05 * rng.standard_normal((R, DIM))
            b = sb @ rng.standard_normal((LATENT, R)) * 0.01 + 0.0005 * rng.standard_normal((DIM, R))
            tensors[f"base_model.model.{name}.lora_A.weight"] = (a / np.sqrt(DIM)).astype(np.float32)
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.astype(np.float32)
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)


def run_reference(dir_: str, n: int, k: int) -> dict:
    ads = [os.path.join(dir_, "adapters", f"a{t:03d}") for t in range(n)]
    out = os.path.join(dir_, f"ref_n{n}.safetensors")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "elx_reference.py")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, script, "extract", *ads, "--k", str(k), "-o", out, "--time"],
                       check=True, capture_output=True, text=True)
    outer = time.perf_counter() - t0
    m = re.search(r"wall_s=([\d.]+) peak_rss_mib=([\d.]+)", p.stdout)
    return {"n": n, "r": R, "in": DIM, "out": DIM, "modules": len(module_names()), "k": k,
            "wall_s": float(m.group(1)), "process_wall_s": round(outer, 3), "peak_rss_mib": float(m.group(2)),
            "adapter_bytes": n * os.path.getsize(os.path.join(ads[0], "adapter_model.safetensors")),
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def main():
    global DIM, LAYERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--dim", type=int, default=DIM,
                    help="in = out features of every module (4096: the Mistral-7B q/v shape)")
    ap.add_argument("--layers", type=int, default=LAYERS, help="layers (2 modules each: q, v)")
    args = ap.parse_args()
    # The shape of the workload (the defaults are the benchmark's): module_names() and
    # generate() read these module-level settings.
    DIM, LAYERS = args.dim, args.layers
    t0 = time.perf_counter()
    generate(args.dir, max(args.n))
    print(f"generated/checked {max(args.n)} adapters in {time.perf_counter() - t0:.1f} s")
    if args.generate_only:
        return
    rows = []
    for n in args.n:
        row = run_reference(args.dir, n, args.k)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
