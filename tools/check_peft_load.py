#!/usr/bin/env python3
"""Checks that HF PEFT loads a folder written by eigenlorax's PEFT writer (peft::write).

Usage:
    ELX_PEFT_FIXTURE_DIR=/tmp/elx-peft cargo test --test adapter -- --ignored write::
    python3 tools/check_peft_load.py /tmp/elx-peft

Builds a tiny random BERT (hidden 16, 2 layers), loads the folder with
PeftModel.from_pretrained, and checks for every module in the weights file that PEFT
created a LoRA layer of the written rank with scaling 1 (the writer folds the scale in),
that its lora_A/lora_B equal the file's tensors, and that PEFT's delta weight equals B @ A.
Prints OK on success, raises otherwise. Not run by CI (Rust tests stay Python-free).
"""
import re
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification


def main(folder: str) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    base = BertForSequenceClassification(cfg).eval()
    model = PeftModel.from_pretrained(base, folder).eval()
    weights = load_file(f"{folder}/adapter_model.safetensors")
    names = sorted({re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in weights})
    assert names, "no LoRA tensors in the file"
    modules = dict(model.base_model.model.named_modules())
    for name in names:
        layer = modules[name]
        a = weights[f"base_model.model.{name}.lora_A.weight"]
        b = weights[f"base_model.model.{name}.lora_B.weight"]
        r = a.shape[0]
        assert layer.r["default"] == r, (name, layer.r["default"], r)
        assert layer.scaling["default"] == 1.0, (name, layer.scaling["default"])
        assert torch.equal(layer.lora_A["default"].weight.detach(), a), name
        assert torch.equal(layer.lora_B["default"].weight.detach(), b), name
        delta = layer.get_delta_weight("default")
        err = ((delta - b @ a).norm() / (b @ a).norm()).item()
        assert err < 1e-6, (name, err)
        print(f"{name}: r={r} scaling=1.0 delta rel err {err:.2e}")
    # The forward pass differs from the base by exactly the LoRA path.
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        out = model(input_ids=ids).logits
        with model.disable_adapter():
            out0 = model(input_ids=ids).logits
    assert torch.isfinite(out).all() and not torch.equal(out, out0)
    print(f"OK: PEFT loaded {len(names)} modules from {folder}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
