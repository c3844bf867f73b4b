"""finch on a Hugging Face model folder: the default GGUF saved by transformers.

transformers dequantizes the default Q4_1 GGUF to float32 and save_pretrained writes it as
an HF folder (config.json, model.safetensors, tokenizer files) to HF_DIR, once (default
~/.cache/finch/smollm2-hf, outside the repository). Then, on the shared prompts:
  - finch's token ids from the folder (tokenizer.json) equal transformers' tokenizer's from
    the same folder, and its ids from the GGUF after the folder's BOS: transformers 4.46
    converts this GGUF's tokenizer with a post-processor that prepends <|im_start|> (id 1)
    and add_bos_token true, where the GGUF says add_bos_token false, so the folder's ids
    start with one more 1;
  - finch's logits from the folder equal its logits from the GGUF: the folder holds the
    GGUF's weights dequantized exactly, so only the matmul path differs (TOL_SELF 1e-4);
  - finch's logits from the folder equal transformers' from the same folder (TOL 5e-4,
    float32 both, summation order only);
  - full fine-tuning's output folder (finch train --method full, a few steps: config.json
    and model.safetensors) loads in transformers, whose logits equal finch's on the
    model.gguf written beside it (TOL).

  python check_hf_folder.py --finch build/finch --logits .../finch_interop_logits \
      --model MODEL.gguf --work DIR [--hf-dir DIR]
"""
import os
import sys

import common

TOL_SELF = 1e-4
TOL = 5e-4


def save_folder(model, hf_dir):
    """Writes the folder unless a complete one is there (config.json is written last)."""
    if os.path.exists(os.path.join(hf_dir, "config.json")):
        return
    from transformers import AutoTokenizer
    m = common.load_hf_gguf(model)
    tmp = hf_dir + ".part"
    m.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                  gguf_file=os.path.basename(model)).save_pretrained(tmp)
    os.rename(tmp, hf_dir)


def main():
    args = common.parse_args(__doc__.splitlines()[0], lambda ap: ap.add_argument(
        "--hf-dir", default=os.path.expanduser("~/.cache/finch/smollm2-hf")))
    save_folder(args.model, args.hf_dir)
    ok = True

    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(args.hf_dir)
    seqs = [common.tokenize(args.finch, args.model, p) for p in common.PROMPTS]
    seqs_hf = [common.tokenize(args.finch, args.hf_dir, p) for p in common.PROMPTS]
    seqs_tf = [hf_tok(p).input_ids for p in common.PROMPTS]
    for what, want in (("transformers' tokenizer of the folder", seqs_tf),
                       ("finch's from the GGUF, with the folder's BOS", [[1] + s for s in seqs])):
        same_ids = seqs_hf == want
        print("  token ids, finch's from the folder vs %s, %d prompts (%d ids): %s"
              % (what, len(seqs), sum(map(len, want)), "equal: ok" if same_ids else "DIFFER: FAIL"))
        for p, a, b in zip(common.PROMPTS, seqs_hf, want):
            if a != b:
                print("    %r: finch %s, expected %s" % (p, a, b))
        ok &= same_ids

    from transformers import AutoModelForCausalLM
    import torch
    hf = AutoModelForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32)
    hf.eval()
    want = common.torch_logits(hf, seqs)
    got = common.finch_logits(args.logits, args.hf_dir, seqs, args.work)
    ok &= common.compare("finch folder vs finch GGUF",
                         got, common.finch_logits(args.logits, args.model, seqs, args.work),
                         TOL_SELF)
    ok &= common.compare("finch folder vs transformers folder", got, want, TOL)

    # full fine-tuning writes the tuned model as a transformers folder and a GGUF
    full = os.path.join(args.work, "full")
    common.run([args.finch, "train", "-m", args.model, "--data",
                os.path.join(os.path.dirname(__file__), "../../datasets/wordnet/train.jsonl"),
                "--chat", "--method", "full", "--learning-rate", "2e-5", "--max-steps", "3",
                "--batch-size", "2", "--max-seq-len", "64", "--save-steps", "0", "--out", full])
    tuned = AutoModelForCausalLM.from_pretrained(full, torch_dtype=torch.float32)
    tuned.eval()
    want = common.torch_logits(tuned, seqs)
    got = common.finch_logits(args.logits, os.path.join(full, "model.gguf"), seqs, args.work)
    base = common.finch_logits(args.logits, args.model, seqs, args.work)
    print("  full fine-tuning moved finch's logits by up to %.3g"
          % max(float(abs(g - b).max()) for g, b in zip(got, base)))
    ok &= common.compare("full fine-tuning: transformers folder vs finch model.gguf", got, want, TOL)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
