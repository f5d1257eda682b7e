#!/usr/bin/env python3
"""Independent numpy reference of the eigenlorax math (EigenLoRAx, Algorithm 1).

Written from docs/DESIGN.md and the paper only, never from the Rust code, so that the Rust
library can be checked against it (tests/parity_numpy.rs).  Everything is float64.

CLI:
  python3 tools/elx_reference.py extract ADAPTER_DIR... [--k N | --energy t] [--no-canonicalize]
          [--center] [--pseudo P --seed S] -o ref.safetensors [--time]
  python3 tools/elx_reference.py project ADAPTER_DIR --ref ref.safetensors -o coeffs.safetensors [--time]
  python3 tools/elx_reference.py delta ADAPTER_DIR -o delta.safetensors      (reader check: ΔW = B'·A')

Conventions (shared with the Rust side):
  * ΔW = s·B·A with s = alpha/r (alpha/√r with rslora), PEFT rank_pattern/alpha_pattern
    override r/alpha per module; the scale is folded: A' = √s·A, B' = √s·B.
  * Canonicalization: B'' = Q_B·U·√S, A'' = √S·Vᵀ·Q_Aᵀ from QR of B', A'ᵀ and the r x r SVD of
    R_B·R_Aᵀ; the sign convention is applied to the columns of Q_B·U (the left singular vectors
    of ΔW), so the result does not depend on the QR's sign choices.
  * Sign convention: every singular vector is flipped so that its entry of largest absolute
    value is positive (first such index on ties); in an SVD the paired vector flips with it.
  * Centering appends the orthogonalized mean direction after the K principal vectors;
    pseudo-PCs come after that, drawn from SplitMix64 + Box–Muller (cosine branch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import struct
import sys
import time

# Single-threaded BLAS unless the caller says otherwise: results do not depend on the thread
# count, and OpenBLAS threads spin badly on a shared, loaded machine (100x slower seen here).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- RNG

class SplitMix64:
    """SplitMix64 integers, 53-bit uniforms and Box–Muller normals (cosine branch only)."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_uniform(self) -> float:
        return (self.next_u64() >> 11) * (2.0 ** -53)

    def next_normal(self) -> float:
        u1 = self.next_uniform()
        u2 = self.next_uniform()
        return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)

    def normals(self, n: int) -> np.ndarray:
        return np.array([self.next_normal() for _ in range(n)], dtype=np.float64)


# ----------------------------------------------------------------------------- safetensors I/O

_DT = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads every tensor of a safetensors file (BF16 included, which numpy lacks) as numpy.

    BF16 is widened exactly to float32 (its bits are the top half of an f32)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} exceeds file size {len(data)}")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        b0, b1 = info["data_offsets"]
        raw = data[base + b0: base + b1]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_DT[info["dtype"]])
        out[name] = arr.reshape(shape)
    return out, meta


_DT_NAME = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16",
            np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("<i2"): "I16", np.dtype("i1"): "I8",
            np.dtype("u1"): "U8", np.dtype("?"): "BOOL"}


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Writes a safetensors file byte-for-byte deterministically (sorted names and metadata keys;
    the safetensors library orders metadata by a hash map), atomically via a rename."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        raw = arr.tobytes()
        header[name] = {"dtype": _DT_NAME[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}, **header}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- PEFT reader

def peft_pattern_key(pattern_keys, key: str) -> str | None:
    """PEFT's get_pattern_key: the first pattern p with re.match(rf"(.*\\.)?({p})$", key)."""
    for p in pattern_keys:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return None


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.([^.]+))?\.weight$")


def canonical_name(key: str) -> tuple[str, str] | None:
    """`base_model.model.X.lora_A[.adapter].weight` -> ("X", "A"); None for non-LoRA keys."""
    m = _LORA_KEY.match(key)
    if not m:
        return None
    return m.group(1), m.group(2)


class PeftAdapter:
    """One PEFT LoRA folder: config, raw tensors and folded per-module (A', B') in float64."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "adapter_config.json")) as f:
            self.config = json.load(f)
        wpath = os.path.join(path, "adapter_model.safetensors")
        self.tensors, self.metadata = read_safetensors(wpath)
        r = int(self.config["r"])
        alpha = float(self.config["lora_alpha"])
        rslora = bool(self.config.get("use_rslora", False))
        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        parts: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in self.tensors.items():
            cn = canonical_name(key)
            if cn is None:
                continue
            name, side = cn
            parts.setdefault(name, {})[side] = arr
        self.modules: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scales: dict[str, float] = {}
        for name in sorted(parts):
            p = parts[name]
            if "A" not in p or "B" not in p:
                raise ValueError(f"{wpath}: module {name} lacks lora_A or lora_B")
            a = p["A"].astype(np.float64)
            b = p["B"].astype(np.float64)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"{wpath}: module {name}: A {a.shape} and B {b.shape} do not pair")
            rk = peft_pattern_key(rank_pattern.keys(), name)
            ak = peft_pattern_key(alpha_pattern.keys(), name)
            mr = int(rank_pattern[rk]) if rk is not None else r
            ma = float(alpha_pattern[ak]) if ak is not None else alpha
            if mr != a.shape[0]:
                raise ValueError(f"{wpath}: module {name}: config rank {mr} but A has {a.shape[0]} rows")
            s = ma / math.sqrt(mr) if rslora else ma / mr
            self.scales[name] = s
            self.modules[name] = (math.sqrt(s) * a, math.sqrt(s) * b)


# ----------------------------------------------------------------------------- linear algebra

def sign_fix_columns(u: np.ndarray, *paired_rows: np.ndarray):
    """Flips each column of u so its largest-|.| entry (first on ties) is positive; the same row
    of every paired matrix (e.g. Vᵀ of the same SVD) flips with it. In place."""
    for j in range(u.shape[1]):
        i = int(np.argmax(np.abs(u[:, j])))
        if u[i, j] < 0:
            u[:, j] *= -1.0
            for p in paired_rows:
                p[j, :] *= -1.0


def sign_fix_rows(vt: np.ndarray, *paired_cols: np.ndarray):
    """Row version of sign_fix_columns (for right singular vectors stored as rows)."""
    for j in range(vt.shape[0]):
        i = int(np.argmax(np.abs(vt[j, :])))
        if vt[j, i] < 0:
            vt[j, :] *= -1.0
            for p in paired_cols:
                p[:, j] *= -1.0


def svd_signed(x: np.ndarray):
    """Thin SVD with the sign convention applied to the columns of U (Vᵀ rows follow)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    sign_fix_columns(u, vt)
    return u, s, vt


def canonicalize(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced factorization of ΔW = B·A: B'' = Q_B·U·√S, A'' = √S·Vᵀ·Q_Aᵀ."""
    qb, rb = np.linalg.qr(b)          # b [out x r]
    qa, ra = np.linalg.qr(a.T)        # aᵀ [in x r]
    u, s, vt = np.linalg.svd(rb @ ra.T)  # r x r
    # The sign convention goes on the singular vectors of ΔW itself (Q_B·U), which, unlike the
    # r x r U, do not depend on the sign choices of the QR factorization.
    ub = qb @ u
    sign_fix_columns(ub, vt)
    rs = np.sqrt(s)
    return (rs[:, None] * vt) @ qa.T, ub * rs[None, :]


def mgs_append(basis: list[np.ndarray], v: np.ndarray) -> bool:
    """Modified Gram–Schmidt, run twice, of v against basis; appends v/||v|| unless the remainder
    is below 1e-8 of the norm before. Returns whether it was appended."""
    n0 = float(np.linalg.norm(v))
    v = v.copy()
    for _ in range(2):
        for q in basis:
            v -= float(q @ v) * q
    n1 = float(np.linalg.norm(v))
    if n0 == 0.0 or n1 < 1e-8 * n0:
        return False
    basis.append(v / n1)
    return True


def choose_k(sigma: np.ndarray, k: int | None, energy: float | None) -> int:
    """Fixed K (capped at the rank of the stack) or the smallest K reaching the energy share."""
    n = len(sigma)
    if energy is not None:
        e = sigma ** 2
        tot = float(e.sum())
        if tot <= 0.0:
            raise ValueError("energy rule on an all-zero stack")
        cum = np.cumsum(e) / tot
        idx = np.nonzero(cum >= energy)[0]
        return int(idx[0]) + 1 if len(idx) else n
    return min(int(k), n)


def gram_eigh_top(x: np.ndarray, k: int | None, energy: float | None):
    """The paper scripts' method on `x` [n x dim]: the Gram in the smaller dimension, float64
    `eigh`, the top K right singular vectors. Returns (spectrum, top rows [K x dim], K)."""
    n, dim = x.shape
    if n <= dim:
        lam, w = np.linalg.eigh(x @ x.T)          # n x n
    else:
        lam, w = np.linalg.eigh(x.T @ x)          # dim x dim
    lam, w = lam[::-1], w[:, ::-1]
    s = np.sqrt(np.maximum(lam, 0.0))
    kk = choose_k(s, k, energy)
    if n <= dim:
        # v_i = xᵀ·w_i / σ_i (right singular vectors from the left ones).
        vt = (w[:, :kk].T @ x) / s[:kk, None]
    else:
        vt = w[:, :kk].T.copy()
    sign_fix_rows(vt)
    return s, vt, kk


def side_basis(stack: np.ndarray, k: int | None, energy: float | None, center: bool,
               pseudo: int, seed: int, method: str = "svd"):
    """Basis of the row space of `stack` [n x dim] as rows [K_total x dim], plus the spectrum
    and the counts (k_principal, mean_vector, pseudo). `method`: "svd" (full SVD of the stack,
    the accuracy reference) or "gram-eigh" (Gram in the smaller dimension + float64 eigh)."""
    x = stack
    mean = None
    if center:
        mean = stack.mean(axis=0)
        x = stack - mean[None, :]
    if method == "gram-eigh":
        s, vt, kk = gram_eigh_top(x, k, energy)
    else:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        sign_fix_rows(vt)
        kk = choose_k(s, k, energy)
    basis = [vt[i].copy() for i in range(kk)]
    has_mean = False
    if center:
        has_mean = mgs_append(basis, mean)
    n_pseudo = 0
    if pseudo:
        rng = SplitMix64(seed)
        dim = stack.shape[1]
        for _ in range(pseudo):
            if mgs_append(basis, rng.normals(dim)):
                n_pseudo += 1
    v = np.array(basis, dtype=np.float64).reshape(len(basis), stack.shape[1])
    return v, s, kk, has_mean, n_pseudo


def extract(adapters: list[PeftAdapter], k: int | None = None, energy: float | None = None,
            canonical: bool = True, center: bool = False, pseudo: int = 0, seed: int = 0,
            method: str = "svd"):
    """Per module: dict with V_A [K_A x in], V_B [out x K_B], sigma_A, sigma_B and counts."""
    names = sorted({n for ad in adapters for n in ad.modules})
    out = {}
    for name in names:
        pairs = [ad.modules[name] for ad in adapters if name in ad.modules]
        if canonical:
            pairs = [canonicalize(a, b) for a, b in pairs]
        a_stack = np.concatenate([a for a, _ in pairs], axis=0)          # [Σr x in]
        b_stack = np.concatenate([b for _, b in pairs], axis=1)          # [out x Σr]
        va, sa, ka, ma, pa = side_basis(a_stack, k, energy, center, pseudo, seed, method)
        vbt, sb, kb, mb, pb = side_basis(b_stack.T, k, energy, center, pseudo, seed, method)
        out[name] = {"V_A": va, "V_B": vbt.T.copy(), "sigma_A": sa, "sigma_B": sb,
                     "k_a": ka, "k_b": kb, "mean_a": ma, "mean_b": mb, "pseudo_a": pa, "pseudo_b": pb}
    return out


def project_module(a: np.ndarray, b: np.ndarray, va: np.ndarray, vb: np.ndarray):
    """Least-squares coefficients in canonical gauge: alpha_A [r x K_A], alpha_B [K_B x r]."""
    r = a.shape[0]
    alpha_a = np.linalg.solve(va @ va.T, (a @ va.T).T).T                 # A'·V_Aᵀ·(V_A·V_Aᵀ)⁻¹
    alpha_b = np.linalg.solve(vb.T @ vb, vb.T @ b)                       # (V_BᵀV_B)⁻¹·V_Bᵀ·B'
    m = alpha_b @ alpha_a                                                # [K_B x K_A]
    u, s, vt = svd_signed(m)
    q = min(r, len(s))
    rs = np.sqrt(s[:q])
    ga = np.zeros((r, va.shape[0]))
    gb = np.zeros((vb.shape[1], r))
    ga[:q] = rs[:, None] * vt[:q]
    gb[:, :q] = u[:, :q] * rs[None, :]
    return ga, gb


def relative_error(a, b, va, vb, alpha_a, alpha_b) -> float:
    dw = b @ a
    dwh = (vb @ alpha_b) @ (alpha_a @ va)
    return float(np.linalg.norm(dw - dwh) / np.linalg.norm(dw))


def project(adapter: PeftAdapter, ref: dict[str, np.ndarray]):
    """Coefficients and relative errors of every module of `adapter` found in `ref`."""
    coeffs, errs = {}, {}
    for name, (a, b) in adapter.modules.items():
        if f"{name}.V_A" not in ref:
            raise ValueError(f"module {name} is not in the reference subspace")
        va = ref[f"{name}.V_A"].astype(np.float64)
        vb = ref[f"{name}.V_B"].astype(np.float64)
        ga, gb = project_module(a, b, va, vb)
        coeffs[name] = (ga, gb)
        errs[name] = relative_error(a, b, va, vb, ga, gb)
    return coeffs, errs


# ----------------------------------------------------------------------------- CLI

def captured(dw: np.ndarray, va: np.ndarray, vb: np.ndarray) -> float:
    """||P_B·ΔW·P_A||² with P_A, P_B the projectors onto the rows of V_A and columns of V_B
    (orthonormal), on the dense ΔW."""
    if va.shape[0] == 0 or vb.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(vb.T @ dw @ va.T) ** 2)


def held_out(adapters: list[PeftAdapter], energy: float):
    """Each adapter against the subspace of the others: energy-weighted captured share in the
    recycled subspace (energy rule), in the others' mean direction alone, in the centered
    principal directions alone, in both, and the chance expectation (K_A/in)(K_B/out)."""
    out = []
    for h, ad in enumerate(adapters):
        others = [a for i, a in enumerate(adapters) if i != h]
        rec = extract(others, energy=energy)
        cen = extract(others, energy=energy, center=True)
        mean = extract(others, k=0, center=True)
        tot = 0.0
        acc = {"captured": 0.0, "input_side": 0.0, "output_side": 0.0, "mean_only": 0.0, "basis_only": 0.0,
               "mean_plus_basis": 0.0, "chance": 0.0}
        for name, (a, b) in ad.modules.items():
            if name not in rec:
                continue
            dw = b @ a
            e = float(np.linalg.norm(dw) ** 2)
            tot += e
            r = rec[name]
            acc["captured"] += captured(dw, r["V_A"], r["V_B"])
            acc["input_side"] += float(np.linalg.norm(dw @ r["V_A"].T) ** 2)
            acc["output_side"] += float(np.linalg.norm(r["V_B"].T @ dw) ** 2)
            c = cen[name]
            acc["mean_plus_basis"] += captured(dw, c["V_A"], c["V_B"])
            acc["basis_only"] += captured(dw, c["V_A"][:c["k_a"]], c["V_B"][:, :c["k_b"]])
            m = mean[name]
            acc["mean_only"] += captured(dw, m["V_A"], m["V_B"])
            acc["chance"] += e * (r["V_A"].shape[0] / dw.shape[1]) * (r["V_B"].shape[1] / dw.shape[0])
        out.append({k: v / tot for k, v in acc.items()})
    return out


def max_sin_angle(x: np.ndarray, y: np.ndarray) -> float:
    """Sine of the largest principal angle between the row spaces of x and y (same count)."""
    qx, _ = np.linalg.qr(x.T.astype(np.float64))
    qy, _ = np.linalg.qr(y.T.astype(np.float64))
    r = qx - qy @ (qy.T @ qx)
    return float(np.linalg.norm(r, 2)) if r.size else 0.0


def angles(file_x: str, file_y: str) -> float:
    """Largest principal-angle sine between the bases of two extraction outputs (an .elxb
    bundle or this tool's safetensors) over every module and side (V_A rows, V_B columns)."""
    tx, _ = read_safetensors(file_x)
    ty, _ = read_safetensors(file_y)
    worst = 0.0
    for key in sorted(tx):
        if not (key.endswith(".V_A") or key.endswith(".V_B")):
            continue
        if key not in ty:
            raise ValueError(f"{file_y}: no tensor {key} (found in {file_x})")
        x, y = tx[key], ty[key]
        if key.endswith(".V_B"):
            x, y = x.T, y.T
        if x.shape != y.shape:
            raise ValueError(f"{key}: shapes {x.shape} in {file_x} and {y.shape} in {file_y}")
        worst = max(worst, max_sin_angle(x, y))
    return worst


def _report_time(t0: float):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"wall_s={time.perf_counter() - t0:.3f} peak_rss_mib={peak_kib / 1024:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="per-module subspace of N adapters")
    e.add_argument("adapters", nargs="+")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--k", type=int)
    g.add_argument("--energy", type=float)
    e.add_argument("--no-canonicalize", action="store_true")
    e.add_argument("--center", action="store_true")
    e.add_argument("--pseudo", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--time", action="store_true")
    e.add_argument("--method", choices=["svd", "gram-eigh"], default="svd",
                   help="svd: full SVD of each stack (accuracy reference); gram-eigh: the paper "
                        "scripts' Gram in the smaller dimension + float64 eigh, top K")
    an = sub.add_parser("angles", help="largest principal-angle sine between two extractions")
    an.add_argument("x")
    an.add_argument("y")
    p = sub.add_parser("project", help="coefficients of one adapter in a reference subspace")
    p.add_argument("adapter")
    p.add_argument("--ref", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--time", action="store_true")
    ho = sub.add_parser("held-out", help="each adapter's capture in the others' subspace (JSON)")
    ho.add_argument("adapters", nargs="+")
    ho.add_argument("--energy", type=float, default=0.9)
    dl = sub.add_parser("delta", help="folded ΔW = B'·A' [out x in] and scale s of every module")
    dl.add_argument("adapter")
    dl.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    if args.cmd == "extract":
        k, energy = args.k, args.energy
        if k is None and energy is None:
            energy = 0.9  # the Rust side's default rule
        ads = [PeftAdapter(d) for d in args.adapters]
        sub_ = extract(ads, k=k, energy=energy, canonical=not args.no_canonicalize,
                       center=args.center, pseudo=args.pseudo, seed=args.seed,
                       method=args.method)
        tensors = {}
        for name, m in sub_.items():
            for key in ("V_A", "V_B", "sigma_A", "sigma_B"):
                tensors[f"{name}.{key}"] = m[key]
        meta = {"tool": "elx_reference.py", "k": str(k), "energy": str(energy),
                "canonicalize": str(not args.no_canonicalize), "center": str(args.center),
                "pseudo": str(args.pseudo), "seed": str(args.seed),
                "adapters": json.dumps([os.path.basename(os.path.normpath(d)) for d in args.adapters]),
                "counts": json.dumps({n: [m["k_a"], m["mean_a"], m["pseudo_a"], m["k_b"], m["mean_b"],
                                          m["pseudo_b"]] for n, m in sub_.items()})}
        write_safetensors(args.output, tensors, meta)
        for name, m in sub_.items():
            print(f"{name}: K_A={m['V_A'].shape[0]} (principal {m['k_a']}) "
                  f"K_B={m['V_B'].shape[1]} (principal {m['k_b']})")
    elif args.cmd == "angles":
        print(f"max_sin_angle={angles(args.x, args.y):.3e}")
    elif args.cmd == "held-out":
        print(json.dumps(held_out([PeftAdapter(d) for d in args.adapters], args.energy)))
    elif args.cmd == "delta":
        ad = PeftAdapter(args.adapter)
        tensors = {}
        for name, (a, b) in ad.modules.items():
            tensors[f"{name}.delta"] = b @ a
            tensors[f"{name}.scale"] = np.array(ad.scales[name], dtype=np.float64)
        write_safetensors(args.output, tensors, {"tool": "elx_reference.py",
                                                 "convention": "delta = s*B*A as [out, in], f64"})
        print(f"{len(tensors) // 2} modules")
    else:
        ref, _ = read_safetensors(args.ref)
        ad = PeftAdapter(args.adapter)
        coeffs, errs = project(ad, ref)
        tensors = {}
        for name, (ga, gb) in coeffs.items():
            tensors[f"{name}.alpha_A"] = ga
            tensors[f"{name}.alpha_B"] = gb
        write_safetensors(args.output, tensors, {"tool": "elx_reference.py",
                                                 "relative_errors": json.dumps(errs)})
        for name, err in errs.items():
            print(f"{name}: relative_error={err:.6e}")
    if getattr(args, "time", False):
        _report_time(t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
