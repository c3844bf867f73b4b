#!/usr/bin/env python3
"""llama.cpp's view of Gemma 3 270M (Q4_K_M), the fixtures tests/integration/test_gemma3.c
compares finch with.

What it does: loads $FINCH_CACHE/gemma-3-270m-q4_k_m.gguf (scripts/setup.sh --with-gemma3)
with llama-cpp-python on the CPU, and for each prompt below writes to
tests/fixtures/model/gemma3_llamacpp.json: llama.cpp's token ids (BOS first, as the file's
add_bos_token says), at every position the argmax, the 8 largest logits with their ids,
and the logits of 64 fixed ids (the same for every position: 262,144 logits a position are
too many to commit), and the 32 tokens greedy decoding continues with, each with
llama.cpp's margin between its two best logits (a greedy path may part at a near tie). llama.cpp computes
with its own CPU arithmetic (8-bit activations in the quantized matmuls, f16 KV cache), so
finch's exact logits are compared to these within a stated tolerance, argmax by argmax.

Run with the venv of scripts/interop-env.sh (it has llama-cpp-python):
    ~/.cache/finch/venv/bin/python tests/reference/make_gemma3_fixtures.py
"""
import json
import os

import numpy as np
from llama_cpp import Llama

CACHE = os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch"))
MODEL = os.path.join(CACHE, "gemma-3-270m-q4_k_m.gguf")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model",
                   "gemma3_llamacpp.json")
PROMPTS = ["The capital of France is",
           "Once upon a time, in a small village by the sea,",
           "def fibonacci(n):\n    if n < 2:\n        return n\n",
           "<start_of_turn>user\nWhat is the boiling point of water?<end_of_turn>\n<start_of_turn>model\n"]
N_GREEDY = 32
PROBE = list(range(0, 262144, 4099))[:64]


def main():
    llm = Llama(model_path=MODEL, n_ctx=512, n_threads=os.cpu_count(), logits_all=True,
                verbose=False, seed=0)
    out = dict(description=__doc__.split("\n")[0], model=os.path.basename(MODEL),
               llama_cpp_python=__import__("llama_cpp").__version__, probe_ids=PROBE, prompts=[])
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
        top = np.argsort(-logits, axis=1)[:, :8]
        rec = dict(text=p, ids=ids, argmax=[int(x) for x in logits.argmax(1)],
                   top_ids=top.tolist(),
                   top_logits=[[float(logits[i, j]) for j in top[i]] for i in range(len(ids))],
                   probe_logits=logits[:, PROBE].tolist())
        # greedy continuation, one token at a time from the prompt's state
        gen, margins = [], []
        row = logits[-1]
        for _ in range(N_GREEDY):
            top2 = np.sort(row)[-2:]
            margins.append(float(top2[1] - top2[0]))
            gen.append(int(row.argmax()))
            llm.eval([gen[-1]])
            row = np.array(llm.scores[llm.n_tokens - 1])
        rec["greedy_ids"] = gen
        rec["greedy_margins"] = margins
        rec["greedy_text"] = llm.detokenize(gen).decode("utf-8", errors="replace")
        out["prompts"].append(rec)
        print("%r -> %r" % (p[:40], rec["greedy_text"][:60]))
    with open(OUT, "w") as f:
        json.dump(out, f)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
