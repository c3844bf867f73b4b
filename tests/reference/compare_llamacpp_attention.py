#!/usr/bin/env python3
"""How much llama.cpp disagrees with itself: the SmolLM2 fixture prompts run through
llama.cpp with flash attention off (the fixture's setting) and on. Both are llama.cpp's own
numerics (8-bit activations, f16 KV cache); they differ only in attention rounding, so their
disagreement measures how far rounding alone moves this model's logits. The figures justify
the NEAR_TIE and FAST_TOL bounds of tests/integration/test_smollm2.c.

Usage: python3 tests/reference/compare_llamacpp_attention.py [--model PATH]
Needs the PyPI package llama-cpp-python. Prints its findings; writes nothing."""
import argparse
import json
import os

import numpy as np
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "model", "smollm2_llamacpp.json")
DEFAULT_MODEL = os.path.expanduser(
    os.path.join(os.environ.get("FINCH_CACHE", "~/.cache/finch"), "SmolLM2-135M-Instruct.Q4_1.gguf"))


def logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args()
    fx = json.load(open(FIXTURE))
    common = dict(model_path=args.model, logits_all=True, n_ctx=512, n_threads=2,
                  n_threads_batch=2, seed=0, verbose=False)
    off = Llama(flash_attn=False, **common)
    on = Llama(flash_attn=True, **common)
    positions = flips = 0
    max_abs = max_flip_margin = 0.0
    for p in fx["prompts"]:
        a, b = logits(off, p["ids"]), logits(on, p["ids"])
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        for t in range(len(p["ids"])):
            positions += 1
            top = np.sort(a[t])[-2:]
            if a[t].argmax() != b[t].argmax():
                flips += 1
                max_flip_margin = max(max_flip_margin, float(top[1] - top[0]))
    print(f"positions {positions}: argmax differs at {flips}, at top1-top2 margins up to "
          f"{max_flip_margin:.4f}; max |logit difference| {max_abs:.4f}")


if __name__ == "__main__":
    main()
