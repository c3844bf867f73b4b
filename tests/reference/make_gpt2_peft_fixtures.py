#!/usr/bin/env python3
"""Adapters made by Hugging Face peft for the tiny GPT-2, and peft's logits.

What it does: loads tests/fixtures/model/tiny_gpt2/ (made by make_gpt2_fixtures.py) with
transformers in float64, checks its logits against the fixture's, wraps it with peft and
saves each adapter with save_pretrained:

  gpt2_lora/  LoraConfig r 4, alpha 8, target_modules c_attn, c_proj, c_fc (PEFT sets
              fan_in_fan_out for GPT-2's Conv1D); lora_A, lora_B = 0.2 N(0, 1)
  gpt2_ia3/   IA3Config target_modules c_attn, mlp.c_proj, feedforward_modules mlp.c_proj;
              ia3_l = 1 + 0.3 N(0, 1)
  gpt2_dora/  LoraConfig as gpt2_lora with use_dora; lora_A, lora_B = 0.2 N(0, 1) and the
              magnitudes (PEFT's initial row norms) times 1 + 0.2 N(0, 1)

(seeded torch.randn, saved as float32), and the adapted model's float64 logits on the
fixture's 16-token sequence: gpt2_{lora,ia3,dora}.f32, little-endian float32 [16][400].
gpt2_peft.json records versions, seeds, the ids, how far each adapter moves the logits.

Run with the venv of scripts/interop-env.sh:
    ~/.cache/finch/venv/bin/python tests/reference/make_gpt2_peft_fixtures.py
"""
import json
import os
import shutil
import sys

import numpy as np
import peft
import torch
import transformers
from peft import IA3Config, LoraConfig, get_peft_model

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
MODEL = os.path.join(FIX, "model", "tiny_gpt2")
OUT = os.path.join(FIX, "peft")
SEED = 20261209


def base_model():
    m = transformers.GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
    return m.double().eval()


def main():
    transformers.utils.logging.set_verbosity_error()
    man = json.load(open(os.path.join(FIX, "model", "tiny_gpt2.json")))
    seq = next(s for s in man["sequences"] if s["tag"] == "s16")
    ids = torch.tensor([seq["ids"]])
    ref = np.fromfile(os.path.join(FIX, "model", "tiny_gpt2.f32"), "<f4")
    V = man["n_vocab"]
    want = ref[seq["hf"]:seq["hf"] + 16 * V].reshape(16, V)
    with torch.no_grad():
        base_logits = base_model()(ids).logits[0].numpy()
    if np.abs(base_logits - want).max() > 1e-5:
        sys.exit("transformers' base logits differ from the fixture")
    specs = [
        ("gpt2_lora", LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                 target_modules=["c_attn", "c_proj", "c_fc"],
                                 fan_in_fan_out=True, task_type="CAUSAL_LM")),
        ("gpt2_ia3", IA3Config(target_modules=["c_attn", "mlp.c_proj"],
                               feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True,
                               task_type="CAUSAL_LM")),
        ("gpt2_dora", LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                                 target_modules=["c_attn", "c_proj", "c_fc"],
                                 fan_in_fan_out=True, task_type="CAUSAL_LM")),
    ]
    out = dict(description=__doc__.split("\n")[0], base="tests/fixtures/model/tiny_gpt2",
               ids=seq["ids"], seed=SEED, adapters=[],
               versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                             peft=peft.__version__, numpy=np.__version__))
    for name, cfg in specs:
        torch.manual_seed(SEED)
        model = get_peft_model(base_model(), cfg)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_A" in pname or "lora_B" in pname:
                    p.copy_(torch.randn_like(p) * 0.2)
                elif "lora_magnitude_vector" in pname:
                    p.mul_(1 + 0.2 * torch.randn_like(p))
                elif "ia3_l" in pname:
                    p.copy_(1 + 0.3 * torch.randn_like(p))
        model.eval()
        folder = os.path.join(OUT, name)
        shutil.rmtree(folder, ignore_errors=True)
        model.float()
        model.save_pretrained(folder)
        model.double()
        os.remove(os.path.join(folder, "README.md"))
        cfg_path = os.path.join(folder, "adapter_config.json")
        cj = json.load(open(cfg_path))
        cj["base_model_name_or_path"] = "tests/fixtures/model/tiny_gpt2"
        with open(cfg_path, "w") as f:
            json.dump(cj, f, indent=2, sort_keys=True)
            f.write("\n")
        with torch.no_grad():
            logits = model(ids).logits[0].numpy()
        logits.astype("<f4").tofile(os.path.join(OUT, name + ".f32"))
        rec = dict(name=name, folder=name, logits=name + ".f32",
                   fan_in_fan_out=cj.get("fan_in_fan_out"),
                   max_abs_change_from_base=float(np.abs(logits - base_logits).max()))
        out["adapters"].append(rec)
        print(rec)
    with open(os.path.join(OUT, "gpt2_peft.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
