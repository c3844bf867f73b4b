"""finch's bottleneck adapters on GPT-2 in AdapterHub's `adapters` package.

On tests/fixtures/model/tiny_gpt2/ (made by tests/reference/make_gpt2_fixtures.py):
`finch train --method adapter` (houlsby, sequential, parallel) for 8 steps writes
adapter_config.json (model_class GPT2LMHeadModel) and adapter.safetensors (keys
transformer.h.{l}.{attention|output}_adapters...); adapters' load_adapter reads the folder
into transformers' float64 GPT-2, whose logits must equal finch's with --adapter within TOL
(measured ~1e-6; the adapters move the logits by 2 to 3).

Runs in $FINCH_CACHE/venv-adapters (adapters 1.0.1 needs transformers 4.45).

  python check_gpt2_adapters.py --finch build/finch --logits .../finch_interop_logits \\
      --model ANY --work DIR
"""
import os
import sys

import numpy as np

import common

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "..", "fixtures", "model", "tiny_gpt2")
SEQS = [[5, 17, 33, 42, 8, 90, 61, 3],
        [7, 3, 91, 60, 60, 12, 35, 81, 2, 49, 18, 94, 27, 66, 5, 40, 11, 73, 58, 30]]
TOL = 5e-5


def main():
    import adapters
    import torch
    import transformers
    transformers.utils.logging.set_verbosity_error()
    args = common.parse_args(__doc__.split("\n")[0])
    data = os.path.join(args.work, "train.jsonl")
    with open(data, "w") as f:
        for k in range(8):
            f.write('{"prompt": "the cat %d is", "completion": " singing and %d"}\n' % (k, 7 * k))
    base = common.finch_logits(args.logits, FOLDER, SEQS, args.work)
    ok = True
    for layout in ("houlsby", "sequential", "parallel"):
        run = os.path.join(args.work, layout)
        common.run([args.finch, "train", "-m", FOLDER, "--method", "adapter", "--adapter-type",
                    layout, "--out", run, "--data", data, "--max-steps", "8",
                    "--learning-rate", "2e-2", "--batch-size", "4", "--max-seq-len", "32"])
        mine = common.finch_logits(args.logits, FOLDER, SEQS, args.work, adapters=[run])
        moved = max(float(np.abs(a - b).max()) for a, b in zip(mine, base))
        print("%s: the adapter moves finch's logits by %.3g" % (layout, moved))
        ok &= moved > 0.1
        m = transformers.GPT2LMHeadModel.from_pretrained(FOLDER, attn_implementation="eager")
        adapters.init(m)
        m.set_active_adapters(m.load_adapter(run, use_safetensors=True))
        m = m.double().eval()
        with torch.no_grad():
            ref = [m(torch.tensor([s])).logits[0].float().numpy() for s in SEQS]
        ok &= common.compare(layout + ", adapters vs finch", ref, mine, TOL)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
