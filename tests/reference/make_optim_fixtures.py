#!/usr/bin/python3
"""make_optim_fixtures.py: AdamW runs with learning-rate schedules and gradient clipping
from PyTorch, for tests/optim/test_optim.c.

Each run trains five small float32 tensors (two of them, a bias and a norm weight, in a
parameter group without weight decay) for 20 steps on a fixed sequence of gradients:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()            # torch.optim.AdamW, amsgrad and maximize off
    sched.step()          # torch.optim.lr_scheduler.LambdaLR
with the lambdas of transformers' get_scheduler written out from its documented formulas
(transformers is not needed): linear, cosine (num_cycles 0.5) and constant_with_warmup.
It records the lr each optimizer step used, the pre-clip norm, and every parameter after
every step. Further schedule cases (no warmup, warmup longer than the run, one step)
record lambda values only.

Writes tests/fixtures/optim/adamw_runs.bin (layout below, little-endian) and
adamw_runs.json (versions, seed, the settings of each run, for people).

  "FOPTFIX1"
  i32 n_tensors, i32 steps, i32 n_runs, i32 n          (n = floats in all tensors)
  n_tensors x (i32 numel, i32 decay)                    (tensors in flat order)
  steps x n f32                                         gradients, before clipping
  n f32                                                 initial parameters
  n_runs x: i32 kind (0 linear, 1 cosine, 2 constant), i32 warmup, i32 total,
            f64 lr, f64 beta1, f64 beta2, f64 eps, f64 weight_decay, f64 max_norm,
            steps x (f64 lr used, f64 pre-clip norm, n f32 parameters after the step)
  i32 n_cases
  n_cases x: i32 kind, i32 warmup, i32 total, f64 lr, (total + 2) f64 lr after 0..total+1
             scheduler steps

Run with Debian's interpreter: /usr/bin/python3 tests/reference/make_optim_fixtures.py
(python3-torch, python3-numpy). Deterministic (seeded).
"""
import json, math, os, struct
import numpy as np
import torch

SEED = 20240613
STEPS = 20
SHAPES = [((8, 5), True), ((8,), False), ((3, 8), True), ((6,), False), ((7,), True)]
# (kind, warmup, total, lr, beta1, beta2, eps, weight_decay, max_norm)
RUNS = [
    (0, 3, 20, 1e-2, 0.9, 0.999, 1e-8, 0.1, 1.0),
    (1, 4, 20, 3e-3, 0.85, 0.98, 1e-6, 0.05, 0.5),
    (2, 2, 20, 5e-3, 0.9, 0.999, 1e-8, 0.01, 2.0),
]
CASES = [(0, 0, 10, 1e-3), (1, 0, 10, 2e-4), (2, 0, 5, 1e-4), (0, 12, 10, 1e-3),
         (1, 12, 10, 1e-3), (2, 12, 10, 1e-3), (0, 1, 1, 1e-3), (1, 1, 1, 1e-3),
         (1, 5, 17, 3e-4), (0, 5, 17, 3e-4)]
NAMES = ["linear", "cosine", "constant"]


def hf_lambda(kind, warmup, total):
    """transformers.optimization: get_linear_schedule_with_warmup,
    get_cosine_schedule_with_warmup (num_cycles=0.5), get_constant_schedule_with_warmup."""
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind == 0:
            return max(0.0, float(total - step) / float(max(1, total - warmup)))
        if kind == 1:
            progress = float(step - warmup) / float(max(1, total - warmup))
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress)))
        return 1.0
    return f


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    n = sum(int(np.prod(s)) for s, _ in SHAPES)
    init = rng.standard_normal(n).astype(np.float32) * np.float32(0.5)
    # Gradient sizes vary over steps so that some steps clip and others do not.
    scale = rng.choice([0.05, 0.2, 0.6, 1.5, 4.0], size=STEPS)
    grads = (rng.standard_normal((STEPS, n)) * scale[:, None] / math.sqrt(n) * 3.0).astype(np.float32)

    out = bytearray(b"FOPTFIX1")
    out += struct.pack("<4i", len(SHAPES), STEPS, len(RUNS), n)
    for s, decay in SHAPES:
        out += struct.pack("<2i", int(np.prod(s)), int(decay))
    out += grads.astype("<f4").tobytes() + init.astype("<f4").tobytes()

    meta_runs = []
    for kind, warmup, total, lr, b1, b2, eps, wd, max_norm in RUNS:
        params, o = [], 0
        for s, decay in SHAPES:
            k = int(np.prod(s))
            params.append(torch.nn.Parameter(torch.from_numpy(init[o:o + k].copy()).reshape(s)))
            o += k
        decayed = [p for p, (_, d) in zip(params, SHAPES) if d]
        plain = [p for p, (_, d) in zip(params, SHAPES) if not d]
        opt = torch.optim.AdamW([{"params": decayed, "weight_decay": wd},
                                 {"params": plain, "weight_decay": 0.0}],
                                lr=lr, betas=(b1, b2), eps=eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda(kind, warmup, total))
        out += struct.pack("<3i6d", kind, warmup, total, lr, b1, b2, eps, wd, max_norm)
        norms, lrs = [], []
        for t in range(STEPS):
            o = 0
            for p in params:
                k = p.numel()
                p.grad = torch.from_numpy(grads[t, o:o + k].copy()).reshape(p.shape)
                o += k
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            lr_used = opt.param_groups[0]["lr"]
            assert lr_used == opt.param_groups[1]["lr"]
            opt.step()
            sched.step()
            flat = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
            out += struct.pack("<2d", lr_used, norm) + flat.astype("<f4").tobytes()
            norms.append(norm)
            lrs.append(lr_used)
        meta_runs.append({"schedule": NAMES[kind], "warmup": warmup, "total": total, "lr": lr,
                          "betas": [b1, b2], "eps": eps, "weight_decay": wd,
                          "max_norm": max_norm, "clipped_steps": sum(x > max_norm for x in norms),
                          "lrs": lrs, "norms": norms})

    out += struct.pack("<i", len(CASES))
    for kind, warmup, total, lr in CASES:
        # The rates LambdaLR hands out, from a throwaway optimizer.
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda(kind, warmup, total))
        vals = []
        for _ in range(total + 2):
            vals.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out += struct.pack("<3id", kind, warmup, total, lr) + struct.pack("<%dd" % len(vals), *vals)

    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "adamw_runs.bin"), "wb") as f:
        f.write(out)
    meta = {"torch": torch.__version__, "numpy": np.__version__, "seed": SEED, "steps": STEPS,
            "tensors": [{"shape": list(s), "weight_decay": d} for s, d in SHAPES],
            "runs": meta_runs,
            "schedule_cases": [{"schedule": NAMES[k], "warmup": w, "total": t, "lr": lr}
                               for k, w, t, lr in CASES]}
    with open(os.path.join(d, "adamw_runs.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote %d bytes; clipped steps per run: %s" %
          (len(out), [r["clipped_steps"] for r in meta_runs]))


if __name__ == "__main__":
    main()
