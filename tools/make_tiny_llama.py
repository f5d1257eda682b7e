#!/usr/bin/env python3
"""Writes tests/fixtures/tiny_llama/: a tiny random Llama in the HF layout and in llama.cpp's
GGUF layout, with transformers' logits as the reference (issue 26).

    PYTHONPATH=/work/refenv python3 tools/make_tiny_llama.py [OUT_DIR]

Not run in CI (it needs torch + transformers); its output is committed (see PROVENANCE.md in
the output folder for the versions that made it).

Outputs:
  config.json, model.safetensors   HF LlamaForCausalLM (vocab 288, hidden 64, 2 layers, 4 query
                                   heads, 2 KV heads, head_dim 16, intermediate 128, untied).
  tiny_llama.gguf                  The same weights the way llama.cpp's convert_hf_to_gguf.py
                                   writes them: llama keys, Q/K rows permuted, norms F32,
                                   blk.0.ffn_up F16, blk.1.ffn_gate Q8_0, the rest F32, plus a
                                   byte-level BPE tokenizer (3 specials + 256 bytes + 29 merges)
                                   and SmolLM2's chat template.
  tiny_llama_tied.gguf             The same with tied embeddings: no output.weight (the
                                   reference for it is `tied.logits`).
  reference.safetensors            transformers' float32 eager-attention outputs (see below).

The safetensors weights are exactly representable in the GGUF types chosen (the F16 tensor is
rounded to f16, the Q8_0 one quantized and dequantized, which is idempotent: asserted), so the
GGUF and the safetensors hold the same numbers and transformers loading the GGUF
(`gguf_file=`, which un-permutes Q/K and dequantizes) must give the same logits; the script
asserts it (max abs diff printed), which proves the permutation written is llama.cpp's.
"""
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file as save_np
from transformers import LlamaConfig, LlamaForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny_llama"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Merges over GPT-2 byte-level characters ('Ġ' is the space); each result is a new token,
# and later merges may use earlier results.
MERGES = [
    "Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "a n", "o u", "e n", "Ġ s",
    "Ġ w", "a t", "i s", "Ġ o", "Ġ c", "e s", "o r", "i t", "Ġ b", "Ġ f", "Ġ i", "a l",
    "Ġ p", "Ġ m", "in g", "Ġ d", "Ġ h",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER = 64, 2, 4, 2, 16, 128
ROPE_THETA, EPS, MAX_POS = 10000.0, 1e-5, 256
PROMPTS = [[1, 40, 77, 120, 5, 250, 31], [287, 3, 99, 100, 101, 17, 2]]
N_GREEDY = 16
F16_TENSOR = "model.layers.0.mlp.up_proj.weight"
Q8_TENSOR = "model.layers.1.mlp.gate_proj.weight"


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (the one byte-level BPE vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocabulary():
    """Tokens (specials, the 256 byte characters in byte order, merge results) and types."""
    tokens = list(SPECIALS) + [bytes_to_unicode()[b] for b in range(256)]
    for m in MERGES:
        a, b = m.split(" ")
        assert a in tokens and b in tokens, m
        tokens.append(a + b)
    assert len(set(tokens)) == len(tokens)
    # llama.cpp token types: 1 normal, 3 control.
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def q8_roundtrip(w):
    q = quantize(w, GGMLQuantizationType.Q8_0)
    return dequantize(q, GGMLQuantizationType.Q8_0).reshape(w.shape).astype(np.float32)


def make_weights(vocab):
    """Seeded random weights, scaled so logits and attention are far from uniform."""
    rng = np.random.default_rng(20261206)

    def lin(out_f, in_f, gain=1.0):
        return (rng.standard_normal((out_f, in_f)) * gain / np.sqrt(in_f)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, HIDDEN)).astype(np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        # A larger gain on Q and K makes attention peaked, so RoPE and the Q/K layout matter.
        w[p + "self_attn.q_proj.weight"] = lin(HEADS * HEAD_DIM, HIDDEN, 3.0)
        w[p + "self_attn.k_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN, 3.0)
        w[p + "self_attn.v_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.gate_proj.weight"] = lin(INTER, HIDDEN)
        w[p + "mlp.up_proj.weight"] = lin(INTER, HIDDEN)
        w[p + "mlp.down_proj.weight"] = lin(HIDDEN, INTER)
    w["model.norm.weight"] = norm(HIDDEN)
    w["lm_head.weight"] = lin(vocab, HIDDEN, 2.0)
    # Make the weights that the GGUF stores in F16 / Q8_0 exactly representable there.
    w[F16_TENSOR] = w[F16_TENSOR].astype(np.float16).astype(np.float32)
    w[Q8_TENSOR] = q8_roundtrip(w[Q8_TENSOR])
    assert np.array_equal(q8_roundtrip(w[Q8_TENSOR]), w[Q8_TENSOR]), "Q8_0 not idempotent"
    return w


def permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in effect."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, mod = parts[2], ".".join(parts[3:-1])
    return f"blk.{layer}.{GGUF_NAMES[mod]}.weight"


def write_gguf(path, w, tokens, types, tied):
    wr = GGUFWriter(path, "llama")
    wr.add_name("tiny-random-llama")
    wr.add_context_length(MAX_POS)
    wr.add_embedding_length(HIDDEN)
    wr.add_block_count(LAYERS)
    wr.add_feed_forward_length(INTER)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_head_count(HEADS)
    wr.add_head_count_kv(KV_HEADS)
    wr.add_layer_norm_rms_eps(EPS)
    wr.add_rope_freq_base(ROPE_THETA)
    wr.add_vocab_size(len(tokens))
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(MERGES)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_pad_token_id(2)
    wr.add_add_bos_token(False)
    wr.add_chat_template(CHAT_TEMPLATE)
    for hf, x in w.items():
        if tied and hf == "lm_head.weight":
            continue
        if hf.endswith("q_proj.weight"):
            x = permute(x, HEADS, HEADS)
        elif hf.endswith("k_proj.weight"):
            x = permute(x, HEADS, KV_HEADS)
        name = gguf_name(hf)
        if hf == F16_TENSOR:
            wr.add_tensor(name, x.astype(np.float16))
        elif hf == Q8_TENSOR:
            q = quantize(x, GGMLQuantizationType.Q8_0)
            wr.add_tensor(name, q, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            wr.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def config(vocab, tied):
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        max_position_embeddings=MAX_POS,
        rms_norm_eps=EPS,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        torch_dtype="float32",
    )


def model_from(w, vocab, tied):
    m = LlamaForCausalLM._from_config(config(vocab, tied), attn_implementation="eager")
    sd = {k: torch.from_numpy(v.copy()) for k, v in w.items()}
    if tied:
        sd.pop("lm_head.weight")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return m.float().eval()


@torch.no_grad()
def greedy(model, prompt, n):
    """Greedy decoding by full recomputation (no cache): ids and each step's logit row."""
    ids = list(prompt)
    rows = []
    for _ in range(n):
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
        rows.append(logits.clone())
        ids.append(int(torch.argmax(logits)))
    return torch.tensor(ids[len(prompt):]), torch.stack(rows)


@torch.no_grad()
def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tokens, types = vocabulary()
    vocab = len(tokens)
    w = make_weights(vocab)

    m = model_from(w, vocab, tied=False)
    m.config.save_pretrained(OUT)
    # transformers 5 writes rope_theta inside "rope_parameters"; older readers (and most
    # published Llama configs) have it at the top level, so write both (transformers reads
    # either; the reload below checks the folder still gives the same logits).
    cfg_path = os.path.join(OUT, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = ROPE_THETA
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    save_np({k: np.ascontiguousarray(v) for k, v in w.items()}, os.path.join(OUT, "model.safetensors"),
            metadata={"format": "pt"})
    write_gguf(os.path.join(OUT, "tiny_llama.gguf"), w, tokens, types, tied=False)
    write_gguf(os.path.join(OUT, "tiny_llama_tied.gguf"), w, tokens, types, tied=True)

    prompts = torch.tensor(PROMPTS)
    out = m(prompts, output_hidden_states=True, use_cache=False)
    logits = out.logits.float()
    hidden = torch.stack(out.hidden_states)  # [layers + 1, batch, seq, hidden]
    g_ids, g_logits = greedy(m, PROMPTS[0], N_GREEDY)
    # generate() with its KV cache must agree with the full recomputation.
    gen = m.generate(prompts[:1], max_new_tokens=N_GREEDY, do_sample=False, min_new_tokens=N_GREEDY,
                     pad_token_id=2, eos_token_id=None)
    assert torch.equal(gen[0, len(PROMPTS[0]):], g_ids), (gen, g_ids)

    # Loaded again from the HF folder written above: the saved files are what was computed.
    m2 = LlamaForCausalLM.from_pretrained(OUT, attn_implementation="eager", torch_dtype=torch.float32)
    d_hf = (m2(prompts).logits - logits).abs().max().item()
    assert d_hf == 0.0, d_hf

    # transformers reading the GGUF (un-permutes Q/K, dequantizes F16 and Q8_0).
    mg = LlamaForCausalLM.from_pretrained(OUT, gguf_file="tiny_llama.gguf", attn_implementation="eager",
                                          torch_dtype=torch.float32).eval()
    d_gguf = (mg(prompts).logits - logits).abs().max().item()
    print(f"GGUF via transformers vs safetensors: max abs logit diff {d_gguf:.3g}")
    assert d_gguf < 1e-5, d_gguf
    # And the permutation matters: skipping it changes the logits.
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for k in sd:
        if k.endswith("q_proj.weight"):
            sd[k] = torch.from_numpy(permute(sd[k].numpy(), HEADS, HEADS))
        elif k.endswith("k_proj.weight"):
            sd[k] = torch.from_numpy(permute(sd[k].numpy(), HEADS, KV_HEADS))
    mp = model_from({k: v.numpy() for k, v in sd.items()}, vocab, tied=False)
    d_perm = (mp(prompts).logits - logits).abs().max().item()
    print(f"with Q/K left permuted: max abs logit diff {d_perm:.3g}")
    assert d_perm > 0.1, d_perm

    mt = model_from(w, vocab, tied=True)
    tied_logits = mt(prompts, use_cache=False).logits.float()
    mtg = LlamaForCausalLM.from_pretrained(OUT, gguf_file="tiny_llama_tied.gguf", attn_implementation="eager",
                                           torch_dtype=torch.float32).eval()
    d_tied = (mtg(prompts).logits - tied_logits).abs().max().item()
    print(f"tied GGUF via transformers vs tied model: max abs logit diff {d_tied:.3g}")
    assert d_tied < 1e-5, d_tied

    ref = {
        "prompt_ids": prompts.to(torch.int64),
        "logits": logits,
        "hidden_states": hidden.float(),
        "greedy.prompt_ids": torch.tensor(PROMPTS[0], dtype=torch.int64),
        "greedy.ids": g_ids.to(torch.int64),
        "greedy.logits": g_logits.float(),
        "tied.logits": tied_logits,
    }
    save_np({k: np.ascontiguousarray(v.numpy()) for k, v in ref.items()},
            os.path.join(OUT, "reference.safetensors"))
    for f in os.listdir(OUT):
        os.chmod(os.path.join(OUT, f), 0o644)
    summary = {"gguf_vs_safetensors_max_abs": d_gguf, "tied_gguf_vs_tied_max_abs": d_tied,
               "left_permuted_max_abs": d_perm, "vocab": vocab}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
