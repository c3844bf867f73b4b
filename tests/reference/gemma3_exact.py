#!/usr/bin/env python3
"""Exact float64 forward pass of Gemma 3 270M (a gemma3 GGUF), its weights dequantized, for
tests/integration/test_gemma3.c.

What it does: reads the GGUF with the PyPI gguf package, dequantizes every tensor to
float64 (gguf.quants.dequantize) and runs Gemma 3 in numpy as llama.cpp's gemma3 graph
and transformers' Gemma3 define it: embeddings times sqrt(hidden); per block RMSNorm
(the GGUF's weights hold 1 + w), q/k/v projections, per-head RMSNorm of q and k,
rotate-half RoPE (the file's q/k rows are in Hugging Face order) with base 10000 on the
sliding-window blocks (l % 6 < 5) and the file's base on the others, causal attention
scaled by 1/sqrt(head_dim) within the sliding window on those blocks, RMSNorm of the
attention output before the residual add, then the same around the GeGLU FFN (tanh
GELU); final RMSNorm and the tied head. For the prompts of
tests/fixtures/model/gemma3_llamacpp.json (llama.cpp's ids) it appends, per prompt,
"exact": {argmax, top_ids, top_logits, probe_logits} to that file.

    ~/.cache/finch/venv/bin/python tests/reference/gemma3_exact.py
"""
import json
import math
import os

import numpy as np

import gguf
from gguf.quants import dequantize

CACHE = os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch"))
MODEL = os.path.join(CACHE, "gemma-3-270m-q4_k_m.gguf")
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model",
                   "gemma3_llamacpp.json")


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return v.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0]


class Gemma3:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        a = "gemma3."
        self.L = int(field(r, a + "block_count"))
        self.C = int(field(r, a + "embedding_length"))
        self.H = int(field(r, a + "attention.head_count"))
        self.KVH = int(field(r, a + "attention.head_count_kv"))
        self.D = int(field(r, a + "attention.key_length"))
        self.eps = float(field(r, a + "attention.layer_norm_rms_epsilon"))
        self.theta = float(field(r, a + "rope.freq_base"))
        self.window = int(field(r, a + "attention.sliding_window"))
        self.w = {}
        for t in r.tensors:
            shape = [int(x) for x in reversed(t.shape)]
            self.w[t.name] = np.asarray(dequantize(t.data, t.tensor_type),
                                        dtype=np.float64).reshape(shape)

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, theta):
        T, D = x.shape[0], x.shape[-1]
        inv = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., : D // 2], x[..., D // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def gelu(self, g):
        """tanh GELU (gelu_pytorch_tanh)."""
        return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))

    def logits(self, ids):
        w, T, C, H, KVH, D = self.w, len(ids), self.C, self.H, self.KVH, self.D
        x = w["token_embd.weight"][ids] * math.sqrt(C)
        pos = np.arange(T)
        for l in range(self.L):
            b = f"blk.{l}."
            swa = l % 6 < 5
            theta = 10000.0 if swa else self.theta
            h = self.rms(x, w[b + "attn_norm.weight"])
            q = (h @ w[b + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ w[b + "attn_k.weight"].T).reshape(T, KVH, D)
            v = (h @ w[b + "attn_v.weight"].T).reshape(T, KVH, D)
            q = self.rope(self.rms(q, w[b + "attn_q_norm.weight"]), theta)
            k = self.rope(self.rms(k, w[b + "attn_k_norm.weight"]), theta)
            k = np.repeat(k, H // KVH, axis=1)
            v = np.repeat(v, H // KVH, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / math.sqrt(D)
            allowed = pos[None, :] <= pos[:, None]
            if swa:
                allowed &= pos[None, :] > pos[:, None] - self.window
            s = np.where(allowed[None], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", p, v).reshape(T, H * D) @ w[b + "attn_output.weight"].T
            x = x + self.rms(o, w[b + "post_attention_norm.weight"])
            h = self.rms(x, w[b + "ffn_norm.weight"])
            g = h @ w[b + "ffn_gate.weight"].T
            f = (self.gelu(g) * (h @ w[b + "ffn_up.weight"].T)) @ w[b + "ffn_down.weight"].T
            x = x + self.rms(f, w[b + "post_ffw_norm.weight"])
        return self.rms(x, w["output_norm.weight"]) @ w["token_embd.weight"].T


def main():
    fx = json.load(open(FIX))
    m = Gemma3(MODEL)
    probe = fx["probe_ids"]
    for p in fx["prompts"]:
        lg = m.logits(np.array(p["ids"]))
        top = np.argsort(-lg, axis=1)[:, :8]
        p["exact"] = dict(argmax=[int(x) for x in lg.argmax(1)], top_ids=top.tolist(),
                          top_logits=[[float(lg[i, j]) for j in top[i]] for i in range(len(lg))],
                          probe_logits=lg[:, probe].tolist())
        gap = max(abs(a - b) for row_a, row_b in zip(p["exact"]["top_logits"], p["top_logits"])
                  for a, b in zip(row_a[:1], row_b[:1]))
        print("%-30r argmax equal to llama.cpp's at %d/%d positions; top-1 logits differ by "
              "up to %.3f" % (p["text"][:30], sum(int(a == b) for a, b in
                                                   zip(p["exact"]["argmax"], p["argmax"])),
                              len(p["ids"]), gap))
    fx["exact_description"] = __doc__.split("\n")[0]
    with open(FIX, "w") as f:
        json.dump(fx, f)


if __name__ == "__main__":
    main()
