#!/usr/bin/env python3
"""Sharded `elx extract` on a Ray cluster, merged into the one-shot bundle.

  python3 tools/ray_extract.py ADAPTER... -o domain.elxb --shards 8 [--address auto]
                               [--elx target/release/elx] [--cpus-per-task 2] [-- EXTRACT FLAGS]

Each of the N shards is one `ray.remote` task that runs `elx extract ADAPTER... --shard i/N`
on whichever node Ray places it (modules i, i+N, ... in name order; elx reads only their
tensors) and returns the part's bytes through the object store. The driver then runs
`elx bundle merge` on the parts: the result is byte-identical to `elx extract ADAPTER...`
run in one process, with the same subspace id (tests/cli/shards.rs proves the merge;
tools/test_ray_extract.sh proves it through Ray).

Flags after `--` go to every `elx extract` (e.g. `-- --k 32 --dtype f16`).

On a real cluster (see README, "Extraction on a cluster"): start Ray on every node
(`ray start --head` on one, `ray start --address HEAD:6379` on the others), give every node
the same `elx` binary and the adapters at the same paths (a shared or replicated file
system; each shard runs from the driver's working directory, since the bundle records the
adapter paths as given), and run this driver with `--address auto` on a node of the cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import ray


@ray.remote
def extract_shard(elx: str, cwd: str, adapters: list[str], extra: list[str], i: int, n: int) -> bytes:
    """Runs one shard on this worker, from the driver's working directory (the bundle records
    adapter paths as given, so they must be given as in a one-shot run); returns the part's
    bytes."""
    with tempfile.TemporaryDirectory(prefix="elx-shard-") as tmp:
        out = os.path.join(tmp, f"part{i}.elxb")
        cmd = [elx, "extract", *adapters, *extra, "--shard", f"{i}/{n}", "-o", out]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        if res.returncode != 0:
            raise RuntimeError(f"shard {i}/{n} on {os.uname().nodename}: {' '.join(cmd)}\n{res.stderr}")
        with open(out, "rb") as f:
            return f.read()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--shards", type=int, required=True, help="number of shards N (>= 2)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster address ('auto' for the one this node belongs to); "
                         "default: a local Ray instance started for this run")
    ap.add_argument("--elx", default="elx", help="elx binary, the same path on every node")
    ap.add_argument("--cpus-per-task", type=float, default=2.0,
                    help="CPUs Ray reserves per shard (elx extract uses 2 threads)")
    args = ap.parse_args(argv)
    if args.shards < 2:
        ap.error("--shards must be at least 2")
    elx = os.path.abspath(args.elx) if os.sep in args.elx else args.elx
    out = os.path.abspath(args.output)
    cwd = os.getcwd()

    t0 = time.perf_counter()
    ray.init(address=args.address, include_dashboard=False, logging_level="ERROR")
    try:
        task = extract_shard.options(num_cpus=args.cpus_per_task)
        refs = [task.remote(elx, cwd, args.adapters, extra, i, args.shards) for i in range(args.shards)]
        parts = ray.get(refs)
    finally:
        ray.shutdown()
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="elx-parts-") as tmp:
        paths = []
        for i, data in enumerate(parts):
            p = os.path.join(tmp, f"part{i}.elxb")
            with open(p, "wb") as f:
                f.write(data)
            paths.append(p)
        res = subprocess.run([elx, "bundle", "merge", *paths, "-o", out], capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            return res.returncode
        sys.stdout.write(res.stdout)
    print(f"shards: {args.shards} on Ray in {t1 - t0:.1f} s, merge {time.perf_counter() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
