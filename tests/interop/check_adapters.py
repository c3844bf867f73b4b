"""Bottleneck adapters between finch and AdapterHub's `adapters` package, both ways, on the
default model.

  a. finch -> adapters: `finch train --method adapter` (houlsby, sequential, parallel) for a
     few steps on datasets/wordnet; adapters' load_adapter reads the folder into transformers'
     dequantized base, and its logits must equal finch's with --adapter.
  b. adapters -> finch: adapters makes each layout with random non-zero weights and saves
     it with save_adapter(use_safetensors=True); finch loads it and its logits must equal
     adapters'.

The `adapters` package (1.0.1) needs transformers 4.45, so this check runs in its own
environment ($FINCH_CACHE/venv-adapters, which scripts/interop-env.sh makes). Tolerance as check_peft.py.

  python check_adapters.py --finch build/finch --logits .../finch_interop_logits \\
      --model MODEL.gguf --work DIR [--data datasets/wordnet/train.jsonl]
"""
import os
import sys

import numpy as np

import common

TOL = 5e-4
LAYOUTS = ("houlsby", "sequential", "parallel")


def torch_logits(m, seqs):
    """transformers 4.45 returns float32 logits; the head is applied here as in 4.46."""
    import torch
    with torch.no_grad():
        return [m.lm_head(m.model(input_ids=torch.tensor([s])).last_hidden_state)[0].float().numpy()
                for s in seqs]


def main():
    args = common.parse_args(__doc__.splitlines()[0], lambda ap: ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../datasets/wordnet/train.jsonl")))
    import adapters
    import torch

    seqs = [common.tokenize(args.finch, args.model, p) for p in common.PROMPTS]
    model = common.load_hf_gguf(args.model)
    base_logits = torch_logits(model, seqs)
    adapters.init(model)
    ok = True
    configs = {"houlsby": adapters.DoubleSeqBnConfig(), "sequential": adapters.SeqBnConfig(),
               "parallel": adapters.ParBnConfig(reduction_factor=16)}
    for layout in LAYOUTS:
        trained = os.path.join(args.work, "finch_" + layout)
        common.run([args.finch, "train", "-m", args.model, "--data", args.data, "--chat",
                    "--method", "adapter", "--adapter-type", layout, "--learning-rate", "3e-3",
                    "--max-steps", "4", "--batch-size", "2", "--max-seq-len", "64", "--seed", "7",
                    "--out", trained])
        name = model.load_adapter(trained, use_safetensors=True)
        model.set_active_adapters(name)
        model.eval()
        want = torch_logits(model, seqs)
        got = common.finch_logits(args.logits, args.model, seqs, args.work, [trained])
        print("  a. finch-trained %s moves adapters' logits by up to %.3g from the base"
              % (layout, max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits))))
        ok &= common.compare("a. finch-trained %s: finch vs adapters" % layout, got, want, TOL)
        model.delete_adapter(name)

        torch.manual_seed(20241206)
        model.add_adapter("made_" + layout, config=configs[layout])
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if ".made_" + layout + "." in pname:
                    p.copy_(torch.randn_like(p) * 0.02)
        model.set_active_adapters("made_" + layout)
        model.eval()
        made = os.path.join(args.work, "adapters_" + layout)
        model.save_adapter(made, "made_" + layout, with_head=False, use_safetensors=True)
        want = torch_logits(model, seqs)
        got = common.finch_logits(args.logits, args.model, seqs, args.work, [made])
        print("  b. adapters-made %s moves its logits by up to %.3g from the base"
              % (layout, max(float(np.abs(w - b).max()) for w, b in zip(want, base_logits))))
        ok &= common.compare("b. adapters-made %s: finch vs adapters" % layout, got, want, TOL)
        model.delete_adapter("made_" + layout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
