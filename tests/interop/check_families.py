"""finch's GGUF outputs for the Qwen2, Mistral and Gemma 3 GGUFs in llama.cpp (llama-cpp-python).

On tests/fixtures/model/tiny_qwen2.gguf (architecture qwen2: q/k/v biases, q/k rows in
Hugging Face order) and tiny_mistral.gguf (architecture llama), made by
tests/reference/make_qwen2_mistral_gguf.py, and tiny_gemma3.gguf (architecture gemma3: q/k
rows in Hugging Face order, q/k norms, post norms, a sliding window of 16 that the 24-token
sequence passes), made by tests/reference/make_tiny_gemma3.py:
  - a LoRA (all seven projections) trained by `finch train` for 12 steps,
  - exported by `finch export --format gguf` and loaded by llama.cpp with lora_path, and
  - merged by `finch merge --type f32` and loaded by llama.cpp as a model
give llama.cpp logits equal to finch's base + adapter within TOL on every position of two
sequences (one 24 tokens long), with the same argmax; llama.cpp without the adapter equals
finch's base. llama.cpp runs with an f32 KV cache, so both sides compute in f32 and differ
by their summation order only (measured up to 3.6e-6; the adapter moves the logits by 3.7
and 5.4); on Gemma 3 llama.cpp's GELU table adds about 1e-3 (TOL_GEMMA3).

  python check_families.py --finch build/finch --logits .../finch_interop_logits \
      --model MODEL.gguf --work DIR
"""
import os
import sys

import numpy as np

import common

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "model")
SEQS = [[5, 17, 33, 42, 8, 90, 61, 3],
        [7, 3, 91, 60, 60, 12, 35, 81, 2, 49, 18, 94, 27, 66, 5, 40, 11, 73, 58, 30, 1, 85,
         22, 47]]
TOL = 1e-4
# Gemma 3's GeGLU: ggml's CPU GELU reads an f16 table, which moves the tiny model's logits by
# about 1e-3 (measured 1.2e-3 without the adapter, 2.1e-3 with it, which moves them by 2.8)
TOL_GEMMA3 = 5e-3


def llama_logits(model, lora=None):
    import llama_cpp
    kw = dict(model_path=model, logits_all=True, n_ctx=128, n_threads=1, n_threads_batch=1,
              seed=0, verbose=False, type_k=llama_cpp.GGML_TYPE_F32,
              type_v=llama_cpp.GGML_TYPE_F32)
    if lora:
        kw["lora_path"] = lora
    llm = llama_cpp.Llama(**kw)
    out = []
    for s in SEQS:
        llm.reset()
        llm.eval(s)
        out.append(np.array(llm.scores[:len(s)], dtype=np.float32))
    return out


def main():
    args = common.parse_args(__doc__.split("\n")[0])
    data = os.path.join(args.work, "train.jsonl")
    with open(data, "w") as f:
        for k in range(8):
            f.write('{"prompt": "the cat %d is", "completion": " singing and %d"}\n' % (k, 7 * k))
    ok = True
    for name in ("tiny_qwen2", "tiny_mistral", "tiny_gemma3"):
        model = os.path.join(FIXTURES, name + ".gguf")
        run = os.path.join(args.work, name)
        lora = os.path.join(args.work, name + "-lora.gguf")
        merged = os.path.join(args.work, name + "-merged.gguf")
        common.run([args.finch, "train", "-m", model, "--data", data, "--out", run,
                    "--max-steps", "12", "--learning-rate", "2e-2", "--batch-size", "4",
                    "--target-modules", "all-linear", "--lora-dropout", "0",
                    "--max-seq-len", "32"])
        common.run([args.finch, "export", "-m", model, "--adapter", run, "--format", "gguf",
                    "-o", lora])
        common.run([args.finch, "merge", "-m", model, "--adapter", run, "--type", "f32",
                    "-o", merged])
        base = common.finch_logits(args.logits, model, SEQS, args.work)
        tuned = common.finch_logits(args.logits, model, SEQS, args.work, adapters=[run])
        moved = max(float(np.abs(a - b).max()) for a, b in zip(tuned, base))
        print("%s: the adapter moves finch's logits by %.3g" % (name, moved))
        ok &= moved > 0.1
        tol = TOL_GEMMA3 if name == "tiny_gemma3" else TOL
        ok &= common.compare(name + " base, llama.cpp vs finch", llama_logits(model), base, tol)
        ok &= common.compare(name + " GGUF LoRA, llama.cpp vs finch", llama_logits(model, lora),
                             tuned, tol)
        ok &= common.compare(name + " merged, llama.cpp vs finch base + adapter",
                             llama_logits(merged), tuned, tol)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
