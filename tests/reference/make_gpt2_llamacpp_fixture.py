#!/usr/bin/env python3
"""llama.cpp's logits of the tiny GPT-2 GGUF with its default f16 KV cache, for finch's
llamacpp numerics (tests/model/test_gpt2.c, test_llamacpp_numerics).

What it does: loads tests/fixtures/model/tiny_gpt2.gguf (made by make_gpt2_fixtures.py)
with llama-cpp-python on the CPU, flash attention off and the KV cache in f16 (llama.cpp's
defaults, which finch's llamacpp numerics reproduce), evaluates each sequence of
tiny_gpt2.json as one batch and writes tests/fixtures/model/tiny_gpt2_llamacpp.f32:
little-endian float32 [n][V] per sequence, in the order of tiny_gpt2.json's sequences.

What it does not do: make_gpt2_fixtures.py's llama.cpp logits use an f32 cache (for the
exact numerics); these are only for the llamacpp numerics.

Run with the venv that has llama-cpp-python:
    ~/.cache/finch/venv/bin/python tests/reference/make_gpt2_llamacpp_fixture.py
"""
import json
import os

import numpy as np
import llama_cpp

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model")


def main():
    with open(os.path.join(DIR, "tiny_gpt2.json")) as f:
        manifest = json.load(f)
    llm = llama_cpp.Llama(model_path=os.path.join(DIR, "tiny_gpt2.gguf"), logits_all=True,
                          n_ctx=manifest["n_ctx"], n_threads=1, n_threads_batch=1, seed=0,
                          verbose=False, flash_attn=False)
    blob = []
    for s in manifest["sequences"]:
        llm.reset()
        llm.eval(s["ids"])
        blob.append(np.array(llm.scores[:len(s["ids"])], dtype="<f4"))
    out = os.path.join(DIR, "tiny_gpt2_llamacpp.f32")
    np.concatenate(blob).tofile(out)
    print("wrote", out, os.path.getsize(out), "bytes; llama-cpp-python", llama_cpp.__version__)


if __name__ == "__main__":
    main()
