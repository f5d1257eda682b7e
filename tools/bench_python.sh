#!/usr/bin/env bash
# The Python package against the CLI, on tools/bench_reference.py's synthetic PEFT folders
# (r = 16, in = out = 1024, 24 modules each), release builds of both (the wheel without an
# engine: extraction only), the wheel in a fresh venv. Each measured call is its own process
# (GNU time: wall, user + sys CPU, peak RSS); the runs alternate CLI / Python so that a change
# of machine load hits both alike, and the medians are reported.
#
# 1. Extraction of N adapters from their folders, `--k 16`: `elx extract` against
#    `eigenlorax.extract(...).save(...)`; the two bundles must be equal byte for byte.
# 2. The state-dict path: the N adapters loaded as numpy state dicts (safetensors.numpy), then
#    extracted from memory; its peak RSS against the same process that only loads them. A copy
#    of the tensors would add their bytes to the difference.
#
# Usage: tools/bench_python.sh [N] [RUNS]        (default: 50 3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
runs=${2:-3}
dir="${ELX_BENCH_DIR:-.cache/bench-extract}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD/.cache/py${PYTHONPATH:+:$PYTHONPATH}"
python3 tools/bench_reference.py --dir "$dir" --n "$n" --generate-only >/dev/null
cargo build --release --no-default-features --features cli --bin elx -q
elx=target/release/elx
# The library with the CLI's features (the elx build above): built once for both.
ELX_WHEEL_DIR="$work/dist" ELX_WHEEL_FEATURES=eigenlorax/cli tools/build-python-wheel.sh --no-default-features >/dev/null 2>&1
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$work"/dist/*.whl
py="$work/venv/bin/python"
mapfile -t adapters < <(ls -d "$dir"/adapters/a* | sort | head -n "$n")
printf '%s\n' "${adapters[@]}" >"$work/list"

cat >"$work/run.py" <<'PY'
import json, sys, time
import eigenlorax as elx
mode, listing, out = sys.argv[1:4]
paths = open(listing).read().split()
if mode == "folders":
    # The call itself, without the interpreter's start and imports (a notebook pays those once).
    t0 = time.perf_counter()
    elx.extract(paths, k=16).save(out)
    print(f"{time.perf_counter() - t0:.3f}")
else:
    from safetensors.numpy import load_file
    ads = [elx.Adapter(load_file(p + "/adapter_model.safetensors"),
                       json.load(open(p + "/adapter_config.json")), name=p) for p in paths]
    nbytes = sum(v.nbytes for a in ads for v in a.state_dict.values())
    if mode == "statedict":
        elx.extract(ads, k=16).save(out)
    print(nbytes)
PY

# "wall_s cpu_s peak_rss_mib" of a command (GNU time), its stdout in $work/stdout.
measure() {
  local out
  out=$( { /usr/bin/time -f "__TIME__ %e %U %S %M" "$@" >"$work/stdout"; } 2>&1 | grep __TIME__ )
  awk '{printf "%s %.2f %.0f\n", $2, $3 + $4, $5/1024}' <<<"$out"
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

load0=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$work/cli"; : >"$work/py"; : >"$work/py_call"; : >"$work/sd"; : >"$work/load"
for _ in $(seq "$runs"); do
  measure "$elx" extract "${adapters[@]}" --k 16 -o "$work/cli.elxb" >>"$work/cli"
  measure "$py" "$work/run.py" folders "$work/list" "$work/py.elxb" >>"$work/py"
  cat "$work/stdout" >>"$work/py_call"
  measure "$py" "$work/run.py" statedict "$work/list" "$work/sd.elxb" >>"$work/sd"
  bytes=$(cat "$work/stdout")
  measure "$py" "$work/run.py" load "$work/list" - >>"$work/load"
done
cmp "$work/cli.elxb" "$work/py.elxb"
# Named alike, the state dicts give the folders' bundle.
cmp "$work/cli.elxb" "$work/sd.elxb"
col() { awk -v c="$1" '{print $c}' "$2" | median; }
cw=$(col 1 "$work/cli"); cc=$(col 2 "$work/cli"); cm=$(col 3 "$work/cli")
pw=$(col 1 "$work/py"); pc=$(col 2 "$work/py"); pm=$(col 3 "$work/py")
sw=$(col 1 "$work/sd"); sm=$(col 3 "$work/sd"); lm=$(col 3 "$work/load")
mib=$(awk -v b="$bytes" 'BEGIN{printf "%.0f", b/1048576}')
echo "extraction of $n adapters (--k 16), median of $runs runs; bundles equal byte for byte"
printf '%-34s %8s %8s %10s\n' "" "wall s" "CPU s" "peak MiB"
printf '%-34s %8s %8s %10s\n' "elx extract (folders)" "$cw" "$cc" "$cm"
printf '%-34s %8s %8s %10s\n' "eigenlorax.extract (folders)" "$pw" "$pc" "$pm"
pcall=$(median <"$work/py_call")
printf '%-34s %8s %8s %10s\n' "  the call alone (in the process)" "$pcall" "-" "-"
printf '%-34s %8s %8s %10s\n' "eigenlorax.extract (state dicts)" "$sw" "-" "$sm"
printf '%-34s %8s %8s %10s\n' "state dicts loaded only" "-" "-" "$lm"
echo "Python / CLI: wall $(awk -v a="$pw" -v b="$cw" 'BEGIN{printf "%.3fx", a/b}'), CPU $(awk -v a="$pc" -v b="$cc" 'BEGIN{printf "%.3fx", a/b}'); the call alone against the CLI's whole run: $(awk -v a="$pcall" -v b="$cw" 'BEGIN{printf "%.3fx", a/b}')"
echo "state dicts: ${mib} MiB of tensors; extraction adds $((sm - lm)) MiB to the loaded process's peak (folders: the CLI's whole peak is ${cm} MiB)"
echo "load before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc --all) cores"
