#!/usr/bin/env python3
"""Markdown tables of an `elx demo` run (its results.json) for BENCHMARKS.md and the README.

    python3 tools/workload/demo_tables.py out/demo/results.json

Per family: the leave-one-out rows (test CE / accuracy), the share of the head-only -> own-LoRA
CE gap each zero-shot row recovers (with the adapter's own head: from the full-training-set
head; with a head refit on the device: from the head fitted the same way on the base model, and
for the recycled row also from the full-training-set head, which saw more data than the refit),
the few-shot rows and the in-sample serving rows, then the means over the held-out tasks.
Only reads the file: every figure is the demo's own.
"""
import json
import sys


def gap(frm, to, x):
    g = frm - to
    return (frm - x) / g if g > 0 else None


def pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def cell(m):
    return f"{m['test']['cross_entropy']:.4f} / {100 * m['test']['accuracy']:.1f}%"


def family(fam):
    name = fam["workload"].rstrip("/").split("/")[-1]
    rows = fam["leave_one_out"]
    out = [f"**{name}** (test CE / accuracy; gap: share of the head-only → own-LoRA CE gap)\n"]
    out.append(
        "| held-out task | captured (random) | head only, full set | head only, device | own LoRA "
        "| recycled | mean only | random basis | gap | recycled + refit | mean only + refit "
        "| random + refit | refit gap: recycled / mean / random | recycled + refit, gap from the full-set head |"
    )
    out.append("|" + "---|" * 14)
    sums = {}
    for t in rows:
        m = {x["method"]: x for x in t["methods"]}
        ce = {k: v["test"]["cross_entropy"] for k, v in m.items()}
        lora = ce["own_lora"]
        full = ce.get("head_only_full", t["reference_ce"])
        dev = ce.get("head_only")
        g = gap(full, lora, ce["projected"])
        rg = [gap(dev, lora, ce.get(k, float("nan"))) if dev is not None else None
              for k in ("projected_refit", "mean_only_refit", "random_projected_refit")]
        fg = gap(full, lora, ce["projected_refit"]) if "projected_refit" in ce else None
        for k, v in (("gap", g), ("refit", rg[0]), ("refit_mean", rg[1]), ("refit_random", rg[2]),
                     ("refit_full", fg)):
            if v is not None:
                sums.setdefault(k, []).append(v)
        get = lambda k: cell(m[k]) if k in m else "–"
        out.append(
            f"| {t['task']} | {100 * t['captured']:.1f}% ({100 * t['random_captured']:.2f}%) "
            f"| {get('head_only_full')} | {get('head_only')} | {get('own_lora')} "
            f"| {get('projected')} | {get('mean_only')} | {get('random_projected')} | {pct(g)} "
            f"| {get('projected_refit')} | {get('mean_only_refit')} | {get('random_projected_refit')} "
            f"| {' / '.join(pct(x) for x in rg)} | {pct(fg)} |"
        )
    mean = lambda k: sum(sums[k]) / len(sums[k]) if sums.get(k) else None

    def median(k):
        v = sorted(sums.get(k, []))
        if not v:
            return None
        h = len(v) // 2
        return v[h] if len(v) % 2 else (v[h - 1] + v[h]) / 2

    # The gap of the family's mean CEs: small per-task gaps do not dominate it.
    def pooled(frm_key, x_key):
        cs = [{x["method"]: x["test"]["cross_entropy"] for x in t["methods"]} for t in rows]
        cs = [c for c in cs if frm_key in c and x_key in c]
        if not cs:
            return None
        avg = lambda k: sum(c[k] for c in cs) / len(cs)
        return gap(avg(frm_key), avg("own_lora"), avg(x_key))
    n = lambda k: len(sums.get(k, []))
    beats = sum(
        1 for t in rows
        if (lambda c: c.get("projected_refit", 9) < min(c.get("random_projected_refit", 9),
                                                          c.get("mean_only_refit", 9)))(
            {x["method"]: x["test"]["cross_entropy"] for x in t["methods"]})
    )
    out.append("")
    out.append(
        f"Median gap recovered over the tasks with a gap (a tiny gap makes a per-task share "
        f"explode, so the median and the gap of the mean CEs are the steady figures): own head "
        f"{pct(median('gap'))} ({n('gap')} tasks); head refit: recycled {pct(median('refit'))}, "
        f"mean only {pct(median('refit_mean'))}, random basis {pct(median('refit_random'))} "
        f"({n('refit')} tasks); recycled + refit from the full-set head {pct(median('refit_full'))}. "
        f"Means: own head {pct(mean('gap'))} ({n('gap')} tasks); "
        f"head refit: recycled {pct(mean('refit'))}, mean only {pct(mean('refit_mean'))}, "
        f"random basis {pct(mean('refit_random'))} ({n('refit')} tasks); recycled + refit from the "
        f"full-set head {pct(mean('refit_full'))} ({n('refit_full')} tasks). With a refit head the "
        f"recycled row has the lowest CE of the three zero-shot rows on {beats} of {len(rows)} tasks. "
        f"On the mean CEs of all {len(rows)} tasks: recycled + refit recovers "
        f"{pct(pooled('head_only', 'projected_refit'))} of the device-head gap "
        f"(random + refit {pct(pooled('head_only', 'random_projected_refit'))}) and "
        f"{pct(pooled('head_only_full', 'projected_refit'))} of the full-set-head gap."
    )
    fs = [t for t in rows if t.get("few_shot")]
    if fs:
        out.append("\nFew-shot (trained on the device; test CE, accuracy in brackets):\n")
        out.append("| held-out task | n | head only | recycled | random basis | train s (recycled / random) |")
        out.append("|---|---|---|---|---|---|")
        wins = {}
        for t in fs:
            for f in t["few_shot"]:
                h, r, c = f["head_only"], f["finetuned"], f["random_basis"]
                w = wins.setdefault(f["examples"], [0, 0, 0])
                w[0] += r["test"]["cross_entropy"] < c["test"]["cross_entropy"]
                w[1] += r["test"]["cross_entropy"] == c["test"]["cross_entropy"]
                w[2] += 1
                out.append(
                    f"| {t['task']} | {f['examples']} | {cell(h)} | {cell(r)} | {cell(c)} "
                    f"| {r['train_seconds']:.0f} / {c['train_seconds']:.0f} |"
                )
        out.append("")
        out.append("Recycled beats the random basis on CE: " + "; ".join(
            f"n = {n}: {w[0]} of {w[2]} ({w[1]} ties)" for n, w in sorted(wins.items())) + ".")
    if fam.get("in_sample"):
        out.append("\nIn-sample serving (every task from one bundle of all the family's adapters, own heads):\n")
        out.append("| energy | K_A+K_B | mean captured | mean Δ accuracy | worst Δ accuracy | mean Δ CE "
                   "| resident bytes | LoRAs' bytes | fewer |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for row in fam["in_sample"]:
            ts = row["tasks"]
            da = [t["served"]["accuracy"] - t["lora"]["accuracy"] for t in ts]
            dc = [t["served"]["cross_entropy"] - t["lora"]["cross_entropy"] for t in ts]
            out.append(
                f"| {100 * row['energy']:.0f}% | {row['k_total']} "
                f"| {100 * sum(t['captured'] for t in ts) / len(ts):.1f}% "
                f"| {100 * sum(da) / len(da):+.2f} pt | {100 * min(da):+.1f} pt "
                f"| {sum(dc) / len(dc):+.4f} | {row['resident_bytes']:,} | {row['lora_bytes']:,} "
                f"| {row['lora_bytes'] / row['resident_bytes']:.1f}x |"
            )
    return "\n".join(out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "out/demo/results.json"
    with open(path, encoding="utf-8") as fh:
        fams = json.load(fh)
    print("\n\n".join(family(f) for f in fams))


if __name__ == "__main__":
    main()
