#!/usr/bin/env python3
"""Where llama.cpp's logits on an f32 Gemma 3 270M part from exact arithmetic.

Diagnosis for tests/interop/check_gemma3_exact.py: on the base dequantized whole to f32
(`finch merge --all-tensors --type f32 --adapter RUN:0`), llama.cpp (f32 KV cache, no flash
attention) and finch differ by about 1e-2 in the logits. This runs gemma3_exact.py's
float64 forward on the same file twice, once with tanh GELU and once with ggml's
GELU_FP16 path (the gate rounded to f16, the GELU of that looked up in an f16 table,
inputs beyond +-10 passed through or zeroed), and prints each engine's max |diff| from
both. Measured (llama-cpp-python 0.3.36, two prompts of 6 and 10 tokens): finch within
5.3e-5 of the float64 forward; llama.cpp 1.06e-2 from it, 8.0e-3 from the forward with the
f16 GELU table: the table explains a quarter of llama.cpp's difference, not all of it.

    ~/.cache/finch/venv/bin/python tests/reference/gemma3_f32_llamacpp.py F32.gguf HELPER
(HELPER: build/tests/interop/finch_interop_logits)
"""
import math
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
import common  # noqa: E402
import gemma3_exact  # noqa: E402

PROMPTS = ["The capital of France is", 'Define the word "lantern" (noun).']


def gelu_f32(x):
    x = x.astype(np.float32)
    one = np.float32(1)
    return np.float32(0.5) * x * (one + np.tanh(np.float32(math.sqrt(2 / math.pi)) * x *
                                                (one + np.float32(0.044715) * x * x)))


class TableGelu(gemma3_exact.Gemma3):
    def gelu(self, g):
        y = gelu_f32(g.astype(np.float16).astype(np.float32)).astype(np.float16)
        return np.where(g <= -10, 0.0, np.where(g >= 10, g, y.astype(np.float64)))


def main():
    path, helper = sys.argv[1], sys.argv[2]
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=256, n_threads=os.cpu_count(), verbose=False, seed=0,
                type_k=0, type_v=0, flash_attn=False, logits_all=True)
    exact, table = gemma3_exact.Gemma3(path), None
    with tempfile.TemporaryDirectory() as work:
        for prompt in PROMPTS:
            seq = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.reset()
            llm.eval(seq)
            lc = np.array(llm.scores[:len(seq)], dtype=np.float64)
            fi = common.finch_logits(helper, path, [seq], work)[0].astype(np.float64)
            ex = exact.logits(seq)
            table = table or TableGelu.__new__(TableGelu)
            table.__dict__ = exact.__dict__
            tb = table.logits(seq)
            print("%r (%d tokens): |finch - exact| %.3g, |llama.cpp - exact| %.3g, "
                  "|llama.cpp - exact with the f16 GELU table| %.3g, |finch - llama.cpp| %.3g"
                  % (prompt, len(seq), np.abs(fi - ex).max(), np.abs(lc - ex).max(),
                     np.abs(lc - tb).max(), np.abs(fi - lc).max()))


if __name__ == "__main__":
    main()
