"""Exact float64 forward pass of a LLaMA GGUF model, with its weights dequantized.

What it does: reads every tensor of a `llama` GGUF file with the PyPI gguf package,
dequantizes it to float64 (gguf.quants.dequantize, the reference tools' own decoder), and
runs the model in numpy with a KV cache. This is the math a correct engine that
dequantizes weights and computes in floating point converges to; it is what finch's
logits are checked against tightly. llama.cpp's CPU path for Q4_1/Q8_0 weights also
quantizes the activations to 8 bits inside every matmul and keeps an f16 KV cache, so it
differs from this by about 0.2 logits on average (measured by make_llamacpp_fixtures.py
and recorded in its JSON).

What it does not do: no sampling, no tokenizer, no batching; f32 accumulation order is not
modelled (everything is float64).

Conventions: weights stay in GGUF order, so Q and K rows are in the interleaved order of
FORMATS.md 4.1 and RoPE rotates adjacent pairs (x[2i], x[2i+1]) by p * theta^(-2i/D)
(FORMATS.md 4.3, NORM mode). Matrices are [out][in] (the reverse of GGUF's ne).
"""
import numpy as np

import gguf
from gguf.quants import dequantize


class ExactLlama:
    def __init__(self, path):
        r = gguf.GGUFReader(path)

        def kv(key):
            return r.fields[key].contents()

        arch = kv("general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(kv("llama.block_count"))
        self.n_embd = int(kv("llama.embedding_length"))
        self.n_head = int(kv("llama.attention.head_count"))
        self.n_head_kv = int(kv("llama.attention.head_count_kv"))
        self.head_dim = self.n_embd // self.n_head
        self.eps = float(kv("llama.attention.layer_norm_rms_epsilon"))
        self.theta = float(kv("llama.rope.freq_base")) if "llama.rope.freq_base" in r.fields \
            else 10000.0
        self.w = {}
        for t in r.tensors:
            shape = [int(x) for x in reversed(t.shape)]
            self.w[t.name] = np.asarray(dequantize(t.data, t.tensor_type),
                                        dtype=np.float64).reshape(shape)
        self.head = self.w.get("output.weight", self.w["token_embd.weight"])
        self.reset()

    def reset(self):
        self.k = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.pos = 0

    def _rms(self, x, w):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos):
        # x: [T, heads, D]; pairs (x[2i], x[2i+1]), angle pos * theta^(-2i/D)
        d = self.head_dim
        ang = pos[:, None] * self.theta ** (-np.arange(0, d, 2) / d)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def decode(self, ids):
        """Runs ids at the next positions (appending to the cache); float64 logits [T][V]."""
        H, KVH, D, w = self.n_head, self.n_head_kv, self.head_dim, self.w
        T = len(ids)
        pos = np.arange(self.pos, self.pos + T, dtype=np.float64)
        n_all = self.pos + T
        # query t (absolute position pos+t) sees keys 0 .. pos+t
        mask = np.where(np.arange(n_all)[None, :] > (self.pos + np.arange(T))[:, None],
                        -np.inf, 0.0)
        x = w["token_embd.weight"][np.asarray(ids)]
        for l in range(self.n_layer):
            p = f"blk.{l}."
            n = self._rms(x, w[p + "attn_norm.weight"])
            q = self._rope((n @ w[p + "attn_q.weight"].T).reshape(T, H, D), pos)
            k = self._rope((n @ w[p + "attn_k.weight"].T).reshape(T, KVH, D), pos)
            v = (n @ w[p + "attn_v.weight"].T).reshape(T, KVH, D)
            self.k[l] = np.concatenate([self.k[l], k])
            self.v[l] = np.concatenate([self.v[l], v])
            heads = []
            for h in range(H):
                g = h // (H // KVH)
                s = q[:, h, :] @ self.k[l][:, g, :].T / np.sqrt(D) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                heads.append((s / s.sum(axis=-1, keepdims=True)) @ self.v[l][:, g, :])
            x = x + np.concatenate(heads, axis=-1) @ w[p + "attn_output.weight"].T
            m = self._rms(x, w[p + "ffn_norm.weight"])
            gate = m @ w[p + "ffn_gate.weight"].T
            up = m @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        self.pos += T
        return self._rms(x, w["output_norm.weight"]) @ self.head.T
