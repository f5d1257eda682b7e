#!/usr/bin/env python3
"""Independent numpy check of a PEFT round trip (issue 28): `elx project` then `elx reconstruct`.

Usage:
    python3 tools/check_peft_roundtrip.py SOURCE_DIR REBUILT_DIR [--tol 1e-6]

Reads both PEFT folders with numpy only (the reader of tools/elx_reference.py, which applies
PEFT's scaling rules: lora_alpha / r, rslora, rank and alpha patterns) and checks what PEFT
would load from the rebuilt folder against the source:

* the config fields that decide how PEFT loads and applies it are the source's: task_type,
  fan_in_fan_out, modules_to_save, target_modules;
* every non-LoRA tensor of the source (a classifier head, modules_to_save copies) is in the
  rebuilt weights under the same key with the same dtype, shape and values;
* every LoRA module applies the same update to its base weight, in the weight's own layout
  (PEFT adds (s·B·A)ᵀ to a Conv1D weight stored [in, out] when fan_in_fan_out is true), to a
  relative Frobenius error of at most --tol, and so does the layer output on seeded random
  inputs.

Prints one JSON line with the figures and exits 0, or prints the failures and exits 1.
Needs numpy and safetensors (CI: PYTHONPATH=.cache/py). A check with real PEFT (torch) is
tools/check_peft_load.py, run by hand.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from elx_reference import PeftAdapter, canonical_name, read_safetensors  # noqa: E402

FIELDS = ("task_type", "fan_in_fan_out", "modules_to_save", "target_modules")
# LoRA keys PEFT never applies: the frozen original of a modules_to_save head and the second
# copy PEFT 0.10-0.12 saved under `modules_to_save` (dropped at load; see src/adapter/peft/keys.rs,
# `classify`). They are carried byte for byte and compared as tensors, not as updates.
UNAPPLIED = (".modules_to_save", ".original_module")


def applied_modules(adapter: PeftAdapter) -> list:
    return sorted(n for n in adapter.modules if not n.endswith(UNAPPLIED))


def applied_update(adapter: PeftAdapter, name: str) -> np.ndarray:
    """The update PEFT adds to the base weight of `name`, in that weight's stored layout."""
    a, b = adapter.modules[name]  # scale folded in: b @ a = s·B·A, [out, in]
    delta = b @ a
    return delta.T if adapter.config.get("fan_in_fan_out", False) else delta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source")
    ap.add_argument("rebuilt")
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    src = PeftAdapter(args.source)
    out = PeftAdapter(args.rebuilt)
    fails = []
    for f in FIELDS:
        if src.config.get(f) != out.config.get(f):
            fails.append(f"config `{f}`: source {src.config.get(f)!r}, rebuilt {out.config.get(f)!r}")
    extras = [k for k in src.tensors if canonical_name(k) is None or ".modules_to_save." in k
              or ".original_module." in k]
    extra_bytes = 0
    for k in extras:
        s = src.tensors[k]
        r = out.tensors.get(k)
        if r is None:
            fails.append(f"tensor `{k}`: missing from the rebuilt weights")
            continue
        if r.dtype != s.dtype or r.shape != s.shape or not np.array_equal(r, s):
            fails.append(f"tensor `{k}`: source {s.dtype}{list(s.shape)}, rebuilt {r.dtype}{list(r.shape)}"
                         " or other values")
        extra_bytes += s.nbytes
    if applied_modules(src) != applied_modules(out):
        fails.append(f"modules: source {applied_modules(src)}, rebuilt {applied_modules(out)}")
    worst = 0.0
    worst_out = 0.0
    rng = np.random.default_rng(0)
    for name in sorted(set(applied_modules(src)) & set(applied_modules(out))):
        u_src = applied_update(src, name)
        u_out = applied_update(out, name)
        if u_src.shape != u_out.shape:
            fails.append(f"module `{name}`: update {u_src.shape} vs {u_out.shape}")
            continue
        den = np.linalg.norm(u_src)
        err = np.linalg.norm(u_out - u_src) / den if den > 0 else np.linalg.norm(u_out)
        worst = max(worst, err)
        # The layer's output change on inputs of its own layout: x @ U for a Conv1D weight
        # [in, out] (fan_in_fan_out), U @ x for a Linear weight [out, in].
        if src.config.get("fan_in_fan_out", False):
            x = rng.standard_normal((5, u_src.shape[0]))
            y_src, y_out = x @ u_src, x @ u_out
        else:
            x = rng.standard_normal((u_src.shape[1], 5))
            y_src, y_out = u_src @ x, u_out @ x
        yd = np.linalg.norm(y_src)
        worst_out = max(worst_out, np.linalg.norm(y_out - y_src) / yd if yd > 0 else 0.0)
        if err > args.tol:
            fails.append(f"module `{name}`: relative update error {err:.3e} > {args.tol:.0e}")
    if worst_out > args.tol:
        fails.append(f"layer outputs: relative error {worst_out:.3e} > {args.tol:.0e}")
    if fails:
        print("\n".join(fails))
        return 1
    print(json.dumps({"modules": len(applied_modules(src)), "max_rel_update_err": worst,
                      "max_rel_output_err": worst_out, "extras": len(extras),
                      "extra_bytes": extra_bytes,
                      "fields": {f: out.config.get(f) for f in FIELDS}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
