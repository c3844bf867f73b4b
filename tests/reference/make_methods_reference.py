#!/usr/bin/env python3
"""Reference gradients and training runs of DoRA, IA3, prompt tuning, prefix tuning, BitFit, full
and freeze fine-tuning on the tiny LLaMA fixture, in float64 PyTorch (DoRA, IA3, prompt and
prefix tuning computed by Hugging Face peft itself).

What it does: reads tests/fixtures/model/tiny_llama.gguf (PyPI `gguf` package), converts it to
Hugging Face convention (Q/K rows un-permuted, as make_lora_reference.py does) and loads it into
a float64 transformers LlamaForCausalLM. transformers 4.46 computes RMSNorm, RoPE and the eager
softmax in float32 even in a float64 model; those three spots are patched in this process to
stay in float64 (same formulas), and the model's logits are checked against
make_lora_reference.py's forward (zero LoRA) to 1e-12 before anything is written. Then, per
method, it writes into tests/fixtures/methods/<method>/:
  grad_params.safetensors   every trainable tensor, random non-zero, float32, keys and shapes
                            as peft / transformers save them (not written for full/freeze: their
                            grad-case params are the base weights, i.e. train_init.safetensors;
                            reference.json grad.params_file names the file to read)
  grad_grads.safetensors    d loss / d tensor for one batch, computed in float64
  train_init.safetensors    the method's real initialisation (DoRA: PEFT's init, A kaiming-
                            uniform, B 0, magnitude = row norms of W; IA3 ones; BitFit zeros;
                            full/freeze the base weights)
  train_final.safetensors   after 20 AdamW steps: warmup 2 + linear decay (HF's schedule, via
                            LambdaLR), global grad-norm clipping 1.0, weight decay 0.01 on every
                            trainable tensor (one param group), two batches alternating
  reference.json            options, versions, batches, losses, grad norms, lr per step, the
                            finite-difference checks
Methods: dora (LoraConfig r 4, alpha 8, use_dora, all seven projections), ia3 (IA3Config
k/v/down, down feedforward), prompt (PromptTuningConfig, 3 virtual tokens, random init), prefix
(PrefixTuningConfig, 3 virtual tokens, no projection), bitfit (a bias on all seven projections, y = x W^T + b, only the
biases train), full (every weight), freeze (only model.layers.1.*).
Loss: mean cross-entropy over target positions (-1 ignored), batch() of make_lora_reference.py
(B 2, T 12). Every gradient is checked in float64 by central finite differences on 3 random
elements per method (relative error < 1e-6), and against an independent functional forward
written here (so peft's conventions are pinned down, not only reproduced).

Also writes PEFT interop fixtures under tests/fixtures/methods/peft_made/: dora/ and ia3/
(save_pretrained folders: adapter_config.json + adapter_model.safetensors, random non-zero
values, float32), likewise prompt/ and prefix/, and <method>_logits.json (a fixed 8-token input and peft's float64
logits for every position, as float32 numbers).

Run with the environment of scripts/interop-env.sh (Debian torch 1.13, transformers 4.46.3,
peft 0.15.2, gguf, safetensors; llama-cpp-python is not needed):
  ~/.cache/finch/venv/bin/python tests/reference/make_methods_reference.py
"""
import json
import math
import os
import shutil
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_lora_reference as mlr  # noqa: E402  (batch(), loss_fn(), forward(), rope(), rmsnorm())

import gguf  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

DT = torch.float64
FIX = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FIX, "methods")
SEED = 11
STEPS, WARMUP, WD, CLIP, BETAS, EPS = 20, 2, 0.01, 1.0, (0.9, 0.999), 1e-8
LR = {"dora": 1e-2, "ia3": 1e-2, "prompt": 1e-2, "prefix": 1e-2, "prefix_proj": 1e-2, "bitfit": 1e-2, "full": 1e-2,
      "freeze": 1e-2}
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
DORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, target_modules=PROJ)
IA3 = dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
NVT = 3  # virtual tokens of prompt and prefix tuning
PROJ_HIDDEN = 16  # prefix tuning's projection MLP
FUNC_OPTS = {}  # functional_loss's options of methods other scripts add (make_adapter_reference.py)
PEFT_CONFIG = {"dora": lambda: LoraConfig(**DORA), "ia3": lambda: IA3Config(**IA3),
               "prompt": lambda: PromptTuningConfig(num_virtual_tokens=NVT, task_type="CAUSAL_LM"),
               "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=NVT, task_type="CAUSAL_LM"),
               "prefix_proj": lambda: PrefixTuningConfig(num_virtual_tokens=NVT, prefix_projection=True,
                                                         encoder_hidden_size=PROJ_HIDDEN,
                                                         task_type="CAUSAL_LM")}


def part(proj):
    return "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


# ---------------------------------------------------------------- the model

def load_tiny():
    """cfg and weights, GGUF names, Q/K rows in HF order (as make_lora_reference.load_tiny;
    reads metadata in a way that works with gguf 0.10, which lacks ReaderField.contents())."""
    r = gguf.GGUFReader(os.path.join(FIX, "model", "tiny_llama.gguf"))

    def val(key):
        f = r.fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()[0]
    cfg = dict(n_layer=val("llama.block_count"), n_embd=val("llama.embedding_length"),
               n_head=val("llama.attention.head_count"), n_head_kv=val("llama.attention.head_count_kv"),
               n_ff=val("llama.feed_forward_length"), n_ctx=val("llama.context_length"),
               eps=val("llama.attention.layer_norm_rms_epsilon"), theta=val("llama.rope.freq_base"))
    cfg["head_dim"] = cfg["n_embd"] // cfg["n_head"]
    w = {}
    for t in r.tensors:
        a = np.array(t.data, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        w[t.name] = torch.tensor(a, dtype=DT)
    D = cfg["head_dim"]
    for name, heads in (("attn_q", cfg["n_head"]), ("attn_k", cfg["n_head_kv"])):
        for l in range(cfg["n_layer"]):
            key = f"blk.{l}.{name}.weight"
            g = w[key].reshape(heads, D // 2, 2, -1)
            w[key] = torch.cat([g[:, :, 0], g[:, :, 1]], dim=1).reshape(heads * D, -1)
    cfg["n_vocab"] = w["token_embd.weight"].shape[0]
    return cfg, w


def hf_state_dict(cfg, w):
    sd = {"model.embed_tokens.weight": w["token_embd.weight"],
          "model.norm.weight": w["output_norm.weight"], "lm_head.weight": w["output.weight"]}
    for l in range(cfg["n_layer"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = w[f"blk.{l}.attn_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = w[f"blk.{l}.ffn_norm.weight"]
        for proj, g in GGUF_OF.items():
            sd[f"{p}{part(proj)}.{proj}.weight"] = w[f"blk.{l}.{g}.weight"]
    return sd


# transformers 4.46 forces float32 in three places of a float64 LLaMA; keep them in float64.
def _rmsnorm64(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


_softmax = F.softmax


def _softmax64(input, dim=None, _stacklevel=3, dtype=None):
    if input.dtype == torch.float64:
        dtype = None  # the eager attention asks for dtype=float32
    return _softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)


modeling_llama.LlamaRMSNorm.forward = _rmsnorm64
torch.nn.functional.softmax = _softmax64


def make_hf(cfg, sd):
    conf = LlamaConfig(vocab_size=cfg["n_vocab"], hidden_size=cfg["n_embd"],
                       intermediate_size=cfg["n_ff"], num_hidden_layers=cfg["n_layer"],
                       num_attention_heads=cfg["n_head"], num_key_value_heads=cfg["n_head_kv"],
                       max_position_embeddings=cfg["n_ctx"], rms_norm_eps=cfg["eps"],
                       rope_theta=cfg["theta"], tie_word_embeddings=False, attention_bias=False,
                       mlp_bias=False, hidden_act="silu", attn_implementation="eager")
    torch.manual_seed(0)
    m = LlamaForCausalLM(conf).to(DT).eval()
    m.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
    D, theta = cfg["head_dim"], cfg["theta"]

    def rope64(x, position_ids):  # rotate-half cos/sin, float64 (HF does it in float32)
        inv = theta ** (-torch.arange(0, D, 2, dtype=DT) / D)
        ang = position_ids.to(DT)[..., None] * inv
        emb = torch.cat([ang, ang], -1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    m.model.rotary_emb.forward = rope64
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def logits_of(model, ids):
    """The logits of the real tokens (prompt tuning's model also returns its virtual ones)."""
    out = model(input_ids=ids).logits
    return out[:, out.shape[1] - ids.shape[1]:]


# ---------------------------------------------------------------- an independent forward

def functional_loss(cfg, sd, method, params, opts, ids, targets):
    """The same model written out by hand (HF names, HF row order), each method's linear
    written from its definition; used to pin down peft's conventions."""
    P = dict(sd)
    if method in ("full", "freeze"):
        P.update(params)
    B, T = ids.shape
    H, KVH, D = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]

    def lin(name, x):
        W = P[name + ".weight"]
        y = x @ W.T
        if method == "dora":
            pk = "base_model.model." + name
            A, Bm, m = params[pk + ".lora_A.weight"], params[pk + ".lora_B.weight"], \
                params[pk + ".lora_magnitude_vector"]
            s = opts["lora_alpha"] / opts["r"]
            norm = torch.linalg.norm(W + s * (Bm @ A), dim=1).detach()
            return (m / norm) * (y + s * (x @ A.T) @ Bm.T)
        if method == "ia3":
            key = "base_model.model." + name + ".ia3_l"
            if key in params:
                if name.endswith("down_proj"):
                    return (x * params[key][0]) @ W.T
                return y * params[key][:, 0]
        if method == "bitfit":
            return y + params[name + ".bias"]
        return y

    def module(l, where, v):  # a bottleneck adapter's f(v) at block l, or None
        pre = f"model.layers.{l}.{where}_adapters.adapters.finch."
        if pre + "adapter_down.0.weight" not in params:
            return None
        u = v @ params[pre + "adapter_down.0.weight"].T + params[pre + "adapter_down.0.bias"]
        act = {"relu": F.relu, "swish": F.silu, "gelu": F.gelu}[opts["non_linearity"]]
        return opts["scaling"] * (act(u) @ params[pre + "adapter_up.weight"].T +
                                  params[pre + "adapter_up.bias"])

    def join(l, where, x, h):  # x + h through block l's adapter at its place
        place = opts.get("place") if method.startswith("adapter") else None
        if place == "houlsby" or (place and where == "output"):
            f = module(l, where, {"houlsby": h, "sequential": x + h, "parallel": x}[place])
            if f is not None:
                return x + h + f
        return x + h

    def rope(x, pos0):  # rotate-half, positions pos0, pos0 + 1, ...
        inv = cfg["theta"] ** (-torch.arange(0, D, 2, dtype=DT) / D)
        ang = torch.arange(pos0, pos0 + x.shape[1], dtype=DT)[:, None] * inv[None, :]
        ang = torch.cat([ang, ang], -1)[None, :, None, :]
        rot = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
        return x * torch.cos(ang) + rot * torch.sin(ang)

    x = P["model.embed_tokens.weight"][ids]
    K = NP = 0
    if method == "prompt":  # K rows before the tokens, positions 0..K-1
        K = params["prompt_embeddings"].shape[0]
        x = torch.cat([params["prompt_embeddings"][None].expand(B, -1, -1), x], 1)
    if method == "prefix":  # keys (not rotated) and values at every layer; tokens from NP
        NP = params["prompt_embeddings"].shape[0]
        pre = params["prompt_embeddings"].view(NP, cfg["n_layer"] * 2, KVH, D)
    if method == "prefix_proj":  # the table is an MLP's output
        E = params["prompt_encoder.embedding.weight"]
        h = torch.tanh(E @ params["prompt_encoder.transform.0.weight"].T +
                       params["prompt_encoder.transform.0.bias"])
        table = h @ params["prompt_encoder.transform.2.weight"].T + params["prompt_encoder.transform.2.bias"]
        NP = table.shape[0]
        pre = table.view(NP, cfg["n_layer"] * 2, KVH, D)
    T = T + K
    mask = torch.full((T, T), float("-inf"), dtype=DT).triu(1)
    mask = torch.cat([torch.zeros(T, NP, dtype=DT), mask], 1)
    for l in range(cfg["n_layer"]):
        p = f"model.layers.{l}."
        n = mlr.rmsnorm(x, P[p + "input_layernorm.weight"], cfg["eps"])
        q = rope(lin(p + "self_attn.q_proj", n).view(B, T, H, D), NP)
        k = rope(lin(p + "self_attn.k_proj", n).view(B, T, KVH, D), NP)
        v = lin(p + "self_attn.v_proj", n).view(B, T, KVH, D)
        if NP:
            k = torch.cat([pre[:, 2 * l][None].expand(B, -1, -1, -1), k], 1)
            v = torch.cat([pre[:, 2 * l + 1][None].expand(B, -1, -1, -1), v], 1)
        k = k.repeat_interleave(H // KVH, dim=2)
        v = v.repeat_interleave(H // KVH, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D) + mask
        a = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(B, T, H * D)
        x = join(l, "attention", x, lin(p + "self_attn.o_proj", a))
        m = mlr.rmsnorm(x, P[p + "post_attention_layernorm.weight"], cfg["eps"])
        h = F.silu(lin(p + "mlp.gate_proj", m)) * lin(p + "mlp.up_proj", m)
        x = join(l, "output", x, lin(p + "mlp.down_proj", h))
    x = mlr.rmsnorm(x, P["model.norm.weight"], cfg["eps"])[:, K:]
    return mlr.loss_fn(x @ P["lm_head.weight"].T, targets)


# ---------------------------------------------------------------- methods

def peft_key(name):
    """in-memory parameter name -> the key peft saves (adapter name removed)."""
    name = name.replace(".default", "")
    if name.endswith("lora_magnitude_vector.weight"):
        name = name[:-len(".weight")]
    return name


def build(method, cfg, sd, init_seed=0):
    """(model, {fixture key: trainable parameter}) with the method's real initialisation."""
    model = make_hf(cfg, sd)
    if method in PEFT_CONFIG:
        torch.manual_seed(init_seed)
        model = get_peft_model(model, PEFT_CONFIG[method]()).eval()
        model.to(DT)  # peft makes the prompt encoder in float32
        params = {peft_key(n): p for n, p in model.named_parameters() if p.requires_grad}
        if method in ("prompt", "prefix"):  # one table, saved as prompt_embeddings
            params = {"prompt_embeddings": params["prompt_encoder.embedding.weight"]}
        saved = get_peft_model_state_dict(model)
        if method == "prefix_proj":  # peft saves the projection's output table, not the MLP
            assert set(saved) == {"prompt_embeddings"}, sorted(saved)
            return model, params
        assert set(params) == set(saved), (sorted(params)[:4], sorted(saved)[:4])
        for k, t in saved.items():
            assert tuple(t.shape) == tuple(params[k].shape), k
        return model, params
    params = {}
    if method == "bitfit":
        for l in range(cfg["n_layer"]):
            for proj in PROJ:
                mod = model.get_submodule(f"model.layers.{l}.{part(proj)}.{proj}")
                mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features, dtype=DT))
        params = {n: p for n, p in model.named_parameters() if n.endswith(".bias")}
    else:
        for n, p in model.named_parameters():
            if method == "full" or n.startswith("model.layers.1."):
                p.requires_grad_(True)
                params[n] = p
    return model, params


def randomise(method, sd, params, rng):
    """random non-zero values for the grad case (full/freeze keep the base weights)."""
    with torch.no_grad():
        for k, p in params.items():
            if method == "dora" and k.endswith("lora_A.weight"):
                b = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.tensor(rng.uniform(-b, b, p.shape), dtype=DT))
            elif method == "dora" and k.endswith("lora_B.weight"):
                p.copy_(torch.tensor(rng.normal(0, 0.1, p.shape), dtype=DT))
            elif method == "ia3":
                p.copy_(torch.tensor(1 + rng.normal(0, 0.3, p.shape), dtype=DT))
            elif method == "bitfit":
                p.copy_(torch.tensor(rng.normal(0, 0.1, p.shape), dtype=DT))
            elif method in ("prompt", "prefix"):
                p.copy_(torch.tensor(rng.normal(0, 1.0, p.shape), dtype=DT))
            elif method == "prefix_proj":
                p.copy_(torch.tensor(rng.normal(0, 0.5, p.shape), dtype=DT))
        if method == "dora":  # magnitude: row norms of W + s B A (its init), times U(0.7, 1.3)
            for k, p in params.items():
                if k.endswith("lora_magnitude_vector"):
                    pre = k[:-len("lora_magnitude_vector")]
                    W = sd[pre[len("base_model.model."):] + "weight"]
                    s = DORA["lora_alpha"] / DORA["r"]
                    n = torch.linalg.norm(W + s * params[pre + "lora_B.weight"] @
                                          params[pre + "lora_A.weight"], dim=1)
                    p.copy_(n * torch.tensor(rng.uniform(0.7, 1.3, p.shape), dtype=DT))


def frozen_dora_norms(model):
    """Make every DoRA layer use its current ||W + s B A||_row as a constant, so that a finite
    difference sees what peft's backward sees (peft detaches the norm). Returns an undo."""
    patched = []
    for mod in model.modules():
        if hasattr(mod, "lora_magnitude_vector") and "default" in getattr(mod, "lora_magnitude_vector", {}):
            dl = mod.lora_magnitude_vector["default"]
            W = mod.get_base_layer().weight
            lw = mod.lora_B["default"].weight @ mod.lora_A["default"].weight
            n = dl.get_weight_norm(W, lw.detach(), mod.scaling["default"]).detach().clone()
            dl.get_weight_norm = (lambda n: (lambda *a, **k: n))(n)
            patched.append(dl)
    return lambda: [delattr(dl, "get_weight_norm") for dl in patched]


def fd_check(method, model, params, grads, ids, targets, rng, h=1e-5):
    undo = frozen_dora_norms(model) if method == "dora" else (lambda: None)
    keys = sorted(params)
    out = []
    with torch.no_grad():
        for _ in range(3):
            k = keys[rng.integers(len(keys))]
            g = grads[k].reshape(-1)
            big = torch.nonzero(g.abs() >= 0.1 * g.abs().max()).reshape(-1)
            i = int(big[rng.integers(len(big))])
            flat = params[k].view(-1)
            x0 = flat[i].item()
            flat[i] = x0 + h
            lp = mlr.loss_fn(logits_of(model, ids), targets).item()
            flat[i] = x0 - h
            lm = mlr.loss_fn(logits_of(model, ids), targets).item()
            flat[i] = x0
            fd = (lp - lm) / (2 * h)
            rel = abs(fd - g[i].item()) / abs(g[i].item())
            assert rel < 1e-6, (method, k, i, fd, g[i].item(), rel)
            out.append(dict(key=k, index=i, grad=g[i].item(), finite_difference=fd, rel_error=rel))
    undo()
    return out


def f32(params):
    return {k: p.detach().to(torch.float32).contiguous().clone() for k, p in params.items()}


def decays(name):
    """Whether AdamW's weight decay applies, as transformers' Trainer decides: not to biases,
    not to the weights of norm layers."""
    parts = name.split(".")
    return not (parts[-1] == "bias" or (len(parts) > 1 and "norm" in parts[-2]))


def run_method(method, cfg, sd, batches, seed):
    d = os.path.join(OUT, method)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    (gids, gtargets), train_batches = batches[0], batches[1:]

    # grad case
    model, params = build(method, cfg, sd, init_seed=seed)
    randomise(method, sd, params, rng)
    loss = mlr.loss_fn(logits_of(model, gids), gtargets)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    for k, g in grads.items():
        assert g.abs().max() > 0, (method, k)
    # an independent forward must give the same loss and gradients
    fparams = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    floss = functional_loss(cfg, sd, method, fparams, FUNC_OPTS.get(method, DORA), gids, gtargets)
    floss.backward()
    worst = max(float((fparams[k].grad - grads[k]).abs().max() / grads[k].abs().max()) for k in grads)
    assert abs(floss.item() - loss.item()) < 1e-12 and worst < 1e-9, (method, floss.item(), loss.item(), worst)
    fd = fd_check(method, model, params, grads, gids, gtargets, rng)
    # full/freeze: the grad-case params are the base weights, byte-identical to train_init
    # (written below); not written twice, to keep the fixtures small
    params_file = "train_init.safetensors" if method in ("full", "freeze") else "grad_params.safetensors"
    if method not in ("full", "freeze"):
        save_file(f32(params), os.path.join(d, params_file), metadata={"format": "pt"})
    elif os.path.exists(os.path.join(d, "grad_params.safetensors")):
        os.remove(os.path.join(d, "grad_params.safetensors"))
    save_file(f32(grads), os.path.join(d, "grad_grads.safetensors"), metadata={"format": "pt"})
    grad = dict(params_file=params_file, grads_file="grad_grads.safetensors", ids=gids.tolist(), targets=gtargets.tolist(), loss=loss.item(),
                functional_check_max_rel_diff=worst, finite_difference_checks=fd)

    # train case
    model, params = build(method, cfg, sd, init_seed=seed + 1)
    save_file(f32(params), os.path.join(d, "train_init.safetensors"), metadata={"format": "pt"})
    plist = [params[k] for k in sorted(params)]
    lr0 = LR[method]
    # as transformers' Trainer groups them: no decay on biases and norm weights
    names = sorted(params)
    groups = [dict(params=[params[k] for k in names if decays(k)], weight_decay=WD),
              dict(params=[params[k] for k in names if not decays(k)], weight_decay=0.0)]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr0, betas=BETAS, eps=EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, WARMUP) if s < WARMUP else max(0.0, (STEPS - s) / max(1, STEPS - WARMUP)))
    hist = []
    for step in range(STEPS):
        ids, targets = train_batches[step % 2]
        opt.zero_grad()
        loss = mlr.loss_fn(logits_of(model, ids), targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(plist, CLIP)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        hist.append(dict(ids=ids.tolist(), targets=targets.tolist(), loss=loss.item(),
                         grad_norm=float(norm), lr=lr))
    save_file(f32(params), os.path.join(d, "train_final.safetensors"), metadata={"format": "pt"})
    return grad, hist, {k: list(p.shape) for k, p in sorted(params.items())}


OPTIONS = {
    "dora": dict(peft_type="LORA", **DORA, init_lora_weights=True, scaling=DORA["lora_alpha"] / DORA["r"],
                 forward="y = (m / ||W + s B A||_row) * (x W^T + s x A^T B^T), s = alpha / r; the norm is "
                 "detached (a constant in backward, recomputed every forward), so the A/B gradients "
                 "ignore its dependence on A and B",
                 init="torch.manual_seed(seed) then peft: A kaiming-uniform (bound 1/sqrt(in)), B 0, "
                 "magnitude = ||W||_row",
                 grad_values="A ~ U(+-1/sqrt(in)), B ~ N(0, 0.1), magnitude = ||W + s B A||_row * U(0.7, 1.3)"),
    "ia3": dict(peft_type="IA3", **IA3, init_ia3_weights=True,
                forward="k_proj, v_proj: y = (x W^T) * l[:, 0] (output scaled, before RoPE for k; a bias "
                "would be scaled too); down_proj (feedforward): y = (x * l[0, :]) W^T",
                init="ones", grad_values="1 + N(0, 0.3)"),
    "prompt": dict(peft_type="PROMPT_TUNING", num_virtual_tokens=NVT, prompt_tuning_init="RANDOM",
                   forward="K trained rows before the token embeddings, positions 0..K-1, the tokens "
                   "from K; loss on the real tokens only", init="N(0, 1) (nn.Embedding)",
                   grad_values="N(0, 1)"),
    "prefix": dict(peft_type="PREFIX_TUNING", num_virtual_tokens=NVT, prefix_projection=False,
                   forward="per layer l, keys (slot 2l, not rotated) and values (slot 2l+1) of NVT "
                   "virtual tokens before the tokens' own (prompt_embeddings [NVT, L*2*KVH*D], key "
                   "heads in rotate-half order); the tokens at positions NVT, NVT+1, ...",
                   init="N(0, 1) (nn.Embedding)", grad_values="N(0, 1)"),
    "prefix_proj": dict(peft_type="PREFIX_TUNING", num_virtual_tokens=NVT, prefix_projection=True,
                        encoder_hidden_size=PROJ_HIDDEN,
                        forward="as prefix, the table being tanh(E W0^T + b0) W2^T + b2 (PEFT's "
                        "PrefixEncoder in training); key heads of the output in rotate-half order",
                        init="E N(0, 1); linears nn.Linear's default", grad_values="N(0, 0.5)"),
    "bitfit": dict(targets=PROJ, forward="y = x W^T + b on every projection of every layer; only the "
                   "biases train", init="zeros", grad_values="N(0, 0.1)"),
    "full": dict(trainable="every weight (transformers LlamaForCausalLM state-dict names; untied lm_head)",
                 init="the base weights", grad_values="the base weights"),
    "freeze": dict(trainable="model.layers.1.* only (the last of the 2 layers)",
                   init="the base weights", grad_values="the base weights"),
}


# ---------------------------------------------------------------- peft-made adapters

def peft_made(cfg, sd, seed):
    d = os.path.join(OUT, "peft_made")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(0, cfg["n_vocab"], 8)[None])
    base_logits = logits_of(make_hf(cfg, sd), ids)[0].detach()
    summary = {}
    for method in ("dora", "ia3", "prompt", "prefix"):
        model = make_hf(cfg, sd)
        torch.manual_seed(seed)
        if method == "dora":
            conf = LoraConfig(**DORA, init_lora_weights=False, task_type="CAUSAL_LM")
        elif method == "ia3":
            conf = IA3Config(**IA3, task_type="CAUSAL_LM")
        else:
            conf = PEFT_CONFIG[method]()
        model = get_peft_model(model, conf).eval().to(DT)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_magnitude_vector" in n:  # peft set it to ||W + s B A||_row: move it off
                    p.mul_(torch.tensor(rng.uniform(0.8, 1.2, p.shape), dtype=DT))
                elif "ia3_l" in n:
                    p.copy_(torch.tensor(1 + rng.normal(0, 0.3, p.shape), dtype=DT))
                elif "prompt_encoder" in n:
                    p.copy_(torch.tensor(rng.normal(0, 1.0, p.shape), dtype=DT))
        folder = os.path.join(d, method)
        shutil.rmtree(folder, ignore_errors=True)
        model.float()  # saved as float32, what finch reads
        model.save_pretrained(folder)
        model.double()
        os.remove(os.path.join(folder, "README.md"))
        cpath = os.path.join(folder, "adapter_config.json")
        cj = json.load(open(cpath))
        cj["base_model_name_or_path"] = "tests/fixtures/model/tiny_llama.gguf"
        for k in ("target_modules", "feedforward_modules"):  # peft writes sets in hash order
            if isinstance(cj.get(k), list):
                cj[k] = sorted(cj[k])
        with open(cpath, "w") as f:
            json.dump(cj, f, indent=2, sort_keys=True)
            f.write("\n")
        with torch.no_grad():
            lg = logits_of(model, ids)[0]
        moved = float((lg - base_logits).abs().max())
        out = dict(description=f"{method} adapter made by peft {peft.__version__} for "
                   "tests/fixtures/model/tiny_llama.gguf (folder peft_made/" + method + "), and the "
                   "adapted model's logits; made by tests/reference/make_methods_reference.py",
                   base="tiny_llama.gguf, Q/K rows in Hugging Face order; float64 forward",
                   values=("lora_A, lora_B: peft init_lora_weights=False (nn.Linear default init, "
                           f"torch.manual_seed({seed})); lora_magnitude_vector: ||W + s B A||_row * "
                           "U(0.8, 1.2)") if method == "dora" else "ia3_l = 1 + N(0, 0.3)"
                   if method == "ia3" else "prompt_embeddings ~ N(0, 1)",
                   ids=ids[0].tolist(), n_vocab=cfg["n_vocab"],
                   logits_format="logits[position][token], float64 forward rounded to float32",
                   logits=lg.to(torch.float32).tolist(), max_abs_change_from_base=moved,
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                                 peft=peft.__version__))
        with open(os.path.join(d, f"{method}_logits.json"), "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        summary[method] = moved
    return summary


def main():
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Could not find a config file")
    torch.set_num_threads(1)
    cfg, w = load_tiny()
    sd = hf_state_dict(cfg, w)

    # the float64 HF model must equal make_lora_reference.py's forward with zero LoRA
    check_rng = np.random.default_rng(0)
    ids, _ = mlr.batch(check_rng, cfg["n_vocab"])
    zero = {(l, g): (torch.zeros(mlr.R, w[f"blk.{l}.{g}.weight"].shape[1], dtype=DT),
                     torch.zeros(w[f"blk.{l}.{g}.weight"].shape[0], mlr.R, dtype=DT))
            for l in range(cfg["n_layer"]) for g in GGUF_OF.values()}
    ref_cfg = dict(cfg)
    with torch.no_grad():
        diff = float((logits_of(make_hf(cfg, sd), ids) - mlr.forward(ref_cfg, w, zero, ids)).abs().max())
    assert diff < 1e-12, f"HF float64 logits differ from make_lora_reference.forward by {diff}"
    print(f"HF model == make_lora_reference.forward: max |diff| {diff:.2e}")

    brng = np.random.default_rng(SEED)
    batches = [mlr.batch(brng, cfg["n_vocab"]) for _ in range(3)]  # grad batch, 2 train batches
    for i, method in enumerate(("dora", "ia3", "bitfit", "full", "freeze", "prompt", "prefix",
                                "prefix_proj")):
        grad, hist, shapes = run_method(method, cfg, sd, batches, SEED + 100 * (i + 1))
        ref = dict(description=__doc__.split("\n")[0], method=method, options=OPTIONS[method],
                   model="tiny_llama.gguf", seed=SEED + 100 * (i + 1),
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                                 peft=peft.__version__, numpy=np.__version__),
                   layout="safetensors float32; keys and shapes as peft save_pretrained / "
                   "transformers save them; q_proj/k_proj rows (and their lora_B rows, magnitude, "
                   "ia3_l, bias entries) in Hugging Face order, not GGUF's",
                   loss="mean cross-entropy over target positions, -1 ignored", dropout=0.0,
                   tensors=shapes, grad=grad,
                   train=dict(steps=STEPS, lr=LR[method], warmup=WARMUP, schedule="linear",
                              weight_decay=WD, weight_decay_applies_to="every tensor but biases and "
                              "norm weights (transformers' Trainer grouping)", betas=list(BETAS), eps=EPS,
                              max_grad_norm=CLIP, batches="two, alternating (history[s].ids)",
                              history=hist))
        with open(os.path.join(OUT, method, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        losses = [h["loss"] for h in hist]
        print(f"{method:7s} grad loss {grad['loss']:.6f} (fd rel err max "
              f"{max(c['rel_error'] for c in grad['finite_difference_checks']):.1e}, functional "
              f"{grad['functional_check_max_rel_diff']:.1e}); lr {LR[method]:g}; train loss "
              + " ".join(f"{x:.4f}" for x in losses))
    moved = peft_made(cfg, sd, SEED + 1000)
    print("peft_made: max |logit change| from base", json.dumps(moved))


if __name__ == "__main__":
    main()
