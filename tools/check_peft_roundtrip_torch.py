#!/usr/bin/env python3
"""Real PEFT on a round trip (issue 28): the source fixture and its rebuilt folder give the
same outputs. Run by hand, not in CI (needs torch, transformers and peft; CI checks the same
round trip with numpy, tools/check_peft_roundtrip.py).

Usage (from the repository root, with a debug or release elx):
    elx extract tests/fixtures/adapter_peft_tiny -o /tmp/t.elxb --energy 1.0
    elx project tests/fixtures/adapter_peft_tiny --bundle /tmp/t.elxb -o /tmp/t.elxc
    elx reconstruct /tmp/t.elxc --bundle /tmp/t.elxb -o /tmp/t-rebuilt
    python3 tools/check_peft_roundtrip_torch.py bert tests/fixtures/adapter_peft_tiny /tmp/t-rebuilt
    # the same with adapter_peft_tiny_gpt2 and `gpt2` (fan_in_fan_out = true)

Builds the seeded tiny base model of tools/make_peft_fixture.py (`bert`: BERT with a 3-class
classifier, the head in modules_to_save; `gpt2`: GPT-2 with Conv1D layers), loads each folder
with PeftModel.from_pretrained on a fresh copy, and checks that the rebuilt adapter's logits
equal the source's (relative error <= 1e-5) on fixed inputs, that both differ from the base
model alone, and that PEFT read the source's task_type, fan_in_fan_out and modules_to_save
from the rebuilt config. Prints OK with the figures, raises otherwise.

Run for issue 28 with torch 2.15, transformers 5.25 and peft 0.21 from PyPI
(`pip install --target DIR torch peft`, 5.6 GB with the CUDA libraries it pulls in; runs on
the CPU): adapter_peft_tiny 1.69e-07, adapter_peft_tiny_gpt2 3.24e-07 (relative error of the
logits). adapter_peft_head_lora is in PEFT 0.10's layout, which peft 0.21 cannot load even
from the source folder (KeyError 'base_model.model.classifier.weight').
"""
import sys

import torch
from peft import PeftModel
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel


def base_model(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32, num_labels=3)
        return BertForSequenceClassification(cfg).eval()
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)
        return GPT2LMHeadModel(cfg).eval()
    raise SystemExit(f"unknown base `{kind}` (bert or gpt2)")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def main(kind: str, source: str, rebuilt: str) -> None:
    ids = torch.tensor([[1, 5, 7, 9, 2, 11], [3, 4, 8, 13, 21, 2]])
    plain = logits(base_model(kind), ids)
    src = PeftModel.from_pretrained(base_model(kind), source).eval()
    out = PeftModel.from_pretrained(base_model(kind), rebuilt).eval()
    y_src, y_out = logits(src, ids), logits(out, ids)
    assert torch.isfinite(y_out).all()
    rel = ((y_out - y_src).norm() / y_src.norm()).item()
    moved = ((y_src - plain).norm() / plain.norm()).item()
    assert moved > 1e-3, f"the source adapter does not change the outputs ({moved:.2e})"
    assert rel <= 1e-5, f"rebuilt logits differ from the source's: relative error {rel:.3e}"
    cs, co = src.peft_config["default"], out.peft_config["default"]
    for field in ("task_type", "fan_in_fan_out", "modules_to_save"):
        a, b = getattr(cs, field), getattr(co, field)
        a = sorted(a) if isinstance(a, (set, list)) else a
        b = sorted(b) if isinstance(b, (set, list)) else b
        assert a == b, (field, a, b)
    print(f"OK: {rebuilt} gives the logits of {source} (relative error {rel:.2e}; the adapter moves "
          f"them by {moved:.2e} from the base alone); task_type {co.task_type}, "
          f"fan_in_fan_out {co.fan_in_fan_out}, modules_to_save {co.modules_to_save}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
