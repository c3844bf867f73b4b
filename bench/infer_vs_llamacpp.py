#!/usr/bin/env python3
"""finch vs llama.cpp inference speed on the same GGUF file and the same token ids.

What it does: tokenizes a fixed English text with llama.cpp's tokenizer (from the model
file), repeats the ids to the prompt length and writes them to a file, then in several
alternating rounds runs
  - finch:     bench/bench_infer -m MODEL -t THREADS -p N -n N -r REPEATS -N NUMERICS
               -P IDS_FILE
  - llama.cpp: this script in worker mode (llama-cpp-python, the real llama.cpp)
each in a fresh process, and prints a table of tokens/s for prompt processing (pp: one
decode of the whole prompt from an empty cache, last logits only) and token generation
(tg: single-token decodes from an empty cache, greedy argmax feedback), with the ratio
finch / llama.cpp. Every figure is the median of all timed runs (rounds x repeats).

The peer gets its best plain CPU setting: n_threads = n_threads_batch = THREADS,
n_batch = n_ubatch = 512, logits for the last position only, default KV cache (f16),
OMP_NUM_THREADS = THREADS, and OMP_WAIT_POLICY removed from its environment so libgomp's
default (spin a while, then sleep) applies. llama.cpp's CPU backend is built with OpenMP:
on an idle 2-core machine ACTIVE and the default are within noise, while an inherited
OMP_WAIT_POLICY=PASSIVE - the setting DESIGN.md recommends for PyTorch - cuts its tg from
~140 to ~40 tok/s (--peer-wait-policy sets one explicitly). finch runs with
OMP_NUM_THREADS = THREADS and the caller's environment otherwise, plus any
--finch-env KEY=VALUE. Both engines run alone in their process, one after the other,
never at the same time; other load on the machine (a build, a fuzzer) ruins both figures,
spinning OpenMP threads most of all, so benchmark on an idle machine.

Usage (from the repository root, after building bench_infer):
    python3 bench/infer_vs_llamacpp.py [--bench ./build/bench/bench_infer] [--model M]
        [--threads 2] [--prompt 512] [--gen 128] [--rounds 3] [--repeats 3]
        [--numerics exact|llamacpp|bf16] [--finch-env KEY=VALUE] [--llamacpp-only] [--json]

finch's session numerics default to "exact" (dequantized weights, f32 throughout), as
`finch generate` does; "llamacpp" times the path that reproduces llama.cpp's own arithmetic
(8-bit quantized activations in the quantized matmuls, f16 KV cache); "bf16" the exact path
with the prompt's products in bf16 (AMX where the CPU has it), as `finch generate
--numerics bf16`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The same text as bench_infer.c's k_text (only its ids are passed to both engines).
TEXT = (
    "The history of the lighthouse is a story of people who kept watch so that others "
    "could travel safely. Long before electric lamps, keepers climbed narrow stairs every "
    "evening to trim the wicks, polish the lenses and wind the clockwork that turned the "
    "great glass. Ships far out at sea counted the flashes to learn which coast they were "
    "passing, and a light that failed for a single night could mean a wreck on the rocks. "
    "Today most lights run on their own, watched by sensors and a distant office, yet the "
    "towers still stand on their headlands, and visitors climb them to look out over the "
    "water the way the keepers once did. ")


def engine_env(threads, extra, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OMP_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def make_prompt_ids(model, n_prompt):
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr
    with suppress_stdout_stderr(disable=False):
        llm = Llama(model_path=model, vocab_only=True, verbose=False)
    src = llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False)
    return [src[i % len(src)] for i in range(n_prompt)]


# ---------------------------------------------------------------- llama.cpp worker

def llamacpp_worker(args):
    """Runs in its own process: times llama.cpp and prints one JSON line like bench_infer."""
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    with open(args.ids_file) as f:
        ids = [int(x) for x in f.read().split()]
    ids = [ids[i % len(ids)] for i in range(args.prompt)]
    llm = Llama(model_path=args.model, n_ctx=max(args.prompt, args.gen) + 16,
                n_batch=512, n_ubatch=512, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=False, seed=0, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def pp():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        last_logits()
        return len(ids) / (time.perf_counter() - t0)

    def tg():
        llm.reset()
        tok = ids[0]
        t0 = time.perf_counter()
        for _ in range(args.gen):
            llm.eval([tok])
            tok = int(np.argmax(last_logits()))
        return args.gen / (time.perf_counter() - t0)

    llm.reset()
    llm.eval(ids[:32])  # warm-up: page the weights in, start the threads
    pps, tgs = [], []
    for _ in range(args.repeats):
        pps.append(pp())
        tgs.append(tg())
    print(json.dumps({"pp_tok_s": statistics.median(pps), "tg_tok_s": statistics.median(tgs),
                      "pp_runs": pps, "tg_runs": tgs,
                      "llama_cpp_python_version": llama_cpp.__version__}))


# ---------------------------------------------------------------- driver

def run_json(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON line from: {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_infer"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per engine")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs inside each process")
    ap.add_argument("--numerics", choices=("exact", "llamacpp", "bf16"), default="exact",
                    help="finch session numerics (default exact; llamacpp = llama.cpp's "
                         "own arithmetic; bf16 = the prompt's products in bf16)")
    ap.add_argument("--peer-wait-policy", choices=("ACTIVE", "PASSIVE"),
                    help="OMP_WAIT_POLICY for llama.cpp (default: unset, libgomp's default)")
    ap.add_argument("--llamacpp-only", action="store_true", help="skip finch")
    ap.add_argument("--finch-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for bench_infer (repeatable)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--worker-llamacpp", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker_llamacpp:
        llamacpp_worker(args)
        return
    if not args.llamacpp_only and not os.access(args.bench, os.X_OK):
        raise SystemExit(f"{args.bench} not found: build it (cmake --build build --target "
                         "bench_infer) or pass --bench, or use --llamacpp-only")

    finch_extra = dict(kv.split("=", 1) for kv in args.finch_env)
    finch_env = engine_env(args.threads, finch_extra)
    peer_extra = {"OMP_WAIT_POLICY": args.peer_wait_policy} if args.peer_wait_policy else {}
    peer_env = engine_env(args.threads, peer_extra, drop=("OMP_WAIT_POLICY",))
    res = {"finch": [], "llama.cpp": []}
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = os.path.join(tmp, "prompt_ids.txt")
        with open(ids_file, "w") as f:
            f.write(" ".join(str(i) for i in make_prompt_ids(args.model, args.prompt)) + "\n")
        common = ["-t", str(args.threads), "-p", str(args.prompt), "-n", str(args.gen),
                  "-r", str(args.repeats)]
        for r in range(args.rounds):
            if not args.llamacpp_only:
                res["finch"].append(run_json([args.bench, "-m", args.model, *common,
                                              "-N", args.numerics, "-P", ids_file],
                                             finch_env))
            res["llama.cpp"].append(run_json(
                [sys.executable, os.path.abspath(__file__), "--worker-llamacpp",
                 "--model", args.model, "--ids-file", ids_file, "--threads", str(args.threads),
                 "--prompt", str(args.prompt), "--gen", str(args.gen),
                 "--repeats", str(args.repeats)], peer_env))
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(
                f"{k} pp {v[-1]['pp_tok_s']:.1f} tg {v[-1]['tg_tok_s']:.1f}"
                for k, v in res.items() if v), file=sys.stderr)

    # the median of every timed run of every process
    med = {k: {m: statistics.median(r for x in v for r in x[m[:2] + "_runs"])
               for m in ("pp_tok_s", "tg_tok_s")}
           for k, v in res.items() if v}
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, "
          f"median of {args.rounds} processes x {args.repeats} runs each; OMP_WAIT_POLICY "
          f"llama.cpp {peer_env.get('OMP_WAIT_POLICY', '(unset)')}, finch "
          f"{finch_env.get('OMP_WAIT_POLICY', '(unset)')}; finch numerics {args.numerics}")
    print(f"{'':8s} {'finch tok/s':>12s} {'llama.cpp tok/s':>16s} {'finch/llama.cpp':>16s}")
    for m, label in (("pp_tok_s", f"pp{args.prompt}"), ("tg_tok_s", f"tg{args.gen}")):
        lc = med["llama.cpp"][m]
        fi = med["finch"][m] if "finch" in med else None
        print(f"{label:8s} {'-' if fi is None else f'{fi:.2f}':>12s} {lc:16.2f} "
              f"{'-' if fi is None else f'{fi / lc:.3f}':>16s}")
    if args.json:
        print(json.dumps({"median": med, "runs": res}))


if __name__ == "__main__":
    main()
