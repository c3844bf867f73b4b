"""finch's Hugging Face folder for a Gemma 3 model, run by an independent numpy forward.

transformers 4.46 (the interop venv's) predates Gemma 3 (4.50 added gemma3_text), so the
folder is checked by a float64 numpy forward written here from transformers' modeling_gemma3
(Gemma3ForCausalLM): embeddings times sqrt(hidden_size); per block input_layernorm, q/k/v
projections, per-head q_norm/k_norm, rotate-half RoPE with rope_local_base_freq on the
sliding blocks of layer_types and rope_theta on the others, scores times
query_pre_attn_scalar^-0.5, causal and (sliding blocks) key positions above
query - sliding_window, o_proj, post_attention_layernorm, residual; pre_feedforward_layernorm,
gelu_pytorch_tanh(gate) * up, down_proj, post_feedforward_layernorm, residual; norm; the
tied head. Every RMSNorm multiplies by 1 + w. It reads only config.json and
model.safetensors (the safetensors format parsed here, no finch code).

On the tiny Gemma 3 (tests/fixtures/model/tiny_gemma3.gguf, window 16), `finch train
--method full` for a few steps writes model.gguf and the folder; the numpy logits of the
folder equal finch's logits of model.gguf within TOL on three sequences (of 24 and 40
tokens past the window), and differ from the base's by much more.

With --transformers (an interpreter with transformers >= 4.50 and torch), the folder is
also loaded by transformers' own Gemma3ForCausalLM (eager attention, float64) and its
logits compared with finch's within TOL: what tests/interop/run.sh runs when
FINCH_GEMMA3_TF_PYTHON names such an interpreter. transformers 4.53.3 with torch 2.5.1 gave
a max |diff| of 2.8e-6 (24 tokens), 2.6e-6 (40 tokens), argmax equal everywhere.

  python check_gemma3_hf.py --finch build/finch --logits .../finch_interop_logits \
      --model ANY --work DIR [--transformers]
"""
import json
import os
import struct
import sys

import numpy as np

import common

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "fixtures", "model", "tiny_gemma3.gguf")
SEQS = [[5, 17, 33, 42, 8, 90, 61, 3],
        [7, 3, 91, 60, 60, 12, 35, 81, 2, 49, 18, 94, 27, 66, 5, 40, 11, 73, 58, 30, 1, 85,
         22, 47],
        [int(t) for t in np.random.default_rng(11).integers(0, 97, 40)]]
TOL = 1e-5


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").astype(np.float64).reshape(v["shape"])
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def rope(x, base):
    """x (T, heads, D), positions 0..T-1, rotate-half."""
    T, D = x.shape[0], x.shape[-1]
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)[:, None, :]
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, w, ids):
    assert cfg["model_type"] == "gemma3_text" and cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert cfg.get("final_logit_softcapping") is None and cfg.get("attn_logit_softcapping") is None
    assert cfg.get("rope_scaling") is None
    C, H, KVH, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], \
        cfg["head_dim"]
    eps, T, W = cfg["rms_norm_eps"], len(ids), cfg["sliding_window"]
    types = cfg["layer_types"]
    # transformers < 4.53 derives the pattern from sliding_window_pattern: the same blocks
    assert types == ["full_attention" if (l + 1) % cfg["sliding_window_pattern"] == 0
                     else "sliding_attention" for l in range(cfg["num_hidden_layers"])]
    x = w["model.embed_tokens.weight"][ids] * np.sqrt(C)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        sliding = types[l] == "sliding_attention"
        base = cfg["rope_local_base_freq"] if sliding else cfg["rope_theta"]
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, D)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KVH, D)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KVH, D)
        q = rope(rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps), base)
        k = rope(rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps), base)
        visible = (j <= i) & ((i - j < W) if sliding else True)
        heads = []
        for hh in range(H):
            g = hh // (H // KVH)
            s = q[:, hh] @ k[:, g].T * cfg["query_pre_attn_scalar"] ** -0.5
            s = np.where(visible, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            heads.append((s / s.sum(-1, keepdims=True)) @ v[:, g])
        o = np.concatenate(heads, -1) @ w[p + "self_attn.o_proj.weight"].T
        x = x + rmsnorm(o, w[p + "post_attention_layernorm.weight"], eps)
        h = rmsnorm(x, w[p + "pre_feedforward_layernorm.weight"], eps)
        f = (gelu_tanh(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) \
            @ w[p + "mlp.down_proj.weight"].T
        x = x + rmsnorm(f, w[p + "post_feedforward_layernorm.weight"], eps)
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def transformers_logits(folder, seqs):
    """transformers' Gemma3ForCausalLM on the folder, in float64 with eager attention."""
    import torch
    import transformers
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    print("  transformers %s, torch %s" % (transformers.__version__, torch.__version__))
    m = Gemma3ForCausalLM.from_pretrained(folder, torch_dtype=torch.float32,
                                          attn_implementation="eager").double().eval()
    with torch.no_grad():
        return [m(torch.tensor([s])).logits[0].numpy() for s in seqs]


def main():
    args = common.parse_args(__doc__.splitlines()[0], lambda ap: ap.add_argument(
        "--transformers", action="store_true",
        help="also compare with transformers' Gemma3ForCausalLM (needs transformers >= 4.50)"))
    data = os.path.join(args.work, "train.jsonl")
    with open(data, "w") as f:
        for k in range(8):
            f.write('{"prompt": "the cat %d is", "completion": " singing and %d"}\n' % (k, 7 * k))
    out = os.path.join(args.work, "full")
    common.run([args.finch, "train", "-m", TINY, "--data", data, "--method", "full",
                "--learning-rate", "1e-2", "--max-steps", "4", "--batch-size", "2", "--seed", "3",
                "--save-steps", "0", "--out", out])
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    w = read_safetensors(os.path.join(out, "model.safetensors"))
    tuned = common.finch_logits(args.logits, os.path.join(out, "model.gguf"), SEQS, args.work)
    base = common.finch_logits(args.logits, TINY, SEQS, args.work)
    ok = True
    for s, t, b in zip(SEQS, tuned, base):
        ref = forward(cfg, w, s)
        d = float(np.abs(ref - t).max())
        moved = float(np.abs(ref - b).max())
        same = bool((ref.argmax(-1) == t.argmax(-1)).all())
        good = d < TOL and same and moved > 100 * TOL
        print("  %d tokens: numpy forward of the folder vs finch's model.gguf %.3g (allowed %g), "
              "argmax %s; vs the base %.3g: %s" % (len(s), d, TOL, "equal" if same else "DIFFERS",
                                                  moved, "ok" if good else "FAIL"))
        ok &= good
    if args.transformers:
        ref = transformers_logits(out, SEQS)
        for s, t, r in zip(SEQS, tuned, ref):
            d = float(np.abs(r - t).max())
            same = bool((r.argmax(-1) == t.argmax(-1)).all())
            print("  %d tokens: transformers' Gemma3ForCausalLM on the folder vs finch's "
                  "model.gguf %.3g (allowed %g), argmax %s: %s"
                  % (len(s), d, TOL, "equal" if same else "DIFFERS",
                     "ok" if d < TOL and same else "FAIL"))
            ok &= d < TOL and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
