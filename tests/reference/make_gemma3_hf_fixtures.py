#!/usr/bin/env python3
"""Tiny Gemma 3 text folders (model_type gemma3_text) made by transformers, with its
float64 logits.

What it does, into tests/fixtures/hf_gemma3/:

  tiny_gemma3_f32/   a random Gemma3ForCausalLM (vocab 96, hidden 32, 3 layers, 2 query
                     heads and 1 key/value head of dim 16, ffn 32, sliding window 4,
                     layer_types [sliding, full, sliding], RoPE bases 1e6 global and 1e4
                     local, tied head), float32, one model.safetensors.
  tiny_gemma3_bf16/  another draw of the same shape with an untied head, bfloat16, saved in
                     shards (max_shard_size "20KB") with model.safetensors.index.json; its
                     config.json then says sliding_window_pattern 2 instead of layer_types
                     (the older form: block l slides unless (l + 1) % 2 == 0, the same
                     three kinds).
  <name>_sN.f64      transformers' logits [N][96] for sequence N, little-endian float64
  manifest.json      the folders, sequences, logits files and versions

The logits are transformers' own forward (eager attention) in float64 on the weights as
saved: each folder is reloaded from disk by transformers (so the edited config.json is what
it reads) and cast to float64. Sequences of 1, 7 and 12 tokens: the 12-token one runs past
the window of 4 in the sliding blocks. Norm weights are drawn around 0 (Gemma3RMSNorm
multiplies by 1 + w), every other weight at 0.1 N(0, 1) so that every term shows.

Needs transformers >= 4.50 (Gemma 3) with torch and safetensors, e.g. a venv made with
--system-site-packages over Debian's python3-torch and `pip install transformers==4.53.3`:
    /tmp/tfvenv/bin/python tests/reference/make_gemma3_hf_fixtures.py
"""
import json
import os
import shutil

import torch
import transformers
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "hf_gemma3"))

SEQUENCES = [
    dict(tag="s1", ids=[42]),
    dict(tag="s7", ids=[1, 17, 95, 0, 53, 53, 8]),
    dict(tag="s12", ids=[5, 88, 23, 61, 2, 40, 77, 13, 90, 31, 9, 70]),
]


def config(tied, pattern):
    return Gemma3TextConfig(vocab_size=96, hidden_size=32, intermediate_size=32,
                            num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=64,
                            sliding_window=4, rope_theta=1e6, rope_local_base_freq=1e4,
                            rms_norm_eps=1e-6, tie_word_embeddings=tied,
                            layer_types=None if pattern else
                            ["sliding_attention", "full_attention", "sliding_attention"],
                            sliding_window_pattern=pattern or 6,
                            bos_token_id=2, eos_token_id=1, pad_token_id=0)


def build(name, seed, tied, dtype, shard, pattern):
    torch.manual_seed(seed)
    m = Gemma3ForCausalLM(config(tied, None))
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_((0.3 if "norm" in n else 0.1) * torch.randn_like(p))
    m = m.to(dtype)
    path = os.path.join(OUT, name)
    m.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    for f in os.listdir(path):  # config.json and the weights only
        if not (f == "config.json" or f.endswith(".safetensors") or f.endswith(".index.json")):
            os.remove(os.path.join(path, f))
    if pattern:
        with open(os.path.join(path, "config.json")) as f:
            c = json.load(f)
        del c["layer_types"]
        c["sliding_window_pattern"] = pattern
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
    return dict(name=name, dtype=str(dtype).replace("torch.", ""), tied=tied,
                n_files=len([f for f in os.listdir(path) if f.endswith(".safetensors")]),
                sliding_window_pattern=pattern)


def logits_of(entry):
    m = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, entry["name"]),
                                             torch_dtype=torch.float64,
                                             attn_implementation="eager")
    m.eval()
    entry["layer_types"] = list(m.config.layer_types)
    entry["sequences"] = []
    for s in SEQUENCES:
        with torch.no_grad():
            out = m(torch.tensor([s["ids"]])).logits[0].numpy()
        fname = f"{entry['name']}_{s['tag']}.f64"
        out.astype("<f8").tofile(os.path.join(OUT, fname))
        entry["sequences"].append(dict(tag=s["tag"], ids=s["ids"], logits=fname,
                                       max_abs=float(abs(out).max())))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    models = [build("tiny_gemma3_f32", 20250312, True, torch.float32, "10MB", None),
              build("tiny_gemma3_bf16", 20250313, False, torch.bfloat16, "20KB", 2)]
    for e in models:
        logits_of(e)
    manifest = dict(
        description="tiny Gemma 3 text folders saved by transformers and its logits; made by "
                    "tests/reference/make_gemma3_hf_fixtures.py",
        logits_format="little-endian float64, row-major [n_tokens][vocab]; positions from 0",
        reference="transformers Gemma3ForCausalLM forward, eager attention, float64 on the "
                  "saved (rounded) weights",
        transformers_version=transformers.__version__, torch_version=torch.__version__,
        models=models)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
