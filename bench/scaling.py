#!/usr/bin/env python3
"""Scaling curves: LoRA training tokens/s and peak RSS of finch and the PyTorch peer against
sequence length, batch size and thread count, as a table and SVG plots.

Each point is one bench/train_vs_pytorch.py run (fresh processes for each engine, the peer
at its fastest OPENBLAS_CORETYPE, see that script) with one configuration:
  - sequence length T in --seqs (default 128 .. 8192) at batch 1,
  - batch size B in --batches (default 1, 2, 4, 8) at T = 128,
each at every thread count in --threads (default 1, 2). A run that fails (the peer keeps
B x H x T x T attention probabilities per layer, so at long T it runs out of memory) is a
missing point, said as such in the table; --mem-limit-gb caps each run's address space so
that such a run fails quickly instead of swapping the machine.

Writes DIR/scaling.json (every point), DIR/scaling.md (the tables) and four plots:
DIR/scaling_seq_toks.svg, scaling_seq_rss.svg (against T, log scale), and
scaling_batch_toks.svg, scaling_batch_rss.svg (against B).

Usage (from the repository root, after building bench_train; an idle machine):
    OPENBLAS_CORETYPE=... python3 bench/scaling.py [--out bench/scaling] [--seqs 128,...]
        [--batches 1,2,4,8] [--threads 1,2] [--steps 3] [--gradient-checkpointing]
        [--mem-limit-gb 16] [--plot-only]
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIR = os.path.join(ROOT, "bench", "train_vs_pytorch.py")
ENGINES = ("finch", "pytorch")


def run_point(engine, b, t, threads, args):
    """{"tok_s", "peak_rss_mb"} of one engine at B x T with `threads` threads, or
    {"error": ...} when the run failed."""
    cmd = [sys.executable, PAIR, "--configs", f"{b}x{t}", "--threads", str(threads),
           "--steps", str(args.steps), "--json", "--model", args.model, "--bench", args.bench,
           "--finch-only" if engine == "finch" else "--peer-only"]
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    limit = int(args.mem_limit_gb * (1 << 30))

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap if limit else None)
    rows = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not rows:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {p.returncode}: {tail[:160]}"}
    data = json.loads(rows[-1])
    side = next(r for r in data["results"] if r["engine"] == engine)
    return {"tok_s": side["tok_s"], "peak_rss_mb": side["peak_rss_mb"],
            "openblas_coretype": data["openblas_coretype"], "loadavg": data["loadavg"]}


def svg_plot(path, title, xlabel, ylabel, series, logx):
    """A line chart: series is {name: [(x, y or None), ...]}; None leaves a gap."""
    W, H, L, R, T, B = 640, 400, 70, 150, 40, 50
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not pts:
        return
    xs = sorted({x for s in series.values() for x, _ in s})
    fx = (lambda v: math.log2(v)) if logx else (lambda v: float(v))
    x0, x1 = fx(xs[0]), fx(xs[-1])
    if x1 == x0:
        x1 = x0 + 1
    y1 = max(y for _, y in pts) * 1.1
    px = lambda v: L + (fx(v) - x0) / (x1 - x0) * (W - L - R)
    py = lambda v: H - B - v / y1 * (H - T - B)
    colors = ["#1f77b4", "#aec7e8", "#d62728", "#ff9896"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{xlabel}</text>',
           f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(T + H - B) / 2})">{ylabel}</text>']
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x}</text>')
    for k in range(6):
        v = y1 * k / 5
        out.append(f'<line x1="{L - 4}" y1="{py(v):.1f}" x2="{W - R}" y2="{py(v):.1f}" '
                   f'stroke="#ddd"/><text x="{L - 6}" y="{py(v) + 4:.1f}" '
                   f'text-anchor="end">{v:.0f}</text>')
    for i, (name, s) in enumerate(series.items()):
        c = colors[i % len(colors)]
        run = []
        for x, y in s + [(None, None)]:
            if y is None:
                if len(run) > 1:
                    out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="' +
                               " ".join(f"{a:.1f},{b:.1f}" for a, b in run) + '"/>')
                run = []
                continue
            run.append((px(x), py(y)))
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
        ly = T + 10 + 18 * i
        out.append(f'<line x1="{W - R + 10}" y1="{ly}" x2="{W - R + 30}" y2="{ly}" '
                   f'stroke="{c}" stroke-width="2"/><text x="{W - R + 35}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def table(points, axis, values, threads):
    hdr = f"| {axis} | " + " | ".join(f"{e} {n}t tok/s | {e} {n}t MB" for n in threads
                                     for e in ENGINES) + " |"
    lines = [hdr, "|" + "---|" * (1 + 2 * len(threads) * len(ENGINES))]
    for v in values:
        cells = []
        for n in threads:
            for e in ENGINES:
                p = points.get(f"{e}/{axis}={v}/{n}t")
                if p is None:
                    cells += ["", ""]
                elif "error" in p:
                    cells += ["failed", ""]
                else:
                    cells += [f"{p['tok_s']:.1f}", f"{p['peak_rss_mb']:.0f}"]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "scaling"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_train"))
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--seqs", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=3, help="steps per process, the first 2 untimed")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--mem-limit-gb", type=float, default=16,
                    help="address-space cap of each run (0: none)")
    ap.add_argument("--plot-only", action="store_true", help="redraw from OUT/scaling.json")
    args = ap.parse_args()
    seqs = [int(v) for v in args.seqs.split(",") if v]
    batches = [int(v) for v in args.batches.split(",") if v]
    threads = [int(v) for v in args.threads.split(",") if v]
    os.makedirs(args.out, exist_ok=True)
    store = os.path.join(args.out, "scaling.json")
    points = {}
    if os.path.exists(store):
        with open(store) as f:
            points = json.load(f)
    if not args.plot_only:
        todo = [("T", t, 1, t) for t in seqs] + [("B", b, b, 128) for b in batches]
        for axis, v, b, t in todo:
            for n in threads:
                for e in ENGINES:
                    key = f"{e}/{axis}={v}/{n}t"
                    if key in points:
                        continue
                    points[key] = run_point(e, b, t, n, args)
                    print(f"{key}: {points[key]}", file=sys.stderr)
                    with open(store + ".tmp", "w") as f:
                        json.dump(points, f, indent=1)
                    os.replace(store + ".tmp", store)
    for axis, values, name, logx in (("T", seqs, "seq", True), ("B", batches, "batch", False)):
        for what, unit in (("tok_s", "tokens/s"), ("peak_rss_mb", "peak RSS (MB)")):
            series = {}
            for e in ENGINES:
                for n in threads:
                    s = []
                    for v in values:
                        p = points.get(f"{e}/{axis}={v}/{n}t", {})
                        s.append((v, p.get(what)))
                    series[f"{e} {n} thread{'s' if n > 1 else ''}"] = s
            label = "sequence length T (batch 1)" if axis == "T" else "batch size B (T = 128)"
            svg_plot(os.path.join(args.out, f"scaling_{name}_{'toks' if what == 'tok_s' else 'rss'}.svg"),
                     f"LoRA r 16 on SmolLM2-135M: {unit}", label, unit, series, logx)
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write("Against sequence length (batch 1):\n\n" + table(points, "T", seqs, threads) +
                "\n\nAgainst batch size (T = 128):\n\n" + table(points, "B", batches, threads) + "\n")
    print(open(os.path.join(args.out, "scaling.md")).read())


if __name__ == "__main__":
    main()
