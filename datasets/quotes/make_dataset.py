#!/usr/bin/env python3
"""Builds finch's general-knowledge check set from the English quotations of Debian's
`fortunes` packages (/usr/share/games/fortunes): the first half of a quotation -> the rest.

Fine-tuning on a narrow task can cost a model what it knew before; `finch eval --general`
runs a second dataset like this one on the base model and on each adapter, so the loss of
general ability shows beside the gain on the task.

Quotations: entries of the wisdom, literature, people, education, work and science files
that end with an attribution line ("-- Author"), are plain ASCII, and have 12 to 48 words
once their lines are joined. The prompt names the author and gives the first half of the
words; the completion is the second half. A seeded shuffle picks 300 of them.

Usage: apt-get install fortunes-min fortunes && python3 datasets/quotes/make_dataset.py
(or --root DIR holding usr/share/games/fortunes, e.g. unpacked with dpkg-deb -x).
Writes general.jsonl beside this script (deterministic)."""
import argparse
import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["wisdom", "literature", "people", "education", "work", "science"]
N = 300
SEED = 20241123


def quotes(path):
    """(text, author) for each attributed entry of a fortune file."""
    with open(path, encoding="latin-1") as f:
        entries = f.read().split("\n%\n")
    for e in entries:
        lines = [l.strip() for l in e.strip("\n").split("\n")]
        if len(lines) < 2 or not lines[-1].startswith("-- "):
            continue
        author = lines[-1][3:].split(",")[0].strip()
        text = " ".join(l for l in lines[:-1] if l)
        text = re.sub(r"\s+", " ", text).strip()
        if not author or not text or not (text + author).isascii():
            continue
        yield text, author


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/", help="where usr/share/games/fortunes is")
    args = ap.parse_args()
    base = os.path.join(args.root, "usr/share/games/fortunes")
    seen, pool = set(), []
    for name in FILES:
        for text, author in quotes(os.path.join(base, name)):
            words = text.split(" ")
            if not 12 <= len(words) <= 48 or text in seen:
                continue
            seen.add(text)
            half = len(words) // 2
            pool.append({"prompt": f"Complete this quotation by {author}: \"{' '.join(words[:half])}",
                         "completion": " " + " ".join(words[half:])})
    random.Random(SEED).shuffle(pool)
    with open(os.path.join(HERE, "general.jsonl"), "w") as f:
        for ex in pool[:N]:
            f.write(json.dumps(ex) + "\n")
    print(f"{min(N, len(pool))} of {len(pool)} quotations written")


if __name__ == "__main__":
    main()
