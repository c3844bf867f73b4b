#!/usr/bin/python3
"""Reference for LoRA training on the tiny LLaMA fixture, in float64 PyTorch.

What it does: loads tests/fixtures/model/tiny_llama.gguf (through the PyPI `gguf` package),
converts it to Hugging Face convention (Q/K rows un-permuted, rotate-half RoPE), wraps
every linear layer of every block (q, k, v, o, gate, up, down) with LoRA as PEFT does
(y = x W^T + (alpha/r) (dropout(x) A^T) B^T, dropout 0 here so the run is deterministic),
and writes to tests/fixtures/lora/:
  - case "grad": A and B random (B non-zero so every gradient is non-trivial); the loss and
    the gradient of every A and B for one batch;
  - case "train": A random, B zero (PEFT's init); 20 AdamW steps (torch.optim.AdamW) with
    warmup + linear decay (HF's schedule) and global grad-norm clipping; the loss at every
    step and A, B after the last.
Loss: mean cross-entropy over the target positions of the whole batch (targets -1 are
ignored, as HF's ignore_index). Matrices are stored row-major float32 in PEFT's shapes,
A (r, in) and B (out, r), in Hugging Face row order: the B of q_proj and k_proj has its
rows in HF order, which differs from GGUF's (FORMATS.md 4.4), so a consumer working in
GGUF order must permute them.

Run with Debian's interpreter, which has python3-torch: /usr/bin/python3
tests/reference/make_lora_reference.py. The `gguf` package is found on sys.path or in
$GGUF_SITE (the site-packages of the Python that has it)."""
import json
import math
import os
import sys

import numpy as np
import torch

if os.environ.get("GGUF_SITE"):
    sys.path.append(os.environ["GGUF_SITE"])
try:
    import gguf
except ImportError:
    sys.exit("needs the PyPI gguf package: set GGUF_SITE to the site-packages that has it")

DT = torch.float64
HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FIX, "lora")
R, ALPHA = 4, 8.0
TARGETS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
STEPS, LR, WARMUP, WD, CLIP = 20, 1e-2, 2, 0.01, 1.0
SEED = 7


def load_tiny():
    r = gguf.GGUFReader(os.path.join(FIX, "model", "tiny_llama.gguf"))
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
    cfg = dict(n_layer=f["llama.block_count"], n_embd=f["llama.embedding_length"],
               n_head=f["llama.attention.head_count"], n_head_kv=f["llama.attention.head_count_kv"],
               eps=f["llama.attention.layer_norm_rms_epsilon"], theta=f["llama.rope.freq_base"])
    cfg["head_dim"] = cfg["n_embd"] // cfg["n_head"]
    w = {}
    for t in r.tensors:
        a = np.array(t.data, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        w[t.name] = torch.tensor(a, dtype=DT)
    # GGUF -> HF row order for Q and K: HF row h*D + i = GGUF row h*D + 2i, HF row
    # h*D + D/2 + i = GGUF row h*D + 2i + 1 (FORMATS.md 4.1)
    D = cfg["head_dim"]
    for name, heads in (("attn_q", cfg["n_head"]), ("attn_k", cfg["n_head_kv"])):
        for l in range(cfg["n_layer"]):
            key = f"blk.{l}.{name}.weight"
            g = w[key].reshape(heads, D // 2, 2, -1)
            w[key] = torch.cat([g[:, :, 0], g[:, :, 1]], dim=1).reshape(heads * D, -1)
    return cfg, w


def rmsnorm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(x, theta):
    """x (B, T, heads, D), rotate-half convention, positions 0..T-1."""
    T, D = x.shape[1], x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=DT) / D)
    ang = torch.arange(T, dtype=DT)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], -1)[None, :, None, :]
    rot = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * torch.cos(ang) + rot * torch.sin(ang)


def forward(cfg, w, lora, ids):
    B, T = ids.shape
    H, KVH, D = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]

    def lin(l, name, x):
        y = x @ w[f"blk.{l}.{name}.weight"].T
        a, b = lora[(l, name)]
        return y + (ALPHA / R) * (x @ a.T) @ b.T

    x = w["token_embd.weight"][ids]
    mask = torch.full((T, T), float("-inf"), dtype=DT).triu(1)
    for l in range(cfg["n_layer"]):
        n = rmsnorm(x, w[f"blk.{l}.attn_norm.weight"], cfg["eps"])
        q = rope(lin(l, "attn_q", n).view(B, T, H, D), cfg["theta"])
        k = rope(lin(l, "attn_k", n).view(B, T, KVH, D), cfg["theta"])
        v = lin(l, "attn_v", n).view(B, T, KVH, D)
        k = k.repeat_interleave(H // KVH, dim=2)
        v = v.repeat_interleave(H // KVH, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D) + mask
        a = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(B, T, H * D)
        x = x + lin(l, "attn_output", a)
        m = rmsnorm(x, w[f"blk.{l}.ffn_norm.weight"], cfg["eps"])
        h = torch.nn.functional.silu(lin(l, "ffn_gate", m)) * lin(l, "ffn_up", m)
        x = x + lin(l, "ffn_down", h)
    x = rmsnorm(x, w["output_norm.weight"], cfg["eps"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def loss_fn(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=-1)


def make_lora(cfg, w, rng, zero_b):
    lora = {}
    for l in range(cfg["n_layer"]):
        for name in TARGETS.values():
            out_f, in_f = w[f"blk.{l}.{name}.weight"].shape
            bound = 1.0 / math.sqrt(in_f)  # PEFT: kaiming_uniform_(a=sqrt(5)) on (r, in)
            a = torch.tensor(rng.uniform(-bound, bound, (R, in_f)), dtype=DT, requires_grad=True)
            b = torch.zeros((out_f, R), dtype=DT) if zero_b else \
                torch.tensor(rng.normal(0, 0.1, (out_f, R)), dtype=DT)
            b.requires_grad_(True)
            lora[(l, name)] = (a, b)
    return lora


def batch(rng, V, B=2, T=12):
    ids = rng.integers(0, V, (B, T))
    targets = np.concatenate([ids[:, 1:], np.full((B, 1), -1)], 1)
    targets[:, :4] = -1          # a 5-token prompt: no loss on predicting prompt tokens
    targets[1, 9:] = -1          # the second row is padding from position 10 on
    return torch.tensor(ids), torch.tensor(targets)


def hf_name(l, name):
    hf = {v: k for k, v in TARGETS.items()}[name]
    part = "self_attn" if name.startswith("attn") else "mlp"
    return f"base_model.model.model.layers.{l}.{part}.{hf}"


def save(path, t):
    t.detach().to(torch.float32).numpy().astype("<f4").tofile(path)


def main():
    os.makedirs(OUT, exist_ok=True)
    cfg, w = load_tiny()
    V = w["token_embd.weight"].shape[0]
    rng = np.random.default_rng(SEED)
    manifest = dict(description=__doc__.split("\n")[0], torch_version=torch.__version__,
                    gguf_version=getattr(gguf, "__version__", None), numpy_version=np.__version__,
                    model="tiny_llama.gguf", r=R, alpha=ALPHA, dropout=0.0,
                    targets=list(TARGETS.values()), layout="float32 little-endian, row-major; "
                    "A (r, in), B (out, r); q/k B rows in Hugging Face order", seed=SEED)

    # case grad: one batch, random A and B
    lora = make_lora(cfg, w, rng, zero_b=False)
    ids, targets = batch(rng, V)
    loss = loss_fn(forward(cfg, w, lora, ids), targets)
    loss.backward()
    files = []
    for (l, name), (a, b) in lora.items():
        base = f"grad_L{l}_{name}"
        for tag, t in (("A", a), ("B", b), ("dA", a.grad), ("dB", b.grad)):
            save(os.path.join(OUT, f"{base}_{tag}.f32"), t)
        files.append(dict(layer=l, target=name, peft_name=hf_name(l, name), prefix=base,
                          A_shape=list(a.shape), B_shape=list(b.shape)))
    manifest["grad"] = dict(ids=ids.tolist(), targets=targets.tolist(), loss=loss.item(),
                            tensors=files)

    # case train: PEFT init, AdamW + warmup/linear schedule + clipping, fresh batch per step
    lora = make_lora(cfg, w, rng, zero_b=True)
    params = [p for ab in lora.values() for p in ab]
    for (l, name), (a, b) in lora.items():
        save(os.path.join(OUT, f"train_L{l}_{name}_A0.f32"), a)
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, WARMUP) if s < WARMUP else max(0.0, (STEPS - s) / max(1, STEPS - WARMUP)))
    steps = []
    fixed = [batch(rng, V) for _ in range(2)]  # two batches, alternating: the loss can fall
    for step in range(STEPS):
        ids, targets = fixed[step % 2]
        opt.zero_grad()
        loss = loss_fn(forward(cfg, w, lora, ids), targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        steps.append(dict(ids=ids.tolist(), targets=targets.tolist(), loss=loss.item(),
                          grad_norm=float(norm), lr=lr))
    for (l, name), (a, b) in lora.items():
        save(os.path.join(OUT, f"train_L{l}_{name}_A.f32"), a)
        save(os.path.join(OUT, f"train_L{l}_{name}_B.f32"), b)
    manifest["train"] = dict(steps=STEPS, lr=LR, warmup=WARMUP, schedule="linear",
                             weight_decay=WD, betas=[0.9, 0.999], eps=1e-8, max_grad_norm=CLIP,
                             history=steps)
    with open(os.path.join(OUT, "lora_reference.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"grad loss {manifest['grad']['loss']:.6f}; train loss {steps[0]['loss']:.4f} -> "
          f"{steps[-1]['loss']:.4f}")


if __name__ == "__main__":
    main()
