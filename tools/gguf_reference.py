#!/usr/bin/env python3
"""Independent reference for src/gguf: reads a GGUF file with gguf-py (the `gguf` package of
llama.cpp, numpy only) and dequantizes tensors with `gguf.quants.dequantize`.

    PYTHONPATH=.cache/py python3 tools/gguf_reference.py FILE OUTDIR SPEC...

SPEC is `NAME` (the whole tensor) or `NAME:FIRST:COUNT` (rows FIRST..FIRST+COUNT, a row
being ne[0] elements). Each SPEC's values go to OUTDIR/<index>.f32 (raw little-endian f32,
storage order). Prints one JSON object: the version, alignment, data offset, every metadata
key (scalars and strings as values, arrays as {"type", "len", "head": first 8 elements};
type null for an empty array, whose element type gguf-py does not keep) and
every tensor's info (name, ggml type name, dims innermost first, offset in the data
section). tests/gguf/reference.rs compares all of it with the Rust reader.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def field_value(f):
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        if len(f.types) < 2:
            # gguf-py records no element type for an empty array.
            return {"type": None, "len": 0, "head": []}
        et = f.types[1]
        if et == GGUFValueType.STRING:
            items = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        else:
            items = [f.parts[i].tolist()[0] for i in f.data]
        return {"type": et.name.lower(), "len": len(items), "head": items[:8]}
    v = f.parts[f.data[0]]
    if t == GGUFValueType.STRING:
        return bytes(v).decode("utf-8")
    x = v.tolist()[0]
    return bool(x) if t == GGUFValueType.BOOL else x


def main():
    path, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    os.makedirs(out, exist_ok=True)
    for i, spec in enumerate(sys.argv[3:]):
        name, *rows = spec.split(":")
        t = by_name[name]
        ne0 = int(t.shape[0])
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        if rows:
            first, count = int(rows[0]), int(rows[1])
            values = values[first * ne0:(first + count) * ne0]
        values.astype("<f4").tofile(os.path.join(out, f"{i}.f32"))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = field_value(f)
    print(json.dumps({
        "version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "metadata": meta,
        "tensors": [
            {"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
             "offset": int(t.data_offset) - int(r.data_offset)}
            for t in r.tensors
        ],
    }))


if __name__ == "__main__":
    main()
