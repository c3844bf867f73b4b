#!/usr/bin/env python3
"""Reference logits and greedy continuations of the real SmolLM2 model: llama.cpp and exact.

What it does: loads SmolLM2-135M-Instruct (Q4_1 GGUF) with llama-cpp-python (the real
llama.cpp), tokenizes a handful of fixed prompts, evaluates them with logits for every
position, and writes what finch's integration tests compare against. It also runs the
same token ids through an exact float64 forward pass of the same file with its weights
dequantized (gguf_llama_exact.py), because llama.cpp's quantized matmuls also quantize
the activations to 8 bits and so differ from exact math by ~0.2 logits on average: an
engine that dequantizes weights and computes in f32 should match the exact reference
tightly and llama.cpp only loosely (argmax on most positions, top-k overlap).

  smollm2_llamacpp.json   token ids (from llama.cpp's tokenizer), and for both references
                          (llama.cpp and exact) per-position argmax, top-20 ids and logits,
                          log-sum-exp over the whole vocabulary; how far the two references
                          are apart; greedy generations of both; versions and settings
  smollm2_llamacpp.bin    little-endian float32 [total_positions][n_subset]: llama.cpp's
                          logits of a fixed subset of vocabulary ids at every position of
                          every prompt, prompts concatenated in the order of the JSON
  smollm2_exact.bin       the same layout, from the exact float64 reference (stored as f32)

What it does not do: it does not sample (greedy only) and it does not use llama.cpp's
chat-template engine; the ChatML prompts are written out by hand exactly as SmolLM2's
template renders them (the default system message is added when the conversation has
none).

Conventions: tokenization asks llama.cpp to add special tokens "as the model says"
(add_bos=True here means llama_tokenize(add_special=true); SmolLM2's metadata has
add_bos_token = false, so no BOS is prepended - the JSON records this). Special tokens
written in the text are parsed only for the ChatML prompts. Generation is greedy: the
argmax of the last position's logits (first index on ties), stopping only at eos id 2
(<|im_end|>) or after max_new tokens.

Regenerate (from the repository root):
    python3 tests/reference/make_llamacpp_fixtures.py
"""
import argparse
import ctypes
import json
import os
import sys
import tempfile

import numpy as np

import gguf
import llama_cpp
from llama_cpp import Llama
from llama_cpp._utils import suppress_stdout_stderr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_llama_exact import ExactLlama  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "model"))
DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")

# The system message SmolLM2-Instruct's chat template inserts when none is given.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages, add_generation_prompt=True):
    """Renders messages the way SmolLM2's template does (ChatML, default system first)."""
    out = []
    if not messages or messages[0][0] != "system":
        out.append("<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n")
    for role, content in messages:
        out.append("<|im_start|>" + role + "\n" + content + "<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


# name, text, parse special tokens
PROMPTS = [
    ("english",
     "The quick brown fox jumps over the lazy dog. Meanwhile, the old lighthouse keeper "
     "wrote in his journal that the storm had finally passed.",
     False),
    ("code",
     "def fibonacci(n):\n    if n < 2:\n        return n\n"
     "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
     "print([fibonacci(i) for i in range(10)])\n",
     False),
    ("chat",
     chatml([("user", "Give me three tips for staying focused while studying.")]),
     True),
    ("numbers",
     "Invoice 2024-0317: 12 items at $3.75 each, subtotal 45.00, tax 8.25%, total 48.71; "
     "pi = 3.14159, 2^16 = 65536.",
     False),
    ("non_ascii",
     "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve r\u00e9sum\u00e9 \u2014 "
     "\u6771\u4eac\u306f\u5927\u304d\u3044 \u041f\u0440\u0438\u0432\u0435\u0442, "
     "\u043c\u0438\u0440! \U0001F642 \u00bfQu\u00e9 tal?",
     False),
]

GENERATIONS = [
    ("plain", "The capital of France is", False),
    ("chat", chatml([("user", "What is the capital of France?")]), True),
]

TOP_K = 20
N_SUBSET_RANDOM = 256
SUBSET_SEED = 1234
MAX_NEW = 64
EOS_ID = 2


def subset_ids(n_vocab):
    """Ids 0..255 followed by 256 distinct random ids from 256..n_vocab-1 (sorted)."""
    rng = np.random.default_rng(SUBSET_SEED)
    extra = np.sort(rng.choice(np.arange(256, n_vocab), size=N_SUBSET_RANDOM, replace=False))
    return np.concatenate([np.arange(256), extra]).astype(np.int64)


def f32(x):
    """A float32 value as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def logsumexp(row):
    row = row.astype(np.float64)
    m = row.max()
    return float(m + np.log(np.exp(row - m).sum()))


def summarize(logits):
    """Per-position argmax, top-k ids and logits, log-sum-exp of float logits [T][V]."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
    return {
        "argmax": [int(np.argmax(r)) for r in logits],
        "top_ids": [[int(i) for i in o] for o in order],
        "top_logits": [[f32(logits[p, i]) for i in o] for p, o in enumerate(order)],
        "logsumexp": [f32(logsumexp(r)) for r in logits],
    }


def llamacpp_logits(llm, ids):
    """Evaluates ids from position 0; float32 logits [len(ids)][n_vocab]."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids), :], dtype=np.float32, copy=True)


def top1_top2_gap(row):
    top2 = np.partition(np.asarray(row, dtype=np.float64), -2)[-2:]
    return f32(top2.max() - top2.min())


def greedy(first_logits, step, max_new):
    """Greedy continuation from the prompt's last logits; step(tok) returns the next ones.

    Returns (new ids including a final eos, stop reason, top1-top2 gap at each step)."""
    row, out, gaps = first_logits, [], []
    for _ in range(max_new):
        tok = int(np.argmax(row))
        gaps.append(top1_top2_gap(row))
        out.append(tok)
        if tok == EOS_ID:
            return out, "eos", gaps
        row = step(tok)
    return out, "max_tokens", gaps


def llamacpp_greedy(llm, ids):
    llm.reset()
    llm.eval(ids)

    def step(tok):
        llm.eval([tok])
        return np.asarray(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)

    return greedy(np.asarray(llm.scores[len(ids) - 1, :], dtype=np.float32), step, MAX_NEW)


def exact_greedy(ref, ids):
    ref.reset()
    first = ref.decode(ids)[-1]
    return greedy(first, lambda tok: ref.decode([tok])[-1], MAX_NEW)


def check_exact_against_llamacpp_f32(model, prompts):
    """Validates the exact reference: llama.cpp itself, run on a copy of the model with
    every tensor converted to f32 (llama_model_quantize, ftype ALL_F32) and an f32 KV
    cache, computes plain float math, so it must agree with the exact reference to
    float32 rounding. Returns the largest |difference| over all prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f32.gguf")
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = 0  # LLAMA_FTYPE_ALL_F32
        qp.allow_requantize = True
        qp.nthread = 2
        with suppress_stdout_stderr(disable=False):  # the converter logs every tensor
            rc = llama_cpp.llama_model_quantize(model.encode(), path.encode(),
                                                ctypes.byref(qp))
        assert rc == 0, rc
        llm = Llama(model_path=path, logits_all=True, n_ctx=512, n_threads=2,
                    n_threads_batch=2, seed=0, verbose=False,
                    type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        worst = 0.0
        for ids, ex in prompts:
            worst = max(worst, float(np.abs(llamacpp_logits(llm, ids) - ex).max()))
        del llm
    return worst


def dump(obj, f, indent=0):
    """JSON with dicts one key a line and numeric lists kept on one line each."""
    pad = " " * indent
    if isinstance(obj, dict):
        f.write("{\n")
        for n, (k, v) in enumerate(obj.items()):
            f.write(pad + " " + json.dumps(k) + ": ")
            dump(v, f, indent + 1)
            f.write(",\n" if n + 1 < len(obj) else "\n")
        f.write(pad + "}")
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        f.write("[\n")
        for n, v in enumerate(obj):
            f.write(pad + " ")
            dump(v, f, indent + 1)
            f.write(",\n" if n + 1 < len(obj) else "\n")
        f.write(pad + "]")
    else:
        f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    settings = dict(logits_all=True, n_ctx=512, n_threads=2, n_threads_batch=2, seed=0)
    llm = Llama(model_path=args.model, verbose=False, **settings)
    ref = ExactLlama(args.model)
    n_vocab = llm.n_vocab()
    subset = subset_ids(n_vocab)

    prompts, blobs_lc, blobs_ex, offset = [], [], [], 0
    all_diff, agree, n_pos, exact_runs = [], 0, 0, []
    for name, text, special in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        lc = llamacpp_logits(llm, ids)
        ref.reset()
        ex = ref.decode(ids)
        # the reference's own KV cache path must agree with its one-shot path
        ref.reset()
        half = len(ids) // 2
        ex2 = np.concatenate([ref.decode(ids[:half]), ref.decode(ids[half:])])
        assert np.abs(ex2 - ex).max() < 1e-9, name
        exact_runs.append((ids, ex))
        diff = np.abs(lc.astype(np.float64) - ex)
        all_diff.append(diff)
        agree += int((lc.argmax(axis=1) == ex.argmax(axis=1)).sum())
        n_pos += len(ids)
        prompts.append({
            "name": name,
            "text": text,
            "parse_special": special,
            "ids": [int(i) for i in ids],
            "pieces": [llm.detokenize([i], special=True).decode("utf-8", "backslashreplace")
                       for i in ids],
            "n_tokens": len(ids),
            "bin_row_offset": offset,
            "llamacpp": summarize(lc),
            "exact": summarize(ex),
            "llamacpp_vs_exact": {"max_abs": f32(diff.max()), "mean_abs": f32(diff.mean())},
        })
        blobs_lc.append(lc[:, subset])
        blobs_ex.append(ex[:, subset])
        offset += len(ids)

    gens = []
    for name, text, special in GENERATIONS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        run = {"name": name, "prompt": text, "parse_special": special,
               "prompt_ids": [int(i) for i in ids]}
        for who, fn in (("llamacpp", lambda: llamacpp_greedy(llm, ids)),
                        ("exact", lambda: exact_greedy(ref, ids))):
            new, stop, gaps = fn()
            run[who] = {
                "generated_ids": new,
                "generated_text": llm.detokenize(new, special=True).decode("utf-8", "replace"),
                "stop": stop,
                "top1_top2_gap": gaps,
            }
        a, b = run["llamacpp"]["generated_ids"], run["exact"]["generated_ids"]
        run["first_divergence"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                                       None if len(a) == len(b) else min(len(a), len(b)))
        gens.append(run)

    exact_check = check_exact_against_llamacpp_f32(args.model, exact_runs)
    assert exact_check < 1e-3, exact_check

    bos_added = any(p["ids"][:1] == [llm.token_bos()] for p in prompts if not p["parse_special"])
    os.makedirs(args.out, exist_ok=True)
    shape = [offset, int(len(subset))]
    np.concatenate(blobs_lc).astype("<f4").tofile(os.path.join(args.out, "smollm2_llamacpp.bin"))
    np.concatenate(blobs_ex).astype("<f4").tofile(os.path.join(args.out, "smollm2_exact.bin"))
    diff = np.concatenate([d.ravel() for d in all_diff])
    manifest = {
        "description": "reference logits and greedy generations for SmolLM2-135M-Instruct "
                       "Q4_1 from llama.cpp and from an exact float64 forward of the "
                       "dequantized weights; made by tests/reference/make_llamacpp_fixtures.py",
        "model_file": os.path.basename(args.model),
        "model_bytes": os.path.getsize(args.model),
        "llama_cpp_python_version": llama_cpp.__version__,
        "gguf_python_version": getattr(gguf, "__version__", None),
        "numpy_version": np.__version__,
        "llamacpp_settings": dict(settings, kv_cache="f16 (default)", flash_attn=False),
        "exact_reference": "tests/reference/gguf_llama_exact.py: weights dequantized by "
                           "gguf.quants.dequantize, float64 numpy, interleaved RoPE on GGUF "
                           "Q/K order, theta and eps from the file",
        "exact_vs_llamacpp_on_f32_copy_max_abs": f32(exact_check),
        "n_vocab": n_vocab,
        "bos_id": llm.token_bos(),
        "eos_id": llm.token_eos(),
        "add_bos_token": llm.metadata.get("tokenizer.ggml.add_bos_token"),
        "bos_added_by_tokenizer": bos_added,
        "tokenize_call": "Llama.tokenize(text, add_bos=True, special=parse_special); "
                         "add_bos=True means add_special, which honours add_bos_token=false",
        "llamacpp_vs_exact": {
            "max_abs": f32(diff.max()),
            "mean_abs": f32(diff.mean()),
            "p99_abs": f32(np.quantile(diff, 0.99)),
            "argmax_agreement": f32(agree / n_pos),
            "note": "llama.cpp quantizes activations to q8_1/q8_0 inside Q4_1/Q8_0 matmuls "
                    "and keeps an f16 KV cache; an engine that dequantizes and computes in "
                    "f32 matches 'exact' to ~1e-4 (llama.cpp on an f32 copy of the file: "
                    "exact_vs_llamacpp_on_f32_copy_max_abs) and llama.cpp only to these "
                    "levels",
        },
        "top_k": TOP_K,
        "subset": {
            "files": {"llamacpp": "smollm2_llamacpp.bin", "exact": "smollm2_exact.bin"},
            "dtype": "float32 little-endian",
            "shape": shape,
            "layout": "row r = prompts[i].bin_row_offset + position; column j = logit of "
                      "subset_ids[j]",
            "seed": SUBSET_SEED,
            "rule": "ids 0..255, then 256 distinct ids drawn from 256..n_vocab-1 with "
                    "numpy default_rng(seed).choice(replace=False), sorted",
        },
        "subset_ids": [int(i) for i in subset],
        "prompts": prompts,
        "generation": {
            "rule": "greedy argmax of the last position's logits (first index on ties); stop "
                    "only at eos id 2 or after max_new tokens; generated_ids include the eos. "
                    "A step whose top1_top2_gap is below the engines' error can legitimately "
                    "go either way; first_divergence is where llama.cpp and exact part",
            "max_new": MAX_NEW,
            "runs": gens,
        },
    }
    with open(os.path.join(args.out, "smollm2_llamacpp.json"), "w", encoding="utf-8") as f:
        dump(manifest, f)
        f.write("\n")
    for p in prompts:
        print(f"{p['name']:10s} {p['n_tokens']:3d} tokens  llama.cpp vs exact "
              f"{p['llamacpp_vs_exact']}", file=sys.stderr)
    print("overall", manifest["llamacpp_vs_exact"], file=sys.stderr)
    print(f"exact vs llama.cpp on an f32 copy: max abs {exact_check:.3g}", file=sys.stderr)
    for g in gens:
        for who in ("llamacpp", "exact"):
            r = g[who]
            print(f"gen {g['name']:6s} {who:8s} {len(r['generated_ids'])} tokens, "
                  f"stop={r['stop']}: {r['generated_text']!r}", file=sys.stderr)
        print(f"   first divergence: {g['first_divergence']}", file=sys.stderr)


if __name__ == "__main__":
    main()
