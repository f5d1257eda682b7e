#!/usr/bin/env python3
"""The peer of examples/bench_decoder.rs: llama-cpp-python on the same GGUF, the same thread
count, the same prompt length and number of new tokens (BENCHMARKS.md, "Decoder").

    PYTHONPATH=<llama-cpp-python> python3 tools/bench_llama_cpp.py FILE.gguf [THREADS] [PROMPT] [NEW] [HELD_OUT]

Prints one JSON object: load time, prefill tok/s, time to first token, decode tok/s (greedy,
one token per eval), peak RSS (ru_maxrss) against the file size and the KV cache, and the
perplexity of the GGUF's own weights on HELD_OUT (default /usr/share/common-licenses/GPL-3:
the first 1,024 tokens as two windows of 512, each from an empty cache, as
examples/bench_decoder.rs scores them).
"""
import json
import math
import os
import resource
import sys
import time

from llama_cpp import Llama, llama_cpp

# ggml's AMX matmul (an "extra buffer type") segfaults in this VM, whose CPU flags AMX but
# whose kernel does not grant the tile state; ELX_LLAMA_EXTRA_BUFTS=1 turns it back on.
# Without extra buffers ggml runs its AVX-512 kernels on the GGUF's blocks as stored.
_default_params = llama_cpp.llama_model_default_params


def sum_exp(x):
    import numpy as np
    return np.exp(x).sum()


def _params():
    p = _default_params()
    p.use_extra_bufts = os.environ.get("ELX_LLAMA_EXTRA_BUFTS") == "1"
    return p


llama_cpp.llama_model_default_params = _params

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
n_prompt = int(sys.argv[3]) if len(sys.argv) > 3 else 128
n_new = int(sys.argv[4]) if len(sys.argv) > 4 else 128
held_out = sys.argv[5] if len(sys.argv) > 5 else "/usr/share/common-licenses/GPL-3"
text = "The river runs through the old town, past the mill and the church, and on to the sea. "

t0 = time.perf_counter()
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
            n_batch=512, verbose=False, logits_all=False)
load_s = time.perf_counter() - t0
ids = []
while len(ids) < n_prompt:
    ids += llm.tokenize(text.encode(), add_bos=False, special=False)
ids = ids[:n_prompt]

llm.reset()
t = time.perf_counter()
llm.eval(ids)
prefill_s = time.perf_counter() - t
logits = llm.scores[llm.n_tokens - 1]
nxt = int(logits.argmax())
ttft_s = time.perf_counter() - t
t = time.perf_counter()
for _ in range(n_new):
    llm.eval([nxt])
    nxt = int(llm.scores[llm.n_tokens - 1].argmax())
decode_s = time.perf_counter() - t
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

# Perplexity: a second model with logits at every position (not part of the timings or RSS).
scorer = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
               n_batch=512, verbose=False, logits_all=True)
text_ids = scorer.tokenize(open(held_out, encoding="utf-8").read().encode(), add_bos=False,
                           special=False)
nll = []
for w in range(2):
    window = text_ids[w * 512:(w + 1) * 512]
    scorer.reset()
    scorer.eval(window[:-1])
    for i, target in enumerate(window[1:]):
        row = scorer.scores[i].astype("float64")
        m = row.max()
        nll.append(-(row[target] - m - math.log(float(sum_exp(row - m)))))
print(json.dumps({
    "threads": threads,
    "load_s": load_s,
    "prompt_tokens": n_prompt,
    "new_tokens": n_new,
    "prefill_tok_s": n_prompt / prefill_s,
    "ttft_s": ttft_s,
    "decode_tok_s": n_new / decode_s,
    "file_bytes": os.path.getsize(path),
    "peak_rss_kib": peak_kib,
    "held_out": held_out,
    "held_out_tokens": len(nll),
    "perplexity": math.exp(sum(nll) / len(nll)),
}))
