#!/usr/bin/python3
"""Plain PyTorch forward pass of a Hugging Face-convention LLaMA model, in float64.

What it does: reads the weights (an .npz in Hugging Face names and layout) and a config
(JSON) written by make_tiny_model.py, runs each token sequence through the model and
writes the logits of every position as little-endian float32 files, plus a small JSON
report (torch version and the files written).

What it does not do: no KV cache, no batching, no quantization, no transformers: the math
is written out here so that it is an independent reference for finch. It is run with
Debian's interpreter (/usr/bin/python3, which has python3-torch and python3-numpy) and
needs neither gguf nor llama.cpp.

The math (FORMATS.md 3.1, HF LlamaForCausalLM):
    x = E[ids]
    per layer:  n = rmsnorm(x) * w_in
                q, k, v = n Wq^T, n Wk^T, n Wv^T           (H, KVH, KVH heads of size D)
                q, k = rope_rotate_half(q), rope_rotate_half(k)
                a_h = softmax(q_h k_g^T / sqrt(D) + causal) v_g,  g = h // (H / KVH)
                x = x + concat_h(a_h) Wo^T
                m = rmsnorm(x) * w_post
                x = x + (silu(m Wgate^T) * (m Wup^T)) Wdown^T
    logits = (rmsnorm(x) * w_final) Whead^T        (Whead = E when embeddings are tied)
    rmsnorm(x) = x / sqrt(mean(x^2) + eps)
    rope_rotate_half: pairs (x[i], x[i + D/2]) rotated by pos * theta^(-2i/D)
"""
import argparse
import json
import os

import numpy as np
import torch

DT = torch.float64


def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x, pos, theta):
    """x: [T, heads, D]; pos: [T] absolute positions. HF rotate_half convention."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=DT) / d)      # [D/2]
    ang = pos.to(DT)[:, None] * inv_freq[None, :]                   # [T, D/2]
    ang = torch.cat([ang, ang], dim=-1)[:, None, :]                 # [T, 1, D]
    return x * torch.cos(ang) + rotate_half(x) * torch.sin(ang)


def forward(w, cfg, ids):
    """Returns float64 logits [T, V] for one sequence starting at position 0."""
    H, KVH, D = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
    eps, theta = cfg["rms_eps"], cfg["rope_theta"]
    T = len(ids)
    pos = torch.arange(T)
    x = w["model.embed_tokens.weight"][torch.tensor(ids, dtype=torch.long)]
    causal = torch.triu(torch.full((T, T), float("-inf"), dtype=DT), diagonal=1)
    group = H // KVH
    for l in range(cfg["n_layer"]):
        p = f"model.layers.{l}."
        n = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (n @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, D)
        k = (n @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KVH, D)
        v = (n @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KVH, D)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        heads = []
        for h in range(H):
            g = h // group
            s = (q[:, h, :] @ k[:, g, :].T) / (D ** 0.5) + causal
            heads.append(torch.softmax(s, dim=-1) @ v[:, g, :])
        x = x + torch.cat(heads, dim=-1) @ w[p + "self_attn.o_proj.weight"].T
        m = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tied"] else w["lm_head.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help=".npz of HF-named float32 arrays")
    ap.add_argument("--config", required=True, help="JSON: model config and sequences")
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    npz = np.load(args.weights)
    w = {k: torch.from_numpy(npz[k].astype(np.float64)) for k in npz.files}
    written = []
    for seq in cfg["sequences"]:
        logits = forward(w, cfg, seq["ids"])
        path = os.path.join(args.outdir, seq["file"])
        logits.numpy().astype("<f4").tofile(path)
        written.append({"file": seq["file"], "shape": list(logits.shape),
                        "max_abs": float(logits.abs().max())})
    with open(args.report, "w") as f:
        json.dump({"torch_version": torch.__version__, "numpy_version": np.__version__,
                   "written": written}, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
