"""Adapters between finch and Hugging Face peft, both ways, on the default model.

  a. finch -> peft: `finch train` a LoRA (r 8, all seven projections, so the Q/K row
     permutation of lora_B is exercised) on datasets/wordnet for a few steps; peft loads
     the folder with PeftModel.from_pretrained over transformers' dequantized base, and its
     logits must equal finch's with --adapter.
  b. peft -> finch: peft makes a LoRA (r 8, alpha 16, seven projections) with random
     non-zero A and B, saves it with save_pretrained; finch loads it and its logits must
     equal peft's.
  c. the same both ways for DoRA (use_dora, seven projections), (IA)^3 (k, v, down), prompt
     tuning and prefix tuning (8 virtual tokens): finch trains each for a few steps and peft
     loads it; peft makes each with random weights (DoRA magnitudes off their row norms,
     (IA)^3 vectors off one, prompt rows and prefix keys/values random) and finch loads it.

Both sides dequantize Q4_1 exactly and compute in float32, so they differ by summation
order only: TOL is 5e-4 on logits of magnitude ~20 (measured 6e-5 to 1.2e-4). A wrong Q/K row order
or scale moves logits by O(1). Prompt and prefix tuning with random virtual rows, keys and
values put activations far larger than the model's own through every layer, and float32
rounding grows with them (peft's own float32 logits are off its float64 ones by up to 1.5e-3
there): those are compared with peft in float64 instead, and finch must be within
max(TOL, 3 x peft float32's own error). The adapter's own effect (adapter vs base logits) is printed
too, to show the comparison is not vacuous.

  python check_peft.py --finch build/finch --logits .../finch_interop_logits \
      --model MODEL.gguf --work DIR [--data datasets/wordnet/train.jsonl]
"""
import os
import sys

import numpy as np

import common

TOL = 5e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unwrap(pm):
    """The base model again: tuners undo their layers; prompt learning never changed it."""
    return pm.base_model if pm.peft_config["default"].is_prompt_learning else pm.unload()


def compare(method, label, pm, seqs, got, want):
    """finch's logits against peft's (float32); for prompt and prefix tuning against peft in
    float64, within max(TOL, 3 x peft float32's own distance from it)."""
    if method not in ("prompt", "prefix"):
        return common.compare(label + ": finch vs peft", got, want, TOL)
    import torch
    pm.double()
    with torch.no_grad():
        w64 = [pm(torch.tensor([s])).logits[0, -len(s):].double().numpy() for s in seqs]
    pm.float()
    own = max(float(np.abs(w - v).max()) for w, v in zip(want, w64))
    print("  %s: peft float32 vs peft float64: max |diff| %.3g" % (label, own))
    return common.compare(label + ": finch vs peft float64", got, w64, max(TOL, 3 * own))


def main():
    args = common.parse_args(__doc__.splitlines()[0], lambda ap: ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../datasets/wordnet/train.jsonl")))
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    seqs = [common.tokenize(args.finch, args.model, p) for p in common.PROMPTS]
    base_hf = common.load_hf_gguf(args.model)
    base_logits = common.torch_logits(base_hf, seqs)
    ok = common.compare("base: finch vs transformers", common.finch_logits(
        args.logits, args.model, seqs, args.work), base_logits, TOL)

    # a. finch-trained adapter in peft.
    trained = os.path.join(args.work, "finch_trained")
    common.run([args.finch, "train", "-m", args.model, "--data", args.data, "--chat",
                "--target-modules", "q,k,v,o,gate,up,down", "--lora-r", "8", "--lora-alpha", "16",
                "--lora-dropout", "0", "--learning-rate", "5e-3", "--max-steps", "4",
                "--batch-size", "2", "--max-seq-len", "64", "--seed", "7", "--out", trained])
    pm = PeftModel.from_pretrained(base_hf, trained)
    pm.eval()
    want = common.torch_logits(pm, seqs)
    got = common.finch_logits(args.logits, args.model, seqs, args.work, [trained])
    print("  a. finch-trained adapter moves peft's logits by up to %.3g from the base"
          % max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits)))
    ok &= common.compare("a. finch-trained adapter: finch vs peft", got, want, TOL)
    base_hf = pm.unload()  # the base without LoRA layers, for b.

    # b. peft-made adapter in finch.
    torch.manual_seed(20241123)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(base_hf, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    pm.eval()
    made = os.path.join(args.work, "peft_made")
    pm.save_pretrained(made)
    want = common.torch_logits(pm, seqs)
    got = common.finch_logits(args.logits, args.model, seqs, args.work, [made])
    print("  b. peft-made adapter moves peft's logits by up to %.3g from the base"
          % max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits)))
    ok &= common.compare("b. peft-made adapter: finch vs peft", got, want, TOL)
    base_hf = pm.unload()

    # c. DoRA and (IA)^3, both ways.
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig
    methods = [("dora", ["--target-modules", "all-linear", "--lora-r", "8", "--lora-alpha", "16",
                         "--lora-dropout", "0", "--learning-rate", "5e-3"],
                LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                           use_dora=True, task_type="CAUSAL_LM")),
               ("ia3", ["--learning-rate", "3e-2"],
                IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                          feedforward_modules=["down_proj"], task_type="CAUSAL_LM")),
               ("prompt", ["--num-virtual-tokens", "8", "--prompt-init", "vocab",
                           "--learning-rate", "3e-2"],
                PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")),
               ("prefix", ["--num-virtual-tokens", "8", "--learning-rate", "1e-2"],
                PrefixTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM"))]
    for name, flags, cfg in methods:
        trained = os.path.join(args.work, "finch_" + name)
        common.run([args.finch, "train", "-m", args.model, "--data", args.data, "--chat",
                    "--method", name, *flags, "--max-steps", "4", "--batch-size", "2",
                    "--max-seq-len", "64", "--seed", "7", "--out", trained])
        pm = PeftModel.from_pretrained(base_hf, trained)
        pm.eval()
        want = common.torch_logits(pm, seqs)
        got = common.finch_logits(args.logits, args.model, seqs, args.work, [trained])
        print("  c. finch-trained %s moves peft's logits by up to %.3g from the base"
              % (name, max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits))))
        ok &= compare(name, "c. finch-trained %s" % name, pm, seqs, got, want)
        base_hf = unwrap(pm)

        torch.manual_seed(20241124)
        pm = get_peft_model(base_hf, cfg)
        with torch.no_grad():
            for pname, p in pm.named_parameters():
                if "lora_A" in pname or "lora_B" in pname:
                    p.copy_(torch.randn_like(p) * 0.05)
                elif "lora_magnitude_vector" in pname:
                    p.mul_(1 + 0.2 * (torch.rand_like(p) - 0.5))
                elif "ia3_l" in pname:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif "prompt_encoder" in pname:
                    p.copy_(torch.randn_like(p) * 0.5)
        pm.eval()
        made = os.path.join(args.work, "peft_" + name)
        pm.save_pretrained(made)
        want = common.torch_logits(pm, seqs)
        got = common.finch_logits(args.logits, args.model, seqs, args.work, [made])
        print("  c. peft-made %s moves peft's logits by up to %.3g from the base"
              % (name, max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits))))
        ok &= compare(name, "c. peft-made %s" % name, pm, seqs, got, want)
        base_hf = unwrap(pm)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
