#!/usr/bin/env python3
"""Builds the small, deterministic test fixtures under models/fixtures/ (run from the repo root).

  python3 tools/make_fixtures.py            # everything
  python3 tools/make_fixtures.py --only base,tasks,variants,kohya,reference
  python3 tools/make_fixtures.py --only baseline   # head-only accuracies, writes nothing

What it writes (see models/PROVENANCE.md for the figures of the committed run):
  tiny-bert/            random BertModel (seed 0): config.json, model.safetensors, vocab.txt,
                        model.onnx (legacy exporter), expected_outputs.safetensors
  data/task{i}.safetensors   few-shot train and test sets of the six synthetic tasks
  adapters/task{i}/     PEFT LoRA (r=4, alpha=8, query+value) trained per task with its own seed,
                        plus head.safetensors (linear head on mean pooling)
  adapters/variants/    rslora, rank/alpha_pattern, fp16, bf16, GPT-2 fan_in_fan_out
  tiny-gpt2/            random GPT2Model base of the fan_in_fan_out variant
  kohya/tiny_sd_lora.safetensors (+ .expected.safetensors): synthesized kohya-style SD LoRA
  reference/*.safetensors    outputs of tools/elx_reference.py on the six task adapters

Training runs on one CPU thread with fixed seeds; each task takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

# Single-threaded BLAS unless the caller says otherwise: results do not depend on the thread
# count, and OpenBLAS threads spin badly on a shared, loaded machine (100x slower seen here).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join("models", "fixtures")  # relative: recorded as base_model_name_or_path

VOCAB = 200
SEQ = 16          # padded length: [CLS] + 6..14 content tokens + [SEP] + padding
PAD, CLS, SEP, UNK, MASK = 0, 1, 2, 3, 4
FIRST_WORD = 5    # content tokens are 5..199 ("w005".."w199")

TASK_SEEDS = [1001, 2002, 3003, 4004, 5005, 6006]
TASKS = [
    ("contains_w010", 2, "1 if token w010 occurs in the sequence"),
    ("long_sequence", 2, "1 if the sequence has 11..14 content tokens (else 6..9)"),
    ("count_set_ge3", 2, "1 if at least 3 tokens from w020..w039 occur (else at most 1 occurs)"),
    ("majority_g1_g2", 2, "1 if tokens from w040..w069 outnumber tokens from w070..w099"),
    ("which_group_3way", 3, "which of w100..w129 / w130..w159 / w160..w189 occurs (exactly one does)"),
    ("w011_before_w012", 2, "1 if w011 occurs before w012 (both occur exactly once)"),
]
N_TRAIN_SAVED, N_TEST = 64, 256
STEPS, BATCH, LR = 200, 64, 1e-2


# ----------------------------------------------------------------------------- data

def _random_words(rng, n, exclude=()):
    out = []
    while len(out) < n:
        w = int(rng.integers(FIRST_WORD, VOCAB))
        if w not in exclude:
            out.append(w)
    return out


def make_example(task: int, rng: np.random.Generator):
    """One (content tokens, label) pair of a task, label drawn uniformly first (balanced)."""
    n_cls = TASKS[task][1]
    y = int(rng.integers(n_cls))
    L = int(rng.integers(6, 15))
    if task == 0:
        toks = _random_words(rng, L, exclude={10})
        if y:
            toks[int(rng.integers(L))] = 10
    elif task == 1:
        L = int(rng.integers(11, 15)) if y else int(rng.integers(6, 10))
        toks = _random_words(rng, L)
    elif task == 2:
        s = set(range(20, 40))
        toks = _random_words(rng, L, exclude=s)
        c = int(rng.integers(3, 6)) if y else int(rng.integers(0, 2))
        for p in rng.choice(L, size=c, replace=False):
            toks[int(p)] = int(rng.integers(20, 40))
    elif task == 3:
        g = set(range(40, 100))
        toks = _random_words(rng, L, exclude=g)
        lo = int(rng.integers(0, 3))
        hi = lo + int(rng.integers(1, 3))
        n1, n2 = (hi, lo) if y else (lo, hi)
        pos = rng.choice(L, size=n1 + n2, replace=False)
        for i, p in enumerate(pos):
            toks[int(p)] = int(rng.integers(40, 70)) if i < n1 else int(rng.integers(70, 100))
        y = int(sum(40 <= t < 70 for t in toks) > sum(70 <= t < 100 for t in toks))
    elif task == 4:
        toks = _random_words(rng, L, exclude=set(range(100, 190)))
        lo = 100 + 30 * y
        for p in rng.choice(L, size=int(rng.integers(1, 4)), replace=False):
            toks[int(p)] = int(rng.integers(lo, lo + 30))
    else:
        toks = _random_words(rng, L, exclude={11, 12})
        i, j = sorted(int(p) for p in rng.choice(L, size=2, replace=False))
        toks[i], toks[j] = (11, 12) if y else (12, 11)
    return toks, y


def make_set(task: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, SEQ), dtype=np.int64)
    ys = np.zeros(n, dtype=np.int64)
    for k in range(n):
        toks, y = make_example(task, rng)
        row = [CLS] + toks + [SEP]
        ids[k, :len(row)] = row
        ys[k] = y
    return ids, ys


# ----------------------------------------------------------------------------- models

def save_file(tensors: dict, path: str, metadata: dict | None = None):
    """safetensors.numpy.save_file's signature, written deterministically (sorted metadata)."""
    from elx_reference import write_safetensors
    write_safetensors(path, tensors, metadata)


def torch_setup():
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return torch


def bert_config():
    from transformers import BertConfig
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32, type_vocab_size=1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      initializer_range=0.1, pad_token_id=PAD)


def load_bert(torch):
    from transformers import BertModel
    m = BertModel.from_pretrained(os.path.join(FIX, "tiny-bert"), attn_implementation="eager",
                                  add_pooling_layer=False)
    m.eval()
    return m


def build_base():
    torch = torch_setup()
    from transformers import BertModel
    d = os.path.join(FIX, "tiny-bert")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    cfg = bert_config()
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=False)
    # BERT initializes biases at 0 and LayerNorm weights at 1; the exporter would merge such
    # identical constants and drop their names, which the ONNX binding relies on. Perturb them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
            elif "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(d, safe_serialization=True)
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        for t in ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i:03d}" for i in range(FIRST_WORD, VOCAB)]:
            f.write(t + "\n")

    class LastHidden(BertModel):
        """BertModel returning last_hidden_state only; a subclass keeps parameter names unprefixed."""

        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    export_model = LastHidden.from_pretrained(d, attn_implementation="eager", add_pooling_layer=False)
    export_model.eval()
    model = load_bert(torch)

    ids, _ = make_set(0, 2, seed=99)
    mask = (ids != PAD).astype(np.int64)
    ti, tm = torch.from_numpy(ids), torch.from_numpy(mask)
    torch.onnx.export(export_model, (ti, tm), os.path.join(d, "model.onnx"), dynamo=False,
                      opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                    "attention_mask": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"}})
    with torch.no_grad():
        base_out = model(input_ids=ti, attention_mask=tm).last_hidden_state.numpy()
    check_onnx(torch, model, os.path.join(d, "model.onnx"))
    return {"ids": ids, "mask": mask, "base": base_out}


def check_onnx(torch, model, path):
    """The exported graph must match torch on other batch sizes and lengths (dynamic axes)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    m = onnx.load(path)
    names = {i.name for i in m.graph.initializer}
    for want in ("encoder.layer.0.attention.self.query.bias", "encoder.layer.1.attention.self.value.bias"):
        assert want in names, f"{want} not among the ONNX initializers"
    sess = ReferenceEvaluator(m)
    worst = 0.0
    for n, seq in ((3, 10), (1, 16), (4, 7)):
        ids, _ = make_set(1, n, seed=77 + n)
        ids = ids[:, :seq].copy()
        mask = (ids != PAD).astype(np.int64)
        (got,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
        assert got.shape == ref.shape, (got.shape, ref.shape)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-4, f"ONNX vs torch max abs diff {worst}"
    print(f"onnx check: max |onnx - torch| = {worst:.2e} over 3 batch/length shapes")


def tidy_peft_folder(out_dir: str):
    """PEFT stores target_modules as a set, so its order in adapter_config.json changes from run
    to run; sort it (and drop the model-card template) so rebuilt fixtures are byte-identical."""
    cpath = os.path.join(out_dir, "adapter_config.json")
    with open(cpath) as f:
        cfg = json.load(f)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cpath, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def train_task(task: int, seed: int, out_dir: str | None, lora_kwargs: dict | None = None,
               data_task: int | None = None, head_only: bool = False):
    """Trains LoRA(query, value) + linear head on mean pooling; saves PEFT folder + head.

    head_only: the baseline with the frozen base and the head alone (same data, steps, lr),
    nothing saved."""
    torch = torch_setup()
    from peft import LoraConfig, get_peft_model

    data_task = task if data_task is None else data_task
    n_cls = TASKS[data_task][1]
    train_ids, train_y = make_set(data_task, STEPS * BATCH, seed=10_000 + data_task)
    test_ids, test_y = make_set(data_task, N_TEST, seed=20_000 + data_task)

    torch.manual_seed(seed)  # own seed per adapter: LoRA A init and head init differ per task
    base = load_bert(torch)
    kw = dict(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, bias="none")
    kw.update(lora_kwargs or {})
    if head_only:
        base.requires_grad_(False)
        model = base
    else:
        model = get_peft_model(base, LoraConfig(**kw))
    head = torch.nn.Linear(32, n_cls)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)

    def logits(ids):
        ids_t = torch.from_numpy(ids)
        m = (ids_t != PAD).to(torch.float32)
        h = model(input_ids=ids_t, attention_mask=m.long()).last_hidden_state
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return head(pooled)

    model.train()
    t0 = time.perf_counter()
    for step in range(STEPS):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        loss = torch.nn.functional.cross_entropy(logits(train_ids[sl]), torch.from_numpy(train_y[sl]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        lg = logits(test_ids)
        acc = float((lg.argmax(-1).numpy() == test_y).mean())
        ce = float(torch.nn.functional.cross_entropy(lg, torch.from_numpy(test_y)))
    if head_only:
        return {"task": TASKS[data_task][0], "baseline": "head_only", "seed": seed, "steps": STEPS,
                "train_s": round(train_s, 2), "test_acc": acc, "test_ce": round(ce, 4)}
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tidy_peft_folder(out_dir)
    labels = [str(i) for i in range(n_cls)]
    save_file({"head.weight": head.weight.detach().numpy().copy(),
               "head.bias": head.bias.detach().numpy().copy()},
              os.path.join(out_dir, "head.safetensors"),
              metadata={"labels": json.dumps(labels), "task": TASKS[data_task][0],
                        "pooling": "mean over attention_mask"})
    return {"task": TASKS[data_task][0], "seed": seed, "steps": STEPS, "batch": BATCH, "lr": LR,
            "train_s": round(train_s, 2), "test_acc": acc, "test_ce": round(ce, 4),
            "chance": round(1.0 / n_cls, 3), "model": model}


def build_tasks(base_io):
    torch = torch_setup()

    os.makedirs(os.path.join(FIX, "data"), exist_ok=True)
    stats = []
    for t, (name, n_cls, desc) in enumerate(TASKS):
        tr_ids, tr_y = make_set(t, N_TRAIN_SAVED, seed=30_000 + t)
        te_ids, te_y = make_set(t, N_TEST, seed=20_000 + t)  # the same test set as in training
        save_file({"train.input_ids": tr_ids, "train.labels": tr_y,
                   "test.input_ids": te_ids, "test.labels": te_y},
                  os.path.join(FIX, "data", f"task{t}.safetensors"),
                  metadata={"task": name, "classes": str(n_cls), "description": desc,
                            "attention_mask": "input_ids != 0", "pad_id": "0"})
        st = train_task(t, TASK_SEEDS[t], os.path.join(FIX, "adapters", f"task{t}"))
        model = st.pop("model")
        if t == 0 and base_io is not None:
            with torch.no_grad():
                out = model(input_ids=torch.from_numpy(base_io["ids"]),
                            attention_mask=torch.from_numpy(base_io["mask"])).last_hidden_state.numpy()
            save_file({"input_ids": base_io["ids"], "attention_mask": base_io["mask"],
                       "base.last_hidden_state": base_io["base"],
                       "task0.last_hidden_state": out},
                      os.path.join(FIX, "tiny-bert", "expected_outputs.safetensors"),
                      metadata={"source": "torch eager BertModel; task0 = PEFT adapter task0 active"})
        print(json.dumps(st))
        stats.append(st)
    return stats


def convert_dtype(src: str, dst: str, dtype: str):
    """Copies a PEFT folder with its float tensors converted to float16 / bfloat16."""
    import torch
    from safetensors.torch import load_file, save_file
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "adapter_config.json"), dst)
    t = load_file(os.path.join(src, "adapter_model.safetensors"))
    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    save_file({k: v.to(dt).contiguous() for k, v in t.items()}, os.path.join(dst, "adapter_model.safetensors"),
              metadata={"format": "pt"})


def build_gpt2_variant():
    torch = torch_setup()
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2Model

    d = os.path.join(FIX, "tiny-gpt2")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    GPT2Model(cfg).save_pretrained(d, safe_serialization=True)
    base = GPT2Model.from_pretrained(d)
    torch.manual_seed(7007)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                            fan_in_fan_out=True, lora_dropout=0.0))
    head = torch.nn.Linear(32, 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), lr=LR)
    ids, ys = make_set(0, 100 * BATCH, seed=40_000)
    t0 = time.perf_counter()
    for step in range(100):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        it = torch.from_numpy(ids[sl])
        m = (it != PAD).to(torch.float32)
        h = model(input_ids=it, attention_mask=m.long()).last_hidden_state
        lg = head((h * m[..., None]).sum(1) / m.sum(1, keepdim=True))
        loss = torch.nn.functional.cross_entropy(lg, torch.from_numpy(ys[sl]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = os.path.join(FIX, "adapters", "variants", "gpt2_fan_in_fan_out")
    model.save_pretrained(out, safe_serialization=True)
    tidy_peft_folder(out)
    return {"variant": "gpt2_fan_in_fan_out", "seed": 7007, "steps": 100,
            "train_s": round(time.perf_counter() - t0, 2), "final_train_loss": round(loss.item(), 4)}


def build_variants():
    v = os.path.join(FIX, "adapters", "variants")
    stats = []
    st = train_task(0, 8008, os.path.join(v, "rslora"), {"use_rslora": True})
    st.pop("model")
    st["variant"] = "rslora"
    stats.append(st)
    st = train_task(1, 9009, os.path.join(v, "rank_pattern"),
                    {"rank_pattern": {"layer.1.attention.self.value": 8}, "alpha_pattern": {"value": 32}})
    st.pop("model")
    st["variant"] = "rank_pattern"
    stats.append(st)
    src = os.path.join(FIX, "adapters", "task2")
    convert_dtype(src, os.path.join(v, "task2_fp16"), "float16")
    convert_dtype(src, os.path.join(v, "task2_bf16"), "bfloat16")
    stats.append(build_gpt2_variant())
    for s in stats:
        print(json.dumps(s))
    return stats


def build_kohya():
    """A kohya-ss style SD LoRA: lora_down [r, in(, kh, kw)], lora_up [out, r(, 1, 1)], alpha [].

    Also writes the expected folded ΔW per module (f64, [out, in·kh·kw]) so a reader can be
    checked against numbers: ΔW = (alpha / r)·up·down, alpha defaulting to r when absent."""
    rng = np.random.default_rng(12345)
    mods = {
        # name: (down shape, up shape, alpha or None)
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((4, 32), (32, 4), 2.0),
        "lora_unet_down_blocks_0_resnets_0_conv1": ((4, 8, 3, 3), (16, 4, 1, 1), 8.0),
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj": ((2, 24), (24, 2), None),
    }
    t, expected = {}, {}
    for name, (ds, us, alpha) in mods.items():
        down = (rng.standard_normal(ds) * 0.1).astype(np.float32)
        up = (rng.standard_normal(us) * 0.1).astype(np.float32)
        t[f"{name}.lora_down.weight"] = down
        t[f"{name}.lora_up.weight"] = up
        r = ds[0]
        if alpha is not None:
            t[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
        scale = (alpha if alpha is not None else r) / r
        dw = scale * (up.astype(np.float64).reshape(us[0], r) @ down.astype(np.float64).reshape(r, -1))
        expected[f"{name}.delta"] = dw
        expected[f"{name}.scale"] = np.array(scale, dtype=np.float64)
    d = os.path.join(FIX, "kohya")
    os.makedirs(d, exist_ok=True)
    save_file(t, os.path.join(d, "tiny_sd_lora.safetensors"),
              metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0"})
    save_file(expected, os.path.join(d, "tiny_sd_lora.expected.safetensors"),
              metadata={"convention": "delta = (alpha/r) * up.reshape(out, r) @ down.reshape(r, -1); alpha = r when absent"})


READER_VARIANTS = ["rslora", "rank_pattern", "task2_fp16", "task2_bf16", "gpt2_fan_in_fan_out"]

REFERENCE_RUNS = [
    ("k4.safetensors", ["extract", "--k", "4"]),
    ("k4_center_pseudo.safetensors", ["extract", "--k", "3", "--center", "--pseudo", "2", "--seed", "7"]),
    ("energy09_nocanon.safetensors", ["extract", "--energy", "0.9", "--no-canonicalize"]),
]


def reference_commands(out_dir: str):
    """The exact reference invocations (also used by tests/parity_numpy.rs through this list)."""
    ads = [os.path.join(FIX, "adapters", f"task{i}") for i in range(6)]
    ref = os.path.join(ROOT, "tools", "elx_reference.py")
    cmds = []
    for fname, args in REFERENCE_RUNS:
        cmds.append([sys.executable, ref, args[0], *ads, *args[1:], "-o", os.path.join(out_dir, fname)])
    cmds.append([sys.executable, ref, "project", ads[0], "--ref", os.path.join(out_dir, "k4.safetensors"),
                 "-o", os.path.join(out_dir, "task0_in_k4.safetensors")])
    for v in READER_VARIANTS:
        cmds.append([sys.executable, ref, "delta", os.path.join(FIX, "adapters", "variants", v),
                     "-o", os.path.join(out_dir, f"delta_{v}.safetensors")])
    return cmds


def build_reference(out_dir=None):
    out_dir = out_dir or os.path.join(FIX, "reference")
    os.makedirs(out_dir, exist_ok=True)
    for c in reference_commands(out_dir):
        print(" ".join(os.path.relpath(x) if os.path.isabs(x) else x for x in c[1:]))
        subprocess.run(c, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="base,tasks,variants,kohya,reference")
    args = ap.parse_args()
    os.chdir(ROOT)
    parts = set(args.only.split(","))
    base_io = build_base() if "base" in parts else None
    if "tasks" in parts:
        build_tasks(base_io)
    if "variants" in parts:
        build_variants()
    if "kohya" in parts:
        build_kohya()
    if "reference" in parts:
        build_reference()
    if "baseline" in parts:  # not in the default list: prints figures, writes nothing
        for t in range(len(TASKS)):
            print(json.dumps(train_task(t, TASK_SEEDS[t], None, head_only=True)))


if __name__ == "__main__":
    main()
