#!/usr/bin/env python3
"""Cross-architecture check of the runtime (stdlib only, so it runs before any pip install).

  compare_arch_outputs.py ids DATA.safetensors TENSOR ROWS OUT.npy   write the first ROWS rows as .npy
  compare_arch_outputs.py compare A.jsonl B.jsonl TOL                 `elx run --json` outputs agree

`compare` exits 1 unless both files hold the same rows and every pooled value agrees within TOL.
"""

import json
import struct
import sys


def write_ids(data_path, tensor, rows, out_path):
    with open(data_path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        info = header[tensor]
        if info["dtype"] != "I64" or len(info["shape"]) != 2:
            sys.exit(f"{data_path}: tensor {tensor}: expected a 2-D I64 tensor, found {info}")
        cols = info["shape"][1]
        rows = min(rows, info["shape"][0])
        begin = 8 + n + info["data_offsets"][0]
        f.seek(begin)
        payload = f.read(rows * cols * 8)
    head = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, cols)
    head += " " * (63 - (10 + len(head)) % 64) + "\n"
    with open(out_path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + payload)


def compare(a_path, b_path, tol):
    a = [json.loads(line) for line in open(a_path) if line.strip()]
    b = [json.loads(line) for line in open(b_path) if line.strip()]
    if len(a) != len(b) or not a:
        sys.exit(f"expected the same non-zero number of rows, found {len(a)} and {len(b)}")
    worst = 0.0
    for ra, rb in zip(a, b):
        pa, pb = ra["pooled"], rb["pooled"]
        if len(pa) != len(pb):
            sys.exit(f"row {ra.get('row')}: pooled sizes differ ({len(pa)} vs {len(pb)})")
        worst = max(worst, max(abs(x - y) for x, y in zip(pa, pb)))
    print(f"x86_64 vs aarch64: {len(a)} rows, max |diff| of pooled outputs = {worst:.3e} (tolerance {tol:g})")
    if worst > tol:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "ids":
        write_ids(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 5 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        sys.exit(__doc__)
