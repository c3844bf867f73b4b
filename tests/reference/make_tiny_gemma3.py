#!/usr/bin/env python3
"""A tiny random Gemma 3 (architecture gemma3) as GGUF: tests/fixtures/model/tiny_gemma3.gguf.

Six blocks (five sliding-window, one global: Gemma 3's pattern), hidden 48, 2 query heads
and 1 KV head of 32 (head dim above hidden / heads, as in Gemma 3 270M), FFN 80, the tiny
vocabulary and tokenizer of make_tiny_model.py, tied head, sliding window 16 (shorter
than the 40-token rows of tests/grad/test_window.c and test_sites.c, which train past it),
RoPE base 1e6 global / 10000 local. Tensors in F32
under llama.cpp's gemma3 names, q/k rows in rotate-half (Hugging Face) order as
convert_hf_to_gguf.py writes them for Gemma, norm weights as GGUF holds them (1 + w).
finch's gradients on it are checked against finite differences of its own forward
(tests/grad/test_sites.c), which the real Gemma 3 checks against llama.cpp.

Run with an interpreter that has the PyPI gguf package (the venv of
scripts/interop-env.sh): ~/.cache/finch/venv/bin/python tests/reference/make_tiny_gemma3.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
from make_tiny_model import MERGES, tokenizer_vocab  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model",
                   "tiny_gemma3.gguf")
L, C, H, KVH, D, F, WINDOW, SEED = 6, 48, 2, 1, 32, 80, 16, 20261206


def main():
    tokens, types = tokenizer_vocab()
    V = len(tokens)
    rng = np.random.default_rng(SEED)
    wr = gguf.GGUFWriter(OUT, "gemma3")
    a = "gemma3."
    wr.add_string("general.name", "tiny_gemma3")
    wr.add_uint32("general.file_type", 0)
    wr.add_uint32(a + "context_length", 128)
    wr.add_uint32(a + "embedding_length", C)
    wr.add_uint32(a + "block_count", L)
    wr.add_uint32(a + "feed_forward_length", F)
    wr.add_uint32(a + "attention.head_count", H)
    wr.add_uint32(a + "attention.head_count_kv", KVH)
    wr.add_uint32(a + "attention.key_length", D)
    wr.add_uint32(a + "attention.value_length", D)
    wr.add_uint32(a + "attention.sliding_window", WINDOW)
    wr.add_float32(a + "rope.freq_base", 1e6)
    wr.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    wr.add_string("tokenizer.ggml.model", "gpt2")
    wr.add_string("tokenizer.ggml.pre", "smollm")
    wr.add_array("tokenizer.ggml.tokens", tokens)
    wr.add_array("tokenizer.ggml.token_type", types)
    wr.add_array("tokenizer.ggml.merges", MERGES)
    wr.add_uint32("tokenizer.ggml.bos_token_id", 1)
    wr.add_uint32("tokenizer.ggml.eos_token_id", 2)
    wr.add_bool("tokenizer.ggml.add_bos_token", False)

    def t(name, *shape, norm=False):
        r = rng.standard_normal(shape)
        wr.add_tensor(name, np.ascontiguousarray((1.0 + 0.1 * r) if norm else 0.1 * r,
                                                 dtype=np.float32))

    t("token_embd.weight", V, C)
    for l in range(L):
        b = f"blk.{l}."
        t(b + "attn_norm.weight", C, norm=True)
        t(b + "attn_q.weight", H * D, C)
        t(b + "attn_k.weight", KVH * D, C)
        t(b + "attn_v.weight", KVH * D, C)
        t(b + "attn_q_norm.weight", D, norm=True)
        t(b + "attn_k_norm.weight", D, norm=True)
        t(b + "attn_output.weight", C, H * D)
        t(b + "post_attention_norm.weight", C, norm=True)
        t(b + "ffn_norm.weight", C, norm=True)
        t(b + "ffn_gate.weight", F, C)
        t(b + "ffn_up.weight", F, C)
        t(b + "ffn_down.weight", C, F)
        t(b + "post_ffw_norm.weight", C, norm=True)
    t("output_norm.weight", C, norm=True)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
