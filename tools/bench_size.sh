#!/usr/bin/env bash
# Stripped size of `elx` (default features) under release-profile variants, the CPU time of
# each build, and the runtime latency of each variant against the current release profile
# (BENCHMARKS.md, "Edge budget").
#
#   tools/bench_size.sh [VARIANT...]          # default: all variants below, x86_64
#   TARGET=aarch64-unknown-linux-gnu tools/bench_size.sh base fat-abort
#   BASE_TARGET_DIR=target tools/bench_size.sh base fat-abort   # reuse an existing release build
#
# Each variant builds into its own target dir, ${TGT_ROOT:-/tmp/elx-size}/<target>-<variant>
# (a full release build each: many minutes on 2 cores; delete the dirs afterwards). The
# variants override the release profile through CARGO_PROFILE_RELEASE_* variables, so
# Cargo.toml is not edited. Latency (x86_64 only) runs examples/bench_runtime of every built
# variant in turn, ROUNDS (default 3) rounds interleaved, and prints each run's base and
# patched medians; compare variants by the ratio to the `base` variant of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${TARGET:-x86_64-unknown-linux-gnu}
root=${TGT_ROOT:-/tmp/elx-size}
rounds=${ROUNDS:-3}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base thin fat fat-abort fat-abort-s)
mkdir -p "$root"

envs() {
    case $1 in
        base) ;;
        thin) echo CARGO_PROFILE_RELEASE_LTO=thin ;;
        fat) echo CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 ;;
        abort) echo CARGO_PROFILE_RELEASE_PANIC=abort ;;
        fat-abort) echo CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort ;;
        fat-abort-s) echo CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_OPT_LEVEL=s ;;
        fat-abort-z) echo CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_OPT_LEVEL=z ;;
        *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

# The host build goes without --target, so that its output path (and a reused BASE_TARGET_DIR)
# is the usual target/release.
case $target in
    aarch64-*) strip=aarch64-linux-gnu-strip; sub=$target/release; examples=(); tflag=(--target "$target") ;;
    *) strip=strip; sub=release; examples=(--example bench_runtime); tflag=() ;;
esac

dir_of() {
    if [ "$1" = base ] && [ -n "${BASE_TARGET_DIR:-}" ]; then echo "$BASE_TARGET_DIR"; else echo "$root/$target-$1"; fi
}

for v in "${variants[@]}"; do
    dir=$(dir_of "$v")
    out=$root/$target-$v
    start=$(date +%s)
    # shellcheck disable=SC2046
    env $(envs "$v") CARGO_TARGET_DIR="$dir" /usr/bin/time -f "%U %S" -o "$out.time" \
        nice -n 10 cargo build --release "${tflag[@]}" --bin elx "${examples[@]}" >"$out.log" 2>&1
    wall=$(( $(date +%s) - start ))
    cp "$dir/$sub/elx" "$out.elx"
    "$strip" "$out.elx"
    read -r user sys <"$out.time"
    printf '%-12s %-28s stripped %10d B (%.2f MB)  unstripped %10d B  build wall %5d s  cpu %6.0f s\n' \
        "$v" "$target" "$(stat -c %s "$out.elx")" "$(echo "$(stat -c %s "$out.elx") / 1000000" | bc -l)" \
        "$(stat -c %s "$dir/$sub/elx")" "$wall" "$(echo "$user + $sys" | bc -l)"
done

[ ${#examples[@]} -gt 0 ] || exit 0
for r in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        b=$(dir_of "$v")/release/examples/bench_runtime
        printf 'round %d %-12s ' "$r" "$v"
        "$b" --iters 30 | grep -E '^(base run|patched run)' | tr -s ' ' | paste -sd ' ' 
    done
done
