#!/usr/bin/env bash
# Extraction benchmark, Rust `elx extract` beside the numpy reference, in one run on the same
# synthetic PEFT folders (r = 16, in = out = 1024, 24 modules; see tools/bench_reference.py).
# Each extraction runs in its own process; peak RSS is that process's maximum resident set.
#
# Usage: tools/bench_extract_compare.sh [N...]        (default: 10 50 200)
set -euo pipefail
cd "$(dirname "$0")/.."
ns=("$@"); [ ${#ns[@]} -gt 0 ] || ns=(10 50 200)
max=0; for n in "${ns[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
dir="${ELX_BENCH_DIR:-.cache/bench-extract}"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

python3 tools/bench_reference.py --dir "$dir" --n "$max" --generate-only >/dev/null
cargo build --release --no-default-features --bin elx -q
elx=target/release/elx

# Runs a command, prints "wall_s peak_rss_mib" (from GNU time's %e and %M).
measure() {
  local out; out=$( { /usr/bin/time -f "__TIME__ %e %M" "$@" >/dev/null; } 2>&1 | grep __TIME__ )
  awk '{printf "%s %.0f\n", $2, $3/1024}' <<<"$out"
}

printf "%5s  %12s  %12s  %8s  %14s  %14s  %8s\n" N "elx wall s" "numpy wall s" "ratio" "elx peak MiB" "numpy peak MiB" "ratio"
for n in "${ns[@]}"; do
  mapfile -t adapters < <(ls -d "$dir"/adapters/a* | sort | head -n "$n")
  read -r rw rm < <(measure "$elx" extract "${adapters[@]}" --k 16 -o "$dir/rust-$n.elxb")
  read -r pw pm < <(measure python3 tools/elx_reference.py extract "${adapters[@]}" --k 16 -o "$dir/numpy-$n.safetensors")
  printf "%5s  %12s  %12s  %8s  %14s  %14s  %8s\n" "$n" "$rw" "$pw" \
    "$(awk -v a="$pw" -v b="$rw" 'BEGIN{printf "%.2fx", a/b}')" "$rm" "$pm" \
    "$(awk -v a="$pm" -v b="$rm" 'BEGIN{printf "%.2fx", a/b}')"
done
echo "ratio = numpy / elx (above 1: elx is faster or smaller). Machine: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
