#!/usr/bin/env python3
"""Hashes of llama.cpp's whole logit rows for Gemma 3 270M (Q4_K_M), for finch's llamacpp
numerics (tests/integration/test_gemma3.c, test_llamacpp_numerics).

What it does: loads $FINCH_CACHE/gemma-3-270m-q4_k_m.gguf with llama-cpp-python on the CPU
(flash attention off, the default), evaluates the prompts of make_gemma3_fixtures.py as one
batch each, and writes tests/fixtures/model/gemma3_llamacpp_bits.json: per prompt the
token ids and, per position, the 64-bit FNV-1a hash of the position's 262,144 logits as
little-endian f32 bytes (a whole row is too big to commit; equal hashes mean equal bits)
and the row's largest logit. The ids, top logits, probe logits and greedy continuations
the test also uses are make_gemma3_fixtures.py's (gemma3_llamacpp.json).

What it does not do: it does not hash rows of other settings (flash attention on, other
batch splits); llama.cpp's logits do not depend on its thread count.

Run with the venv that has llama-cpp-python:
    ~/.cache/finch/venv/bin/python tests/reference/make_gemma3_llamacpp_bits.py
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gemma3_fixtures import MODEL, PROMPTS  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model",
                   "gemma3_llamacpp_bits.json")


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return h


def main():
    llm = Llama(model_path=MODEL, n_ctx=512, n_threads=os.cpu_count(), logits_all=True,
                verbose=False, seed=0, flash_attn=False)
    out = dict(description=__doc__.split("\n")[0], model=os.path.basename(MODEL),
               llama_cpp_python=__import__("llama_cpp").__version__, hash="fnv1a64", prompts=[])
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
        out["prompts"].append(dict(
            text=p, ids=ids,
            row_hash=["%016x" % fnv1a64(logits[i].astype("<f4").tobytes()) for i in range(len(ids))],
            row_max=[float(logits[i].max()) for i in range(len(ids))]))
        print("%r: %d positions" % (p[:40], len(ids)))
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
