#!/usr/bin/env python3
"""Tiny Hugging Face model folders made by transformers, with transformers' logits.

What it does, into tests/fixtures/hf/:

  tiny_llama/        tests/fixtures/model/tiny_llama.gguf (2 layers, GQA, untied head, f32)
                     loaded by transformers (AutoModelForCausalLM.from_pretrained(...,
                     gguf_file=...), which un-permutes the Q/K rows itself) and saved with
                     save_pretrained(safe_serialization=True, max_shard_size="100KB"): three
                     shards and model.safetensors.index.json.
  tiny_llama_tied/   tests/fixtures/model/tiny_llama_tied.gguf (1 layer, tied) the same
                     way, saved in bfloat16 as one model.safetensors.
  tiny_qwen2/        a random Qwen2ForCausalLM (2 layers, GQA, q/k/v biases, tied), saved
                     in float16 as one model.safetensors.
  <name>_sN.f32      transformers' logits [N][vocab] for sequence N, little-endian f32
  manifest.json      the folders, sequences, logits files and versions

Logits are computed by transformers' own forward (eager attention) in float32 on the
weights as saved: a bf16/f16 folder is reloaded and cast to float32, so the reference
sees exactly the rounded weights finch reads. Tokenizer files are removed: the logits do
not depend on them.

Needs the interop venv (transformers, torch, safetensors), made by scripts/interop-env.sh:
    ~/.cache/finch/venv/bin/python tests/reference/make_hf_fixtures.py
"""
import json
import os
import shutil
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
OUT = os.path.join(FIX, "hf")

# the same sequences as tests/fixtures/model/tiny_llama.json, so the GGUF logits compare
SEQUENCES = [
    dict(tag="s1", ids=[42]),
    dict(tag="s7", ids=[1, 17, 96, 0, 53, 53, 8]),
    dict(tag="s16", ids=[5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64]),
]


def strip_folder(path):
    """Keeps config.json and the weights; drops tokenizer and generation files."""
    for f in os.listdir(path):
        if not (f == "config.json" or f.endswith(".safetensors") or f == "model.safetensors.index.json"):
            os.remove(os.path.join(path, f))


def logits_of(folder, name, entry):
    m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    m.eval()
    entry["sequences"] = []
    for s in SEQUENCES:
        with torch.no_grad():
            out = m(torch.tensor([s["ids"]])).logits[0].float().numpy()
        fname = f"{name}_{s['tag']}.f32"
        out.astype("<f4").tofile(os.path.join(OUT, fname))
        entry["sequences"].append(dict(tag=s["tag"], ids=s["ids"], logits=fname,
                                       max_abs=float(abs(out).max())))


def from_gguf(name, dtype, shard, tied):
    # transformers 4.46 does not infer tie_word_embeddings from a GGUF without
    # output.weight (it would draw a random lm_head): say it
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(FIX, "model", name + ".gguf"), tmp)
        m = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name + ".gguf",
                                                 torch_dtype=torch.float32,
                                                 tie_word_embeddings=tied)
    m = m.to(dtype)
    path = os.path.join(OUT, name)
    m.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    strip_folder(path)
    return dict(name=name, gguf="model/" + name + ".gguf", dtype=str(dtype).replace("torch.", ""),
                n_files=len([f for f in os.listdir(path) if f.endswith(".safetensors")]))


def qwen2():
    torch.manual_seed(20240603)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                      use_sliding_window=False, bos_token_id=1, eos_token_id=2)
    m = Qwen2ForCausalLM(cfg)
    # transformers initialises biases to zero and weights at std 0.02; draw larger values
    # (and non-zero biases) so that every term shows in the logits
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p) if "bias" not in n else 0.5 * torch.randn_like(p))
    m = m.to(torch.float16)
    path = os.path.join(OUT, "tiny_qwen2")
    m.save_pretrained(path, safe_serialization=True)
    strip_folder(path)
    return dict(name="tiny_qwen2", gguf=None, dtype="float16", n_files=1)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    models = [from_gguf("tiny_llama", torch.float32, "100KB", False),
              from_gguf("tiny_llama_tied", torch.bfloat16, "10MB", True),
              qwen2()]
    for e in models:
        logits_of(os.path.join(OUT, e["name"]), e["name"], e)
    manifest = dict(
        description="tiny Hugging Face folders saved by transformers and its logits; made by "
                    "tests/reference/make_hf_fixtures.py",
        logits_format="little-endian float32, row-major [n_tokens][vocab]; positions from 0",
        reference="transformers forward, eager attention, float32 on the saved (rounded) weights",
        transformers_version=transformers.__version__, torch_version=torch.__version__,
        models=models)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
