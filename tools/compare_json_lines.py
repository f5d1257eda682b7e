#!/usr/bin/env python3
"""compare_json_lines.py A.jsonl B.jsonl: exits 1 unless both files hold the same JSON
objects, line by line (key order aside; numbers compared as parsed doubles, so exactly).
Used to check that the C example (examples/c) prints what `elx run --json` prints."""

import json
import sys


def main(a_path, b_path):
    a = [json.loads(line) for line in open(a_path) if line.strip()]
    b = [json.loads(line) for line in open(b_path) if line.strip()]
    if len(a) != len(b) or not a:
        sys.exit(f"{a_path}: {len(a)} lines, {b_path}: {len(b)} lines; expected the same non-zero number")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            sys.exit(f"line {i + 1} differs:\n  {a_path}: {x}\n  {b_path}: {y}")
    print(f"{a_path} and {b_path}: {len(a)} identical lines")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
