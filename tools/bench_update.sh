#!/usr/bin/env bash
# Incremental update benchmark (issue 31): `elx extract --update OLD.elxb` with 10 new
# adapters against `elx extract` from scratch over all of them, on the same PEFT folders
# (tools/bench_reference.py's generator), one process per measurement (GNU time: wall,
# user + sys CPU, max RSS), every process under `nice -n 10`. Also reports the size of the
# statistics file (OLD.elxs) and checks that both bundles keep the same K per module and
# side (tools/elx_reference.py angles gives their largest principal-angle sine).
#
# Usage: tools/bench_update.sh N [K-rule flags...]   (default flags: --k 16)
#        ELX_BENCH_DIR=… (default .cache/bench-extract); N - 10 old adapters, 10 new ones;
#        ELX_BENCH_GEN="--dim 4096 --layers 1": the generator's shape flags.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: tools/bench_update.sh N [flags]}; shift
flags=("$@"); [ ${#flags[@]} -gt 0 ] || flags=(--k 16)
dir="${ELX_BENCH_DIR:-.cache/bench-extract}"
# shellcheck disable=SC2086 # ELX_BENCH_GEN holds generator flags, e.g. "--dim 4096 --layers 1"
python3 tools/bench_reference.py --dir "$dir" --n "$n" ${ELX_BENCH_GEN:-} --generate-only >/dev/null
cargo build --release --no-default-features --features cli --bin elx -q
elx="${CARGO_TARGET_DIR:-target}/release/elx"
mapfile -t all < <(ls -d "$dir"/adapters/a* | sort | head -n "$n")
old=("${all[@]:0:$((n - 10))}"); new=("${all[@]:$((n - 10))}")

measure() {
  local out; out=$( { /usr/bin/time -f "__TIME__ %e %U %S %M" nice -n 10 "$@" >/dev/null; } 2>&1 | grep __TIME__ )
  awk '{printf "%s %.2f %.0f\n", $2, $3 + $4, $5/1024}' <<<"$out"
}

read -r ow oc om < <(measure "$elx" extract "${old[@]}" "${flags[@]}" --keep-stats -o "$dir/old-$n.elxb")
read -r uw uc um < <(measure "$elx" extract --update "$dir/old-$n.elxb" "${new[@]}" -o "$dir/upd-$n.elxb")
read -r sw sc sm < <(measure "$elx" extract "${all[@]}" "${flags[@]}" -o "$dir/all-$n.elxb")
sin=$(python3 tools/elx_reference.py angles "$dir/upd-$n.elxb" "$dir/all-$n.elxb" | sed 's/.*=//')
stats=$(du -b "$dir/old-$n.elxs" | cut -f1)
printf "%-28s %8s %8s %9s\n" "" "wall s" "CPU s" "peak MiB"
printf "%-28s %8s %8s %9s\n" "extract $((n - 10)) --keep-stats" "$ow" "$oc" "$om"
printf "%-28s %8s %8s %9s\n" "--update with 10" "$uw" "$uc" "$um"
printf "%-28s %8s %8s %9s\n" "extract $n from scratch" "$sw" "$sc" "$sm"
echo "update / scratch: wall $(awk -v a="$uw" -v b="$sw" 'BEGIN{printf "%.3f", a/b}'), CPU $(awk -v a="$uc" -v b="$sc" 'BEGIN{printf "%.3f", a/b}'); statistics file $stats bytes; max sin (update vs scratch) $sin"
echo "Machine: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
