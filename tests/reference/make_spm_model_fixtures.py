#!/usr/bin/env python3
"""Fixtures for `finch quantize` on a folder with a SentencePiece tokenizer.model
(tests/tokenizer/test_tokenizer_spm_gguf.c, tests/export/test_quantize_hf.c).

Trains a small SentencePiece BPE model with the `sentencepiece` package (byte_fallback, the
Llama 2 piece layout: <unk> <s> </s>, then the 256 <0xXX> byte pieces, then merged pieces
and characters) on the lines of datasets/quotes and datasets/wordnet plus generated text,
converts it with transformers' LlamaTokenizerFast (convert_slow_tokenizer's LlamaConverter:
merges ordered by the pieces' scores, legacy=False: Metaspace pre-tokenizer, prepend_scheme
"first"), and writes a tiny LLaMA folder around it with random weights whose vocabulary
is the tokenizer's.

Output, tests/fixtures/hf_spm/:
  tiny_llama_spm/  config.json, model.safetensors (vocab V, hidden 16, 1 block, f32),
                   tokenizer.model, tokenizer.json, tokenizer_config.json
  ids.json         {"meta": {...}, "texts": [...], "tokenizers": [[ids], ...],
                    "sentencepiece": [[ids], ...], "scores": [piece scores]}: tokenizers'
                   encode(text, add_special_tokens=False).ids of LlamaTokenizerFast, and
                   sentencepiece's own encode(text) for comparison

Run with a venv holding sentencepiece, protobuf, transformers 4.46.3, tokenizers 0.20.3:
  python3 -m venv /tmp/spvenv && /tmp/spvenv/bin/pip install sentencepiece protobuf \
      transformers==4.46.3 tokenizers==0.20.3
  /tmp/spvenv/bin/python tests/reference/make_spm_model_fixtures.py
"""
import json
import os
import random
import struct
import tempfile

import sentencepiece as spm
import tokenizers
import transformers
from transformers import LlamaTokenizer, LlamaTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(HERE, "..", "fixtures", "hf_spm")
FOLDER = os.path.join(OUT, "tiny_llama_spm")
SEED = 7
VOCAB = 640

WORDS = ("the of and to in is was for that with as on by at from his her this which "
         "model token train data loss value function return print import class self "
         "café naïve résumé über straße").split()


def dataset_lines():
    lines = []
    for rel, keys in (("quotes/general.jsonl", ("prompt", "completion")),
                      ("wordnet/train.jsonl", ("prompt", "completion"))):
        with open(os.path.join(ROOT, "datasets", rel), encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                lines.append("".join(d[k] for k in keys))
    return lines


def test_texts(rng, lines):
    texts = rng.sample(lines, 400)
    for i in range(200):
        k = i % 5
        if k == 0:
            s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))
        elif k == 1:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 7))) for _ in range(3))
        elif k == 2:
            s = "".join(rng.choice("aeiouxyzÀÉõüçñßΑβγЖщ的一是🤖✨") for _ in range(rng.randint(1, 12)))
        elif k == 3:
            s = "  ".join(rng.choice(WORDS) for _ in range(3)) + rng.choice(["\n", "\t", "  "])
        else:
            s = rng.choice(WORDS).capitalize() + ", " + rng.choice(WORDS) + "!"
        texts.append(s)
    texts += ["", " ", "a", " a", "a ", "  leading", "trailing  ", "mid  dle", "tab\there",
              "new\nline", "<0x41>", "x▁y", "▁", "\U0010FFFF"]
    return texts


def safetensors(path, tensors):
    header, blobs, at = {}, [], 0
    for name, shape, values in tensors:
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_model(rng, V):
    C, F, H, KVH, D = 16, 32, 2, 1, 8

    def rnd(*shape):
        n = 1
        for s in shape:
            n *= s
        return [rng.gauss(0, 0.1) for _ in range(n)]

    t = [("model.embed_tokens.weight", [V, C], rnd(V, C)),
         ("model.norm.weight", [C], [1.0 + x for x in rnd(C)]),
         ("lm_head.weight", [V, C], rnd(V, C))]
    p = "model.layers.0."
    t += [(p + "input_layernorm.weight", [C], [1.0 + x for x in rnd(C)]),
          (p + "post_attention_layernorm.weight", [C], [1.0 + x for x in rnd(C)]),
          (p + "self_attn.q_proj.weight", [H * D, C], rnd(H * D, C)),
          (p + "self_attn.k_proj.weight", [KVH * D, C], rnd(KVH * D, C)),
          (p + "self_attn.v_proj.weight", [KVH * D, C], rnd(KVH * D, C)),
          (p + "self_attn.o_proj.weight", [C, H * D], rnd(C, H * D)),
          (p + "mlp.gate_proj.weight", [F, C], rnd(F, C)),
          (p + "mlp.up_proj.weight", [F, C], rnd(F, C)),
          (p + "mlp.down_proj.weight", [C, F], rnd(C, F))]
    safetensors(os.path.join(FOLDER, "model.safetensors"), t)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
           "hidden_size": C, "intermediate_size": F, "num_hidden_layers": 1,
           "num_attention_heads": H, "num_key_value_heads": KVH, "head_dim": D,
           "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "hidden_act": "silu", "torch_dtype": "float32"}
    with open(os.path.join(FOLDER, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    rng = random.Random(SEED)
    os.makedirs(FOLDER, exist_ok=True)
    lines = dataset_lines()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line.replace("\n", " ") + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "sp"), model_type="bpe",
            vocab_size=VOCAB, byte_fallback=True, character_coverage=0.9995,
            split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=1, seed_sentencepiece_size=100000, minloglevel=2)
        with open(os.path.join(tmp, "sp.model"), "rb") as f:
            model = f.read()
    with open(os.path.join(FOLDER, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(FOLDER, "tokenizer.model"))
    slow = LlamaTokenizer(os.path.join(FOLDER, "tokenizer.model"), legacy=False,
                          add_bos_token=True, add_eos_token=False)
    with tempfile.TemporaryDirectory() as tmp:
        slow.save_pretrained(tmp)
        fast = LlamaTokenizerFast.from_pretrained(tmp, from_slow=True, legacy=False)
        fast.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                j = json.load(f)
            with open(os.path.join(FOLDER, name), "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False, indent=1 if name != "tokenizer.json" else None)
    V = sp.get_piece_size()
    write_model(rng, V)
    tok = tokenizers.Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json"))
    texts = test_texts(rng, lines)
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    sp_ids = [sp.encode(t) for t in texts]
    same = sum(a == b for a, b in zip(ids, sp_ids))
    print(f"vocab {V}, {len(texts)} texts, tokenizers == sentencepiece on {same}")
    meta = {"sentencepiece": spm.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "seed": SEED, "vocab": V,
            "tokenizers_equals_sentencepiece": same}
    with open(os.path.join(OUT, "ids.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "texts": texts, "tokenizers": ids, "sentencepiece": sp_ids,
                   "scores": [sp.get_score(i) for i in range(V)]}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
