"""`eigenlorax.Generator` (decoder LLMs) against `elx generate`, on the tiny random Llama of
tests/fixtures/tiny_llama imported by the CLI, with a bundle extracted in Python from PEFT
state dicts held in memory; and a real PEFT `LoraModel`'s state dict where torch and peft are
installed.

Run by tools/test-python.sh (see test_eigenlorax.py for ELX_CLI and ELX_REPO).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import eigenlorax as elx

REPO = Path(os.environ.get("ELX_REPO", Path(__file__).resolve().parents[2]))
CLI = os.environ.get("ELX_CLI", str(REPO / "target" / "debug" / "elx"))
GGUF = REPO / "tests" / "fixtures" / "tiny_llama" / "tiny_llama.gguf"
# The tiny Llama: 2 layers, width 64, 4 query heads and 2 key/value heads of 16.
SHAPES = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64)}
PROMPTS = ["hello world", "the cat", "once upon a time there"]


def elx_cli(*args):
    return subprocess.run([CLI, *map(str, args)], check=True, capture_output=True, text=True).stdout


def lora(seed, r=4):
    """A PEFT LoRA state dict on every attention projection, as PEFT saves it, with its own
    seed (a shared init would look like a shared subspace)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for layer in range(2):
        for m, (d_in, d_out) in SHAPES.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            sd[f"{key}.lora_A.weight"] = (rng.standard_normal((r, d_in)) * 0.3).astype(np.float32)
            sd[f"{key}.lora_B.weight"] = (rng.standard_normal((d_out, r)) * 0.3).astype(np.float32)
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted(SHAPES),
        "base_model_name_or_path": "tiny_llama",
    }
    return elx.Adapter(sd, cfg, name=f"lora{seed}")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The imported tiny Llama, a bundle of three adapters bound to it, and two task files
    (one of a source adapter, one of an adapter the bundle has not seen)."""
    d = tmp_path_factory.mktemp("llama")
    elx_cli("import-gguf", GGUF, "-o", d / "m")
    bundle = elx.extract([lora(s) for s in range(3)], k=4)
    bundle.save(d / "d.elxb")
    elx_cli("bind", d / "d.elxb", "--base", d / "m" / "model.onnx")
    bound = elx.Bundle.load(d / "d.elxb")
    bound.project(lora(0), task="t0").save(d / "t0.elxc")
    bound.project(lora(7), task="t7").save(d / "t7.elxc")
    return d


def cli_generation(*args):
    lines = [json.loads(l) for l in elx_cli("generate", *args, "--json").splitlines()]
    tokens = [l for l in lines if "id" in l]
    return (
        "".join(l.get("text", "") for l in lines),
        [t["id"] for t in tokens],
        [t["logprob"] for t in tokens],
        lines[-1]["finish"],
    )


def test_generate_streams_what_the_cli_streams(llama):
    g = elx.Generator(llama / "m")
    assert g.backend == "tract"
    pieces = []
    out = g.generate("hello world", max_tokens=12, on_text=pieces.append)
    text, ids, logprobs, finish = cli_generation("--model", llama / "m", "--prompt", "hello world", "--max-tokens", 12)
    assert (out.text, out.tokens, out.finish) == (text, ids, finish)
    assert "".join(pieces) == out.text
    np.testing.assert_allclose(out.logprobs, logprobs, rtol=0, atol=1e-6)
    assert len(out.tokens) == 12 or out.finish == "stop"


def test_tasks_swap_and_mix_in_one_batch(llama):
    g = elx.Generator(llama / "m", bundle=llama / "d.elxb")
    t0, t7 = g.load_task(llama / "t0.elxc"), g.load_task(llama / "t7.elxc")
    tasks = [t0, t7, None]
    alone = [g.generate(p, task=t, max_tokens=10) for p, t in zip(PROMPTS, tasks)]
    batch = g.generate_batch(PROMPTS, tasks, max_tokens=10)
    assert [(b.text, b.tokens, b.finish) for b in batch] == [(a.text, a.tokens, a.finish) for a in alone]
    for b, a in zip(batch, alone):
        np.testing.assert_allclose(b.logprobs, a.logprobs, rtol=0, atol=1e-5)
    # The tasks change the model: the same prompt on another task generates other tokens.
    base = g.generate(PROMPTS[0], max_tokens=10)
    assert base.tokens != alone[0].tokens
    # What the CLI generates with the same bundle and task file.
    text, ids, _, finish = cli_generation(
        "--model", llama / "m", "--bundle", llama / "d.elxb", "--task", llama / "t7.elxc",
        "--prompt", PROMPTS[1], "--max-tokens", 10,
    )
    assert (alone[1].text, alone[1].tokens, alone[1].finish) == (text, ids, finish)
    # One task for every row.
    same = g.generate_batch(PROMPTS[:2], t0, max_tokens=10)
    assert same[0].tokens == alone[0].tokens


def test_chat_and_sampling_equal_the_cli(llama):
    g = elx.Generator(llama / "m")
    out = g.generate("hi", chat=True, system="be brief", max_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    text, ids, _, finish = cli_generation(
        "--model", llama / "m", "--prompt", "hi", "--chat", "--system", "be brief", "--max-tokens", 8,
        "--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--seed", 3,
    )
    assert (out.text, out.tokens, out.finish) == (text, ids, finish)
    assert "hi" in g.chat_prompt("hi") and g.chat_prompt("hi") != "hi"


def test_quantized_weights_generate_what_the_cli_generates(llama):
    # hidden 64 and MLP 128: every product of the tiny Llama is quantized.
    g = elx.Generator(llama / "m", weights="q4_0")
    out = g.generate("hello world", max_tokens=8)
    text, ids, _, finish = cli_generation(
        "--model", llama / "m", "--prompt", "hello world", "--max-tokens", 8, "--weights", "q4_0"
    )
    assert (out.text, out.tokens, out.finish) == (text, ids, finish)
    with pytest.raises(elx.UsageError, match="q8"):
        elx.Generator(llama / "m", weights="q8")
    with pytest.raises(elx.UsageError, match="ONNX Runtime only"):
        elx.Generator(llama / "m", weights="q4_1")


def test_generator_bad_input_raises_with_the_library_message(llama, tmp_path):
    g = elx.Generator(llama / "m", bundle=llama / "d.elxb")
    with pytest.raises(elx.ElxError, match="task"):
        g.generate("hello", task=999)
    with pytest.raises(elx.UsageError, match="one task per prompt"):
        g._g.generate_batch([g.base_task], ["a", "b"], 4, 0.0, 0, 1.0, 0)
    with pytest.raises(elx.UsageError, match="one string"):
        g.generate_batch("hello")
    with pytest.raises(elx.ElxError, match="temperature"):
        g.generate("hello", temperature=-1.0)
    with pytest.raises(elx.ElxError, match="nowhere"):
        elx.Generator(tmp_path / "nowhere")
    with pytest.raises(elx.ElxError, match="another subspace|subspace"):
        elx.extract([lora(s) for s in range(3, 6)], k=4).project(lora(7), task="x").save(tmp_path / "x.elxc")
        g.load_task(tmp_path / "x.elxc")
    calls = []

    def stop_here(piece):
        calls.append(piece)
        raise ValueError("enough")

    with pytest.raises(ValueError, match="enough"):
        g.generate("hello world", max_tokens=12, on_text=stop_here)
    assert len(calls) == 1


def test_peft_lora_model_state_dict_when_peft_is_installed(tmp_path):
    """A real PEFT `LoraModel` (torch, peft): its in-memory state dict and the folder
    `save_pretrained` writes give the same bundle."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(32, 32, bias=False)
            self.v_proj = torch.nn.Linear(32, 16, bias=False)

        def forward(self, x):
            return self.q_proj(x).sum() + self.v_proj(x).sum()

    adapters = []
    for seed in range(3):
        torch.manual_seed(seed)
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = peft.get_peft_model(Attention(), cfg)
        folder = tmp_path / f"peft{seed}"
        model.save_pretrained(str(folder))
        adapters.append((elx.Adapter.from_peft_model(model, name=str(folder)), str(folder)))
    from_memory = elx.extract([a for a, _ in adapters], k=3)
    from_folders = elx.extract([f for _, f in adapters], k=3)
    assert from_memory.id == from_folders.id
    assert from_memory.to_bytes() == from_folders.to_bytes()
