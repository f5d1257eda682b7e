#!/usr/bin/env bash
# The Ray driver end to end on a local cluster: starts a Ray head node (2 CPUs, its own temp
# dir and port), runs tools/ray_extract.py over the six fixture adapters in 3 shards, and
# checks that the merged bundle is byte-identical to a one-shot `elx extract`; the cluster is
# stopped on every exit path. Needs ray importable (tools/test.sh installs it into .cache/ray).
#
# Usage: tools/test_ray_extract.sh [ELX_BINARY]      (default: target/debug/elx)
set -euo pipefail
cd "$(dirname "$0")/.."
elx="${1:-target/debug/elx}"
[ -x "$elx" ] || { echo "test_ray_extract: no elx binary at $elx (cargo build first)" >&2; exit 1; }
export RAY_USAGE_STATS_ENABLED=0
tmp=$(mktemp -d /tmp/elx-ray-test.XXXXXX)
# Ray's own temp dir (sockets; its path must stay short) and a port unlikely to be taken.
ray_tmp=$(mktemp -d /tmp/ray.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
# The head node runs in its own process group (setsid, --block), so that stopping it ends
# exactly the processes this test started (not other Ray instances on the machine).
ray_pid=
cleanup() {
  if [ -n "$ray_pid" ]; then
    # TERM to the whole group (head, GCS, raylet, workers), then KILL what is left after 5 s.
    kill -TERM -- "-$ray_pid" 2>/dev/null || true
    for _ in $(seq 25); do kill -0 "$ray_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$ray_pid" 2>/dev/null || true
    wait "$ray_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp" "$ray_tmp"
}
trap cleanup EXIT

start=$(date +%s)
setsid python3 -m ray.scripts.scripts start --head --block --num-cpus 2 --port "$port" \
  --temp-dir "$ray_tmp" --include-dashboard false --disable-usage-stats >"$tmp/ray-start.log" 2>&1 &
ray_pid=$!
for _ in $(seq 600); do
  grep -q "Ray runtime started" "$tmp/ray-start.log" && break
  kill -0 "$ray_pid" 2>/dev/null || { cat "$tmp/ray-start.log" >&2; exit 1; }
  sleep 0.2
done
grep -q "Ray runtime started" "$tmp/ray-start.log" || { echo "Ray did not start in 120 s" >&2; cat "$tmp/ray-start.log" >&2; exit 1; }
up=$(date +%s)

adapters=(models/fixtures/adapters/task{0,1,2,3,4,5})
"$elx" extract "${adapters[@]}" --k 3 -o "$tmp/one-shot.elxb" >/dev/null
python3 tools/ray_extract.py "${adapters[@]}" --shards 3 \
  --address "127.0.0.1:$port" --elx "$elx" --cpus-per-task 1 -o "$tmp/ray.elxb" -- --k 3
cmp "$tmp/one-shot.elxb" "$tmp/ray.elxb"
echo "test_ray_extract: ok (Ray merge == one-shot bundle; cluster start $((up - start)) s, total $(( $(date +%s) - start )) s)"
