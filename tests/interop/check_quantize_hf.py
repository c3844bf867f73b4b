"""`finch quantize FOLDER OUT.gguf` (a Hugging Face folder to GGUF) against llama.cpp.

The folder is $FINCH_CACHE/smollm2-hf (f32, transformers' save of the default model's
dequantized Q4_1 values; --hf-dir). For each of f32, q8_0 and q4_k_m finch writes a GGUF
from the folder, and:

  - llama.cpp (llama-cpp-python) loads it; its metadata keys are listed against the
    default GGUF's (the differences printed with their values: the folder's
    tokenizer_config.json and tokenizer.json, which transformers wrote from that GGUF, say
    otherwise in places);
  - every tensor equals, byte for byte, the one `finch quantize DEFAULT.gguf --type T`
    writes from the default GGUF (same names, types and data: the folder's f32 values are
    that GGUF's dequantized weights, and its q/k rows return to GGUF order);
  - llama.cpp tokenizes every test text (tests/fixtures/tokenizer: 1,000+ lines) with the
    written vocabulary to the ids the `tokenizers` library gives for the folder's
    tokenizer.json (asserted), and the counts of lines whose ids differ from llama.cpp's on
    the default GGUF are printed;
  - llama.cpp's logits on the prompts against finch's on the folder (exact numerics):
    within F32_TOL for f32, printed for the quantized types; the greedy text of
    `finch generate` on the folder equals llama.cpp's on the f32 file; and llama.cpp's
    logits and greedy text on each written file equal (exactly) its own on finch's
    quantization of the default GGUF (whose tensor types, bytes and generation check_quantize.py compares with
    llama-quantize's and finch's).

  python check_quantize_hf.py --finch build/finch --logits .../finch_interop_logits \
      --model DEFAULT.gguf --work DIR --hf-dir FOLDER
"""
import json
import os
import sys
import unicodedata

import numpy as np

import check_llamacpp as cl
import common

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
TYPES = ["f32", "q8_0", "q4_k_m"]
F32_TOL = 3e-2  # llama.cpp's f32 graph against finch's exact forward, same weights


def texts():
    out = []
    with open(os.path.join(FIX, "tokenizer", "smollm2_ids.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            if i > 0 and "text" in d:
                out.append(d["text"])
    with open(os.path.join(FIX, "tokenizer-hf", "ids.json"), encoding="utf-8") as f:
        out += json.load(f)["texts"]
    return list(dict.fromkeys(out))


def kvs(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    res = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types[0].name == "ARRAY":
            v = ("array", len(f.data))
        elif f.types[0].name == "STRING":
            v = bytes(f.parts[-1]).decode("utf-8", "replace")
        else:
            v = f.parts[-1].tolist()
        res[k] = v
    return r, res


def llama_logits(model, seqs):
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_ctx=256, n_threads=os.cpu_count(), verbose=False,
                logits_all=True, seed=0)
    out = []
    for s in seqs:
        llm.reset()
        llm.eval(s)
        out.append(np.array(llm.scores[:len(s)], dtype=np.float32))
    return out


def llama_text(model, prompt):
    """llama.cpp's greedy text after BOS and the prompt (the two files differ in add_bos)."""
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_ctx=256, n_threads=os.cpu_count(), verbose=False, seed=0)
    ids = [llm.token_bos()] + llm.tokenize(prompt.encode(), add_bos=False, special=True)
    out = llm.create_completion(ids, max_tokens=cl.N_PREDICT, temperature=0.0, top_k=1)
    return out["choices"][0]["text"]


def main():
    def extra(ap):
        ap.add_argument("--hf-dir", required=True, help="the SmolLM2 Hugging Face folder")
    args = common.parse_args(__doc__.splitlines()[0], extra)
    from llama_cpp import Llama
    from tokenizers import Tokenizer
    ok = True
    lines = texts()
    hf = Tokenizer.from_file(os.path.join(args.hf_dir, "tokenizer.json"))
    want = [hf.encode(t, add_special_tokens=False).ids for t in lines]
    orig = Llama(model_path=args.model, vocab_only=True, verbose=False)
    orig_ids = [orig.tokenize(t.encode(), add_bos=False, special=True) for t in lines]
    _, orig_kv = kvs(args.model)
    seqs = [orig.tokenize(p.encode(), add_bos=False, special=True) for p in common.PROMPTS]
    finch_folder = common.finch_logits(args.logits, args.hf_dir, seqs, args.work)
    for t in TYPES:
        out = os.path.join(args.work, "folder-%s.gguf" % t)
        ref = os.path.join(args.work, "gguf-%s.gguf" % t)
        common.run([args.finch, "quantize", args.hf_dir, out, "--type", t, "--force"])
        common.run([args.finch, "quantize", args.model, ref, "--type", t, "--force"])
        print("== %s" % t)
        r, kv = kvs(out)
        diff = sorted(k for k in set(kv) | set(orig_kv)
                      if kv.get(k) != orig_kv.get(k) and k != "general.file_type")
        print("  metadata: %d keys (default GGUF %d); differing or missing: %d" %
              (len(kv), len(orig_kv), len(diff)))
        for k in diff:
            print("    %-40s finch %-24.60r default GGUF %.60r" % (k, kv.get(k), orig_kv.get(k)))
        rr, _ = kvs(ref)
        a = {x.name: x for x in r.tensors}
        b = {x.name: x for x in rr.tensors}
        same = [n for n in a if n in b and a[n].tensor_type == b[n].tensor_type
                and np.asarray(a[n].data).tobytes() == np.asarray(b[n].data).tobytes()]
        good = sorted(a) == sorted(b) and len(same) == len(a)
        print("  tensors: %d, equal (type and bytes) to finch's from the default GGUF: %d: %s"
              % (len(a), len(same), "ok" if good else "FAIL"))
        ok &= good
        voc = Llama(model_path=out, vocab_only=True, verbose=False)
        got = [voc.tokenize(x.encode(), add_bos=False, special=True) for x in lines]
        bad = [i for i in range(len(lines)) if got[i] != want[i]]
        vs_orig = [i for i in range(len(lines)) if got[i] != orig_ids[i]]
        print("  tokenizer: %d texts, llama.cpp ids equal to tokenizers' on the folder: %d"
              % (len(lines), len(lines) - len(bad)))
        print("    equal to llama.cpp's on the default GGUF: %d (the others: %d, %d with a "
              "number character, which the folder's tokenizer.json, lacking SmolLM2's Digits "
              "step, keeps in runs)"
              % (len(lines) - len(vs_orig), len(vs_orig),
                 sum(1 for i in vs_orig if any(unicodedata.category(c)[0] == "N"
                                               for c in lines[i]))))
        # llama.cpp's regex classes put C0 controls elsewhere than Oniguruma's (U+001C..U+001F
        # are whitespace to llama.cpp, not to Unicode White_Space): the same split differs
        odd = [i for i in bad if not any(unicodedata.category(c) == "Cc" and c not in "\t\n\r"
                                         for c in lines[i])]
        print("    the %d differing from tokenizers' all hold C0 control characters, which "
              "llama.cpp's regex classes treat otherwise than the tokenizers library's: %s"
              % (len(bad), "ok" if not odd else "FAIL %r" % lines[odd[0]][:60]))
        ok &= not odd
        del voc
        lg = llama_logits(out, seqs)
        if t == "f32":
            ok &= common.compare("llama.cpp on the f32 file vs finch on the folder", lg,
                                 finch_folder, F32_TOL)
        else:
            common.compare("llama.cpp on the %s file vs finch on the folder (f32; not asserted)"
                           % t, lg, finch_folder, 1e9)
        # the same weights in both files: llama.cpp must compute the same logits and text
        ok &= common.compare("llama.cpp on the %s file vs on finch's %s of the default GGUF"
                             % (t, t), lg, llama_logits(ref, seqs), 0.0)
        for p in cl.PROMPTS:
            a_text, b_text = llama_text(out, p), llama_text(ref, p)
            print("  greedy %r: %r, %s" % (p, a_text, "the same from the default GGUF's file: ok"
                                           if a_text == b_text else "otherwise: FAIL %r" % b_text))
            ok &= a_text == b_text
            # finch on the folder (BOS added: the folder's tokenizer_config.json asks for it)
            f_text = common.run([args.finch, "generate", "-m", args.hf_dir, "-p", p, "-n",
                                 str(cl.N_PREDICT)])
            same_text = f_text.rstrip("\n") == a_text.rstrip("\n")
            print("    finch generate on the folder: %r: %s" % (
                f_text, "equal" if same_text else "differs (%s)" % (
                    "FAIL" if t == "f32" else "not asserted: another storage type")))
            if t == "f32":
                ok &= same_text
        os.remove(out)
        os.remove(ref)
    print("quantize from a folder vs llama.cpp: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
