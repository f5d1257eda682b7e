#!/usr/bin/env python3
"""How far each trained adapter moved from its PEFT init, and how much the
tasks' A matrices overlap.

Re-creates each task's init (same seed, same LoraConfig, same call order as
train_adapters.py) and prints, per task, ||A - A0||_F / ||A0||_F and
||B||_F summed over modules, plus the mean |cosine| between the row spaces of
two tasks' layer-0 query A matrices (init and trained). With distinct seeds
the inits are unrelated (cosines near the random level ~ sqrt(r/in)).

    python3 tools/workload/lora_drift.py [--adapters models/minilm/adapters]
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from common import TASKS, model_dir  # noqa: E402
from train_adapters import ALPHA, R, SEEDS  # noqa: E402


def init_A(mdir, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel
    torch.manual_seed(seed)
    m = get_peft_model(AutoModel.from_pretrained(mdir),
                       LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["query", "value"], lora_dropout=0.0, bias="none"))
    return {k.replace(".default", ""): v.detach().clone() for k, v in m.state_dict().items() if "lora_A" in k}


def subspace_overlap(a, b):
    """mean squared cosine of principal angles between row spaces of a, b [r x in]."""
    qa, _ = torch.linalg.qr(a.T)
    qb, _ = torch.linalg.qr(b.T)
    return (torch.linalg.svdvals(qa.T @ qb) ** 2).mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", default="models/minilm/adapters")
    ap.add_argument("--pydata", default=".cache/pydata")
    a = ap.parse_args()
    torch.set_num_threads(1)
    mdir = model_dir(a.pydata)
    tasks = [t for t in TASKS if os.path.exists(os.path.join(a.adapters, t, "adapter_model.safetensors"))]
    out = {}
    trained, inits = {}, {}
    for t in tasks:
        w = load_file(os.path.join(a.adapters, t, "adapter_model.safetensors"))
        a0 = init_A(mdir, SEEDS[t])
        num = den = bnorm = 0.0
        for k, v in w.items():
            if "lora_A" in k:
                num += (v - a0[k]).norm().item() ** 2
                den += a0[k].norm().item() ** 2
            else:
                bnorm += v.norm().item() ** 2
        out[t] = {"A_rel_change": (num / den) ** 0.5, "B_fro": bnorm ** 0.5}
        key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
        trained[t], inits[t] = w[key], a0[key]
        print(t, json.dumps(out[t]))
    rand = R / trained[tasks[0]].shape[1]
    for name, d in (("init", inits), ("trained", trained)):
        ov = [subspace_overlap(d[s], d[t]) for i, s in enumerate(tasks) for t in tasks[i + 1:]]
        if ov:
            print(f"layer0.query A row-space overlap between tasks ({name}): mean {sum(ov) / len(ov):.4f}, "
                  f"max {max(ov):.4f} (random level r/in = {rand:.4f})")


if __name__ == "__main__":
    main()
