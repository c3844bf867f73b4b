#!/usr/bin/env python3
"""Builds finch's bundled instruction dataset from WordNet 3.0 as Debian's `wordnet-base`
package installs it (/usr/share/wordnet): "Define the word X (part of speech)." -> the
word's most frequent sense's definition.

Words: single alphabetic lemmas of 3+ letters that occur in WordNet's sense-tagged corpus
(tagsense_cnt >= 1 in index.<pos>), so the task uses common words. Definition: the gloss of
the lemma's first (most frequent) sense, up to the first example sentence. A seeded shuffle
picks the examples and splits them into train / val / test.

Usage: apt-get install wordnet-base && python3 datasets/wordnet/make_dataset.py
Writes train.jsonl, val.jsonl, test.jsonl beside this script (deterministic)."""
import json
import os
import random
import re

WN = "/usr/share/wordnet"
HERE = os.path.dirname(os.path.abspath(__file__))
POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
SIZES = {"train": 2000, "val": 200, "test": 200}
SEED = 20241122


def glosses(pos):
    """synset offset -> definition (gloss up to the first quoted example)."""
    out = {}
    with open(os.path.join(WN, "data." + pos), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            gloss = gloss.strip()
            definition = re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip()
            out[head.split(" ", 1)[0]] = definition
    return out


def common_words(pos):
    """(lemma, offset of its most frequent sense) for sense-tagged single-word lemmas."""
    with open(os.path.join(WN, "index." + pos), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            tagsense_cnt = int(fields[5 + p_cnt])
            offsets = fields[6 + p_cnt:]
            assert len(offsets) == synset_cnt
            if tagsense_cnt >= 1 and re.fullmatch(r"[a-z]{3,}", lemma):
                yield lemma, offsets[0]


def main():
    rows = []
    for pos, name in POS.items():
        defs = glosses(pos)
        for lemma, off in common_words(pos):
            d = defs[off]
            if 15 <= len(d) <= 140:
                rows.append({"prompt": f"Define the word \"{lemma}\" ({name}).", "completion": d})
    rows.sort(key=lambda r: r["prompt"])
    rng = random.Random(SEED)
    rng.shuffle(rows)
    at = 0
    for split, n in SIZES.items():
        with open(os.path.join(HERE, split + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows[at:at + n]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        at += n
    print(f"{len(rows)} candidate definitions; wrote " +
          ", ".join(f"{s} {n}" for s, n in SIZES.items()))


if __name__ == "__main__":
    main()
