#!/usr/bin/env python3
"""The seed sweep of BENCHMARKS.md ("Exact gradients", session 7): exact_table.py's rows over
several seeds, as mean ± sd, with the share of the head-only -> backprop-reference CE gap closed.

    python3 tools/workload/seed_sweep.py OUT_SEED0 OUT_SEED1 ...

Each OUT is an `elx demo ... --few-shot 150 --seed S -o OUT` run (OUT/results.json: per held-out
task, test CE and accuracy of head only, exact finetuning in the recycled subspace and in a random
basis) with OUT/<task>/backprop.json beside it (`backprop_reference.py ... --seed S --json-out`).
"Gap closed" = (head only - exact) / (head only - reference), on the means and per seed; n/a
where the reference is no better than head only (no gap to close).
"""
import json
import os
import statistics as st
import sys

METHODS = ("head_only", "finetuned", "random_basis", "reference")


def gap(head, exact, ref):
    return None if head - ref <= 0 else (head - exact) / (head - ref)


def pct(v):
    return "n/a" if v is None else f"{100 * v:.0f}%"


def main(outs):
    rows = {}  # task -> method -> [(ce, accuracy)], one per seed
    for out in outs:
        for t in json.load(open(os.path.join(out, "results.json")))[0]["leave_one_out"]:
            fs = t["few_shot"][0]
            m = rows.setdefault(t["task"], {k: [] for k in METHODS})
            for k in METHODS[:3]:
                m[k].append((fs[k]["test"]["cross_entropy"], fs[k]["test"]["accuracy"]))
            b = json.load(open(os.path.join(out, t["task"], "backprop.json")))
            m["reference"].append((b["test_cross_entropy"], b["test_accuracy"]))
    print(f"{len(outs)} runs; test CE mean ± sd over each task's seeds (mean accuracy)\n")
    print("| held out | seeds | head only | exact, recycled subspace | exact, random basis (control) "
          "| backprop reference (PyTorch) | CE gap closed (means) | per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for task in sorted(rows):
        m = rows[task]
        cells = []
        for k in METHODS:
            ces = [x[0] for x in m[k]]
            sd = st.stdev(ces) if len(ces) > 1 else 0.0
            cells.append(f"{st.mean(ces):.4f} ± {sd:.4f} ({100 * st.mean(x[1] for x in m[k]):.1f}%)")
        means = [st.mean(x[0] for x in m[k]) for k in ("head_only", "finetuned", "reference")]
        per = [gap(h[0], e[0], r[0]) for h, e, r in zip(m["head_only"], m["finetuned"], m["reference"])]
        print(f"| {task} | {len(per)} | {' | '.join(cells)} | {pct(gap(*means))} | {', '.join(pct(p) for p in per)} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
