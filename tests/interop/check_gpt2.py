"""finch's GPT-2 adapters in peft and llama.cpp (the tiny GPT-2 of make_gpt2_fixtures.py).

On tests/fixtures/model/tiny_gpt2/ (a transformers GPT2LMHeadModel folder) and
tiny_gpt2.gguf (its convert_hf_to_gguf.py conversion):
  - LoRA, DoRA (c_attn, c_proj, c_fc), (IA)^3 (c_attn, mlp.c_proj), prompt and prefix
    tuning (4 virtual tokens; their positions come first, so the real tokens' learned
    positions start at 4) trained by `finch train` for 12 steps on the folder load in peft (PeftModel.from_pretrained) over
    transformers' float64 model and give finch's logits within TOL_PEFT; full fine-tuning
    writes a folder transformers loads to finch's logits (TOL_PEFT);
  - a LoRA trained on the GGUF, exported by `finch export --format gguf` (one attn_qkv
    adapter per block) and loaded by llama.cpp with lora_path, and merged by `finch merge`
    and loaded by llama.cpp as a model, give finch's base + adapter logits within TOL_CPP
    (llama.cpp's CPU GELU reads an f16 table: its base is 1.5e-3 from transformers').

  python check_gpt2.py --finch build/finch --logits .../finch_interop_logits \
      --model ANY --work DIR
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
TOL_PEFT = 2e-5
TOL_CPP = 4e-3


def peft_logits(folder, adapter, skip=0):
    """peft's float64 logits; skip: the virtual tokens' rows prompt tuning returns first."""
    import torch
    import transformers
    from peft import PeftModel
    transformers.utils.logging.set_verbosity_error()
    base = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager")
    m = PeftModel.from_pretrained(base.double(), adapter).eval()
    with torch.no_grad():
        return [m(input_ids=torch.tensor([s])).logits[0, skip:].float().numpy() for s in SEQS]


def hf_logits(folder):
    import torch
    import transformers
    m = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager")
    m = m.double().eval()
    with torch.no_grad():
        return [m(torch.tensor([s])).logits[0].float().numpy() for s in SEQS]


def llama_logits(model, lora=None):
    import llama_cpp
    kw = dict(model_path=model, logits_all=True, n_ctx=64, n_threads=1, n_threads_batch=1,
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
    folder = os.path.join(FIXTURES, "tiny_gpt2")
    gguf = os.path.join(FIXTURES, "tiny_gpt2.gguf")
    train = ["--data", data, "--max-steps", "12", "--learning-rate", "2e-2", "--batch-size",
             "4", "--max-seq-len", "32"]
    ok = True
    base = common.finch_logits(args.logits, folder, SEQS, args.work)
    for method, extra in (("lora", ["--target-modules", "c_attn,c_proj,c_fc",
                                    "--lora-dropout", "0"]),
                          ("dora", ["--target-modules", "c_attn,c_proj,c_fc",
                                    "--lora-dropout", "0"]),
                          ("ia3", ["--target-modules", "c_attn,mlp.c_proj",
                                   "--feedforward-modules", "mlp.c_proj"]),
                          ("prompt", ["--num-virtual-tokens", "4"]),
                          ("prefix", ["--num-virtual-tokens", "4"])):
        run = os.path.join(args.work, method)
        common.run([args.finch, "train", "-m", folder, "--method", method, "--out", run]
                   + train + extra)
        tuned = common.finch_logits(args.logits, folder, SEQS, args.work, adapters=[run])
        moved = max(float(np.abs(a - b).max()) for a, b in zip(tuned, base))
        print("%s: the adapter moves finch's logits by %.3g" % (method, moved))
        ok &= moved > 0.1
        skip = 4 if method == "prompt" else 0
        ok &= common.compare(method + ", peft vs finch", peft_logits(folder, run, skip), tuned,
                             TOL_PEFT)
    # full fine-tuning on the folder writes a transformers folder: transformers loads it
    run = os.path.join(args.work, "full")
    common.run([args.finch, "train", "-m", folder, "--method", "full", "--out", run] + train)
    tuned = common.finch_logits(args.logits, run, SEQS, args.work)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(tuned, base))
    print("full: tuning moves finch's logits by %.3g" % moved)
    ok &= moved > 0.1
    ok &= common.compare("full, transformers on finch's folder vs finch", hf_logits(run), tuned,
                         TOL_PEFT)
    run = os.path.join(args.work, "lora-gguf")
    lora = os.path.join(args.work, "lora.gguf")
    merged = os.path.join(args.work, "merged.gguf")
    common.run([args.finch, "train", "-m", gguf, "--out", run, "--target-modules", "all-linear",
                "--lora-dropout", "0"] + train)
    common.run([args.finch, "export", "-m", gguf, "--adapter", run, "--format", "gguf",
                "-o", lora])
    common.run([args.finch, "merge", "-m", gguf, "--adapter", run, "--type", "f32",
                "-o", merged])
    base = common.finch_logits(args.logits, gguf, SEQS, args.work)
    tuned = common.finch_logits(args.logits, gguf, SEQS, args.work, adapters=[run])
    ok &= common.compare("base, llama.cpp vs finch", llama_logits(gguf), base, TOL_CPP)
    ok &= common.compare("GGUF LoRA, llama.cpp vs finch", llama_logits(gguf, lora), tuned,
                         TOL_CPP)
    ok &= common.compare("merged, llama.cpp vs finch base + adapter", llama_logits(merged),
                         tuned, TOL_CPP)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
