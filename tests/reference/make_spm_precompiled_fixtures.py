#!/usr/bin/env python3
"""Reference fixtures for finch's Precompiled normalizer (tokenizer.json, hf_json.c).

Trains a tiny SentencePiece Unigram model whose normalization rules are a TSV written here:
the NFKC mappings (Python's unicodedata) of a few blocks (Latin-1, general punctuation,
letterlike symbols, enclosed numbers, CJK symbols, ligatures, full-width forms, math
letters), NMT-style rules (control characters removed, odd whitespace to a space), and
multi-code-point keys (a letter and a combining accent composed; full-width "e" + acute,
whose first code point is a key too; CR LF). The full nmt_nfkc table would make a 240 KB
charsmap; this one is a few KB and is compiled by SentencePiece itself (darts-clone double
array + NUL-terminated strings), so the bytes are the real format.

The model is converted to tokenizer.json by transformers' T5Converter (what
T5TokenizerFast.from_slow does): normalizer Sequence[Precompiled, Strip(right),
Replace(Regex " {2,}", "▁")], pre-tokenizer Metaspace (prepend_scheme "always"), decoder
Metaspace. A second file keeps the same charsmap with Replace(Regex " {2,}", " ") (ALBERT's form)
and no Strip. The ids the `tokenizers` library gives on >= 1,000 lines (NFKC-affected text, CJK,
emoji, odd whitespace, control characters, the test lines of make_spm_json_fixtures.py)
are stored with whether decode(encode(line)) == line.

Output, in tests/fixtures/tokenizer-hf/:
  spm_precompiled.tokenizer.json, spm_precompiled_albert.tokenizer.json
  spm_precompiled_ids.json  {"meta", "texts", "tokenizers": {name: [{"ids", "round_trip"}]}}

Run with a venv holding sentencepiece, protobuf, transformers (4.53.3 was used) and
tokenizers; the ids were checked equal under tokenizers 0.20.3 and 0.21.4.
"""
import json
import os
import random
import sys
import tempfile
import unicodedata

import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import T5Tokenizer
from transformers.convert_slow_tokenizer import T5Converter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "tokenizer-hf")
sys.path.insert(0, HERE)
import make_spm_json_fixtures as base  # noqa: E402  (the shared corpus and test lines)

SEED = 23
BLOCKS = [(0x00A0, 0x0100), (0x2000, 0x2070), (0x2100, 0x2160), (0x2460, 0x2480),
          (0x3000, 0x3010), (0xFB00, 0xFB07), (0xFF01, 0xFF5F), (0x1D400, 0x1D420),
          (0x3131, 0x3140), (0x2150, 0x2190)]


def rules():
    rows = {}
    for lo, hi in BLOCKS:
        for c in range(lo, hi):
            t = unicodedata.normalize("NFKC", chr(c))
            if t != chr(c):
                rows[(c,)] = [ord(x) for x in t]
    for c in list(range(1, 9)) + [0x0B, 0x0E, 0x0F, 0x1F, 0x7F, 0x8F, 0x9F, 0xAD]:
        rows[(c,)] = []  # removed
    for c in [0x09, 0x0A, 0x0D, 0x200B, 0x3000, 0x00A0, 0x2028]:
        rows[(c,)] = [0x20]
    for b in "aeiouAEIOUnc":
        for mark in [0x0300, 0x0301, 0x0308, 0x0303, 0x0327]:
            t = unicodedata.normalize("NFKC", b + chr(mark))
            if len(t) == 1:
                rows[(ord(b), mark)] = [ord(t)]
    rows[(0xFF45, 0x0301)] = [0xE9]  # its first code point is a key of its own
    rows[(0xFB01, 0x0301)] = [0x66, 0xED]
    rows[(0x0D, 0x0A)] = [0x20]
    return "".join(" ".join("%04X" % c for c in k) + "\t" + " ".join("%04X" % c for c in v)
                   + "\n" for k, v in sorted(rows.items()))


NFKC_TEXT = ["ｆｕｌｌ　ｗｉｄｔｈ", "ＡＢＣ１２３！？", "ﬁne ﬂour ﬀ ﬃ ﬄ ﬅ ﬆ", "№ ℡ ™ ℃ ℉ Ⅻ",
             "① ② ⑳ ⑴ ⒜", "½ ¼ ¾ ⅓ ⅞", "x² y³ ¹", "…‥ ‼ ⁇", "𝐀𝐁𝐂 𝐚𝐛𝐜", "ㄱㄴㄷ ㅏ",
             "cafe\u0301 nai\u0308ve", "ｅ\u0301ｅ\u0301", "ﬁ\u0301x", "e\u0301\u0301",
             "a\u0300\u0301b", "line\r\nbreak", "tab\tand\vvt", "zero\u200bwidth", "soft\u00adhy",
             "nb\u00a0sp", "ideo\u3000space", "ctl\x01\x02\x7fx", "\x1f", "\r\n", "\r\n\r\n",
             "   ", "a    b", " lead", "trail   ", "\u3000\u3000x", "Ａ\u0301", "ｅ\u0301",
             "ｅ\u0301\u0308", "👍🏽ｅ", "ｇｏ✨", "ｘ\u200d"]


def test_lines(rng):
    pool = "".join(chr(c) for lo, hi in BLOCKS for c in range(lo, min(hi, lo + 40)))
    pool += "abcdefxyz  \t\u0301\u0308é的一是😀"
    lines = list(NFKC_TEXT)
    for i in range(450):
        lines.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 16))))
    lines += base.generated_lines(rng, 540)
    lines += ["", " ", "\n", "a", " a", "a ", "▁", "▁▁x", "x▁ y", "\x00\x01\x7f", "<s>", "</s>",
              "<unk>", "a<s>b", "<s> x", "x</s>  y", "🤖🤖", "\U0010FFFF", "  leading",
              "trailing  ", "mid  dle", "tab\there", "crlf\r\nx"]
    return lines


def main():
    rng = random.Random(SEED)
    corpus = base.quote_lines() + base.generated_lines(random.Random(SEED + 1), 3000)
    corpus += test_lines(random.Random(SEED + 2))[:200]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "corpus.txt"), "w", encoding="utf-8") as f:
            for line in corpus:
                line = " ".join(line.split())
                if line:
                    f.write(line + "\n")
        with open(os.path.join(d, "rules.tsv"), "w", encoding="utf-8") as f:
            f.write(rules())
        prefix = os.path.join(d, "m")
        spm.SentencePieceTrainer.train(
            input=os.path.join(d, "corpus.txt"), model_prefix=prefix, vocab_size=500,
            model_type="unigram", normalization_rule_tsv=os.path.join(d, "rules.tsv"),
            character_coverage=1.0, minloglevel=2, seed_sentencepiece_size=20000)
        slow = T5Tokenizer(prefix + ".model", extra_ids=3, legacy=True)
        t5 = T5Converter(slow).converted()
    j = json.loads(t5.to_str())
    names = [s["type"] for s in j["normalizer"]["normalizers"]]
    assert names == ["Precompiled", "Strip", "Replace"], names
    albert = dict(j)
    albert["normalizer"] = {"type": "Sequence", "normalizers": [
        j["normalizer"]["normalizers"][0],
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    toks = {"spm_precompiled": t5,
            "spm_precompiled_albert": Tokenizer.from_str(json.dumps(albert, ensure_ascii=False))}
    texts = test_lines(rng)
    assert len(texts) >= 1000, len(texts)
    result = {"meta": {"tokenizers": tokenizers.__version__,
                       "transformers": transformers.__version__,
                       "sentencepiece": spm.__version__, "seed": SEED},
              "texts": texts, "tokenizers": {}}
    for name, t in toks.items():
        path = os.path.join(OUT, f"{name}.tokenizer.json")
        t.save(path)
        assert os.path.getsize(path) < 100_000, (path, os.path.getsize(path))
        rows = []
        for s in texts:
            ids = t.encode(s, add_special_tokens=False).ids
            rows.append({"ids": ids, "round_trip": t.decode(ids, skip_special_tokens=False) == s})
        result["tokenizers"][name] = rows
        print(name, os.path.getsize(path), "bytes;",
              sum(r["round_trip"] for r in rows), "of", len(rows), "round-trip")
    with open(os.path.join(OUT, "spm_precompiled_ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
