#!/usr/bin/env python3
"""Every training method of finch on one model: step time and peak memory beside LoRA's.

What it does: for each method (lora, dora, ia3, prompt, prefix, bitfit, freeze --layers
24-29, full) and
each of several rounds it starts bench/bench_train in a fresh process (one at a time),
-b BATCH -T SEQ -n STEPS -t THREADS --method M: synthetic English text, loss on every
position, AdamW, no evaluation or checkpoints (bench_train.c says how it times). LoRA and
DoRA use r 16, alpha 32, dropout 0.05 on all linear layers; (IA)^3 and BitFit their
defaults (k, v, down; every projection's bias); prompt and prefix tuning 20 virtual
tokens (tokens/s counts the real tokens); freeze trains blocks 24-29; full every weight. The table shows per method the median over rounds of tokens/s, the step time
relative to LoRA's (the goal for DoRA and (IA)^3 is <= 1.3), peak RSS, and the trainable
parameters. Full fine-tuning's peer is bench/train_vs_pytorch.py --method full (run it
beside this: a PyTorch full fine-tuning of the same shape at its best setting).

Usage (from the repository root, after building bench_train):
    python3 bench/methods.py [--bench ./build/bench/bench_train] [--model M] [--threads 2]
        [--config 4x128] [--steps 8] [--rounds 3] [--methods lora,dora,...] [--json]
"""
import argparse
import json
import os
import statistics
import sys

from train_vs_pytorch import DEFAULT_MODEL, ROOT, run_json

OPTIONS = {"freeze": ["--option", "layers=24-29"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_train"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="4x128", help="BATCHxSEQ (default 4x128)")
    ap.add_argument("--steps", type=int, default=8, help="steps per process, the first 2 untimed")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per method")
    ap.add_argument("--methods", default="lora,dora,ia3,prompt,prefix,bitfit,freeze,full")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    b, t = (int(x) for x in args.config.lower().split("x"))
    methods = args.methods.split(",")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods:
            cmd = [args.bench, "-m", args.model, "-b", str(b), "-T", str(t), "-n", str(args.steps),
                   "-t", str(args.threads), "--method", m] + OPTIONS.get(m, [])
            x = run_json(cmd, env)
            res[m].append(x)
            print(f"round {r + 1}/{args.rounds} {m}: {x['tok_s']:.1f} tok/s, peak RSS "
                  f"{x['peak_rss_mb']:.0f} MB", file=sys.stderr)
    med = {m: {"tok_s": statistics.median(x["tok_s"] for x in v),
               "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v),
               "n_trainable": v[0]["n_trainable"], "n_total": v[0]["n_total"]}
           for m, v in res.items()}
    load = os.getloadavg()
    print(f"{os.path.basename(args.model)}, {b}x{t}, {args.threads} threads; median of "
          f"{args.rounds} process(es) per method, each the median of {args.steps - 2} steps "
          f"after 2 warm-up; load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'method':>8s} {'trainable':>11s} {'%':>7s} {'tok/s':>8s} {'step / LoRA':>12s} "
          f"{'peak MB':>8s}")
    lora = med.get("lora")
    for m in methods:
        d = med[m]
        rel = f"{lora['tok_s'] / d['tok_s']:.2f}" if lora else "-"
        print(f"{m:>8s} {d['n_trainable']:>11d} {100 * d['n_trainable'] / d['n_total']:>7.3f} "
              f"{d['tok_s']:>8.1f} {rel:>12s} {d['peak_rss_mb']:>8.0f}")
    if args.json:
        print(json.dumps({"config": [b, t], "threads": args.threads, "rounds": args.rounds,
                          "loadavg": load, "results": med, "processes": res}))


if __name__ == "__main__":
    main()
