#!/usr/bin/env python3
"""Writes a Gemma 3 style Hugging Face tokenizer (tokenizer.json, tokenizer_config.json and,
with --model, tokenizer.model) from the SentencePiece vocabulary of a GGUF file, for the
real-model check of `finch quantize` on SentencePiece folders (README, "Quantize").

  python gguf_spm_to_hf_tokenizer.py MODEL.gguf FOLDER [--model]

tokenizer.json is what transformers' GemmaConverter makes of Gemma's tokenizer.model:
normalizer Replace(" ", "▁"), pre-tokenizer Split(" ", MergedWithPrevious), BPE with
byte_fallback whose merges are every split of a piece into two pieces, ordered by the
merged piece's score, highest first (ties by id), as its SentencePieceExtractor orders them;
control and unknown pieces are special added tokens, user-defined pieces non-special ones;
decoder Replace("▁", " "), ByteFallback, Fuse. tokenizer.model (--model) is a ModelProto
holding the pieces with their scores and types (trainer_spec: model_type BPE, byte_fallback,
the unk/bos/eos/pad ids; normalizer_spec.add_dummy_prefix false; field numbers of
sentencepiece_model.proto), written here with a few lines of protobuf
encoding. Run with ~/.cache/finch/venv/bin/python (gguf, tokenizers).
"""
import json
import os
import struct
import sys

import gguf
from tokenizers import Tokenizer


def field(r, key):
    f = r.get_field(key)
    return None if f is None else f


def strings(f):
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def scalars(f):
    return [f.parts[i].tolist()[0] for i in f.data]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def model_proto(tokens, scores, types, ids):
    out = bytearray()
    for t, s, ty in zip(tokens, scores, types):
        piece = pb_bytes(1, t.encode("utf-8")) + varint(2 << 3 | 5) + struct.pack("<f", s)
        if ty != 1:
            piece += varint(3 << 3 | 0) + varint(ty)
        out += pb_bytes(1, piece)
    # trainer_spec: model_type BPE (3), byte_fallback (35), unk/bos/eos/pad ids (40..43)
    spec = varint(3 << 3) + varint(2) + varint(35 << 3) + varint(1)
    for num, i in zip((40, 41, 42, 43), ids):
        spec += varint(num << 3) + varint(i)
    out += pb_bytes(2, spec)
    out += pb_bytes(3, varint(3 << 3 | 0) + varint(0))  # add_dummy_prefix = false
    return bytes(out)


def main():
    src, folder = sys.argv[1], sys.argv[2]
    with_model = "--model" in sys.argv[3:]
    r = gguf.GGUFReader(src)
    tokens = strings(field(r, "tokenizer.ggml.tokens"))
    scores = scalars(field(r, "tokenizer.ggml.scores"))
    types = scalars(field(r, "tokenizer.ggml.token_type"))

    def scalar(key, default=None):
        f = field(r, key)
        return default if f is None else f.parts[-1].tolist()[0]

    vocab = {t: i for i, t in enumerate(tokens)}
    normal = [i for i, ty in enumerate(types) if ty in (1, 6)]
    merges = []
    for i in sorted(normal, key=lambda i: (-scores[i], i)):
        t = tokens[i]
        if types[i] != 1:
            continue
        local = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": types[i] != 4}
             for i, ty in enumerate(types) if ty in (2, 3, 4)]
    unk = scalar("tokenizer.ggml.unknown_token_id", 3)
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
         "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
         "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                           "behavior": "MergedWithPrevious", "invert": False},
         "post_processor": None,
         "decoder": {"type": "Sequence", "decoders": [
             {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
             {"type": "ByteFallback"}, {"type": "Fuse"}]},
         "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk],
                   "continuing_subword_prefix": None, "end_of_word_suffix": None,
                   "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                   "vocab": vocab, "merges": [list(m) for m in merges]}}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    Tokenizer.from_file(path)  # the library reads it
    tmpl = field(r, "tokenizer.chat_template")
    cfg = {"add_bos_token": bool(scalar("tokenizer.ggml.add_bos_token", True)),
           "add_eos_token": bool(scalar("tokenizer.ggml.add_eos_token", False)),
           "bos_token": tokens[scalar("tokenizer.ggml.bos_token_id", 2)],
           "eos_token": tokens[scalar("tokenizer.ggml.eos_token_id", 1)],
           "unk_token": tokens[unk],
           "pad_token": tokens[scalar("tokenizer.ggml.padding_token_id", 0)],
           "tokenizer_class": "GemmaTokenizer"}
    if tmpl is not None:
        cfg["chat_template"] = bytes(tmpl.parts[-1]).decode("utf-8")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    if with_model:
        with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
            ids = [unk] + [scalar(f"tokenizer.ggml.{k}_token_id", d)
                           for k, d in (("bos", 2), ("eos", 1), ("padding", 0))]
            f.write(model_proto(tokens, scores, types, ids))
    elif os.path.exists(os.path.join(folder, "tokenizer.model")):
        os.remove(os.path.join(folder, "tokenizer.model"))
    print(f"{folder}: {len(tokens)} tokens, {len(merges)} merges, {len(added)} added tokens"
          f"{', tokenizer.model' if with_model else ''}")


if __name__ == "__main__":
    main()
