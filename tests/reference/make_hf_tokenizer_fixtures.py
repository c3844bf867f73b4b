#!/usr/bin/env python3
"""Reference fixtures for finch's tokenizer.json loader (src/tokenizer/hf_json.c).

Trains tiny byte-level BPEs with the Hugging Face `tokenizers` library on the text lines of
tests/fixtures/tokenizer/smollm2_ids.jsonl, saves each as a tokenizer.json of a different
style, and records the ids `tokenizers` gives on varied strings and what it decodes them
to. Output, in tests/fixtures/tokenizer-hf/:

  <name>.tokenizer.json          the tokenizer (small: a few hundred tokens)
  <name>.tokenizer_config.json   for some of them: bos/eos, add_bos_token, chat_template
  nfc.json                       [{"text", "nfc"}]: the library's NFC normalizer on every
                                 character that decomposes, their decompositions, and
                                 random mixes of starters and combining marks
  ids.json                       {"texts": [...], "tokenizers": {name: [{"ids", "ids_add",
                                 "decoded"}, ...]}}: ids = encode(text,
                                 add_special_tokens=False) (added tokens split out),
                                 ids_add = encode(text) (post-processor applied), decoded =
                                 decode(ids, skip_special_tokens=False)

Styles: gpt2 (ByteLevel with its regex; two byte characters removed from the vocabulary,
unk_token with fuse_unk), gpt2_prefix (add_prefix_space; the same bytes removed, no
unk_token), llama3 (Split +
ByteLevel without regex, ignore_merges, TemplateProcessing adding BOS), qwen2 (its Split
regex, the NFC normalizer in a Sequence), smollm (Digits + ByteLevel, merges written as
"a b" strings, added tokens with lstrip/rstrip and a non-special one).

With --smollm2-gguf PATH (default: finch's default model) it also writes, to --smollm2-out
(default /tmp/hf-smollm2), a tokenizer.json equivalent to that GGUF's tokenizer (vocab and
merges from the GGUF, the pre-tokenizer of SmolLM2's own tokenizer.json), not committed
(about 2 MB), and checks that `tokenizers` gives the llama.cpp ids of smollm2_ids.jsonl
with it. tests/tokenizer/test_tokenizer_hf.c then checks finch against the same ids when
FINCH_HF_SMOLLM2 names that folder.

Needs: pip install tokenizers (and gguf for the SmolLM2 part).
"""
import argparse
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers
from tokenizers import AddedToken

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FIX, "tokenizer-hf")

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
            r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def corpus_lines():
    lines = []
    with open(os.path.join(FIX, "tokenizer", "smollm2_ids.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            if i > 0 and "text" in d:
                lines.append(d)
    return lines


def test_texts(lines):
    with open(os.path.join(FIX, "tokenizer", "tiny_ids.json"), encoding="utf-8") as f:
        texts = list(json.load(f)["texts"])
    texts += [d["text"] for d in lines[::15]]  # every 15th line: ~75 varied lines
    texts += ["<tool>x <tool> y  <tool>  z", "a <|im_start|> b <|im_end|>\n c", "  <tool>",
              "<|im_end|><|im_end|>", "<tool>", " \t<tool>\u3000x", "hello<|endoftext|>world",
              # for NFC: decomposed letters, marks out of order, Hangul jamo, singletons
              "Cafe\u0301 cre\u0300me bru\u0302le\u0301e", "a\u0301\u0323 a\u0323\u0301",
              "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af",
              "\u212b \u2126 \u0958 \u0344 \u0301a", "\u00c5\u0301 e\u0304\u0301 Ω\u0301",
              # bytes some vocabularies lack: the unknown token, or nothing
              "\x04", "a\x04\x06b \x06", "\x04\x04 x\x04y"]
    return texts


def nfc_cases():
    """Strings and the library's NFC of them: every character that decomposes, the
    decompositions of the composites, and random mixes of starters and marks."""
    import random
    import unicodedata as ud
    norm = normalizers.NFC()
    decomposable = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
                    and ud.normalize("NFD", chr(c)) != chr(c)]
    cases = ["".join(decomposable[i:i + 40]) for i in range(0, len(decomposable), 40)]
    nfd = [ud.normalize("NFD", c) for c in decomposable]
    cases += ["".join(nfd[i:i + 40]) for i in range(0, len(nfd), 40)]
    rng = random.Random(5)
    pool = ("aeouAEOUnNcCsSzZ\u03b1\u03c9\u0391\u0415\u0438\u05d0\u0915\u0928\u09c7"
            "\u0b47\u0bc6\u0d46\u1100\u1161\u11a8\uac00\u30ab\u3099\u309a\u0300"
            "\u0301\u0302\u0303\u0308\u0323\u0327\u0328\u0334\u0345\u05b0\u093c"
            "\u09be\u0b3e\u0bbe\u0d3e\u0f71\u0f72\u0f80\u1dc0\u20d0\u302a\u0338 x"
            "\U00011099\U000110ba\U00011131\U00011127\U0001d165\U0001d16e\u07fd\u0898")
    for _ in range(400):
        cases.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 10))))
    return [{"text": c, "nfc": norm.normalize_str(c)} for c in cases]


def train(pre, vocab_size, specials, lines, extra=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials)
    tok.train_from_iterator([d["text"] for d in lines], trainer)
    if extra:
        tok.add_tokens(extra)
    return tok


def drop_bytes(t, unk, fuse):
    """The tokenizer without the characters of bytes 0x04 and 0x06 (as SmolLM2's vocabulary
    lacks some bytes), with unk as model.unk_token."""
    j = json.loads(t.to_str())
    for ch in ("\u0104", "\u0106"):  # bytes 0x04, 0x06 in the byte-level alphabet
        assert not any(ch in (m if isinstance(m, str) else "".join(m))
                       for m in j["model"]["merges"])
        del j["model"]["vocab"][ch]
    j["model"]["unk_token"] = unk
    j["model"]["fuse_unk"] = fuse
    return Tokenizer.from_str(json.dumps(j))


def build(lines):
    toks = {}
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t = train(bl, 400, ["<|endoftext|>"], lines)
    toks["gpt2"] = (drop_bytes(t, "<|endoftext|>", True), None)

    t = train(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), 350,
              ["<|endoftext|>"], lines)
    toks["gpt2_prefix"] = (drop_bytes(t, None, False), None)

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t = train(pre, 450, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], lines)
    t.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])
    j = json.loads(t.to_str())
    j["model"]["ignore_merges"] = True
    # words no merge sequence reaches: only ignore_merges emits them whole
    for w in ("\u0120world", "Hello", "\u0120tokenizer", "\u0120the"):
        if w not in j["model"]["vocab"]:
            j["model"]["vocab"][w] = len(j["model"]["vocab"])
    t = Tokenizer.from_str(json.dumps(j))
    toks["llama3"] = (t, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t = train(pre, 420, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], lines)
    t.normalizer = normalizers.Sequence([normalizers.NFC()])  # Qwen2 has NFC
    toks["qwen2"] = (t, {"eos_token": {"content": "<|im_end|>", "special": True},
                         "pad_token": "<|endoftext|>", "bos_token": None,
                         "chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                                           {"name": "default", "template": CHATML}]})

    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                            use_regex=True)])
    t = train(pre, 380, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], lines,
              extra=[AddedToken("<tool>", lstrip=True, rstrip=True, special=False,
                                normalized=False)])
    t.add_special_tokens([AddedToken("<|file_sep|>", rstrip=True, special=True)])
    toks["smollm"] = (t, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                          "add_bos_token": False, "chat_template": CHATML})
    return toks


def legacy_merges(js):
    """The same tokenizer with merges as "a b" strings (the format before transformers
    4.45)."""
    j = json.loads(js)
    j["model"]["merges"] = [m if isinstance(m, str) else m[0] + " " + m[1]
                            for m in j["model"]["merges"]]
    return json.dumps(j, ensure_ascii=False, indent=1)


def smollm2(gguf_path, out_dir, lines):
    import gguf  # noqa: the gguf package of llama.cpp
    r = gguf.GGUFReader(gguf_path)

    def arr(key):
        f = r.fields[key]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(x).decode("utf-8") for x in arr("tokenizer.ggml.tokens")]
    types = [int(x[0]) for x in arr("tokenizer.ggml.token_type")]
    merges = [bytes(x).decode("utf-8") for x in arr("tokenizer.ggml.merges")]
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
    eos = int(r.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, t in enumerate(tokens) if types[i] == 3]
    # SmolLM2's own tokenizer.json: Digits(individual) then ByteLevel with its regex
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
         "normalizer": None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Digits", "individual_digits": True},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}]},
         "post_processor": {"type": "ByteLevel", "add_prefix_space": True,
                            "trim_offsets": False, "use_regex": True},
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                     "use_regex": True},
         "model": {"type": "BPE", "dropout": None, "unk_token": None,
                   "continuing_subword_prefix": None, "end_of_word_suffix": None,
                   "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                   "vocab": {t: i for i, t in enumerate(tokens)},
                   "merges": [m.split(" ", 1) for m in merges]}}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": tokens[bos], "eos_token": tokens[eos],
                   "add_bos_token": False}, f, ensure_ascii=False)
    t = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    same = diff = 0
    for d in lines:
        if not d["special"]:
            continue  # tokenizers always splits out special tokens: compare parsed lines
        ids = t.encode(d["text"], add_special_tokens=False).ids
        if ids == d["ids"]:
            same += 1
        else:
            diff += 1
            if diff <= 5:
                print("differs:", repr(d["text"][:60]), ids[:12], d["ids"][:12])
    plain = [d for d in lines if not d["special"] and
             not any(s in d["text"] for s in ("<|", "<jupyter", "<file", "<repo",
                                             "<reponame>", "<filename>", "<issue",
                                             "<gh_stars>", "<empty_output>", "<commit",
                                             "<fim_", "<code_"))]
    for d in plain:
        ids = t.encode(d["text"], add_special_tokens=False).ids
        if ids == d["ids"]:
            same += 1
        else:
            diff += 1
            if diff <= 5:
                print("differs:", repr(d["text"][:60]), ids[:12], d["ids"][:12])
    print(f"SmolLM2 tokenizer.json in {out_dir}: tokenizers vs llama.cpp ids: {same} lines "
          f"equal, {diff} differ")
    return diff == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2-gguf",
                    default=os.path.expanduser("~/.cache/finch/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--smollm2-out", default="/tmp/hf-smollm2")
    args = ap.parse_args()
    lines = corpus_lines()
    texts = test_texts(lines)
    os.makedirs(OUT, exist_ok=True)
    result = {"texts": texts, "tokenizers": {}}
    for name, (tok, cfg) in build(lines).items():
        js = tok.to_str(pretty=True)
        if name == "smollm":
            js = legacy_merges(js)
        with open(os.path.join(OUT, name + ".tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(js)
        if cfg is not None:
            with open(os.path.join(OUT, name + ".tokenizer_config.json"), "w",
                      encoding="utf-8") as f:
                json.dump(cfg, f, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_str(js)  # what was written is what is measured
        rows = []
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False).ids
            rows.append({"ids": ids, "ids_add": tok.encode(text).ids,
                         "decoded": tok.decode(ids, skip_special_tokens=False)})
        result["tokenizers"][name] = rows
    import tokenizers
    result["meta"] = {"tokenizers": tokenizers.__version__, "python": sys.version.split()[0]}
    with open(os.path.join(OUT, "ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(OUT, "nfc.json"), "w", encoding="utf-8") as f:
        json.dump(nfc_cases(), f, ensure_ascii=False, separators=(",", ":"))
    if os.path.exists(args.smollm2_gguf):
        smollm2(args.smollm2_gguf, args.smollm2_out, lines)


if __name__ == "__main__":
    main()
