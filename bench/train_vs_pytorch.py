#!/usr/bin/env python3
"""finch vs PyTorch LoRA (or full fine-tuning) speed and peak memory on a real model's shape.

With --bf16 both sides train in mixed precision: finch with --bf16 (the base's products
with bf16 operands on AMX, f32 sums, f32 parameters and optimizer state), the peer under
torch.autocast("cpu", dtype=torch.bfloat16) (its CPU recipe: oneDNN bf16 matmuls, on AMX
where the CPU has it; float32 parameters and AdamW).

With --gradient-checkpointing both sides keep each block's input only and recompute the
block in backward (finch --gradient-checkpointing; the peer wraps each block in
torch.utils.checkpoint, non-reentrant).

With --method full both sides train every weight instead (finch: bench_train --method
full, f32 master copies made from the Q4_1 base; the peer: the same model with every
parameter trainable, float32, AdamW over all of them).

What it does: for each configuration (batch x seq; default 4x128 and 1x512) and each of
several rounds it starts, one after the other and never at the same time,
  - finch:   bench/bench_train -m MODEL -b B -T T -n STEPS -t THREADS
             (LoRA r 16, alpha 32, dropout 0.05, all linear layers, AdamW, over the
             model's own Q4_1 base; synthetic English text, loss on every position)
  - PyTorch: this script in worker mode: a plain PyTorch LLaMA of exactly SmolLM2-135M's
             shape (30 layers, hidden 576, 9 query / 3 KV heads of 64, FFN 1536 SwiGLU,
             vocab 49152, tied embeddings, RMSNorm eps 1e-5, rotate-half RoPE theta 1e5,
             causal GQA attention; or, for a gemma3 model such as Gemma 3 270M, its shape:
             18 layers, hidden 640, 4 query / 1 KV heads of 256, FFN 2048 GeGLU, vocab
             262144, q/k norms, post norms, embeddings x sqrt(640), sliding windows of
             512 in five of every six blocks) with LoRA wrappers as PEFT builds them (r 16, alpha 32,
             dropout 0.05 on the LoRA input, A Kaiming-uniform, B zero, on q,k,v,o,gate,
             up,down; everything else frozen), random float32 base weights, AdamW over the
             LoRA parameters, cross-entropy loss on the next token;
each in a fresh process, so that the peak RSS (getrusage ru_maxrss of the process, which
each side reports about itself) belongs to that configuration alone. Tokens/s is
B*T / step time, the median over the steps after 2 warm-up steps; the table shows the
median over the rounds' medians, and the ratios finch / PyTorch (speed above 1 means
finch is faster; memory below 1 means finch uses less).

The peer gets its best plain CPU setting (see DESIGN.md, Benchmarks):
torch.set_num_threads(THREADS) set explicitly and OMP_WAIT_POLICY=PASSIVE in its
environment (as installed, PyTorch otherwise spins idle OpenMP threads beside OpenBLAS's
pool and runs 2-2.7x slower here); OMP_NUM_THREADS = THREADS. Attention is written out
(matmul, mask, softmax, matmul) because Debian's torch 1.13 has no
scaled_dot_product_attention. Both clip the gradient norm at 1 before AdamW (finch's
default and the Trainer's; the peer did not clip before 2026-12-07, which favoured it in
full fine-tuning by a pass over every gradient). With --no-clip neither clips, and finch's
full fine-tuning runs AdamW inside backward (--fused-optimizer, which needs no clipping:
each tensor is updated as its gradient is complete, so no whole gradient arena is kept);
the peer keeps its plain AdamW. The peer's base is float32 while finch trains over the
4-bit Q4_1 base: the arithmetic differs, the shapes and the trainable set do not.

Usage (from the repository root, after building bench_train):
    python3 bench/train_vs_pytorch.py [--bench ./build/bench/bench_train] [--model M]
        [--threads 2] [--configs 4x128,1x512] [--steps 8] [--rounds 1]
        [--peer-only] [--finch-only] [--json] [--method lora|full] [--bf16]
        [--gradient-checkpointing] [--no-clip] [--device cpu|cuda]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WARMUP = 2

# The peer's shape per family, as the model files say (the GGUF's general.architecture
# picks one): SmolLM2-135M (llama) and Gemma 3 270M (gemma3: q/k norms, post-attention and
# post-FFN norms, RMSNorm weights as 1 + w, GeGLU, embeddings scaled by sqrt(hidden), five
# sliding-window blocks of 512 keys (RoPE base 1e4) to one global block (base 1e6)).
SHAPES = {
    "llama": dict(n_layer=30, dim=576, n_head=9, n_kv=3, head_dim=64, ffn=1536, vocab=49152,
                  eps=1e-5, theta=100000.0),
    "gemma3": dict(n_layer=18, dim=640, n_head=4, n_kv=1, head_dim=256, ffn=2048, vocab=262144,
                   eps=1e-6, theta=1000000.0, theta_local=10000.0, window=512, period=6),
}
LORA_R, LORA_ALPHA, LORA_DROPOUT, LR = 16, 32.0, 0.05, 1e-4


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------- PyTorch worker

def peer_worker(args):
    """Runs in its own process: trains the PyTorch model and prints one JSON line."""
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.utils.checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_import = peak_rss_mb()

    full = args.method == "full"
    S = SHAPES[args.family]
    gemma = args.family == "gemma3"
    N_LAYER, DIM, N_HEAD, N_KV = S["n_layer"], S["dim"], S["n_head"], S["n_kv"]
    HEAD_DIM, FFN, VOCAB, EPS = S["head_dim"], S["ffn"], S["vocab"], S["eps"]

    class LoraLinear(nn.Module):
        """PEFT's lora.Linear: base(x) + lora_B(lora_A(dropout(x))) * alpha / r."""

        def __init__(self, n_in, n_out):
            super().__init__()
            self.base_layer = nn.Linear(n_in, n_out, bias=False)
            self.base_layer.weight.requires_grad_(False)
            self.lora_dropout = nn.Dropout(LORA_DROPOUT)
            self.lora_A = nn.Linear(n_in, LORA_R, bias=False)
            self.lora_B = nn.Linear(LORA_R, n_out, bias=False)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
            self.scaling = LORA_ALPHA / LORA_R

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def Proj(n_in, n_out):
        """A projection: LoRA-wrapped and frozen, or (full fine-tuning) a trainable Linear."""
        return nn.Linear(n_in, n_out, bias=False) if full else LoraLinear(n_in, n_out)

    class RMSNorm(nn.Module):
        """LLaMA's x / rms(x) * w; Gemma's x / rms(x) * (1 + w), w starting at 0."""

        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim),
                                       requires_grad=full)

        def forward(self, x):
            w = 1.0 + self.weight if gemma else self.weight
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            if gemma:
                self.q_norm, self.k_norm = RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM)
                self.pre_feedforward_layernorm = RMSNorm(DIM)
                self.post_feedforward_layernorm = RMSNorm(DIM)
            self.input_layernorm = RMSNorm(DIM)
            self.q_proj = Proj(DIM, N_HEAD * HEAD_DIM)
            self.k_proj = Proj(DIM, N_KV * HEAD_DIM)
            self.v_proj = Proj(DIM, N_KV * HEAD_DIM)
            self.o_proj = Proj(N_HEAD * HEAD_DIM, DIM)
            self.post_attention_layernorm = RMSNorm(DIM)
            self.gate_proj = Proj(DIM, FFN)
            self.up_proj = Proj(DIM, FFN)
            self.down_proj = Proj(FFN, DIM)

        def forward(self, x, cos, sin, mask):
            b, t, _ = x.shape
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(b, t, N_HEAD, HEAD_DIM).transpose(1, 2)
            k = self.k_proj(h).view(b, t, N_KV, HEAD_DIM).transpose(1, 2)
            v = self.v_proj(h).view(b, t, N_KV, HEAD_DIM).transpose(1, 2)
            if gemma:
                q, k = self.q_norm(q), self.k_norm(k)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(N_HEAD // N_KV, dim=1)  # HF repeat_kv
            v = v.repeat_interleave(N_HEAD // N_KV, dim=1)
            s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(HEAD_DIM) + mask
            a = torch.matmul(F.softmax(s, dim=-1), v)
            o = self.o_proj(a.transpose(1, 2).reshape(b, t, N_HEAD * HEAD_DIM))
            if gemma:  # post norms around each sublayer, GeGLU
                x = x + self.post_attention_layernorm(o)
                h = self.pre_feedforward_layernorm(x)
                f = F.gelu(self.gate_proj(h), approximate="tanh") * self.up_proj(h)
                return x + self.post_feedforward_layernorm(self.down_proj(f))
            x = x + o
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(VOCAB, DIM)
            self.embed_tokens.weight.requires_grad_(full)
            self.layers = nn.ModuleList(Block() for _ in range(N_LAYER))
            self.norm = RMSNorm(DIM)

        def forward(self, ids, labels):
            b, t = ids.shape

            def rope(theta):
                inv = 1.0 / (theta ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32,
                                                    device=dev) / HEAD_DIM))
                ang = torch.outer(torch.arange(t, dtype=torch.float32, device=dev), inv)
                ang = torch.cat((ang, ang), dim=-1)
                return ang.cos(), ang.sin()

            causal = torch.full((t, t), float("-inf"), device=dev).triu(1)
            glob = (rope(S["theta"]), causal)
            if gemma:  # a sliding block sees its last `window` keys
                far = torch.full((t, t), float("-inf"), device=dev).tril(-S["window"])
                local = (rope(S["theta_local"]), causal + far)
            x = self.embed_tokens(ids)
            if gemma:
                x = x * math.sqrt(DIM)
            for i, layer in enumerate(self.layers):
                (cos, sin), mask = (local if gemma and (i + 1) % S["period"] else glob)
                if args.gradient_checkpointing:
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask,
                                                          use_reentrant=False)
                else:
                    x = layer(x, cos, sin, mask)
            logits = F.linear(self.norm(x), self.embed_tokens.weight)  # tied head
            return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))

    dev = torch.device(args.device)
    model = Llama().to(dev)
    with torch.no_grad():  # random base, the scale of a trained model's weights
        for name, p in model.named_parameters():
            if "lora_" not in name and "norm" not in name:
                p.normal_(0.0, 0.02)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (args.batch, args.seq), generator=g).to(dev)

    times, losses = [], []
    import contextlib
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with (torch.autocast(dev.type, dtype=torch.bfloat16) if args.bf16
              else contextlib.nullcontext()):
            loss = model(ids, ids)
        loss.backward()
        # finch clips at 1 by default, as Hugging Face's Trainer does (max_grad_norm 1.0)
        if not args.no_clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    tok = args.batch * args.seq
    runs = [tok / dt for dt in times[WARMUP:]]
    print(json.dumps({"tok_s": statistics.median(runs), "peak_rss_mb": peak_rss_mb(),
                      "batch": args.batch, "seq": args.seq, "steps": args.steps,
                      "threads": torch.get_num_threads(), "runs": runs,
                      "rss_after_import_mb": rss_import, "n_trainable": n_train,
                      "n_total": n_total, "loss_first": losses[0], "loss_last": losses[-1],
                      "torch_version": torch.__version__, "device": args.device,
                      "gpu_peak_mb": (torch.cuda.max_memory_allocated() / 2**20
                                      if dev.type == "cuda" else None),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


# ---------------------------------------------------------------- driver

def gguf_architecture(path):
    """general.architecture of a GGUF file (the first of its keys, as writers put it)."""
    import struct
    with open(path, "rb") as f:
        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or n_kv == 0:
            raise SystemExit(f"{path}: not a GGUF file")
        (n,) = struct.unpack("<Q", f.read(8))
        key = f.read(n).decode()
        (vtype,) = struct.unpack("<I", f.read(4))
        if key != "general.architecture" or vtype != 8:
            raise SystemExit(f"{path}: general.architecture is not its first key; pass --family")
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode()


def run_json(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON line from: {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return json.loads(lines[-1])


# OpenBLAS core types worth trying for the peer, oldest first; one this CPU cannot run
# fails its probe and is left out.
CORETYPES = ["Prescott", "Haswell", "SkylakeX", "Cooperlake", "SapphireRapids"]


def sgemm_probe():
    """GFLOP/s of torch's f32 matmul at the shape of a LoRA step's base products."""
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"gflops": 10 * 2 * 512 * 576 * 1536 / best / 1e9}))


def fastest_coretype(env):
    """The OPENBLAS_CORETYPE under which the peer's SGEMM runs fastest here (the environment's
    own when set), with every probe's figure."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"], {}
    rates = {}
    for ct in CORETYPES:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker-probe"],
                           env=dict(env, OPENBLAS_CORETYPE=ct), capture_output=True, text=True)
        if p.returncode == 0:
            rates[ct] = json.loads(p.stdout.strip().splitlines()[-1])["gflops"]
    return max(rates, key=rates.get), rates


def parse_configs(s):
    out = []
    for c in s.split(","):
        b, t = c.lower().split("x")
        out.append((int(b), int(t)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_train"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="4x128,1x512", help="BATCHxSEQ,... (default 4x128,1x512)")
    ap.add_argument("--steps", type=int, default=8, help="steps per process, the first 2 untimed")
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per engine and config")
    ap.add_argument("--peer-only", action="store_true", help="skip finch")
    ap.add_argument("--finch-only", action="store_true", help="skip PyTorch")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--method", choices=["lora", "full"], default="lora",
                    help="LoRA r 16 on all linear layers (default) or full fine-tuning")
    ap.add_argument("--bf16", action="store_true",
                    help="mixed precision on both sides (finch --bf16, torch.autocast bf16)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="both sides recompute each block in backward")
    ap.add_argument("--no-clip", action="store_true",
                    help="neither side clips; finch's full fine-tuning uses --fused-optimizer")
    ap.add_argument("--family", choices=sorted(SHAPES),
                    help="the peer's shape (default: the model file's general.architecture)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where both train: cuda puts finch's model and the peer's on the GPU "
                         "(their peak RSS is then the host's)")
    ap.add_argument("--worker-peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker_peer:
        peer_worker(args)
        return
    if args.worker_probe:
        sgemm_probe()
        return
    if args.family is None:
        args.family = gguf_architecture(args.model)
        if args.family not in SHAPES:
            raise SystemExit(f"{args.model}: no peer shape for architecture {args.family}")
    if args.steps <= WARMUP:
        raise SystemExit(f"--steps must be above {WARMUP} (the warm-up steps)")
    if not args.peer_only and not os.access(args.bench, os.X_OK):
        raise SystemExit(f"{args.bench} not found: build it (cmake --build build --target "
                         "bench_train) or pass --bench, or use --peer-only")

    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base["OMP_NUM_THREADS"] = str(args.threads)
    base["OPENBLAS_NUM_THREADS"] = str(args.threads)
    peer_env = dict(base, OMP_WAIT_POLICY="PASSIVE")
    coretype, probes = ("-", {}) if args.finch_only else fastest_coretype(peer_env)
    if not args.finch_only:
        peer_env["OPENBLAS_CORETYPE"] = coretype
        print("peer SGEMM by OPENBLAS_CORETYPE: " +
              (", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in probes.items()) or
               "(set in the environment)") + f"; using {coretype}", file=sys.stderr)
    finch_env = dict(base)
    if "OMP_WAIT_POLICY" in os.environ:
        finch_env["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
    configs = parse_configs(args.configs)
    engines = [e for e, skip in (("finch", args.peer_only), ("pytorch", args.finch_only)) if not skip]
    res = {(e, c): [] for e in engines for c in configs}
    for r in range(args.rounds):
        for (b, t) in configs:
            for e in engines:
                if e == "finch":
                    cmd = [args.bench, "-m", args.model, "-b", str(b), "-T", str(t),
                           "-n", str(args.steps), "-t", str(args.threads), "--method", args.method,
                           "--device", args.device]
                    cmd += ["--bf16"] if args.bf16 else []
                    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
                    if args.no_clip:
                        cmd += ["--max-grad-norm", "0"]
                        cmd += ["--fused-optimizer"] if args.method == "full" else []
                    env = finch_env
                else:
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker-peer",
                           "--batch", str(b), "--seq", str(t), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--method", args.method,
                           "--family", args.family, "--device", args.device]
                    cmd += ["--bf16"] if args.bf16 else []
                    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
                    cmd += ["--no-clip"] if args.no_clip else []
                    env = peer_env
                x = run_json(cmd, env)
                res[(e, (b, t))].append(x)
                print(f"round {r + 1}/{args.rounds} {b}x{t} {e}: {x['tok_s']:.1f} tok/s, "
                      f"peak RSS {x['peak_rss_mb']:.0f} MB", file=sys.stderr)

    med = {k: {"tok_s": statistics.median(x["tok_s"] for x in v),
               "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v)}
           for k, v in res.items()}
    load = os.getloadavg()
    what = ("full fine-tuning, every weight, AdamW" if args.method == "full" else
            f"LoRA r {LORA_R} alpha {LORA_ALPHA:g} dropout {LORA_DROPOUT}, all linear, AdamW")
    what += ", on the GPU" if args.device == "cuda" else ""
    what += ", bf16 mixed precision" if args.bf16 else ", float32"
    what += ", gradient checkpointing" if args.gradient_checkpointing else ""
    what += (", no clipping" + (" (finch: AdamW fused into backward)" if args.method == "full"
                                else "")) if args.no_clip else ", clipped at 1"
    print(f"{what}; "
          f"{args.threads} threads; median of {args.rounds} process(es) per engine and config, "
          f"each the median of {args.steps - WARMUP} steps after {WARMUP} warm-up; "
          f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"finch: {os.path.basename(args.model)} (trains over its quantized base); PyTorch peer: "
          f"{args.family} shape, random float32 base, OMP_WAIT_POLICY=PASSIVE, "
          f"set_num_threads({args.threads})")
    # The peer's matmuls are OpenBLAS's, and OPENBLAS_CORETYPE picks their kernels (an
    # AVX2 core type on an AVX-512 CPU halves them): the peer runs with the fastest found.
    print(f"peer OPENBLAS_CORETYPE={coretype} (fastest SGEMM of those probed)")
    hdr = (f"{'B x T':>8s} {'finch tok/s':>12s} {'torch tok/s':>12s} {'speed f/t':>10s} "
           f"{'finch MB':>9s} {'torch MB':>9s} {'mem f/t':>8s}")
    print(hdr)
    for c in configs:
        f = med.get(("finch", c))
        p = med.get(("pytorch", c))
        cell = lambda d, k, w, fmt: (format(d[k], fmt) if d else "-").rjust(w)
        sp = f"{f['tok_s'] / p['tok_s']:.2f}x" if f and p else "-"
        mm = f"{f['peak_rss_mb'] / p['peak_rss_mb']:.2f}" if f and p else "-"
        print(f"{f'{c[0]}x{c[1]}':>8s} {cell(f, 'tok_s', 12, '.1f')} {cell(p, 'tok_s', 12, '.1f')} "
              f"{sp:>10s} {cell(f, 'peak_rss_mb', 9, '.0f')} {cell(p, 'peak_rss_mb', 9, '.0f')} "
              f"{mm:>8s}")
    if args.json:
        print(json.dumps({"threads": args.threads, "steps": args.steps, "rounds": args.rounds,
                          "loadavg": load,
                          "openblas_coretype": coretype, "coretype_gflops": probes,
                          "results": [{"engine": e, "batch": c[0], "seq": c[1], **med[(e, c)],
                                       "processes": res[(e, c)]} for (e, c) in res]}))


if __name__ == "__main__":
    main()
