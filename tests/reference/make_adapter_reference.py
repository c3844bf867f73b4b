#!/usr/bin/env python3
"""Reference gradients, training runs and adapter folders of bottleneck adapters on the tiny
LLaMA fixture, computed by the AdapterHub `adapters` package itself in float64.

For each layout, as `adapters` 1.0.1 defines it on LLaMA (no layer norms around the adapter):
  adapter_houlsby     DoubleSeqBnConfig: after attention and after the FFN, swish, scaling 1
  adapter_sequential  SeqBnConfig: after the FFN (on the stream after the residual add), relu
  adapter_parallel    ParBnConfig: beside the FFN, from its input stream, relu, scaling 4
all with reduction_factor 4 (bottleneck 16 on the tiny model's 64) and init_weights
"mam_adapter", it writes tests/fixtures/methods/<name>/ exactly as make_methods_reference.py
does for the PEFT methods (grad case, real initialisation, 20 AdamW steps; gradients checked
by finite differences and against make_methods_reference.functional_loss, which writes the
three placements out by hand), and tests/fixtures/methods/peft_made/<name>/ (save_adapter's
adapter_config.json + adapter.safetensors with random non-zero weights) with the adapted
model's float64 logits in <name>_logits.json.

`adapters` 1.0.1 needs transformers 4.45, so it runs in its own environment, which
scripts/interop-env.sh makes (Debian's torch 1.13, transformers 4.45.2, adapters 1.0.1, peft):
  bash scripts/interop-env.sh
  ~/.cache/finch/venv-adapters/bin/python tests/reference/make_adapter_reference.py
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_lora_reference as mlr  # noqa: E402
import make_methods_reference as M  # noqa: E402

import adapters  # noqa: E402
import transformers  # noqa: E402

DT = torch.float64
RF = 4
LAYOUTS = {
    "adapter_houlsby": (lambda: adapters.DoubleSeqBnConfig(reduction_factor=RF, init_weights="mam_adapter"),
                        dict(place="houlsby", non_linearity="swish", scaling=1.0)),
    "adapter_sequential": (lambda: adapters.SeqBnConfig(reduction_factor=RF, init_weights="mam_adapter"),
                           dict(place="sequential", non_linearity="relu", scaling=1.0)),
    "adapter_parallel": (lambda: adapters.ParBnConfig(reduction_factor=RF),
                         dict(place="parallel", non_linearity="relu", scaling=4.0)),
}
_build, _randomise = M.build, M.randomise


def logits_of(model, ids):
    """transformers 4.45 returns float32 logits from a float64 model: the head is applied
    here instead, in float64."""
    return model.lm_head(model.model(input_ids=ids).last_hidden_state)


def build(method, cfg, sd, init_seed=0):
    if method not in LAYOUTS:
        return _build(method, cfg, sd, init_seed)
    model = M.make_hf(cfg, sd)
    adapters.init(model)
    torch.manual_seed(init_seed)
    model.add_adapter("finch", config=LAYOUTS[method][0]())
    model.train_adapter("finch")
    model.to(DT).eval()
    return model, {n: p for n, p in model.named_parameters() if p.requires_grad}


def randomise(method, sd, params, rng):
    if method not in LAYOUTS:
        return _randomise(method, sd, params, rng)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.tensor(rng.normal(0, 0.2, p.shape), dtype=DT))


def made(cfg, sd, method, seed):
    d = os.path.join(M.OUT, "peft_made")
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(0, cfg["n_vocab"], 8)[None])
    base = logits_of(M.make_hf(cfg, sd), ids)[0].detach()
    model, params = build(method, cfg, sd, seed)
    randomise(method, sd, params, rng)
    folder = os.path.join(d, method)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    model.float()
    model.save_adapter(folder, "finch", with_head=False, use_safetensors=True)
    model.double()
    cpath = os.path.join(folder, "adapter_config.json")
    cj = json.load(open(cpath))
    cj["model_name"] = "tests/fixtures/model/tiny_llama.gguf"
    with open(cpath, "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)
        f.write("\n")
    with torch.no_grad():
        lg = logits_of(model, ids)[0]
    moved = float((lg - base).abs().max())
    out = dict(description=f"{method} made by adapters {adapters.__version__} for "
               "tests/fixtures/model/tiny_llama.gguf (folder peft_made/" + method + "), and the "
               "adapted model's logits; made by tests/reference/make_adapter_reference.py",
               base="tiny_llama.gguf, Q/K rows in Hugging Face order; float64 forward",
               values="every adapter tensor ~ N(0, 0.2)", ids=ids[0].tolist(),
               n_vocab=cfg["n_vocab"],
               logits_format="logits[position][token], float64 forward rounded to float32",
               logits=lg.to(torch.float32).tolist(), max_abs_change_from_base=moved,
               versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                             adapters=adapters.__version__))
    with open(os.path.join(d, f"{method}_logits.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    return moved


def main():
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    M.build, M.randomise, M.logits_of = build, randomise, logits_of
    cfg, w = M.load_tiny()
    sd = M.hf_state_dict(cfg, w)
    brng = np.random.default_rng(M.SEED)
    batches = [mlr.batch(brng, cfg["n_vocab"]) for _ in range(3)]
    for i, (method, (_, opts)) in enumerate(LAYOUTS.items()):
        M.FUNC_OPTS[method] = opts
        M.LR[method] = 1e-2
        seed = M.SEED + 5000 + 100 * i
        grad, hist, shapes = M.run_method(method, cfg, sd, batches, seed)
        ref = dict(description=__doc__.split("\n")[0], method=method,
                   options=dict(config=type(LAYOUTS[method][0]()).__name__, reduction_factor=RF,
                                **opts, init="mam_adapter: adapter_down.0.weight kaiming-uniform "
                                "(torch.manual_seed(seed)), the rest 0",
                                grad_values="N(0, 0.2)"),
                   model="tiny_llama.gguf", seed=seed,
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                                 adapters=adapters.__version__, numpy=np.__version__),
                   layout="safetensors float32; keys as adapters' save_adapter writes them",
                   loss="mean cross-entropy over target positions, -1 ignored", dropout=0.0,
                   tensors=shapes, grad=grad,
                   train=dict(steps=M.STEPS, lr=M.LR[method], warmup=M.WARMUP, schedule="linear",
                              weight_decay=M.WD, weight_decay_applies_to="weights, not biases "
                              "(transformers' Trainer grouping)", betas=list(M.BETAS), eps=M.EPS,
                              max_grad_norm=M.CLIP, batches="two, alternating (history[s].ids)",
                              history=hist))
        with open(os.path.join(M.OUT, method, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        moved = made(cfg, sd, method, seed + 1)
        print(f"{method}: grad loss {grad['loss']:.6f} (fd rel err max "
              f"{max(c['rel_error'] for c in grad['finite_difference_checks']):.1e}, functional "
              f"{grad['functional_check_max_rel_diff']:.1e}); train loss "
              + " ".join(f"{h['loss']:.4f}" for h in hist) + f"; made: logits move {moved:.3g}")


if __name__ == "__main__":
    main()
