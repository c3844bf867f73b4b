#!/usr/bin/env python3
"""Builds finch's bundled preference dataset (for `finch train --objective dpo`) from the
bundled WordNet definitions (datasets/wordnet/{train,val}.jsonl, themselves made from
WordNet 3.0 by datasets/wordnet/make_dataset.py).

Each line: {"prompt": "Define the word \"X\" (pos).", "chosen": X's definition,
"rejected": the definition of another word of the same split and the same part of speech},
the other word drawn by a seeded generator, so the pair differs in meaning, not in style.

Usage: python3 datasets/wordnet-pref/make_dataset.py
Writes train.jsonl (2,000 pairs) and val.jsonl (200 pairs) beside this script
(deterministic: Python's random.Random with a fixed seed, standard library only)."""
import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "wordnet")
SEED = 20250101


def make(split, rng):
    rows = [json.loads(line) for line in open(os.path.join(SRC, split + ".jsonl"), encoding="utf-8")]
    pos = [re.search(r"\((\w+)\)\.$", r["prompt"]).group(1) for r in rows]
    by_pos = {}
    for i, p in enumerate(pos):
        by_pos.setdefault(p, []).append(i)
    out = []
    for i, r in enumerate(rows):
        same = by_pos[pos[i]]
        while True:
            j = same[rng.randrange(len(same))]
            if j != i and rows[j]["completion"] != r["completion"]:
                break
        out.append({"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[j]["completion"]})
    with open(os.path.join(HERE, split + ".jsonl"), "w", encoding="utf-8") as f:
        for o in out:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
    return len(out)


def main():
    rng = random.Random(SEED)
    for split in ("train", "val"):
        print(split, make(split, rng), "pairs")


if __name__ == "__main__":
    main()
