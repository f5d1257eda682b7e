#!/usr/bin/env python3
"""Build the WordNet related-task family: 24 binary tasks, one per pair of
abstract WordNet noun categories, from the lexicographer files of WordNet 3.0
(Debian package `wordnet-base`, /usr/share/wordnet/data.noun).

    apt-get install wordnet-base
    python3 tools/workload/make_wordnet_family.py [--dict /usr/share/wordnet] [--out models/wordnet/data]

Every synset of data.noun carries its lexicographer file number (noun.act,
noun.feeling, ...). A task asks "which of these two categories does this
definition belong to?"; the text is the synset's gloss with its usage
examples, exactly as WordNet writes it (whitespace normalised).

The family is built like the paper's class splits of one dataset: twelve
abstract categories, each in four tasks (a circulant graph: category i is
paired with i+1 and i+5 modulo 12), so every class recurs in several tasks and
the tasks differ only in which pair they ask about.

Rules:
- one global split by synset, decided by a hash of the synset offset (25% to
  test), so no test text of any task is a training text of another task: a
  held-out task's test set is unseen by every adapter of the family;
- a text that occurs in two categories is dropped;
- per task, each class gets MAX_TRAIN_PER_CLASS training and
  MAX_TEST_PER_CLASS test texts (fewer when the category runs out: both classes
  get the smaller count), drawn with random.Random(task seed); the lines are
  shuffled, so the first N of train.jsonl are a balanced-in-expectation sample.

Writes <out>/<task>/{train,test}.jsonl ({"text": str, "label": int}),
<out>/<task>/labels.json and <out>/summary.json. Byte-identical on rerun.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys

# WordNet 3.0 lexicographer file numbers (lexnames(5WN)).
LEXNAMES = {
    4: "act", 7: "attribute", 9: "cognition", 10: "communication", 11: "event",
    12: "feeling", 21: "possession", 22: "process", 23: "quantity", 24: "relation",
    26: "state", 28: "time",
}
# The order of the circulant graph below (neighbours in this list share tasks).
CATEGORIES = ["act", "event", "state", "attribute", "cognition", "communication",
              "feeling", "process", "relation", "possession", "quantity", "time"]
OFFSETS = (1, 5)
MAX_TRAIN_PER_CLASS = 800
MAX_TEST_PER_CLASS = 200
TEST_PERCENT = 25


def tasks():
    """The 24 category pairs, as (name, first, second, seed)."""
    out = []
    n = len(CATEGORIES)
    for off in OFFSETS:
        for i in range(n):
            a, b = CATEGORIES[i], CATEGORIES[(i + off) % n]
            out.append((f"{a}_vs_{b}", a, b))
    return [(name, a, b, 7000 + 17 * k) for k, (name, a, b) in enumerate(out)]


def norm(t):
    return re.sub(r"\s+", " ", t).strip()


def parse_data_noun(lines):
    """{category: [(offset, text)]} for the categories in LEXNAMES, from the
    lines of a WordNet data.noun file (license header lines start with two
    spaces)."""
    by_cat = {c: [] for c in CATEGORIES}
    for line in lines:
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        if len(fields) < 3 or fields[2] != "n":
            continue
        cat = LEXNAMES.get(int(fields[1]))
        text = norm(gloss)
        if cat is not None and text:
            by_cat[cat].append((fields[0], text))
    # A text written under two categories cannot be labelled: drop it everywhere.
    seen = {}
    for cat, items in by_cat.items():
        for _, t in items:
            seen.setdefault(t, set()).add(cat)
    out = {}
    for c, items in by_cat.items():
        # One copy of a text repeated inside one category: the lowest offset.
        first = {}
        for o, t in sorted(items):
            first.setdefault(t, o)
        out[c] = sorted((o, t) for t, o in first.items() if len(seen[t]) == 1)
    return out


def is_test(offset):
    """The global split: a hash of the synset offset, independent of any task."""
    return int(hashlib.sha256(offset.encode()).hexdigest(), 16) % 100 < TEST_PERCENT


def build(by_cat, out_dir, max_train=MAX_TRAIN_PER_CLASS, max_test=MAX_TEST_PER_CLASS):
    summary = {"source": "WordNet 3.0 data.noun (Debian wordnet-base)", "tasks": {}}
    pools = {c: ([t for o, t in v if not is_test(o)], [t for o, t in v if is_test(o)])
             for c, v in by_cat.items()}
    for name, a, b, seed in tasks():
        rng = random.Random(seed)
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        counts = {}
        for side, cap in ((0, max_train), (1, max_test)):
            n = min(cap, len(pools[a][side]), len(pools[b][side]))
            rows = []
            for label, cat in enumerate((a, b)):
                rows += [(t, label) for t in rng.sample(pools[cat][side], n)]
            rng.shuffle(rows)
            fname = "train.jsonl" if side == 0 else "test.jsonl"
            with open(os.path.join(d, fname), "w", encoding="utf-8") as fh:
                for t, label in rows:
                    fh.write(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n")
            counts[fname.split(".")[0]] = len(rows)
        with open(os.path.join(d, "labels.json"), "w", encoding="utf-8") as fh:
            json.dump([f"noun.{a}", f"noun.{b}"], fh)
            fh.write("\n")
        summary["tasks"][name] = {"labels": [f"noun.{a}", f"noun.{b}"], "seed": seed, **counts}
    summary["categories"] = {c: {"train": len(pools[c][0]), "test": len(pools[c][1])} for c in CATEGORIES}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
        fh.write("\n")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dict", default="/usr/share/wordnet", help="folder with WordNet's data.noun")
    ap.add_argument("--out", default="models/wordnet/data")
    a = ap.parse_args()
    path = os.path.join(a.dict, "data.noun")
    if not os.path.isfile(path):
        sys.exit(f"{path} not found: apt-get install wordnet-base (or pass --dict)")
    with open(path, encoding="utf-8") as fh:
        by_cat = parse_data_noun(fh)
    s = build(by_cat, a.out)
    for name, t in s["tasks"].items():
        print(f"{name:28} train {t['train']:4}  test {t['test']:4}")


if __name__ == "__main__":
    main()
