#!/usr/bin/env python3
"""Reference DPO losses and gradients on the tiny LLaMA fixture, in float64 PyTorch: TRL's
sigmoid DPO loss (DPOTrainer, loss_type "sigmoid", label_smoothing 0) written out here, the
policy being the base model with a method (peft's LoRA, peft's prefix tuning, or layer 1's
weights trained as in freezing), the reference the base model alone.

  logp(y)  = sum over y's completion tokens (mask 1) of log_softmax(logits)[token]
  z        = beta * ((logp_pi(chosen) - logp_pi(rejected)) - (logp_ref(chosen) - logp_ref(rejected)))
  loss     = mean over pairs of -logsigmoid(z)
  rewards  = beta * (logp_pi - logp_ref).detach(), per side

What it does: loads the model as make_methods_reference.py does (its float64 patches of
transformers included), makes 3 pairs of random token sequences (a prompt of 3-5 ids shared
by both sides, completions of 2-6 ids, lengths differing so a batch pads), and per method:
sets the trainable tensors to random non-zero values, computes the loss by autograd and
every trainable tensor's gradient, checks 3 gradient elements by central finite differences
of the DPO loss (relative error < 1e-6), and writes into tests/fixtures/dpo/<method>/:
  grad_params.safetensors   the trainable tensors (float32, keys as peft / transformers save)
  grad_grads.safetensors    d loss / d tensor, float64 rounded to float32
  reference.json            beta, the pairs (ids, masks), per side the reference and policy
                            log-probs, z, the loss, the rewards, accuracies and margins,
                            the finite-difference checks, versions
Methods: lora (r 4, alpha 8, the seven projections, A ~ U(+-1/sqrt(in)), B ~ N(0, 0.1)),
prefix (3 virtual tokens, N(0, 1)), freeze (model.layers.1.* = base + N(0, 0.05)).

Run with the environment of scripts/interop-env.sh (torch 1.13, transformers 4.46, peft 0.15):
  ~/.cache/finch/venv/bin/python tests/reference/make_dpo_reference.py
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_methods_reference as mmr  # noqa: E402  (load_tiny, make_hf, build, logits_of; patches)

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

DT = torch.float64
OUT = os.path.join(HERE, "..", "fixtures", "dpo")
SEED = 31
BETA = 0.1
N_PAIRS = 3
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=mmr.PROJ)
mmr.PEFT_CONFIG["lora"] = lambda: LoraConfig(**LORA)


def make_pairs(rng, V):
    """N_PAIRS pairs {prompt ids + completion ids, mask 1 on the completion}."""
    pairs = []
    for _ in range(N_PAIRS):
        prompt = rng.integers(3, V, rng.integers(3, 6)).tolist()
        sides = []
        for _ in range(2):
            comp = rng.integers(3, V, rng.integers(2, 7)).tolist()
            sides.append(dict(ids=prompt + comp, mask=[0] * len(prompt) + [1] * len(comp)))
        pairs.append(sides)
    return pairs


def logp(model, ex):
    """The sum of the completion tokens' log-probabilities (position k predicts id k+1)."""
    ids = torch.tensor([ex["ids"]])
    lp = mmr.logits_of(model, ids)[0].log_softmax(-1)
    return sum(lp[k, ex["ids"][k + 1]] for k in range(len(ex["ids"]) - 1) if ex["mask"][k + 1])


def dpo(policy_c, policy_r, ref_c, ref_r):
    """TRL's DPOTrainer.dpo_loss, loss_type "sigmoid", label_smoothing 0 (per pair)."""
    logits = (policy_c - policy_r) - (ref_c - ref_r)
    losses = -F.logsigmoid(BETA * logits)
    return losses, BETA * (policy_c - ref_c).detach(), BETA * (policy_r - ref_r).detach()


def dpo_loss(model, pairs, refs):
    pol = [(logp(model, c), logp(model, r)) for c, r in pairs]
    pc = torch.stack([p[0] for p in pol])
    pr = torch.stack([p[1] for p in pol])
    losses, rc, rr = dpo(pc, pr, refs[:, 0], refs[:, 1])
    return losses.mean(), losses, pc, pr, rc, rr


def randomise(method, params, rng):
    with torch.no_grad():
        for k, p in params.items():
            if k.endswith("lora_A.weight"):
                b = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.tensor(rng.uniform(-b, b, p.shape), dtype=DT))
            elif k.endswith("lora_B.weight"):
                p.copy_(torch.tensor(rng.normal(0, 0.1, p.shape), dtype=DT))
            elif method == "prefix":
                p.copy_(torch.tensor(rng.normal(0, 1.0, p.shape), dtype=DT))
            elif method == "freeze":
                p.add_(torch.tensor(rng.normal(0, 0.05, p.shape), dtype=DT))


def fd_check(model, params, grads, pairs, refs, rng, h=1e-5):
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
            lp = dpo_loss(model, pairs, refs)[0].item()
            flat[i] = x0 - h
            lm = dpo_loss(model, pairs, refs)[0].item()
            flat[i] = x0
            fd = (lp - lm) / (2 * h)
            rel = abs(fd - g[i].item()) / abs(g[i].item())
            assert rel < 1e-6, (k, i, fd, g[i].item(), rel)
            out.append(dict(key=k, index=i, grad=g[i].item(), finite_difference=fd, rel_error=rel))
    return out


def f32(t):
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in t.items()}


def run(method, cfg, sd, pairs, seed):
    d = os.path.join(OUT, method)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = mmr.make_hf(cfg, sd)
    with torch.no_grad():
        refs = torch.tensor([[logp(base, c).item(), logp(base, r).item()] for c, r in pairs], dtype=DT)
    model, params = mmr.build(method, cfg, sd, init_seed=seed)
    randomise(method, params, rng)
    loss, losses, pc, pr, rc, rr = dpo_loss(model, pairs, refs)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    for k, g in grads.items():
        assert g.abs().max() > 0, (method, k)
    fd = fd_check(model, params, grads, pairs, refs, rng)
    save_file(f32(params), os.path.join(d, "grad_params.safetensors"), metadata={"format": "pt"})
    save_file(f32(grads), os.path.join(d, "grad_grads.safetensors"), metadata={"format": "pt"})
    z = (BETA * ((pc - pr) - (refs[:, 0] - refs[:, 1]))).detach()
    ref = dict(description=__doc__.split("\n")[0], method=method, model="tiny_llama.gguf", seed=seed,
               beta=BETA, loss_type="sigmoid", label_smoothing=0.0,
               options=dict(lora=LORA, prefix=dict(num_virtual_tokens=mmr.NVT),
                            freeze=dict(layers=[1])).get(method),
               pairs=[dict(chosen=c, rejected=r) for c, r in pairs],
               ref_logps=refs.tolist(),
               policy_logps=[[a.item(), b.item()] for a, b in zip(pc, pr)],
               z=z.tolist(), losses=losses.tolist(), loss=loss.item(),
               rewards=dict(chosen=rc.mean().item(), rejected=rr.mean().item(),
                            accuracies=(rc > rr).to(DT).mean().item(),
                            margins=(rc - rr).mean().item()),
               finite_difference_checks=fd,
               layout="safetensors float32; keys and shapes as peft save_pretrained / transformers "
               "save them; q_proj/k_proj rows in Hugging Face order",
               versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                             peft=peft.__version__, numpy=np.__version__))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"{method:7s} loss {loss.item():.6f} z {[round(x, 4) for x in z.tolist()]} "
          f"fd max rel {max(c['rel_error'] for c in fd):.1e}")


def main():
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    cfg, w = mmr.load_tiny()
    sd = mmr.hf_state_dict(cfg, w)
    pairs = make_pairs(np.random.default_rng(SEED), cfg["n_vocab"])
    for i, method in enumerate(("lora", "prefix", "freeze")):
        run(method, cfg, sd, pairs, SEED + 100 * (i + 1))


if __name__ == "__main__":
    main()
