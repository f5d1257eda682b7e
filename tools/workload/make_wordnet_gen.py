#!/usr/bin/env python3
"""Build the WordNet generation family (models/wordnet_gen): instruction -> short answer tasks
for a decoder (SmolLM2-135M-Instruct), all from WordNet 3.0 (Debian `wordnet-base`,
/usr/share/wordnet), "of one kind" as Natural Instructions' tasks are: every task asks one
question about one WordNet word (a relation, a category, a definition, a form) and expects a
few words back.

    apt-get install wordnet-base
    python3 tools/workload/make_wordnet_gen.py [--dict /usr/share/wordnet] [--out models/wordnet_gen/data]

Rules (all deterministic; no randomness outside random.Random(task seed)):
- Every item is about one query lemma and uses that lemma's FIRST sense in its part of
  speech (index.<pos> order), so the answer is well defined; one item per query lemma per task.
- Answers are WordNet's own words: the first lemma of the related synset, the lexical
  pointer's target word, the lexicographer file, the gloss without its examples (<= 10 words),
  or the word form in an example sentence.
- Key words of an item: the content words (lowercased alphanumeric tokens, minus a short
  stop list) of its head lemma (the query word; for `*_from_definition` and `*_cloze` the
  synset's first lemma) and of its answer, plus its synset. For `*_define` and `*_category`
  the answer is left out (a gloss shares common words with everything; a category is a label
  of a closed set, as in a classification task).
- Global split by word: a word is RESERVED when SHA-256("wordnet_gen:" + word) mod 100 <
  RESERVED_PERCENT. A test item's query lemma holds a reserved word; a train/validation item
  holds no reserved key word at all. So no test query word appears in any task's training
  or validation data (query or answer), and a reversed pair (antonyms) cannot leak.
- Test items across tasks share no key word and no synset: tasks pick their test items in a
  fixed order (fewest candidates first), each taking, in its seeded shuffled order, only
  items whose key words and synset no earlier task's test split holds.
- Per task: N_TRAIN train, N_VAL validation, N_TEST test items (a task with fewer
  candidates is not built: the list below only holds tasks that have them all).

Prompts are rendered with SmolLM2-135M-Instruct's chat template as its GGUF carries it
(default system message, one user turn, generation prompt); the target is the answer
followed by `<|im_end|>`. Each line of <out>/<task>/{train,validation,test}.jsonl is
{"id", "query", "instruction", "prompt", "answer"}; <out>/summary.json lists the tasks,
seeds and counts. Byte-identical on rerun.
"""
import argparse
import difflib
import hashlib
import json
import os
import random
import re
import sys

N_TRAIN, N_VAL, N_TEST = 150, 50, 50
RESERVED_PERCENT = 20
SEED_BASE = 27000
MAX_DEFINE_WORDS = 10
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
STOP = {"a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "and", "or", "as",
        "be", "is", "it", "up", "out", "off", "one", "s", "de", "la", "le", "from", "into", "over"}

NOUN_LEX = {3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body",
            9: "cognition", 10: "communication", 11: "event", 12: "feeling", 13: "food",
            14: "group", 15: "location", 16: "motive", 17: "object", 18: "person",
            19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity",
            24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time"}
VERB_LEX = {29: "body", 30: "change", 31: "cognition", 32: "communication", 33: "competition",
            34: "consumption", 35: "contact", 36: "creation", 37: "emotion", 38: "motion",
            39: "perception", 40: "possession", 41: "social", 42: "stative", 43: "weather"}
POS_NAME = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}


def render(user):
    """SmolLM2's chat template (the GGUF's tokenizer.chat_template) for one user message
    with add_generation_prompt=True."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def words(s):
    return [w for w in re.findall(r"[a-z0-9]+", s.lower()) if w not in STOP]


def reserved(w):
    return int(hashlib.sha256(("wordnet_gen:" + w).encode()).hexdigest(), 16) % 100 < RESERVED_PERCENT


def clean_lemma(w):
    return re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")


class WordNet:
    """The parts of WordNet 3.0's data.* / index.* / *.exc files the tasks need."""

    def __init__(self, d):
        self.syn = {}       # (pos, offset) -> dict(lex, words, ptrs, gloss)
        self.first = {}     # pos -> {lemma: (pos, offset) of sense 1}
        self.freq = {}      # pos -> {lemma: tagsense_cnt (senses tagged in SemCor)}
        self.exc = {}       # pos -> [(form, base)]
        self.forms = {}     # pos -> {base: [forms]}
        for pos, fname in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
            with open(os.path.join(d, "data." + fname), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("  "):
                        continue
                    self._parse(pos, line)
            self.first[pos], self.freq[pos] = {}, {}
            with open(os.path.join(d, "index." + fname), encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("  "):
                        continue
                    f = line.split()
                    lemma, p_cnt = f[0], int(f[3])
                    offs = f[4 + p_cnt + 2:]
                    self.first[pos][lemma.replace("_", " ")] = (pos, offs[0])
                    self.freq[pos][lemma.replace("_", " ")] = int(f[4 + p_cnt + 1])
            self.exc[pos] = []
            with open(os.path.join(d, fname + ".exc"), encoding="utf-8") as fh:
                for line in fh:
                    f = line.split()
                    if len(f) >= 2:
                        self.exc[pos].append((f[0].replace("_", " "), f[1].replace("_", " ")))
            self.forms[pos] = {}
            for form, base in self.exc[pos]:
                self.forms[pos].setdefault(base, []).append(form)

    def _parse(self, pos, line):
        head, gloss = line.split("|", 1)
        f = head.split()
        off, lex, n = f[0], int(f[1]), int(f[3], 16)
        ws = [clean_lemma(f[4 + 2 * i]) for i in range(n)]
        i = 4 + 2 * n
        pc = int(f[i])
        ptrs = []
        for k in range(pc):
            sym, toff, tpos, st = f[i + 1 + 4 * k: i + 5 + 4 * k]
            ptrs.append((sym, "a" if tpos == "s" else tpos, toff, int(st[:2], 16), int(st[2:], 16)))
        gloss = re.sub(r"\s+", " ", gloss).strip()
        self.syn[(pos, off)] = {"lex": lex, "words": ws, "ptrs": ptrs, "gloss": gloss}

    def definition(self, key):
        """The gloss before its first quoted example."""
        g = self.syn[key]["gloss"]
        return re.split(r';?\s*"', g, maxsplit=1)[0].strip().rstrip(";").strip()

    def examples(self, key):
        return re.findall(r'"([^"]+)"', self.syn[key]["gloss"])

    def senses1(self, pos):
        """(lemma, synset key, word index) for every lemma whose first sense is that synset."""
        for lemma, key in sorted(self.first[pos].items()):
            ws = [w.lower() for w in self.syn[key]["words"]]
            if lemma in ws:
                yield lemma, key, ws.index(lemma)


def q(s):
    return f'"{s}"'


# ---- the tasks: name -> (seed index, builder(wn) -> [(query, instruction, answer, keyset, synset)])

def distinct(query, answer):
    """False for a trivial answer: the query itself, a shared content word, or a spelling
    variant (difflib ratio >= 0.8)."""
    a, b = query.lower(), answer.lower()
    return (a != b and not (set(words(a)) & set(words(b)))
            and difflib.SequenceMatcher(None, a, b).ratio() < 0.8)


def rel_first(wn, pos, sym, tpos=None):
    """Query lemma (sense 1) -> first lemma of the first synset its synset points to by sym
    (a semantic pointer), when that answer is not trivial."""
    out = []
    for lemma, key, wi in wn.senses1(pos):
        for s, p, toff, src, dst in wn.syn[key]["ptrs"]:
            if s == sym and (tpos is None or p == tpos) and src == 0:
                ans = wn.syn[(p, toff)]["words"][0]
                if distinct(wn.syn[key]["words"][wi], ans):
                    out.append((wn.syn[key]["words"][wi], ans, key))
                break
    return out


def lexical(wn, pos, sym, tpos):
    """Lexical pointers (antonym, derivation, pertainym) from the query's own word."""
    out = []
    for lemma, key, wi in wn.senses1(pos):
        for s, p, toff, src, dst in wn.syn[key]["ptrs"]:
            if s == sym and p == tpos and src == wi + 1 and dst > 0:
                ans = wn.syn[(p, toff)]["words"][dst - 1]
                if ans.lower() != lemma:
                    out.append((wn.syn[key]["words"][wi], ans, key))
                break
    return out


def synonyms(wn, pos):
    out = []
    for lemma, key, wi in wn.senses1(pos):
        ws = wn.syn[key]["words"]
        others = [w for j, w in enumerate(ws) if j != wi and distinct(ws[wi], w)]
        if others:
            out.append((ws[wi], others[0], key))
    return out


def category(wn, pos, table):
    return [(wn.syn[key]["words"][wi], table[wn.syn[key]["lex"]], key)
            for lemma, key, wi in wn.senses1(pos) if wn.syn[key]["lex"] in table and wn.syn[key]["lex"] != 3]


def from_definition(wn, pos):
    out = []
    for lemma, key, wi in wn.senses1(pos):
        if wi != 0:
            continue
        d = wn.definition(key)
        w = wn.syn[key]["words"][0]
        if d and not (set(words(w)) & set(words(d))) and len(d.split()) <= 25:
            out.append((d, w, key))
    return out


def define(wn, pos):
    out = []
    for lemma, key, wi in wn.senses1(pos):
        if wi != 0:
            continue
        d = wn.definition(key)
        if d and 2 <= len(d.split()) <= MAX_DEFINE_WORDS:
            out.append((wn.syn[key]["words"][0], d, key))
    return out


def inflections(wn, pos, lemma):
    forms = {lemma}
    forms |= set(wn.forms[pos].get(lemma, []))
    if " " not in lemma:
        e = lemma[:-1] if lemma.endswith("e") else lemma
        forms |= {lemma + "s", lemma + "es", lemma + "ed", lemma + "d", e + "ing", e + "ed",
                  lemma + lemma[-1] + "ed", lemma + lemma[-1] + "ing", lemma + "er", lemma + "est",
                  lemma[:-1] + "ies", lemma[:-1] + "ied", lemma + "r", lemma + "st"}
    return forms


def cloze(wn, pos):
    out = []
    for lemma, key, wi in wn.senses1(pos):
        if wi != 0 or len(lemma) < 3:
            continue
        d = wn.definition(key)
        forms = inflections(wn, pos, lemma)
        for ex in wn.examples(key):
            m = None
            for f in sorted(forms, key=len, reverse=True):
                m = re.search(r"(?<![A-Za-z])" + re.escape(f) + r"(?![A-Za-z])", ex, flags=re.I)
                if m:
                    break
            if m and d and len(ex.split()) <= 25:
                blanked = ex[:m.start()] + "___" + ex[m.end():]
                out.append(((d, blanked), m.group(0), key))
                break
    return out


def exc_base(wn, pos):
    out = []
    seen = set()
    for form, base in wn.exc[pos]:
        if form == base or form in seen or base not in wn.first[pos]:
            continue
        seen.add(form)
        out.append((form, base, wn.first[pos][base]))
    return out


NOUN_CATS = ", ".join(v for k, v in sorted(NOUN_LEX.items()) if k != 3)
VERB_CATS = ", ".join(v for k, v in sorted(VERB_LEX.items()))

# (name, kind, builder, instruction template, whether the answer's words are key words).
# {q}: the quoted query; cloze: {d} the quoted definition, {s} the quoted blanked sentence.
# kinds: relation (a semantic pointer), opposite (antonym), category (lexicographer file),
# form (a derivation, pertainym or inflection), from_definition, define, cloze.
TASKS = [
    ("noun_hypernym", "relation", lambda wn: rel_first(wn, "n", "@"),
     "Give a more general word (a hypernym) for the noun {q}. Answer with the word only.", True),
    ("noun_synonym", "relation", lambda wn: synonyms(wn, "n"),
     "Give a synonym of the noun {q}. Answer with the word only.", True),
    ("noun_part_of", "relation", lambda wn: rel_first(wn, "n", "#p"),
     "{q} is a part of what? Answer with the word only.", True),
    ("noun_topic", "relation", lambda wn: rel_first(wn, "n", ";c"),
     "Which field or topic is the noun {q} used in? Answer with the field only.", True),
    ("noun_antonym", "opposite", lambda wn: lexical(wn, "n", "!", "n"),
     "Give the opposite (antonym) of the noun {q}. Answer with the word only.", True),
    ("noun_category", "category", lambda wn: category(wn, "n", NOUN_LEX),
     "Which category does the noun {q} belong to? Choose one of: " + NOUN_CATS
     + ". Answer with the category only.", False),
    ("noun_to_verb", "form", lambda wn: lexical(wn, "n", "+", "v"),
     "Give the verb related to the noun {q}. Answer with the verb only.", True),
    ("noun_from_definition", "from_definition", lambda wn: from_definition(wn, "n"),
     "Which noun means {q}? Answer with the word only.", True),
    ("noun_define", "define", lambda wn: define(wn, "n"),
     "Define the noun {q} in a few words. Answer with the definition only.", False),
    ("noun_cloze", "cloze", lambda wn: cloze(wn, "n"),
     "Fill in the blank with the noun that means {d}: {s} Answer with the missing word only.", True),
    ("verb_hypernym", "relation", lambda wn: rel_first(wn, "v", "@"),
     "Give a more general verb (a hypernym) for the verb {q}. Answer with the verb only.", True),
    ("verb_synonym", "relation", lambda wn: synonyms(wn, "v"),
     "Give a synonym of the verb {q}. Answer with the verb only.", True),
    ("verb_entailment", "relation", lambda wn: rel_first(wn, "v", "*"),
     "To {q}, what must one also do? Answer with the verb only.", True),
    ("verb_antonym", "opposite", lambda wn: lexical(wn, "v", "!", "v"),
     "Give the opposite (antonym) of the verb {q}. Answer with the verb only.", True),
    ("verb_category", "category", lambda wn: category(wn, "v", VERB_LEX),
     "Which category does the verb {q} belong to? Choose one of: " + VERB_CATS
     + ". Answer with the category only.", False),
    ("verb_to_noun", "form", lambda wn: lexical(wn, "v", "+", "n"),
     "Give the noun related to the verb {q}. Answer with the noun only.", True),
    ("verb_base_form", "form", lambda wn: exc_base(wn, "v"),
     "Give the base form of the verb {q}. Answer with the verb only.", True),
    ("verb_from_definition", "from_definition", lambda wn: from_definition(wn, "v"),
     "Which verb means {q}? Answer with the verb only.", True),
    ("verb_define", "define", lambda wn: define(wn, "v"),
     "Define the verb {q} in a few words. Answer with the definition only.", False),
    ("verb_cloze", "cloze", lambda wn: cloze(wn, "v"),
     "Fill in the blank with the verb that means {d}: {s} Answer with the missing word only.", True),
    ("adj_similar", "relation", lambda wn: rel_first(wn, "a", "&"),
     "Give a common adjective with a meaning similar to {q}. Answer with the adjective only.", True),
    ("adj_attribute", "relation", lambda wn: rel_first(wn, "a", "=", "n"),
     "The adjective {q} is a value of which attribute? Answer with the noun only.", True),
    ("adj_antonym", "opposite", lambda wn: lexical(wn, "a", "!", "a"),
     "Give the opposite (antonym) of the adjective {q}. Answer with the word only.", True),
    ("adj_to_noun", "form", lambda wn: lexical(wn, "a", "\\", "n"),
     "Which noun does the adjective {q} relate to? Answer with the noun only.", True),
    ("adj_from_definition", "from_definition", lambda wn: from_definition(wn, "a"),
     "Which adjective means {q}? Answer with the adjective only.", True),
    ("adj_define", "define", lambda wn: define(wn, "a"),
     "Define the adjective {q} in a few words. Answer with the definition only.", False),
    ("adj_cloze", "cloze", lambda wn: cloze(wn, "a"),
     "Fill in the blank with the adjective that means {d}: {s} Answer with the missing word only.", True),
    ("adv_to_adj", "form", lambda wn: lexical(wn, "r", "\\", "a"),
     "Give the adjective that the adverb {q} comes from. Answer with the adjective only.", True),
    ("adv_from_definition", "from_definition", lambda wn: from_definition(wn, "r"),
     "Which adverb means {q}? Answer with the adverb only.", True),
    ("adv_cloze", "cloze", lambda wn: cloze(wn, "r"),
     "Fill in the blank with the adverb that means {d}: {s} Answer with the missing word only.", True),
]
# The fixed leave-one-out held-out set, chosen by rule before any result: every kind once,
# every part of speech at least once.
HELD_OUT = ["noun_hypernym", "adj_antonym", "verb_category", "verb_to_noun",
            "adv_from_definition", "noun_define", "verb_cloze"]


def head_lemma(kind, query, answer, key, wn):
    """The WordNet lemma an item is about (its frequency ranks it; its words are query words)."""
    if kind in ("from_definition", "cloze"):
        return wn.syn[key]["words"][0]
    return query


def make_items(wn, name, kind, builder, template, answer_keys):
    pos = key_pos = None
    items = []
    for query, answer, key in builder(wn):
        head = head_lemma(kind, query, answer, key, wn)
        if kind == "cloze":
            user = template.format(d=q(wn.definition(key)), s=q(query[1]))
            query = query[1]
        else:
            user = template.format(q=q(query))
        qwords = set(words(head))
        kw = set(qwords)
        if answer_keys:
            kw |= set(words(answer))
        if not qwords:
            continue
        base = answer if kind == "form" and name.endswith("base_form") else head
        freq = wn.freq[key[0]].get(base.lower(), 0)
        items.append({"query": query, "answer": answer, "user": user, "qwords": qwords,
                      "kw": kw, "synset": f"{key[0]}:{key[1]}", "common": freq >= 1})
    return items


def build(wn, out_dir):
    tasks = []
    for k, (name, kind, builder, template, answer_keys) in enumerate(TASKS):
        items = make_items(wn, name, kind, builder, template, answer_keys)
        rng = random.Random(SEED_BASE + 31 * k)
        rng.shuffle(items)
        # SemCor-attested (common) head lemmas first, each tier in the seeded order.
        items.sort(key=lambda it: not it["common"])
        test_ok = [it for it in items if any(reserved(w) for w in it["qwords"])]
        train_ok = [it for it in items if not any(reserved(w) for w in it["kw"])]
        tasks.append({"name": name, "kind": kind, "seed": SEED_BASE + 31 * k, "template": template,
                      "test_ok": test_ok, "train_ok": train_ok, "candidates": len(items)})
    # Test splits: fewest test candidates first; no key word or synset of an earlier task's test.
    taken_words, taken_syn = set(), set()
    for t in sorted(tasks, key=lambda t: (len(t["test_ok"]), t["name"])):
        mine_w, mine_s, test = set(), set(), []
        for it in t["test_ok"]:
            if it["kw"] & taken_words or it["synset"] in taken_syn or it["synset"] in mine_s:
                continue
            test.append(it)
            mine_w |= it["kw"]
            mine_s.add(it["synset"])
            if len(test) == N_TEST:
                break
        t["test"] = test
        taken_words |= mine_w
        taken_syn |= mine_s
    summary = {"source": "WordNet 3.0 (Debian wordnet-base 1:3.0-37): data.*, index.*, *.exc",
               "chat_template": render("{instruction}"), "answer_suffix": "<|im_end|>",
               "counts": {"train": N_TRAIN, "validation": N_VAL, "test": N_TEST},
               "reserved_percent": RESERVED_PERCENT, "held_out": HELD_OUT, "tasks": {}}
    for t in tasks:
        rows = [it for it in t["train_ok"] if it["synset"] not in taken_syn]
        splits = {"train": rows[:N_TRAIN], "validation": rows[N_TRAIN:N_TRAIN + N_VAL], "test": t["test"]}
        full = all(len(splits[s]) == n for s, n in (("train", N_TRAIN), ("validation", N_VAL), ("test", N_TEST)))
        if not full:
            sys.exit(f"{t['name']}: too few items " + str({s: len(v) for s, v in splits.items()}))
        d = os.path.join(out_dir, t["name"])
        os.makedirs(d, exist_ok=True)
        for split, rows in splits.items():
            with open(os.path.join(d, split + ".jsonl"), "w", encoding="utf-8") as fh:
                for i, it in enumerate(rows):
                    fh.write(json.dumps({"id": f"{t['name']}/{split}/{i}", "synset": it["synset"],
                                         "query": it["query"], "prompt": render(it["user"]),
                                         "answer": it["answer"]}, ensure_ascii=False) + "\n")
        summary["tasks"][t["name"]] = {
            "kind": t["kind"], "seed": t["seed"], "instruction": t["template"],
            "candidates": t["candidates"], "test_candidates": len(t["test_ok"]),
            "train_candidates": len(t["train_ok"]),
            "common_share": {s: round(sum(it["common"] for it in v) / len(v), 3) for s, v in splits.items()},
            "held_out": t["name"] in HELD_OUT}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dict", default="/usr/share/wordnet", help="folder with WordNet's data.* files")
    ap.add_argument("--out", default="models/wordnet_gen/data")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.dict, "data.noun")):
        sys.exit(f"{a.dict}/data.noun not found: apt-get install wordnet-base (or pass --dict)")
    s = build(WordNet(a.dict), a.out)
    for name, t in s["tasks"].items():
        print(f"{name:22} {t['kind']:16} candidates {t['candidates']:6}  common share "
              + " ".join(f"{k} {v:.2f}" for k, v in t["common_share"].items()))


if __name__ == "__main__":
    main()
