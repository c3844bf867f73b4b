"""Shared pieces of the live interoperability checks (tests/interop/run.sh).

Every check gets the finch binary, the logits helper (finch_interop_logits), the default
model and a scratch directory on the command line, runs, prints what it measured, and exits
0 when every comparison is within its stated tolerance, 1 otherwise.
"""
import argparse
import os
import subprocess
import sys

import numpy as np

# Prompts compared in every logits check (one line each: `finch tokenize` reads lines).
PROMPTS = [
    "The capital of France is",
    'Define the word "finch" (noun).',
    "<|im_start|>user What is the capital of France?<|im_end|><|im_start|>assistant",
]


def parse_args(description, extra=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--finch", required=True, help="the finch binary")
    ap.add_argument("--logits", required=True, help="the finch_interop_logits helper")
    ap.add_argument("--model", required=True, help="the default GGUF model")
    ap.add_argument("--work", required=True, help="scratch directory (outside the repo)")
    if extra:
        extra(ap)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    return args


def run(cmd, **kw):
    """Runs a command, returning its stdout; a failure prints its stderr and raises."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise RuntimeError("%s exited %d" % (" ".join(cmd), p.returncode))
    return p.stdout


def tokenize(finch, model, text):
    """finch's token ids for one line of text (special tokens parsed, as generate does)."""
    return [int(t) for t in
            run([finch, "tokenize", "-m", model, "--parse-special"], input=text + "\n").split()]


def finch_logits(helper, model, seqs, work, adapters=()):
    """finch's logits for each id sequence: a list of [n_tokens, n_vocab] float32 arrays."""
    out = os.path.join(work, "finch_logits.f32")
    cmd = [helper, model, out]
    for a in adapters:
        cmd += ["--adapter", a]
    stdout = run(cmd, input="".join(" ".join(map(str, s)) + "\n" for s in seqs))
    n_vocab = int(stdout.split()[1])
    flat = np.fromfile(out, dtype="<f4").reshape(-1, n_vocab)
    res, at = [], 0
    for s in seqs:
        res.append(flat[at:at + len(s)])
        at += len(s)
    return res


def load_hf_gguf(model):
    """transformers' LlamaForCausalLM from a GGUF file, dequantized to float32.

    transformers 4.46 does not tie lm_head to the embeddings when the GGUF has no
    output.weight (SmolLM2 ties them): it leaves lm_head randomly initialised. Tie it here,
    as the model's own config (tie_word_embeddings) intends."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                             gguf_file=os.path.basename(model),
                                             torch_dtype=torch.float32)
    m.lm_head.weight = m.model.embed_tokens.weight
    m.config.tie_word_embeddings = True
    m.eval()
    return m


def torch_logits(m, seqs):
    """Logits of every token of each sequence (a prompt-tuned model's virtual rows dropped)."""
    import torch
    with torch.no_grad():
        return [m(torch.tensor([s])).logits[0, -len(s):].float().numpy() for s in seqs]


def compare(name, got, want, tol):
    """Prints the max abs difference over every position and the argmax agreement;
    returns whether the difference is within tol."""
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    n = sum(len(g) for g in got)
    same = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, want))
    ok = diff <= tol
    print("  %s: max |diff| %.3g over %d positions (tolerance %.0e), argmax equal %d/%d: %s"
          % (name, diff, n, tol, same, n, "ok" if ok else "FAIL"))
    return ok
