#!/usr/bin/env python3
"""finch QLoRA vs PyTorch + bitsandbytes QLoRA: peak memory and step time at scale.

Both sides train LoRA r 16 (alpha 32, dropout 0.05) on every projection of a LLaMA-shaped
base quantized to NF4 with double quantization (blocks of 64, absmax in 8 bits per 256
blocks), f32 compute, AdamW over the LoRA parameters, gradient checkpointing (each block's
input kept, the block recomputed in backward), BATCH x SEQ tokens a step, loss on every
position:
  - finch: bench_train -m MODEL --load-in-4bit --gradient-checkpointing, MODEL being the
    synthetic f16 GGUF of bench/make_synthetic_gguf.py (quantized to NF4 while loading,
    each f16 tensor's pages dropped once quantized);
  - the peer (this script in worker mode, in the bitsandbytes venv): a plain PyTorch LLaMA
    of the same shape built block by block, each projection a bitsandbytes Linear4bit
    (quant_type nf4, compress_statistics=True, compute_dtype float32: what transformers'
    BitsAndBytesConfig(load_in_4bit, nf4, double quant) makes) quantized from random f32
    values as the block is made, LoRA wrappers as PEFT builds them, embeddings (tied head)
    in f16 as the GGUF stores them, norms f32, torch's scaled_dot_product_attention
    (causal), torch.utils.checkpoint per block (non-reentrant).
With --bf16 both compute in bf16 (QLoRA's own recipe, bnb_4bit_compute_dtype=bfloat16):
finch with --bf16 (the base's products in bf16, AMX where the CPU has it), the peer with
compute_dtype=torch.bfloat16 and its forward under torch.autocast("cpu", bfloat16); the
LoRA parameters and AdamW stay f32 on both sides.
Each engine runs in its own process, one after the other; peak RSS is each process's own
getrusage ru_maxrss. Seconds per step: the median over the steps after the first.

    ~/.cache/finch/venv/bin/python bench/make_synthetic_gguf.py /tmp/syn1b.gguf --preset 1b
    /tmp/bnbvenv/bin/python bench/qlora_vs_bnb.py --preset 1b --model /tmp/syn1b.gguf

The peer's venv (5.3 GB, torch's CUDA libraries included; nothing in CI's path):
    python3 -m venv /tmp/bnbvenv
    /tmp/bnbvenv/bin/pip install torch==2.5.1 bitsandbytes==0.50.2 numpy
bitsandbytes then says it found no `kernels` package: that package fetches faster CPU
kernels from the Hugging Face hub at run time, which a machine without internet cannot
reach, so the peer runs bitsandbytes' own CPU path.

The peer's environment: OMP_NUM_THREADS and torch.set_num_threads = THREADS,
OMP_WAIT_POLICY=PASSIVE. PyPI's torch (which bitsandbytes needs) does its f32 GEMM in
MKL, which picks its kernels from cpuid itself: there is no OpenBLAS core type to choose.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PRESETS = {  # as bench/make_synthetic_gguf.py, vocabulary of SmolLM2's tokenizer
    "7b": dict(n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32),
    "1b": dict(n_layer=16, n_embd=2048, n_ff=5632, n_head=32, n_head_kv=4),
}
VOCAB = 49152
LORA_R, LORA_ALPHA, LORA_DROPOUT, LR, EPS, THETA = 16, 32.0, 0.05, 1e-4, 1e-5, 10000.0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peer_worker(a):
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.utils.checkpoint
    import bitsandbytes as bnb

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    p = PRESETS[a.preset]
    C, FF, L, H, HKV = p["n_embd"], p["n_ff"], p["n_layer"], p["n_head"], p["n_head_kv"]
    D = C // H

    compute = torch.bfloat16 if a.bf16 else torch.float32
    def linear4bit(n_in, n_out):
        lin = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=compute,
                                compress_statistics=True, quant_type="nf4", device="meta")
        w = torch.randn(n_out, n_in) * 0.02
        lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True,
                                       quant_type="nf4")
        return lin.to("cpu")  # quantizes; the f32 values are freed

    class LoraLinear(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.base_layer = linear4bit(n_in, n_out)
            self.lora_dropout = nn.Dropout(LORA_DROPOUT)
            self.lora_A = nn.Linear(n_in, LORA_R, bias=False)
            self.lora_B = nn.Linear(LORA_R, n_out, bias=False)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
            self.scaling = LORA_ALPHA / LORA_R

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    class RMSNorm(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * self.weight

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm(C)
            self.q_proj, self.k_proj = LoraLinear(C, H * D), LoraLinear(C, HKV * D)
            self.v_proj, self.o_proj = LoraLinear(C, HKV * D), LoraLinear(H * D, C)
            self.post_attention_layernorm = RMSNorm(C)
            self.gate_proj, self.up_proj = LoraLinear(C, FF), LoraLinear(C, FF)
            self.down_proj = LoraLinear(FF, C)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(b, t, H, D).transpose(1, 2)
            k = self.k_proj(h).view(b, t, HKV, D).transpose(1, 2)
            v = self.v_proj(h).view(b, t, HKV, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // HKV, dim=1)
            v = v.repeat_interleave(H // HKV, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o_proj(o.transpose(1, 2).reshape(b, t, H * D))
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(VOCAB, C, dtype=torch.float16)
            self.embed_tokens.weight.requires_grad_(False)
            with torch.no_grad():
                self.embed_tokens.weight.normal_(0.0, 0.02)
            self.layers = nn.ModuleList(Block() for _ in range(L))
            self.norm = RMSNorm(C)

        def forward(self, ids):
            b, t = ids.shape
            inv = 1.0 / (THETA ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
            ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
            ang = torch.cat((ang, ang), dim=-1)
            cos, sin = ang.cos(), ang.sin()
            x = self.embed_tokens(ids).float()
            for layer in self.layers:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            logits = F.linear(self.norm(x), self.embed_tokens.weight.float())  # tied head
            return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))

    t0 = time.perf_counter()
    model = Llama()
    model.train()
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    ids = torch.randint(0, VOCAB, (a.batch, a.seq), generator=torch.Generator().manual_seed(1))
    times, losses = [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded,
                      "load_s": load_s, "step_s": statistics.median(times[1:] or times),
                      "steps": times, "losses": losses,
                      "n_trainable": sum(q.numel() for q in params),
                      "torch": torch.__version__, "bitsandbytes": bnb.__version__}))


def run_json(cmd, env):
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON line from: {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    r = json.loads(lines[-1])
    r["wall_s"] = time.perf_counter() - t
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    ap.add_argument("--model", help="the synthetic GGUF of that preset (finch's side)")
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_train"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps, the first untimed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="both engines compute in bf16")
    ap.add_argument("--peer-only", action="store_true")
    ap.add_argument("--finch-only", action="store_true")
    ap.add_argument("--worker-peer", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_peer:
        peer_worker(a)
        return
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base["OMP_NUM_THREADS"] = str(a.threads)
    res = {}
    if not a.peer_only:
        if not a.model:
            raise SystemExit("--model: the synthetic GGUF (bench/make_synthetic_gguf.py)")
        # bench_train times steps after its 2 warm-up steps: it needs 3 at least
        cmd = [a.bench, "-m", a.model, "--load-in-4bit", "--gradient-checkpointing",
               "-b", str(a.batch), "-T", str(a.seq), "-n", str(max(a.steps, 3)),
               "-t", str(a.threads)] + (["--bf16"] if a.bf16 else [])
        r = run_json(cmd, base)
        r["step_s"] = a.batch * a.seq / r["tok_s"]
        res["finch"] = r
    if not a.finch_only:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-peer", "--preset", a.preset,
               "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
               "--threads", str(a.threads)] + (["--bf16"] if a.bf16 else [])
        res["peer"] = run_json(cmd, dict(base, OMP_WAIT_POLICY="PASSIVE"))
    print(f"QLoRA {a.preset}, batch {a.batch} x {a.seq}, {a.threads} threads, checkpointing, "
          f"{'bf16' if a.bf16 else 'f32'} compute")
    print(f"{'':8}{'peak RSS MB':>12}{'s/step':>10}")
    for e, r in res.items():
        print(f"{e:8}{r['peak_rss_mb']:12.0f}{r['step_s']:10.1f}")
    if len(res) == 2:
        f, p = res["finch"], res["peer"]
        print(f"finch/peer: memory {f['peak_rss_mb'] / p['peak_rss_mb']:.2f}, "
              f"speed {p['step_s'] / f['step_s']:.2f}x")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
