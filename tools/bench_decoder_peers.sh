#!/usr/bin/env bash
# The decoder against llama.cpp (BENCHMARKS.md, "Decoder"): runs llama-cpp-python on the GGUF
# file and `bench_decoder` on the folder `elx import-gguf` wrote from it, alternating, ROUNDS
# times, on THREADS threads; prints each run's JSON line, then the medians and the median
# of the pair-by-pair ratios.
#
#   PYTHONPATH=<llama-cpp-python> tools/bench_decoder_peers.sh GGUF MODEL_DIR [THREADS] [ROUNDS] [CONFIG...]
#
# CONFIG: WEIGHTS:ENGINE pairs for bench_decoder (default `q4_1:ort f32:ort q4_0:tract
# f32:tract`). Needs a release build of the example with the engines named
# (`cargo build --release --features ort --example bench_decoder`) and ORT_DYLIB_PATH for ort.
set -euo pipefail
gguf="$1"
model="$2"
threads="${3:-2}"
rounds="${4:-3}"
shift $(($# < 4 ? $# : 4))
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(q4_1:ort f32:ort q4_0:tract f32:tract)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$repo/target/release/examples/bench_decoder"
[ -x "$bench" ] || { echo "build it first: cargo build --release --features ort --example bench_decoder" >&2; exit 2; }
out="$(mktemp -d)"
for round in $(seq "$rounds"); do
    python3 "$repo/tools/bench_llama_cpp.py" "$gguf" "$threads" 128 128 2>/dev/null >"$out/llama.$round.json"
    echo "llama.cpp $(cat "$out/llama.$round.json")"
    for c in "${configs[@]}"; do
        w="${c%%:*}"
        e="${c##*:}"
        "$bench" "$model" "$threads" 128 128 "$w" /usr/share/common-licenses/GPL-3 "$e" 2>/dev/null >"$out/$e-$w.$round.json"
        echo "$e $w $(cat "$out/$e-$w.$round.json")"
    done
done
python3 - "$out" "$rounds" "${configs[@]}" <<'EOF'
import json, statistics, sys
out, rounds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
load = lambda name, r: json.load(open(f"{out}/{name}.{r}.json"))
llama = [load("llama", r) for r in range(1, rounds + 1)]
med = lambda xs: statistics.median(xs)
print(f"\nmedians over {rounds} rounds")
print(f"llama.cpp: decode {med([d['decode_tok_s'] for d in llama]):.1f} tok/s, prefill {med([d['prefill_tok_s'] for d in llama]):.0f}, "
      f"ttft {med([d['ttft_s'] for d in llama]):.3f} s, perplexity {llama[0]['perplexity']:.3f}, peak {med([d['peak_rss_kib'] for d in llama]) / 1024:.0f} MiB")
for c in configs:
    w, e = c.split(":")
    runs = [load(f"{e}-{w}", r) for r in range(1, rounds + 1)]
    ratio = lambda k: med([a[k] / b[k] for a, b in zip(runs, llama)])
    m = lambda k: med([d[k] for d in runs])
    print(f"{e} {w}: decode {m('decode_tok_s'):.1f} tok/s ({ratio('decode_tok_s'):.2f}x llama.cpp pair by pair), "
          f"prefill {m('prefill_tok_s'):.0f} ({ratio('prefill_tok_s'):.2f}x), ttft {m('ttft_s'):.3f} s, "
          f"with a task {m('decode_with_task_tok_s'):.1f}, perplexity {runs[0]['perplexity']:.3f}, "
          f"batch of 8 tasks {m('batch8_tok_s'):.1f} vs sequential {m('sequential8_tok_s'):.1f} ({m('batch_over_sequential'):.2f}x), "
          f"rows equal alone {runs[0]['batch_rows_equal_alone']}/8, switch {m('task_switch_us'):.2f} us, "
          f"peak {m('peak_rss_kib') / 1024:.0f} MiB ({m('peak_over_weights_plus_kv'):.2f}x f32 file + KV)")
EOF
rm -rf "$out"
