#!/usr/bin/env python3
"""The exact-gradient table of BENCHMARKS.md ("Exact gradients"): the few-shot rows of an
`elx demo` run (OUT/results.json) beside the backprop reference of each task
(OUT/<task>/backprop.json, written by backprop_reference.py --json-out).

    python3 tools/workload/exact_table.py OUT
"""
import json, sys, os
out = sys.argv[1]
r = json.load(open(os.path.join(out, 'results.json')))[0]
spsa = None
if len(sys.argv) > 2 and os.path.exists(os.path.join(sys.argv[2], 'results.json')):
    spsa = {t['task']: t for t in json.load(open(os.path.join(sys.argv[2], 'results.json')))[0]['leave_one_out']}
print("| held out | head only | exact, recycled subspace | exact, random basis (control) | backprop reference (PyTorch) | CE gap closed | exact: train s | examples/s |")
print("|---|---|---|---|---|---|---|---|")
for t in r['leave_one_out']:
    fs = t['few_shot'][0]
    def get(name):
        m = fs[name]; return m['test']['cross_entropy'], m['test']['accuracy'], m
    h, ha, _ = get('head_only'); f, fa, fm = get('finetuned'); rr, ra, _ = get('random_basis')
    bp = os.path.join(out, t['task'], 'backprop.json')
    if os.path.exists(bp):
        b = json.load(open(bp)); bce, bacc = b['test_cross_entropy'], b['test_accuracy']
        bps = f"{bce:.4f} ({100*bacc:.1f}%)"
        gs = f"{100*(h - f)/(h - bce):.0f}%" if bce < h else "– (backprop no better than head only)"
    else:
        bps, gs = "–", "–"
    sp = "–"
    if spsa and t['task'] in spsa:
        s = spsa[t['task']]['few_shot'][0]['finetuned']['test']; sp = f"{s['cross_entropy']:.4f} ({100*s['accuracy']:.1f}%)"
    ex = 150 * 16; secs = fm['train_seconds']
    print(f"| {t['task']} | {h:.4f} ({100*ha:.1f}%) | {f:.4f} ({100*fa:.1f}%) | {rr:.4f} ({100*ra:.1f}%) | {bps} | {gs} | {secs:.0f} | {ex/secs:.0f} |")
