#!/usr/bin/env python3
"""The peer of examples/bench_decoder.rs: llama-cpp-python on the same GGUF, the same thread
count, the same prompt length and number of new tokens (BENCHMARKS.md, "Decoder").

    PYTHONPATH=<llama-cpp-python> python3 tools/bench_llama_cpp.py FILE.gguf [THREADS] [PROMPT] [NEW]

Prints one JSON object: load time, prefill tok/s, time to first token, decode tok/s (greedy,
one token per eval), peak RSS (ru_maxrss) against the file size and the KV cache.
"""
import json
import os
import resource
import sys
import time

from llama_cpp import Llama, llama_cpp  # noqa: F401

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
n_prompt = int(sys.argv[3]) if len(sys.argv) > 3 else 128
n_new = int(sys.argv[4]) if len(sys.argv) > 4 else 128
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
print(json.dumps({
    "threads": threads,
    "load_s": load_s,
    "prompt_tokens": n_prompt,
    "new_tokens": n_new,
    "prefill_tok_s": n_prompt / prefill_s,
    "ttft_s": ttft_s,
    "decode_tok_s": n_new / decode_s,
    "file_bytes": os.path.getsize(path),
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
