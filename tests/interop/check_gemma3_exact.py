"""finch's GGUF LoRA for Gemma 3 270M in llama.cpp over an f32 base: greedy text and logits.

check_gemma3.py runs the LoRA on the Q4_K_M model, where llama.cpp quantizes activations to
8 bits in its quantized matmuls and the two engines' texts part at near ties. Here the
quantization is taken out: `finch merge --all-tensors --type f32` with the adapter at
weight 0 writes the base dequantized whole (every matrix f32, the tied embeddings too), and
both engines run that base with the same adapter: llama.cpp (llama-cpp-python) with
lora_path = finch's GGUF LoRA, an f32 KV cache and no flash attention; finch with
--numerics exact and the PEFT adapter folder. For each of the PROMPTS, the greedy tokens
(N_PREDICT, or to EOS) are compared; a prompt passes when at least MIN_EQUAL tokens are
equal or the split is at a near tie (finch's exact logits within NEAR_TIE). The logits of
both engines are compared along llama.cpp's path (prompt and N_PREDICT tokens), with and
without the adapter: the max |diff| at the first FIRST positions and over all of them.

Measured (10 steps, batch 4, up to 128 tokens, lr 3e-4; llama-cpp-python 0.3.36): all 8
prompts give the same greedy text in both engines; 4 run the whole 40 tokens, the 4 "Define
the word" prompts end at EOS after 3 to 8 equal tokens (the adapter learned short
definitions). Logits: max |finch - llama.cpp| 0.094 with the LoRA (0.0098 to 0.094 by
prompt), 0.045 for the base alone; finch is within 5.3e-5 of a float64 forward of the same
file, and ggml's f16 GELU table explains only part of llama.cpp's difference
(tests/reference/gemma3_f32_llamacpp.py).

The LoRA is trained as check_gemma3.py trains it (all seven projections, r 8) with
--steps steps of --batch-size rows of at most --max-seq-len tokens; --trained DIR reuses a
finished run instead.

  python check_gemma3_exact.py --finch build/finch --logits .../finch_interop_logits \
      --model GEMMA3.gguf --work DIR [--data datasets/wordnet/train.jsonl] [--trained DIR]
"""
import os
import sys

import numpy as np

import common

N_PREDICT = 40
MIN_EQUAL = 32
NEAR_TIE = 0.05
FIRST = 8
PROMPTS = [
    'Define the word "finch" (noun).',
    'Define the word "harbour" (verb).',
    'Define the word "lantern" (noun).',
    'Define the word "wander" (verb).',
    "The capital of France is",
    "Once upon a time",
    "The best way to learn a language is",
    "In the morning, the old fisherman",
]

_LLM = {}


def llama(model, lora, logits_all=False):
    """llama.cpp on model (+ lora) with an f32 KV cache and no flash attention."""
    from llama_cpp import Llama
    key = (model, lora, logits_all)
    if key not in _LLM:
        kw = dict(model_path=model, n_ctx=256, n_threads=os.cpu_count(), verbose=False, seed=0,
                  type_k=0, type_v=0, flash_attn=False, logits_all=logits_all)  # 0: GGML_TYPE_F32
        if lora:
            kw["lora_path"] = lora
        _LLM[key] = Llama(**kw)
    return _LLM[key]


def llama_greedy(model, lora, prompt):
    """The prompt's ids (BOS first, special tokens parsed) and llama.cpp's greedy ids after
    it: N_PREDICT, or up to and with EOS."""
    llm = llama(model, lora)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if tok == llm.token_eos() or len(out) == N_PREDICT:
            break
    return ids, out


def llama_logits(model, lora, seq):
    llm = llama(model, lora, logits_all=True)
    llm.reset()
    llm.eval(seq)
    return np.array(llm.scores[:len(seq)], dtype=np.float64)


def finch_greedy(args, model, adapter, prompt):
    """`finch generate --numerics exact` greedy text, as ids (llama.cpp's tokenizer of the
    same vocabulary); EOS appended when it stopped early."""
    text = common.run([args.finch, "generate", "-m", model, "-p", prompt, "-n", str(N_PREDICT),
                       "--numerics", "exact", "--temp", "0", "--adapter", adapter])
    llm = llama(model, None)
    got = llm.tokenize(text.rstrip("\n").encode(), add_bos=False, special=True)
    return got + [llm.token_eos()] if len(got) < N_PREDICT else got


def main():
    def extra(ap):
        ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__),
                                                       "../../datasets/wordnet/train.jsonl"))
        ap.add_argument("--lr", default="3e-4")
        ap.add_argument("--steps", default="10")
        ap.add_argument("--batch-size", default="4")
        ap.add_argument("--max-seq-len", default="128")
        ap.add_argument("--trained", help="a finished finch LoRA run to reuse")
    args = common.parse_args(__doc__.splitlines()[0], extra)
    trained = args.trained or os.path.join(args.work, "gemma3_lora")
    if not args.trained:
        common.run([args.finch, "train", "-m", args.model, "--data", args.data,
                    "--target-modules", "all-linear", "--lora-r", "8", "--lora-alpha", "16",
                    "--lora-dropout", "0", "--learning-rate", args.lr, "--max-steps", args.steps,
                    "--batch-size", args.batch_size, "--max-seq-len", args.max_seq_len,
                    "--seed", "7", "--out", trained])
    lora = os.path.join(args.work, "gemma3_lora.gguf")
    common.run([args.finch, "export", "-m", args.model, "--adapter", trained, "--format", "gguf",
                "-o", lora])
    base = os.path.join(args.work, "gemma3_f32.gguf")
    common.run([args.finch, "merge", "-m", args.model, "--adapter", trained + ":0", "--type",
                "f32", "--all-tensors", "-o", base])
    ok, n_long, worst_first, worst_all, worst_base = True, 0, 0.0, 0.0, 0.0
    for p in PROMPTS:
        ids, want = llama_greedy(base, lora, p)
        got = finch_greedy(args, base, trained, p)
        n = min(len(got), len(want))
        k = next((i for i in range(n) if got[i] != want[i]), n)
        seq = ids + want
        fl = common.finch_logits(args.logits, base, [seq], args.work, [trained])[0]
        ll = llama_logits(base, lora, seq)
        f0 = common.finch_logits(args.logits, base, [seq], args.work, [])[0]
        l0 = llama_logits(base, None, seq)
        n0 = len(ids) - 1  # the row that predicts the first generated token
        d_first = float(np.abs(fl[:n0 + FIRST] - ll[:n0 + FIRST]).max())
        d_all = float(np.abs(fl - ll).max())
        d_base = float(np.abs(f0 - l0).max())
        worst_first, worst_all = max(worst_first, d_first), max(worst_all, d_all)
        worst_base = max(worst_base, d_base)
        good = k >= MIN_EQUAL or (got == want)
        verdict = "%d of %d tokens equal" % (k, len(want))
        if k < n:
            row = fl[n0 + k]
            gap = abs(float(row[want[k]]) - float(row[got[k]]))
            verdict += ", then a split where finch's exact logits are %.3g apart" % gap
            good |= gap < NEAR_TIE
        n_long += k >= MIN_EQUAL
        llm = llama(base, None)
        print("  prompt %r:\n    llama.cpp + LoRA  %r\n    finch + LoRA      %r\n"
              "    %s: %s\n    logits |finch - llama.cpp| with the LoRA: %.3g over the prompt "
              "and first %d tokens, %.3g over all %d positions; without it %.3g" % (
                  p, llm.detokenize(want).decode("utf-8", "replace"),
                  llm.detokenize(got).decode("utf-8", "replace"), verdict,
                  "ok" if good else "FAIL", d_first, FIRST, d_all, len(seq), d_base))
        ok &= good
    print("  %d of %d prompts give >= %d equal greedy tokens; logits max |diff| %.3g (prompt + "
          "first %d), %.3g (all), %.3g (base alone)" % (
              n_long, len(PROMPTS), MIN_EQUAL, worst_first, FIRST, worst_all, worst_base))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
