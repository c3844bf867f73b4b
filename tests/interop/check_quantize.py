"""`finch quantize` against llama.cpp's quantizer (llama_model_quantize, llama-cpp-python).

The source is an f32 GGUF that finch writes from the default model (`finch quantize
MODEL f32.gguf --type f32`: the Q4_1 weights dequantized exactly, so both quantizers start
from the same floats). For each type both finch and llama.cpp quantize it, and:

  - every tensor's type (and general.file_type) in finch's file equals llama.cpp's:
    the per-tensor rules, the _S/_M mixes and the row-length fallbacks agree;
  - where llama.cpp's quantizer is a closed-form rule (q8_0, q4_0, q4_1, q5_0, q5_1, f16,
    bf16) every tensor's bytes are equal;
  - for the K-quant tensors (q4_k, q5_k, q6_k), whose quantizers search differently, the
    RMS error of the dequantized weights against the f32 source is measured for both, per
    tensor; the ratio finch / llama.cpp over all of a type's tensors is printed and must be
    at most MAX_RMS_RATIO;
  - llama.cpp loads finch's file and its greedy text (N_PREDICT tokens) on each prompt
    equals `finch generate --numerics llamacpp` on the same file, or splits only at a near
    tie of finch's exact logits (as check_llamacpp.py allows).

The default model's weights sit on its Q4_1 grid (16 levels per block of 32), which a
Q4_K sub-block of 32 can hold almost exactly, so a K-quant error measured from that source
flatters the quantizer that finds the grid. The K-quant comparison therefore also runs from
a "dithered" source: the same f32 file with every weight moved uniformly within its Q4_1
cell (U(-d/2, d/2), d = the block's (max - min) / 15, seeded), a continuous source the
Q4_1 file is a quantization of. Types, bytes and generation are checked on both.

With --gemma3 FILE (Gemma 3 270M Q4_K_M, optional) the same type checks run on it, from an
f32 file finch writes of it (a second family: q/k norms, tied 262k-token embeddings).

Measured when written (llama-cpp-python 0.3.36): every tensor type and general.file_type
equal on all 12 types (SmolLM2) and q4_k_m, q6_k, q8_0 (Gemma 3); bytes equal for q8_0,
q4_0, q4_1, q5_0, q5_1, f16, bf16; K-quant RMS ratio finch / llama.cpp from the dithered
source: q4_k 0.981, q5_k 0.956, q6_k 0.951 (finch lower on every tensor); from the plain
source 0.70-0.91, and on Gemma's Q6_K tensors (llama.cpp's own grid) 0.066; greedy 32
tokens equal on 8 of 15 (type, prompt) pairs, the other 7 split at near ties (finch's
exact logits 0.03-0.17 apart).

  python check_quantize.py --finch build/finch --logits .../finch_interop_logits \
      --model MODEL.gguf --work DIR [--gemma3 FILE]
"""
import ctypes
import os
import sys
import time

import numpy as np

import check_llamacpp as cl
import common

N_PREDICT = 32
MAX_RMS_RATIO = 1.05
TYPES = {  # finch's --type -> llama_ftype
    "q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "f16": 1, "bf16": 32,
    "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18,
}
EXACT = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16"}
GENERATE = ["q8_0", "q4_k_m", "q5_k_s", "q6_k"]
PROMPTS = ["The capital of France is", "Once upon a time",
           '<|im_start|>user\nDefine the word "finch" (noun).<|im_end|>\n<|im_start|>assistant\n']


def llama_quantize(src, dst, ftype):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = os.cpu_count()
    p.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError("llama_model_quantize(%s, %d) returned %d" % (src, ftype, rc))


def tensors(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    ft = int(r.fields["general.file_type"].parts[-1][0])
    return r, ft, {t.name: t for t in r.tensors}


def dequant(t):
    from gguf.quants import dequantize
    return dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(-1)


def compare_files(name, src, ours, theirs):
    """Types, bytes (closed-form types) and K-quant RMS errors of two quantized files."""
    ok = True
    _, _, ref = tensors(src)
    _, ft_a, a = tensors(ours)
    _, ft_b, b = tensors(theirs)
    if ft_a != ft_b or sorted(a) != sorted(b):
        print("  %s: general.file_type %d vs llama.cpp %d, tensors %d vs %d: FAIL"
              % (name, ft_a, ft_b, len(a), len(b)))
        return False
    wrong = [(n, a[n].tensor_type.name, b[n].tensor_type.name) for n in a
             if a[n].tensor_type != b[n].tensor_type]
    counts = {}
    for n in a:
        counts[a[n].tensor_type.name] = counts.get(a[n].tensor_type.name, 0) + 1
    print("  %s: %d tensors, types %s; differing from llama.cpp: %d %s"
          % (name, len(a), counts, len(wrong), wrong[:5]))
    ok &= not wrong
    differ = [n for n in a if a[n].tensor_type == b[n].tensor_type
              and a[n].tensor_type.name not in ("Q4_K", "Q5_K", "Q6_K")
              and bytes(np.asarray(a[n].data).tobytes()) != bytes(np.asarray(b[n].data).tobytes())]
    if name.split()[0] in EXACT or differ:
        print("    closed-form tensors with bytes unlike llama.cpp's: %d %s" % (len(differ), differ[:5]))
        ok &= not differ
    sums = {}
    for n in a:
        ty = a[n].tensor_type.name
        if ty not in ("Q4_K", "Q5_K", "Q6_K"):
            continue
        x = dequant(ref[n])
        ea = float(np.sum((dequant(a[n]) - x) ** 2))
        eb = float(np.sum((dequant(b[n]) - x) ** 2))
        s = sums.setdefault(ty, [0.0, 0.0, 0, 0, 0])
        s[0] += ea
        s[1] += eb
        s[2] += x.size
        s[3] += 1
        s[4] += ea <= eb
    for ty, (ea, eb, n, k, better) in sorted(sums.items()):
        ratio = np.sqrt(ea / eb)
        print("    %s: %d tensors, RMS error finch %.4g, llama.cpp %.4g, ratio %.4f "
              "(finch lower on %d of %d tensors): %s"
              % (ty, k, np.sqrt(ea / n), np.sqrt(eb / n), ratio, better, k,
                 "ok" if ratio <= MAX_RMS_RATIO else "FAIL"))
        ok &= ratio <= MAX_RMS_RATIO
    return ok


def dither(src, dst, seed=1):
    """A copy of the f32 GGUF src at dst, each 2-D weight moved within its 32-block's cell."""
    import shutil
    from gguf import GGUFReader
    shutil.copyfile(src, dst)
    r = GGUFReader(dst, "r+")
    rng = np.random.default_rng(seed)
    for t in r.tensors:
        if len(t.shape) < 2 or t.tensor_type.name != "F32" or t.data.size % 32:
            continue
        x = t.data.reshape(-1, 32)
        d = (x.max(axis=1) - x.min(axis=1)) / 15
        x += (rng.random(x.shape, dtype=np.float32) - 0.5) * d[:, None]
    r.data.flush()
    del r


def run_family(args, label, model, types, generate, dithered=False):
    ok = True
    src = os.path.join(args.work, "%s-f32.gguf" % label)
    common.run([args.finch, "quantize", model, src, "--type", "f32", "--force"])
    if dithered:
        plain = src
        src = os.path.join(args.work, "%s-dithered-f32.gguf" % label)
        dither(plain, src)
        os.remove(plain)
    for t in types:
        ours = os.path.join(args.work, "%s-finch-%s.gguf" % (label, t))
        theirs = os.path.join(args.work, "%s-llama-%s.gguf" % (label, t))
        t0 = time.time()
        common.run([args.finch, "quantize", src, ours, "--type", t, "--force"])
        t1 = time.time()
        llama_quantize(src, theirs, TYPES[t])
        t2 = time.time()
        print("== %s %s: finch quantize %.1f s, llama.cpp %.1f s" % (label, t, t1 - t0, t2 - t1))
        ok &= compare_files("%s (%s)" % (t, label), src, ours, theirs)
        os.remove(theirs)
        if t in generate:
            for p in PROMPTS:
                ok &= cl.same("finch's %s file, prompt %r" % (t, p), ours, cl.llama_text(ours, p),
                              cl.finch_text(args, ours, p, "llamacpp"),
                              cl.finch_text(args, ours, p, "exact"), tie=(args, p, []))
        os.remove(ours)
    os.remove(src)
    return ok


def main():
    def extra(ap):
        ap.add_argument("--gemma3", default=None, help="Gemma 3 270M GGUF (optional)")
        ap.add_argument("--parts", default="smollm2,dithered,gemma3",
                        help="which runs, comma-separated (default all)")
    args = common.parse_args(__doc__.splitlines()[0], extra)
    parts = args.parts.split(",")
    cl.N_PREDICT = N_PREDICT
    cl.N_ASSERT = N_PREDICT
    ok = True
    if "smollm2" in parts:
        ok &= run_family(args, "smollm2", args.model, list(TYPES), GENERATE)
    if "dithered" in parts:
        ok &= run_family(args, "smollm2-dithered", args.model,
                         ["q4_k_m", "q4_k_s", "q5_k_m", "q6_k"], ["q4_k_m"], dithered=True)
    if "gemma3" in parts and args.gemma3 and os.path.exists(args.gemma3):
        ok &= run_family(args, "gemma3", args.gemma3, ["q4_k_m", "q6_k", "q8_0"], [])
    print("quantize vs llama.cpp: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
