#!/usr/bin/env python3
"""Label log-likelihoods on the tiny test model, for finch's classification by likelihood.

What it does: for a few prompts, each with a few candidate labels, computes
log p(label tokens | prompt) = sum over the label's tokens of log softmax(logits)[token]
with the float64 PyTorch forward of tests/reference/tiny_llama_torch.py (one full forward
of prompt + label per pair, no KV cache), and writes tests/fixtures/labels/tiny_labels.json:
the prompts and labels as text, their token ids as llama.cpp tokenizes them (prompt: BOS as
the model asks and special tokens parsed; label: plain text), and the log-likelihoods.

The weights are the tiny model's (make_tiny_model.make_weights with its seed: the same
arrays tests/fixtures/model/tiny_llama.gguf was written from). Tokenization is
llama-cpp-python's, so token ids, like the log-likelihoods, come from outside finch.

Regenerate (from the repository root; needs python3 with gguf, numpy and
llama-cpp-python, and /usr/bin/python3 with python3-torch):
    python3 tests/reference/make_label_fixtures.py
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "labels", "tiny_labels.json"))
MODEL = os.path.normpath(os.path.join(HERE, "..", "fixtures", "model", "tiny_llama.gguf"))
TORCH_PYTHON = os.environ.get("FINCH_TORCH_PYTHON", "/usr/bin/python3")

# Texts use only characters the tiny vocabulary has (letters, digits, .,!?'-:;() space, \n).
CASES = [
    ("the cat is", [" singing", " on", " a dog and the cat"]),
    ("Q: is it on?\nA:", [" yes", " no", " maybe so", "yes"]),
    ("<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
     ["hello", "no", "the end."]),
    ("Review: what a wonderful film!\nSentiment:", [" positive", " negative", " neutral"]),
]


def torch_logprobs(npz, cfg_path, pairs_path, out_path):
    """Runs under /usr/bin/python3 (torch): sums of label-token log-probs, float64."""
    import numpy as np
    import torch
    sys.path.insert(0, HERE)
    from tiny_llama_torch import forward
    torch.set_num_threads(1)
    with open(cfg_path) as f:
        cfg = json.load(f)
    with open(pairs_path) as f:
        pairs = json.load(f)
    z = np.load(npz)
    w = {k: torch.from_numpy(z[k].astype(np.float64)) for k in z.files}
    res = []
    for p, l in pairs:
        logits = forward(w, cfg, p + l)
        lp = torch.log_softmax(logits, dim=-1)
        res.append(float(sum(lp[len(p) - 1 + k, t] for k, t in enumerate(l))))
    with open(out_path, "w") as f:
        json.dump({"logprobs": res, "torch_version": torch.__version__}, f)


def main():
    import numpy as np
    import llama_cpp
    sys.path.insert(0, HERE)
    from make_tiny_model import MODELS, make_weights

    cfg = dict(MODELS[0])  # tiny_llama: 2 layers, untied head
    llm = llama_cpp.Llama(model_path=MODEL, n_ctx=128, vocab_only=True, verbose=False)
    cases, pairs = [], []
    for prompt, labels in CASES:
        p = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        c = {"prompt": prompt, "prompt_ids": p, "labels": []}
        for label in labels:
            ids = llm.tokenize(label.encode(), add_bos=False, special=False)
            assert ids, label
            c["labels"].append({"label": label, "ids": ids})
            pairs.append((p, ids))
        cases.append(c)
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "w.npz")
        np.savez(npz, **make_weights(cfg))
        paths = [os.path.join(tmp, n) for n in ("cfg.json", "pairs.json", "out.json")]
        with open(paths[0], "w") as f:
            json.dump(cfg, f)
        with open(paths[1], "w") as f:
            json.dump(pairs, f)
        subprocess.run([TORCH_PYTHON, os.path.abspath(__file__), "--torch", npz] + paths,
                       check=True)
        with open(paths[2]) as f:
            got = json.load(f)
    k = 0
    for c in cases:
        for l in c["labels"]:
            l["logprob"] = got["logprobs"][k]
            k += 1
    doc = {"description": "log p(label | prompt) summed over the label's tokens on "
                          "tests/fixtures/model/tiny_llama.gguf; made by "
                          "tests/reference/make_label_fixtures.py",
           "reference": "float64 PyTorch forward (tiny_llama_torch.py) of prompt + label, "
                        "log_softmax in float64",
           "tokenizer": "llama-cpp-python " + llama_cpp.__version__ +
                        " (prompt: add_bos, special; label: plain)",
           "torch_version": got["torch_version"], "numpy_version": np.__version__,
           "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {k} label log-likelihoods", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--torch":
        torch_logprobs(*sys.argv[2:6])
    else:
        main()
