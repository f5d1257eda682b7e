#!/usr/bin/env python3
"""Writes tests/fixtures/adapter_peft_head_lora/: a real PEFT adapter with LoRA on a
`modules_to_save` head (the layout older PEFT wrote for sequence classification).

Usage (PEFT 0.10.0 from PyPI beside the torch/transformers of .cache/torchenv):
    .cache/torchenv/bin/python -m pip install --no-deps --target /tmp/peft010 peft==0.10.0
    PYTHONHASHSEED=0 PYTHONPATH=/tmp/peft010 .cache/torchenv/bin/python tools/make_peft_head_lora_fixture.py [out_dir]
(PYTHONHASHSEED fixes the order of target_modules, which PEFT keeps as a set. Tensor values
are identical under any seed; the order of the metadata in a safetensors header may vary.)

Why PEFT 0.10.0: with task_type SEQ_CLS and "classifier" in target_modules, PEFT 0.10 to 0.12
(checked: 0.10.0, 0.11.1, 0.12.0 write the same keys) first puts LoRA on the classifier, then
`PeftModelForSequenceClassification` wraps that LoRA layer in a ModulesToSaveWrapper
(utils/other.py `_set_trainable`): the wrapper holds the frozen `original_module` and a
trainable copy `modules_to_save.default`, each with its own LoRA. `save_pretrained` then writes
the copy's LoRA twice (`classifier.lora_A.weight`, `classifier.modules_to_save.lora_A.weight`),
the frozen original's once (`classifier.original_module.lora_A.weight`) and the copy's full
base weights (`classifier.base_layer.weight/bias`). PEFT 0.13.2 refuses the config (TypeError:
"modules_to_save cannot be applied to modules of type peft.tuners.lora.layer.Linear"); 0.21.2
never puts LoRA on a modules_to_save module (tuners_utils.check_target_module_exists excludes
them) and cannot load this layout (KeyError on `classifier.weight` in
set_peft_model_state_dict).

Every lora_B is randomized (PEFT starts it at zero), the frozen original's with other values,
so a reader that took the wrong copy would be caught. The reference is what PEFT applies
after loading the folder back: PeftModel.from_pretrained on a fresh copy of the seeded base,
then merge_and_unload; expected ΔW = merged weight − the weight under the LoRA (for the
classifier, the copy's own base_layer weight, i.e. the saved head). It is checked here
against get_delta_weight of the layer the wrapper's forward runs. Stored in
expected_delta.safetensors (key = canonical module name, F32 [out, in]).
"""
import copy
import os
import sys

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

assert peft.__version__ == "0.10.0", f"needs peft 0.10.0 (writes the layout), found {peft.__version__}"


def base_model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def main(out: str) -> None:
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "classifier"], lora_dropout=0.0,
                      task_type="SEQ_CLS")
    model = get_peft_model(base_model(), lcfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        # The trained head differs from the base one, as after real training.
        head = model.base_model.model.classifier.modules_to_save["default"].base_layer
        head.weight.add_(torch.randn(head.weight.shape, generator=g) * 0.1)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))

    # What PEFT applies once it loads the folder.
    loaded = PeftModel.from_pretrained(base_model(), out).eval()
    inner = loaded.base_model.model
    wrapper = inner.classifier
    assert isinstance(wrapper, ModulesToSaveWrapper)
    applied = {
        "bert.encoder.layer.0.attention.self.query": inner.bert.encoder.layer[0].attention.self.query,
        # ModulesToSaveWrapper.forward runs modules_to_save[active_adapter] (utils/other.py).
        "classifier": wrapper.modules_to_save[wrapper.active_adapter],
    }
    under = {k: m.base_layer.weight.detach().clone() for k, m in applied.items()}
    by_get = {k: m.get_delta_weight("default").detach().clone() for k, m in applied.items()}
    merged = copy.deepcopy(loaded).merge_and_unload()
    merged_w = {
        "bert.encoder.layer.0.attention.self.query": merged.bert.encoder.layer[0].attention.self.query.weight,
        "classifier": merged.classifier.weight,
    }
    expected = {}
    for k in applied:
        d = (merged_w[k].detach().double() - under[k].double()).float().contiguous()
        err = (d - by_get[k]).abs().max().item() / by_get[k].abs().max().item()
        assert err < 1e-5, (k, err)
        expected[k] = d
        print(out, k, tuple(d.shape), f"merge-diff vs get_delta_weight {err:.1e}")
    # The frozen original's LoRA is a different update: the test can tell the copies apart.
    orig = wrapper.original_module.get_delta_weight("default")
    assert (orig - by_get["classifier"]).abs().max() > 1e-2
    save_file(expected, os.path.join(out, "expected_delta.safetensors"),
              metadata={"source": "peft merge_and_unload minus base weight", "peft": peft.__version__})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/adapter_peft_head_lora")
