#!/usr/bin/env python3
"""Writes tests/fixtures/adapter_peft_tiny{,_gpt2}/: real HF PEFT output for the Rust reader tests.

Usage: python3 tools/make_peft_fixture.py [out_dir_bert [out_dir_gpt2]]

A tiny random BERT (hidden 16, intermediate 32, 2 layers) gets a LoRA with rslora,
rank_pattern, alpha_pattern, modules_to_save and target modules of differing shapes
(attention 16->16, intermediate 16->32, output 32->16). lora_B is randomized (PEFT
initializes it to zero) so every delta is nonzero. PEFT's save_pretrained writes the
adapter folder; PEFT's own get_delta_weight for every module is stored beside it in
expected_delta.safetensors (key = module name, F32 [out, in]) as the reference.
The GPT-2 one (Conv1D layers, fan_in_fan_out=True, c_attn 16 -> 48) checks the layout
convention: PEFT's get_delta_weight is transposed there ([in, out], like Conv1D's weight),
and the Rust side must give B @ A = its transpose, with A and B shapes unchanged.
Deterministic (seeded); a few KB in all.
"""
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel


def randomize_and_save(model, out: str) -> None:
    """Randomizes every lora_B (PEFT starts it at zero), saves the adapter and the reference."""
    g = torch.Generator().manual_seed(1)
    expected = {}
    with torch.no_grad():
        for name, mod in model.base_model.model.named_modules():
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                w = mod.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)
                expected[name] = mod.get_delta_weight("default").float().contiguous()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # The auto-generated model card is not needed by the tests.
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    save_file(expected, os.path.join(out, "expected_delta.safetensors"),
              metadata={"source": "peft get_delta_weight", "peft": __import__("peft").__version__})
    for k, v in sorted(expected.items()):
        print(out, k, tuple(v.shape))


def gpt2(out: str) -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    base = GPT2LMHeadModel(cfg).eval()
    lcfg = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                      lora_dropout=0.0)
    randomize_and_save(get_peft_model(base, lcfg), out)


def main(out: str) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    base = BertForSequenceClassification(cfg).eval()
    lcfg = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["query", "value", "dense"],
        rank_pattern={r"layer\.1\.attention\.self\.query": 2, "intermediate.dense": 6},
        alpha_pattern={"value": 3},
        modules_to_save=["classifier"],
        lora_dropout=0.0,
    )
    randomize_and_save(get_peft_model(base, lcfg), out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/adapter_peft_tiny")
    gpt2(sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/adapter_peft_tiny_gpt2")
