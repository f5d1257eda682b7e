#!/usr/bin/env bash
# Extraction benchmark, Rust `elx extract` beside the numpy reference, in one run on the same
# synthetic PEFT folders (r = 16, in = out = 1024, 24 modules; see tools/bench_reference.py).
# The numpy side is the strongest simple baseline, the paper scripts' method
# (`tools/elx_reference.py extract --method gram-eigh`: canonicalize, stack, Gram in the
# smaller dimension, float64 `eigh`, top K), one BLAS thread; elx runs its default 2 module
# threads. Each extraction runs in its own process; wall, CPU (user + sys) and peak RSS are
# that process's (GNU time). `sin` is the largest principal-angle sine between the two
# results over every module and side (elx stores f32 bases, so ~1e-7 is the floor).
# `full CPU s` is elx again with --full-spectrum (every singular value stored, as before
# issue 15's top-values route): what serving the K rule from the trace saves.
#
# Usage: tools/bench_extract_compare.sh [N...]        (default: 10 50 200)
set -euo pipefail
cd "$(dirname "$0")/.."
ns=("$@"); [ ${#ns[@]} -gt 0 ] || ns=(10 50 200)
max=0; for n in "${ns[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
dir="${ELX_BENCH_DIR:-.cache/bench-extract}"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

python3 tools/bench_reference.py --dir "$dir" --n "$max" --generate-only >/dev/null
load0=$(cut -d' ' -f1-3 /proc/loadavg)
cargo build --release --no-default-features --features cli --bin elx -q
elx="${CARGO_TARGET_DIR:-target}/release/elx"

# Runs a command, prints "wall_s cpu_s peak_rss_mib" (GNU time's %e, %U + %S, %M).
measure() {
  local out; out=$( { /usr/bin/time -f "__TIME__ %e %U %S %M" "$@" >/dev/null; } 2>&1 | grep __TIME__ )
  awk '{printf "%s %.2f %.0f\n", $2, $3 + $4, $5/1024}' <<<"$out"
}

printf "%5s  %10s  %10s  %12s  %12s  %10s  %10s  %12s  %14s  %7s  %9s  %10s\n" N "elx wall s" "elx CPU s" \
  "numpy wall s" "numpy CPU s" "wall ratio" "CPU ratio" "elx peak MiB" "numpy peak MiB" "ratio" "max sin" \
  "full CPU s"
for n in "${ns[@]}"; do
  mapfile -t adapters < <(ls -d "$dir"/adapters/a* | sort | head -n "$n")
  read -r rw rc rm < <(measure "$elx" extract "${adapters[@]}" --k 16 -o "$dir/rust-$n.elxb")
  read -r _ fc _ < <(measure "$elx" extract "${adapters[@]}" --k 16 --full-spectrum -o "$dir/rust-full-$n.elxb")
  read -r pw pc pm < <(measure python3 tools/elx_reference.py extract "${adapters[@]}" --k 16 \
    --method gram-eigh -o "$dir/numpy-$n.safetensors")
  sin=$(python3 tools/elx_reference.py angles "$dir/rust-$n.elxb" "$dir/numpy-$n.safetensors" | sed 's/.*=//')
  printf "%5s  %10s  %10s  %12s  %12s  %10s  %10s  %12s  %14s  %7s  %9s  %10s\n" "$n" "$rw" "$rc" "$pw" "$pc" \
    "$(awk -v a="$pw" -v b="$rw" 'BEGIN{printf "%.2fx", a/b}')" \
    "$(awk -v a="$pc" -v b="$rc" 'BEGIN{printf "%.2fx", a/b}')" "$rm" "$pm" \
    "$(awk -v a="$pm" -v b="$rm" 'BEGIN{printf "%.2fx", a/b}')" "$sin" "$fc"
done
echo "load before: $load0"
echo "ratio = numpy / elx (above 1: elx is faster or smaller); elx runs 2 module threads, numpy 1 BLAS thread. Machine: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
