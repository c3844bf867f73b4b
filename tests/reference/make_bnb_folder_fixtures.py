"""Makes tests/fixtures/hf_bnb/: tiny LLaMA checkpoints as transformers saves a model loaded
with BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), with and without
double quantization (bnb_4bit_use_double_quant), quantized by bitsandbytes itself, and for
each the same model with every 4-bit projection replaced by the f32 values bitsandbytes
dequantizes it to. tests/model/test_hf_bnb.c loads both with finch: same weights, same
logits.

The 4-bit keys are those of bitsandbytes' Linear4bit state dict (its _save_to_state_dict:
weight plus weight.<key> for quant_state.as_dict(packed=True)); embeddings, norms and the
head stay f32, as transformers leaves them. Dimensions are multiples of 64 so that
bitsandbytes' blocks (over the flattened weight) are row blocks.

    python3 -m venv /tmp/bnbvenv && /tmp/bnbvenv/bin/pip install torch==2.5.1 bitsandbytes==0.50.2 safetensors
    /tmp/bnbvenv/bin/python tests/reference/make_bnb_folder_fixtures.py
"""
import json
import os

import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf_bnb")
CFG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
       "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 16, "num_hidden_layers": 2, "vocab_size": 97, "max_position_embeddings": 128,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
       "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
       "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
PROJ = [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("self_attn.v_proj", 32, 64),
        ("self_attn.o_proj", 64, 64), ("mlp.gate_proj", 128, 64), ("mlp.up_proj", 128, 64),
        ("mlp.down_proj", 64, 128)]


def make(name, double_quant, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1
    plain = {"model.embed_tokens.weight": rnd(97, 64), "model.norm.weight": 1 + rnd(64),
             "lm_head.weight": rnd(97, 64)}
    quant = dict(plain)
    for l in range(CFG["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            plain[p + n + ".weight"] = quant[p + n + ".weight"] = 1 + rnd(64)
        for proj, rows, cols in PROJ:
            w = rnd(rows, cols)
            # a block of zeros and a block with one large value: absmax edge cases
            if proj.endswith("v_proj"):
                w[0, :64] = 0
                w[1, 5] = 3.0
            packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=double_quant,
                                         quant_type="nf4")
            plain[p + proj + ".weight"] = F.dequantize_4bit(packed, qs).float().contiguous()
            quant[p + proj + ".weight"] = packed
            for k, v in qs.as_dict(packed=True).items():
                quant[p + proj + ".weight." + k] = v
    qcfg = dict(CFG, quantization_config={
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
        "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0})
    for folder, tensors, cfg in ((name, quant, qcfg), (name + "_f32", plain, CFG)):
        d = os.path.join(OUT, folder)
        os.makedirs(d, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")


make("nf4_dq", True, 1)
make("nf4", False, 2)
