#!/usr/bin/env python3
"""Writes the seed inputs of the `chat_template` fuzz target (fuzz/corpus/chat_template/) from
the templates and message lists of tests/fixtures/smollm2_reference/chat_template.json.

    python3 tools/make_chat_template_corpus.py [OUT_DIR]

Input layout (fuzz/src/lib.rs `chat_template`): template source, then NUL-separated
role, content, role, content, ...; the first byte's parity asks for the generation prompt
(every template here starts with '{', odd: on). Standard library only.
"""
import json
import os
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/chat_template"
ref = json.load(open("tests/fixtures/smollm2_reference/chat_template.json", encoding="utf-8"))
os.makedirs(OUT, exist_ok=True)
seen = set()
for case in ref["cases"]:
    if case["add_generation_prompt"]:
        continue
    src = ref["templates"][case["template"]]
    fields = []
    for m in case["messages"]:
        fields += [m["role"], m["content"]]
    data = "\0".join([src] + fields).encode("utf-8")
    if len(data) > 4096 or data in seen:
        continue
    seen.add(data)
    with open(os.path.join(OUT, f"seed-{case['template']}-{len(seen)}"), "wb") as f:
        f.write(data)
print(f"{len(seen)} seeds in {OUT}")
