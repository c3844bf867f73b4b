#!/usr/bin/env python3
"""A LoRA adapter made by Hugging Face peft for the tiny test model, and peft's logits.

What it does: loads tests/fixtures/model/tiny_llama.gguf with transformers
(from_pretrained(gguf_file=), which undoes the GGUF Q/K row permutation), checks that
transformers' logits of the base equal the committed float64 reference
(tiny_llama_s*.f32) to 1e-5, wraps it with peft (LoraConfig r 8, alpha 16, all seven
projections), sets every lora_A and lora_B to seeded random non-zero values, saves the
adapter with save_pretrained, and computes the adapted model's logits in float64 on the
tiny model's token sequences.

Writes, under tests/fixtures/peft/:
  peft_tiny/adapter_config.json, peft_tiny/adapter_model.safetensors   (peft's own files)
  peft_tiny_s7.f32, peft_tiny_s16.f32   logits, little-endian float32 [n_tokens][97]
  peft_tiny.json                        versions, seed, ids, how far the adapter moves logits

tests/peft/test_peft_made.c loads the folder in finch and compares its logits.

Run with the environment of scripts/interop-env.sh (transformers, peft, torch):
  ~/.cache/finch/venv/bin/python tests/reference/make_peft_fixtures.py
"""
import json
import os
import shutil
import sys

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
MODEL_DIR = os.path.join(FIX, "model")
OUT = os.path.join(FIX, "peft")
ADAPTER = os.path.join(OUT, "peft_tiny")
SEED = 20241123
SCALE = 0.2  # lora_A, lora_B ~ SCALE * N(0, 1): moves the tiny model's logits by O(1)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TAGS = ["s7", "s16"]


def main():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    manifest = json.load(open(os.path.join(MODEL_DIR, "tiny_llama.json")))
    tiny = next(m for m in manifest["models"] if m["name"] == "tiny_llama")
    seqs = {s["tag"]: s for s in tiny["sequences"] if s["tag"] in TAGS}

    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file="tiny_llama.gguf",
                                                torch_dtype=torch.float32).double().eval()
    with torch.no_grad():
        for tag, s in seqs.items():
            got = base(torch.tensor([s["ids"]])).logits[0].numpy()
            want = np.fromfile(os.path.join(MODEL_DIR, s["file"]), "<f4").reshape(got.shape)
            diff = float(np.abs(got - want).max())
            if diff > 1e-5:
                sys.exit("transformers' base logits differ from %s by %g" % (s["file"], diff))
    base_logits = {}
    with torch.no_grad():
        for tag, s in seqs.items():
            base_logits[tag] = base(torch.tensor([s["ids"]])).logits[0].numpy()

    torch.manual_seed(SEED)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    n_lora = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn_like(p) * SCALE)
                n_lora += 1
    assert n_lora == 2 * len(TARGETS) * tiny["n_layer"], n_lora
    model.eval()

    shutil.rmtree(ADAPTER, ignore_errors=True)
    model.float()  # saved as float32, what finch reads
    model.save_pretrained(ADAPTER)
    model.double()
    os.remove(os.path.join(ADAPTER, "README.md"))  # peft's model card template, not needed
    # The base was loaded from a local folder; name the committed model instead.
    cfg_path = os.path.join(ADAPTER, "adapter_config.json")
    cfg_json = json.load(open(cfg_path))
    cfg_json["base_model_name_or_path"] = "tests/fixtures/model/tiny_llama.gguf"
    with open(cfg_path, "w") as f:
        json.dump(cfg_json, f, indent=2, sort_keys=True)
        f.write("\n")

    # Logits from the saved (float32) adapter values, computed in float64.
    moved = {}
    with torch.no_grad():
        for tag, s in seqs.items():
            logits = model(torch.tensor([s["ids"]])).logits[0].numpy()
            logits.astype("<f4").tofile(os.path.join(OUT, "peft_tiny_%s.f32" % tag))
            moved[tag] = float(np.abs(logits - base_logits[tag]).max())

    out = {
        "description": "LoRA adapter made by peft for tests/fixtures/model/tiny_llama.gguf "
                       "and the adapted model's logits; made by tests/reference/make_peft_fixtures.py",
        "base": "tiny_llama.gguf (loaded by transformers from the GGUF, Q/K rows un-permuted)",
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": TARGETS, "init": "lora_A, lora_B = "
                 "%g * torch.randn (seed %d), saved as float32" % (SCALE, SEED)},
        "logits_format": "little-endian float32, row-major [n_tokens][n_vocab], float64 forward",
        "sequences": [{"tag": t, "ids": s["ids"], "file": "peft_tiny_%s.f32" % t,
                       "max_abs_change_from_base": moved[t]} for t, s in seqs.items()],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "numpy": np.__version__},
    }
    with open(os.path.join(OUT, "peft_tiny.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(out["sequences"]))


if __name__ == "__main__":
    main()
