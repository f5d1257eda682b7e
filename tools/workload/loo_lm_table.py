#!/usr/bin/env python3
"""Markdown tables of an `elx leave-one-out` run (results.json): per held-out task, every row
with the share of the base -> own-LoRA gap it recovers; then per method the median and mean
share over tasks, and the target checks of issue 27 (zero-shot: recycled beats the random basis
and the mean direction on Rouge-L; trained rows: recycled beats random on test NLL).

Python 3 standard library only. Usage: loo_lm_table.py OUT/results.json [--min-gap 0.10]
"""
import argparse
import json
import statistics

LABELS = {
    "base": "base model",
    "in_context": "in-context",
    "own_lora": "own LoRA (host-trained, served on the device)",
    "projected": "zero-shot: recycled subspace",
    "mean_only": "zero-shot: mean direction",
    "random_projected": "zero-shot: random basis",
    "finetuned": "trained: recycled subspace",
    "random_basis": "trained: random basis",
}


def share(base, own, row):
    rl_gap, nll_gap = own["rouge_l"] - base["rouge_l"], base["nll"] - own["nll"]
    rl = (row["rouge_l"] - base["rouge_l"]) / rl_gap if rl_gap > 0 else None
    nll = (base["nll"] - row["nll"]) / nll_gap if nll_gap > 0 else None
    return rl, nll


def pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


ORDER = list(LABELS)


def name_of(k):
    label = LABELS[k[0]]
    label += f", {k[1]} pairs" if k[0] in ("in_context", "finetuned", "random_basis") else ""
    return label + (f", K = {k[2]}" if k[2] else "")


def key(r):
    """(method, training pairs, fixed K per side of the K sweep or 0 for the energy rule)."""
    n = r["train_examples"] if r["method"] in ("in_context", "finetuned", "random_basis") else 0
    return (r["method"], n, r.get("fixed_k") or 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--min-gap", type=float, default=None)
    a = ap.parse_args()
    res = json.load(open(a.results))
    min_gap = a.min_gap if a.min_gap is not None else res.get("min_gap", 0.10)
    tasks = res["tasks"]
    print("| task | row | Rouge-L | EM | NLL | RL gap recovered | NLL gap recovered | parameters | bytes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    shares = {}
    for t in tasks:
        rows = {key(r): r for r in t["rows"]}
        base, own = rows[("base", 0, 0)], rows[("own_lora", 0, 0)]
        counted = own["rouge_l"] - base["rouge_l"] >= min_gap
        for k in sorted(rows, key=lambda k: (ORDER.index(k[0]), k[2], k[1])):
            r = rows[k]
            rl, nll = share(base, own, r)
            name = name_of(k)
            print(f"| {t['task']} | {name} | {r['rouge_l']:.3f} | {r['exact_match']:.2f} | {r['nll']:.3f} "
                  f"| {pct(rl) if counted else '(' + pct(rl) + ')'} | {pct(nll)} | {r['parameters']:,} | {r['file_bytes']:,} |")
            s = shares.setdefault(k, {"rl": [], "nll": []})
            if counted and rl is not None:
                s["rl"].append(rl)
            if nll is not None:
                s["nll"].append(nll)
    print()
    print(f"Share of the base -> own-LoRA gap, over {len(tasks)} held-out tasks "
          f"(Rouge-L: tasks whose LoRA gains >= {min_gap}):")
    print()
    print("| row | RL gap: median | mean | tasks | NLL gap: median | mean | tasks |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in sorted(shares, key=lambda k: (ORDER.index(k[0]), k[2], k[1])):
        if k[0] in ("base", "own_lora"):
            continue
        s = shares[k]
        med = lambda v: pct(statistics.median(v)) if v else "n/a"  # noqa: E731
        mean = lambda v: pct(statistics.fmean(v)) if v else "n/a"  # noqa: E731
        name = name_of(k)
        print(f"| {name} | {med(s['rl'])} | {mean(s['rl'])} | {len(s['rl'])} "
              f"| {med(s['nll'])} | {mean(s['nll'])} | {len(s['nll'])} |")
    print()
    # Target checks: per task, recycled vs the controls.
    def wins(a_key, b_key, metric, higher):
        n = w = 0
        for t in tasks:
            rows = {key(r): r for r in t["rows"]}
            if a_key in rows and b_key in rows:
                n += 1
                x, y = rows[a_key][metric], rows[b_key][metric]
                w += (x > y) if higher else (x < y)
        return w, n
    for other in ("random_projected", "mean_only"):
        for metric, higher in (("rouge_l", True), ("nll", False)):
            w, n = wins(("projected", 0, 0), (other, 0, 0), metric, higher)
            print(f"- zero-shot recycled beats {LABELS[other].split(': ')[1]} on {metric}: {w} of {n} tasks")
    sizes = sorted({k[1] for k in shares if k[0] == "finetuned"})
    for n_ex in sizes:
        w, n = wins(("finetuned", n_ex, 0), ("random_basis", n_ex, 0), "nll", False)
        print(f"- trained at {n_ex} pairs: recycled beats the random basis on test NLL on {w} of {n} tasks")
    ks = sorted({k[2] for k in shares if k[2]})
    for kk in ks:
        for metric, higher in (("rouge_l", True), ("nll", False)):
            w, n = wins(("projected", 0, kk), ("random_projected", 0, kk), metric, higher)
            print(f"- K = {kk}: zero-shot recycled beats the random basis on {metric}: {w} of {n} tasks")
    caps = [(t["task"], t["captured"], t["random_captured"], t["mean_only_captured"], t["k_a"] + t["k_b"]) for t in tasks]
    print()
    print("| task | ΔW captured: recycled | random basis | mean direction | Σ K_A + K_B |")
    print("|---|---:|---:|---:|---:|")
    for name, c, r, m, k in caps:
        print(f"| {name} | {100 * c:.1f}% | {100 * r:.2f}% | {100 * m:.1f}% | {k:,} |")
    if ks:
        print()
        print("| task | " + " | ".join(f"K = {kk}: Σ K, recycled / random captured" for kk in ks) + " |")
        print("|---|" + "---:|" * len(ks))
        for t in tasks:
            by_k = {c["k"]: c for c in t.get("k_sweep", [])}
            cells = [f"{by_k[kk]['k_total']:,}: {100 * by_k[kk]['captured']:.1f}% / {100 * by_k[kk]['random_captured']:.2f}%"
                     if kk in by_k else "-" for kk in ks]
            print(f"| {t['task']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
