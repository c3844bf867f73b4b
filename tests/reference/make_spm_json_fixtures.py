#!/usr/bin/env python3
"""Reference fixtures for finch's SentencePiece-style tokenizer.json support (hf_json.c).

Trains two small tokenizers with the Hugging Face `tokenizers` library on varied generated
text plus the lines of datasets/quotes, saves each tokenizer.json, and records the ids the
library gives on >= 1,000 varied lines and whether decode(encode(line)) == line.

  spm_bpe      Llama-2 style: BPE with byte_fallback, normalizer Sequence[Prepend("▁"),
               Replace(" ", "▁")], no pre-tokenizer, decoder Sequence[Replace("▁", " "),
               ByteFallback, Fuse, Strip(" ", 1, 0)]; <unk> <s> </s>, <0x00>..<0xFF>.
  spm_bpe_meta the same model as transformers >= 4.41 converts Llama and Mistral: no
               normalizer, pre-tokenizer Metaspace (prepend_scheme "first", split false).
  spm_bpe_gemma (with --gemma: from the committed spm_bpe.tokenizer.json and the texts of
               spm_ids.json, into spm_gemma_ids.json) the same model as Gemma 3's
               tokenizer.json has it: normalizer Replace(" ", "▁") alone, pre-tokenizer
               Split(" ", MergedWithPrevious), decoder Sequence[Replace("▁", " "),
               ByteFallback, Fuse].
  spm_unigram_unk  the Unigram below without byte_fallback: characters no piece covers give
               the unknown token, adjacent ones fused.
  spm_unigram  T5/ALBERT style: Unigram with byte_fallback and unk_id, pre-tokenizer
               Metaspace (replacement "▁", prepend_scheme "always"), decoder Metaspace.

Output, in tests/fixtures/tokenizer-hf/:
  <name>.tokenizer.json   the tokenizer (< 200 KB)
  spm_ids.json            {"meta": {...}, "texts": [...], "tokenizers": {name: [{"ids",
                          "round_trip"}, ...]}}: ids = encode(text,
                          add_special_tokens=False).ids, round_trip = whether decode(ids,
                          skip_special_tokens=False) == text

Run with ~/.cache/finch/venv/bin/python (tokenizers from transformers 4.46.3).
"""
import json
import os
import random

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(HERE, "..", "fixtures", "tokenizer-hf")
SEED = 11

WORDS = ("the of and to in is was for that with as on by at from his her this which "
         "model token train data loss value function return print import class self "
         "café naïve résumé über straße façade jalapeño smörgåsbord Ærø").split()
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着"
EMOJI = ["😀", "🚀", "👍🏽", "🇫🇷", "❤️", "🤖", "✨", "👨‍👩‍👧"]
CODE = ["def f(x):\n    return x * 2", "for (int i = 0; i < n; i++) { s += a[i]; }",
        "if (x != NULL && *x == '\\0') return -1;", "SELECT id, name FROM t WHERE x > 3;",
        "print(f\"{a!r:>10}\")", "#include <stdio.h>", "x = [1, 2, 3]  # comment",
        "\tindent\tby\ttabs", "fn main() -> Result<(), Box<dyn Error>> {}"]


def quote_lines():
    lines = []
    with open(os.path.join(ROOT, "datasets", "quotes", "general.jsonl"), encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            lines.append(d["prompt"] + d["completion"])
    return lines


def generated_lines(rng, n):
    out = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        elif kind == 1:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 9))) for _ in range(4))
            s += f" {rng.random() * 1000:.3f} -{rng.randint(1, 99)}%"
        elif kind == 2:
            s = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 15)))
        elif kind == 3:
            s = rng.choice(WORDS) + " " + " ".join(rng.choice(EMOJI) for _ in range(3))
        elif kind == 4:
            s = rng.choice(CODE)
        elif kind == 5:
            ws = [" ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\u3000", "\u00a0"]
            s = "".join(rng.choice(WORDS) + rng.choice(ws) for _ in range(rng.randint(1, 6)))
        elif kind == 6:
            s = " " * rng.randint(0, 3) + rng.choice(WORDS).upper() + " " * rng.randint(0, 3)
        else:
            pool = "aeiouxyzÀÉÎõüçñßøåæ€£¥©®™°±µ¶§¿¡ΑβγδЖщЮйאבגابتक्षि가나다" + CJK[:5]
            s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 20)))
        out.append(s)
    return out


def test_lines(rng, quotes):
    texts = quotes[::2] + generated_lines(rng, 900)
    texts += ["", " ", "  ", "\n", "a", " a", "a ", "▁", "▁▁x", "x▁ y", "\x00\x01\x7f",
              "<s>", "</s>", "<unk>", "<0x41>", "a<s>b", "<s> x", "x</s>  y", "<unk>▁a", "🤖🤖", "\U0010FFFF", "\u200b",
              "  leading", "trailing  ", "mid  dle", "tab\there", "crlf\r\nx"]
    return texts


def train_bpe(corpus):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, show_progress=False,
                                  special_tokens=specials, limit_alphabet=120)
    tok.train_from_iterator(corpus, trainer)
    # byte tokens are ordinary vocabulary in Llama files, not added tokens
    j = json.loads(tok.to_str())
    j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def metaspace_variant(tok):
    j = json.loads(tok.to_str())
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                          "split": False}
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def gemma_variant(tok):
    """The same model as Gemma 3's tokenizer.json has it: normalizer Replace(" ", "▁") alone
    (no marker prepended), pre-tokenizer Split(" ", MergedWithPrevious), which finds no space
    left, decoder Sequence[Replace("▁", " "), ByteFallback, Fuse] (nothing stripped)."""
    j = json.loads(tok.to_str())
    j["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    j["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False}
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def without_byte_fallback(tok):
    j = json.loads(tok.to_str())
    j["model"]["byte_fallback"] = False
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def train_unigram(corpus):
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.UnigramTrainer(vocab_size=900, show_progress=False,
                                      special_tokens=specials, unk_token="<unk>",
                                      max_piece_length=8)
    tok.train_from_iterator(corpus, trainer)
    j = json.loads(tok.to_str())
    j["model"]["byte_fallback"] = True
    j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(j, ensure_ascii=False))


def main():
    rng = random.Random(SEED)
    quotes = quote_lines()
    corpus = quotes + generated_lines(random.Random(SEED + 1), 3000)
    texts = test_lines(rng, quotes)
    assert len(texts) >= 1000, len(texts)
    bpe = train_bpe(corpus)
    uni = train_unigram(corpus)
    toks = {"spm_bpe": bpe, "spm_bpe_meta": metaspace_variant(bpe),
            "spm_unigram": uni, "spm_unigram_unk": without_byte_fallback(uni)}
    result = {"meta": {"tokenizers": tokenizers.__version__, "seed": SEED},
              "texts": texts, "tokenizers": {}}
    for name, t in toks.items():
        path = os.path.join(OUT, f"{name}.tokenizer.json")
        t.save(path)
        assert os.path.getsize(path) < 200_000, (path, os.path.getsize(path))
        rows = []
        for s in texts:
            ids = t.encode(s, add_special_tokens=False).ids
            dec = t.decode(ids, skip_special_tokens=False)
            rows.append({"ids": ids, "round_trip": dec == s})
        result["tokenizers"][name] = rows
        print(name, os.path.getsize(path), "bytes;",
              sum(r["round_trip"] for r in rows), "of", len(rows), "round-trip")
    with open(os.path.join(OUT, "spm_ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))


def gemma_main():
    bpe = Tokenizer.from_file(os.path.join(OUT, "spm_bpe.tokenizer.json"))
    with open(os.path.join(OUT, "spm_ids.json"), encoding="utf-8") as f:
        texts = json.load(f)["texts"]
    t = gemma_variant(bpe)
    t.save(os.path.join(OUT, "spm_bpe_gemma.tokenizer.json"))
    rows = []
    for s in texts:
        ids = t.encode(s, add_special_tokens=False).ids
        rows.append({"ids": ids, "round_trip": t.decode(ids, skip_special_tokens=False) == s})
    print("spm_bpe_gemma:", sum(r["round_trip"] for r in rows), "of", len(rows), "round-trip")
    result = {"meta": {"tokenizers": tokenizers.__version__, "from": "spm_bpe.tokenizer.json"},
              "texts": texts, "tokenizers": {"spm_bpe_gemma": rows}}
    with open(os.path.join(OUT, "spm_gemma_ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    import sys
    gemma_main() if sys.argv[1:] == ["--gemma"] else main()
