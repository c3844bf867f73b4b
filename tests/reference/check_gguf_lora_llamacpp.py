#!/usr/bin/env python3
"""Does llama.cpp load finch's GGUF LoRA adapter and compute what the adapter means?

What it does: loads tests/fixtures/model/tiny_llama.gguf in llama-cpp-python with
lora_path = tests/fixtures/peft/tiny_lora_ref.gguf (written by finch_lora_save_gguf from the
PyTorch reference matrices of tests/fixtures/lora/, see test_adapter_io.c), runs the token
sequences of lora_reference.json's "grad" case, and compares llama.cpp's logits with an
independent float64 numpy reference: the base weights converted to Hugging Face order
(Q/K rows un-permuted), the adapter merged as W + (alpha/r) B A with the fixture's HF-order
A and B (not finch's file), rotate-half RoPE. It also runs llama.cpp without the adapter,
to show the adapter changes the logits by much more than the tolerance. Writes
tests/fixtures/peft/llamacpp_lora_check.json and exits 1 when the check fails.

Needs the PyPI packages llama-cpp-python, gguf and numpy (no torch): run with the Python
that has them, e.g. `python3 tests/reference/check_gguf_lora_llamacpp.py`.

Tolerance: 1e-4 absolute on logits (llama.cpp computes in f32 with its own kernel order; the
tiny model's logits are of magnitude ~3).
"""
import json
import os
import sys

import gguf
import llama_cpp
import numpy as np
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
MODEL = os.path.join(FIX, "model", "tiny_llama.gguf")
LORA = os.path.join(FIX, "peft", "tiny_lora_ref.gguf")
OUT = os.path.join(FIX, "peft", "llamacpp_lora_check.json")
TOL = 1e-4


def load_hf(path):
    """Base weights in float64, Q/K rows in HF order (FORMATS.md 4.1), GGUF tensor names."""
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
    cfg = dict(n_layer=f["llama.block_count"], n_embd=f["llama.embedding_length"],
               n_head=f["llama.attention.head_count"], n_head_kv=f["llama.attention.head_count_kv"],
               eps=f["llama.attention.layer_norm_rms_epsilon"], theta=f["llama.rope.freq_base"])
    cfg["head_dim"] = cfg["n_embd"] // cfg["n_head"]
    w = {t.name: np.array(t.data, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
         for t in r.tensors}
    D = cfg["head_dim"]
    for name, heads in (("attn_q", cfg["n_head"]), ("attn_k", cfg["n_head_kv"])):
        for l in range(cfg["n_layer"]):
            key = f"blk.{l}.{name}.weight"
            g = w[key].reshape(heads, D // 2, 2, -1)  # GGUF row h*D + 2i + j
            w[key] = np.concatenate([g[:, :, 0], g[:, :, 1]], axis=1).reshape(heads * D, -1)
    return cfg, w


def rmsnorm(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def rope(x, theta):
    """x (T, heads, D), rotate-half, positions 0..T-1."""
    T, D = x.shape[0], x.shape[-1]
    inv = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)[:, None, :]
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def forward(cfg, w, ids):
    H, KVH, D, T = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"], len(ids)
    x = w["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["n_layer"]):
        p = f"blk.{l}."
        n = rmsnorm(x, w[p + "attn_norm.weight"], cfg["eps"])
        q = rope((n @ w[p + "attn_q.weight"].T).reshape(T, H, D), cfg["theta"])
        k = rope((n @ w[p + "attn_k.weight"].T).reshape(T, KVH, D), cfg["theta"])
        v = (n @ w[p + "attn_v.weight"].T).reshape(T, KVH, D)
        heads = []
        for h in range(H):
            g = h // (H // KVH)
            s = q[:, h] @ k[:, g].T / np.sqrt(D) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            heads.append((s / s.sum(-1, keepdims=True)) @ v[:, g])
        x = x + np.concatenate(heads, -1) @ w[p + "attn_output.weight"].T
        m = rmsnorm(x, w[p + "ffn_norm.weight"], cfg["eps"])
        gate, up = m @ w[p + "ffn_gate.weight"].T, m @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    x = rmsnorm(x, w["output_norm.weight"], cfg["eps"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def llamacpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids), :], dtype=np.float64, copy=True)


def main():
    with open(os.path.join(FIX, "lora", "lora_reference.json")) as f:
        ref = json.load(f)
    cfg, w = load_hf(MODEL)
    merged = dict(w)
    s = ref["alpha"] / ref["r"]
    for t in ref["grad"]["tensors"]:
        a = np.fromfile(os.path.join(FIX, "lora", t["prefix"] + "_A.f32"), "<f4").astype(np.float64)
        b = np.fromfile(os.path.join(FIX, "lora", t["prefix"] + "_B.f32"), "<f4").astype(np.float64)
        a, b = a.reshape(t["A_shape"]), b.reshape(t["B_shape"])
        key = f"blk.{t['layer']}.{t['target']}.weight"
        merged[key] = w[key] + s * (b @ a)

    settings = dict(model_path=MODEL, logits_all=True, n_ctx=128, n_threads=2,
                    n_threads_batch=2, seed=0, verbose=False,
                    type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    with_lora = Llama(lora_path=LORA, **settings)
    base = Llama(**settings)
    report = {"llama_cpp_python_version": llama_cpp.__version__, "numpy_version": np.__version__,
              "model": "tiny_llama.gguf", "adapter": "peft/tiny_lora_ref.gguf",
              "r": ref["r"], "alpha": ref["alpha"], "tolerance": TOL, "sequences": []}
    ok = True
    for ids in ref["grad"]["ids"]:
        want = forward(cfg, merged, ids)
        got = llamacpp_logits(with_lora, ids)
        plain = llamacpp_logits(base, ids)
        d = float(np.abs(got - want).max())
        report["sequences"].append({
            "ids": ids,
            "max_abs_diff_llamacpp_lora_vs_merged_reference": d,
            "max_abs_diff_llamacpp_base_vs_merged_reference": float(np.abs(plain - want).max()),
            "argmax_equal": bool((got.argmax(-1) == want.argmax(-1)).all()),
        })
        ok = ok and d <= TOL and report["sequences"][-1]["argmax_equal"]
    report["pass"] = ok
    with open(OUT, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
