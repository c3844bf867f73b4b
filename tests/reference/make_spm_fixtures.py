#!/usr/bin/env python3
"""Reference token ids for finch's SentencePiece tokenizer (tokenizer.ggml.model "llama"),
made by llama.cpp through llama-cpp-python.

What it writes (tests/fixtures/tokenizer/):

  gemma3_ids.jsonl    line 1: {"meta": versions, seed, model file and its sha256, counts,
                      llama.cpp's end-of-generation ids};
                      then one JSON object per test line: the text ("text", or "hex" for
                      byte strings that are not valid UTF-8), whether special tokens were
                      parsed ("special") and added ("add"), the ids llama.cpp gives on the
                      real Gemma 3 270M vocabulary ("ids"), and, where decoding them does
                      not give the text back, what llama.cpp decodes them to
                      ("decoded_hex"). More than 1,000 lines: handwritten ones and
                      generated ones (fixed seed) mixing prose, accents, combining marks,
                      CJK, emoji, RTL scripts, code, numbers, runs of spaces/newlines/tabs
                      (Gemma has user-defined tokens for those), Gemma's control and
                      user-defined token texts, the space marker U+2581 and <0xXX> texts.
  tiny_spm_<n>.gguf   a tiny SentencePiece vocabulary (scores that show the merge order and
                      its ties, byte tokens with one byte spelled only as itself, control,
                      user-defined, unknown, unused and undefined tokens, a control token
                      reachable by merges), under three settings: "prefix" (add_space_prefix
                      and add_bos_token true), "noprefix" (both false, add_eos_token true)
                      and "defaults" (no add_* keys and no special ids: llama.cpp's defaults)
  tiny_spm_ids.json   for each of those files, llama.cpp's end-of-generation ids and, for a
                      set of strings, its ids without special parsing, with it, and with
                      add_special, and what each decodes to (hex)

Decoding is llama_detokenize(remove_special=False, unparse_special=special), what
llama.cpp's common_detokenize calls (llama-cpp-python's Llama.detokenize cuts pieces longer
than 32 bytes and strips a space on its own, so it is not used).

Regenerate (from the repository root; needs scripts/setup.sh --with-gemma3):
    ~/.cache/finch/venv/bin/python tests/reference/make_spm_fixtures.py
"""
import argparse
import ctypes
import hashlib
from importlib.metadata import version
import json
import os
import platform
import random
import sys

import gguf
import llama_cpp
from llama_cpp._utils import suppress_stdout_stderr

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_fixtures as pools  # noqa: E402  (the shared pools of test words)

DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "tokenizer"))
DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "gemma-3-270m-q4_k_m.gguf")
SEED = 20250806

# ---------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------


def load(path):
    with suppress_stdout_stderr(disable=False):
        return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)


def tokenize(m, b, special, add=False):
    with suppress_stdout_stderr(disable=False):  # llama.cpp warns of a BOS added before <bos>
        return m.tokenize(b, add_bos=add, special=special)


def eog_ids(m):
    vocab = m._model.vocab
    return [i for i in range(m.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def detokenize(m, ids, special):
    """llama_detokenize(remove_special=False, unparse_special=special)."""
    vocab = m._model.vocab
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 256 + 64 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, special)
        if n >= 0:
            return buf.raw[:n]
        cap = -n + 1


# ---------------------------------------------------------------------------------------
# Gemma 3 lines
# ---------------------------------------------------------------------------------------

HANDWRITTEN = [
    "Hello world",
    "The capital of France is Paris.",
    "",
    " ",
    "  ",
    "   ",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple   spaces   between    words",
    " " * 31 + "x",
    " " * 40 + "forty spaces",
    "\n",
    "\n\n",
    "\n" * 35,
    "a\nb\n\nc\n\n\nd",
    "\t",
    "\t\tx",
    "\t" * 33,
    " \t \n \r\n",
    "a\r\nb\rc\nd",
    "    indented by four",
    "It's it's I'm you're we've they'll she'd don't",
    "1",
    " 12345",
    "3.14159265358979",
    "1,000,000 and 1.000.000 and 1 000 000",
    "-42 +17 0x1F 0b1010 1e-9 6.02e23",
    "1234567890123456789012345678901234567890",
    "In 2024, 73% of 1,024 users paid $9.99/month.",
    "Café déjà vu.",
    "naïve coöperation façade résumé piñata",
    "Straße Ærø Øresund Łódź Škoda",
    "e\u0301 vs \u00e9 (combining acute vs precomposed)",
    "a\u0300\u0301\u0302\u0303\u0304 stacked marks",
    "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o\u0358",
    "क्षत्रिय ग्रन्थ",
    "ประเทศไทย",
    "你好，世界！",
    "日本語のテキストとカタカナ、ひらがな。",
    "안녕하세요 세계",
    "Привет, мир! Ёжик в тумане.",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שָׁלוֹם עוֹלָם",
    "\u202bRTL embedding\u202c and \u200fmark\u200e",
    "العربية English mixed עברית",
    "Emoji: 😀😃😄 👍🏽 ❤️",
    "Family: 👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🏳️‍🌈",
    "Flags: 🇫🇷🇩🇪🇯🇵",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 and 𓀀 hieroglyph",
    "def f(x):\n    return x ** 2\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; }",
    "<html><body class=\"main\">&amp; &lt;tag&gt;</body></html>",
    "<table><tr><td>1</td><td>2</td></tr></table>",
    "<b>bold</b> <i>italic</i> <s>struck</s> <code>x</code>",
    "https://example.com/path?query=1&b=2#frag",
    "«Guillemets» „Anführungszeichen“ “curly” ‘single’",
    "∑∫√∞≠≤≥ ∀x∃y: x ∈ ℝ",
    "Full-width: １２３ ＡＢＣ",
    "no\u00a0break\u00a0space",
    "ideographic\u3000space",
    "zero\u200bwidth",
    "soft\u00adhyphen",
    "\ufeffBOM at start",
    "ctrl\x01\x02\x7fchars",
    "\x00nul inside",
    "the ▁ space marker itself",
    "▁▁▁",
    "a▁b ▁c",
    "<0x41> and <0xFF> written out",
    "<0x0A>",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>",
    "<eos>",
    "<pad><unk><mask>",
    "<unused0> <unused99> <unused6241>",
    "[multimodal]",
    "<start_of_image><end_of_image>",
    "<start_of_turn",
    "end_of_turn>",
    "<<start_of_turn>>",
    "< start_of_turn >",
    "<|im_start|>user<|im_end|>",
]

# Lines also tokenized with special parsing (and some with add_special).
SPECIAL_LINES = [
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>",
    "<bos>",
    "<eos>",
    "<bos>Hello",
    "text<eos>more text",
    "<pad><unk><mask>",
    "<unused0> <unused99> <unused6241>",
    "[multimodal]",
    "<start_of_image><end_of_image>",
    "<<start_of_turn>>",
    "<start_of_turn",
    "  <start_of_turn>  spaced  <end_of_turn>  ",
    "\n<start_of_turn>\n",
    "<start_of_turn><start_of_turn>user",
    "😀<end_of_turn>😀",
    "<table><tr><td>1</td></tr></table>",
    "<0x41><bos><0x42>",
]

# Byte strings that are not valid UTF-8: SentencePiece cuts them by lead byte and falls back
# to byte tokens.
INVALID = [
    b"\xff abc",
    b"a\x80b",
    b"\xc0\x80x",
    b"\xed\xa0\x80z",
    b"\xe2\x82",
    b"caf\xc3",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 ok",
    b"mixed \xfe\xfe valid \xc3\xa9",
    b"\xf8\x88\x80\x80\x80",
    b"  \xff\xff  ",
    b"12\x8034",
    b"<start_of_turn>\xff<end_of_turn>",
    b"\xe6\x97 \xa5",
]

SPECIAL_TEXTS = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>",
                 "<mask>", "<unused7>", "[multimodal]", "<start_of_image>", "<end_of_image>",
                 "<table>", "</td>", "<b>", "</s>", "<s>", "<start_of_turn", "end_of_turn>",
                 "<|im_start|>", "<0x41>", "<0xE2>", "▁", "▁▁x"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "\u0915\u094d\u0937",
             "\u05e9\u05c1\u05b8", "\u0627\u064e", "Z\u0351\u0352"]
RTL = pools.ARABIC + pools.HEBREW + ["\u200f", "\u202b", "\u202c", "\u061f", "\u06d4"]
WHITESPACE = pools.WHITESPACE + [" " * 5, " " * 33, "\n" * 4, "\n" * 32, "\t" * 3, "\t" * 34,
                                 "\n\n ", " \n\n", "\r\n\r\n"]


def rand_chunk(rng, style):
    if style == "combining":
        return "".join(rng.choice(COMBINING) for _ in range(rng.randrange(1, 4)))
    if style == "rtl":
        return rng.choice(RTL)
    if style == "special":
        return rng.choice(SPECIAL_TEXTS)
    return pools.rand_chunk(rng, style)


STYLES = ["prose", "accent", "cjk", "script", "emoji", "code", "number", "punct",
          "contraction", "special", "combining", "rtl"]


def rand_line(rng):
    main = rng.choice(STYLES)
    parts = []
    for _ in range(rng.randrange(1, 14)):
        style = main if rng.random() < 0.6 else rng.choice(STYLES)
        parts.append(rand_chunk(rng, style))
        r = rng.random()
        if r < 0.65:
            parts.append(" ")
        elif r < 0.8:
            parts.append(rng.choice(WHITESPACE))
    line = "".join(parts)
    if rng.random() < 0.1:
        line = rng.choice(WHITESPACE) + line
    if rng.random() < 0.1:
        line = line + rng.choice(WHITESPACE)
    return line


def make_lines(n_generated):
    """(text or bytes, special, add) triples."""
    rng = random.Random(SEED)
    lines = [(t, False, False) for t in HANDWRITTEN]
    lines += [(t, True, False) for t in SPECIAL_LINES]
    lines += [(t, True, True) for t in SPECIAL_LINES[:6]]
    lines += [(t, False, True) for t in HANDWRITTEN[:6]]
    for i in range(n_generated):
        t = rand_line(rng)
        lines.append((t, False, False))
        if i % 8 == 0:
            lines.append((t, True, i % 32 == 0))
    for b in INVALID:
        lines += [(b, False, False), (b, True, False)]
    return lines


def gemma_fixture(model_path, out, n_generated):
    m = load(model_path)
    records = []
    n_lossy = 0
    for text, special, add in make_lines(n_generated):
        b = text if isinstance(text, bytes) else text.encode("utf-8")
        ids = tokenize(m, b, special, add)
        r = {"hex": b.hex()} if isinstance(text, bytes) else {"text": text}
        r["special"] = special
        if add:
            r["add"] = True
        r["ids"] = ids
        decoded = detokenize(m, ids, special)
        if decoded != b:
            r["decoded_hex"] = decoded.hex()
            n_lossy += 1
        records.append(r)
    meta = {
        "llama_cpp_python": version("llama-cpp-python"), "gguf": version("gguf"),
        "python": platform.python_version(), "seed": SEED, "lines": len(records),
        "not_round_trip": n_lossy,
        "model": os.path.basename(model_path), "model_sha256": sha256(model_path),
        "eog": eog_ids(m),
        "tokenize": "Llama(vocab_only=True).tokenize(text, add_bos=add, special=special)",
        "detokenize": "llama_detokenize(vocab, ids, remove_special=False, "
                      "unparse_special=special)",
    }
    path = os.path.join(out, "gemma3_ids.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    del m
    return len(records), n_lossy, os.path.getsize(path)


# ---------------------------------------------------------------------------------------
# Tiny SentencePiece vocabularies
# ---------------------------------------------------------------------------------------

S = "\u2581"  # SentencePiece's space marker


def tiny_vocab():
    """(text or bytes, score, type) rows; ids are the row numbers."""
    rows = [
        ("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3),
        ("<start_of_turn>", -1000.0, 3), ("<end_of_turn>", -1000.0, 3),
        ("<tool>", -1000.0, 4),                       # user-defined: always split out
        ("[ab]", -1000.0, 3), ("b][cd]", -1000.0, 3),  # control tokens whose texts overlap
        ("<unused0>", -1000.0, 5), ("<undef>", -1000.0, 0),
    ]
    for b in range(256):
        if b == 0xC3:
            continue  # only the one-byte text below stands for 0xC3
        rows.append(("<0x%02X>" % b, 0.0, 6))
    rows.append((b"\xc3", -50.0, 1))
    singles = "abcdehlnoprstuwxyz0123456789QHW<>'" + S
    rows += [(c, -100.0 - i, 1) for i, c in enumerate(singles)]
    rows += [
        # hello / world: the merge order follows the scores, not the positions
        ("he", -3.0, 1), ("ll", -2.0, 1), ("hell", -4.0, 1), ("hello", -5.0, 1),
        (S + "hello", -1.0, 1), ("or", -3.5, 1), ("ld", -3.2, 1), ("wor", -6.0, 1),
        ("world", -6.5, 1), (S + "world", -1.5, 1), (S + "w", -9.0, 1),
        # ties go to the leftmost pair: abc -> ab c; pqr -> p qr (qr scores higher)
        ("ab", -10.0, 1), ("bc", -10.0, 1), ("pq", -11.0, 1), ("qr", -10.0, 1),
        # aaaaa -> aa aa a, then aaaa a
        ("aa", -5.0, 1), ("aaaa", -20.0, 1),
        ("xyz", -1.0, 1),  # no pair leads to it: x y z
        ("12", -8.0, 1), ("23", -8.0, 1), ("123", -30.0, 1), ("45", -7.0, 1),
        (S + S, -3.0, 1), (S + S + S + S, -4.0, 1), (S + "a", -6.0, 1), (S + "1", -6.0, 1),
        ("日", -40.0, 1), ("本", -40.0, 1), ("日本", -12.0, 1), ("é", -45.0, 1),
        ("<s", -60.0, 1),  # '<s' + '>' merges into the control token <s>
        ("'s", -9.0, 1), ("n't", -9.5, 1), ("nt", -9.9, 1),
    ]
    return rows


TINY_SETTINGS = {
    "prefix": dict(space_prefix=True, add_bos=True, add_eos=None, ids=True),
    "noprefix": dict(space_prefix=False, add_bos=False, add_eos=True, ids=True),
    "defaults": dict(space_prefix=None, add_bos=None, add_eos=None, ids=False),
}

TINY_TEXTS = [
    "hello world", "Hello World", "abc pqr aaaaa xyz", "123 12345 45", " leading",
    "trailing ", "  two  spaces  ", "     five", "line\nbreak\ttab", "café é Ã",
    "日本語 日本", "€5", "<s>hello</s>", "<s", "<start_of_turn>user\nhello<end_of_turn>",
    "<tool>hello<tool>", "[ab][cd]", "x[ab]y", "a\u2581b", "\u2581", "<unk>", "<unused0>",
    "<undef>", "", " ", "Q", "it's don't", "<0x41>", "hello<s>world", " <tool> ",
    b"a\xffb", b"\xe6\x97", b"\xc3",
]


def write_tiny(path, setting):
    rows = tiny_vocab()
    w = gguf.GGUFWriter(path, "llama")
    # hyperparameters only so that llama.cpp agrees to load the vocabulary
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([t if isinstance(t, bytes) else t.encode("utf-8") for t, _, _ in rows])
    w.add_token_scores([s for _, s, _ in rows])
    w.add_token_types([ty for _, _, ty in rows])
    if setting["ids"]:
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    if setting["space_prefix"] is not None:
        w.add_add_space_prefix(setting["space_prefix"])
    if setting["add_bos"] is not None:
        w.add_add_bos_token(setting["add_bos"])
    if setting["add_eos"] is not None:
        w.add_add_eos_token(setting["add_eos"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_fixtures(out):
    result = {"settings": {}}
    for name, setting in TINY_SETTINGS.items():
        path = os.path.join(out, "tiny_spm_%s.gguf" % name)
        write_tiny(path, setting)
        m = load(path)
        cases = []
        for t in TINY_TEXTS:
            b = t if isinstance(t, bytes) else t.encode("utf-8")
            c = {"hex": b.hex()} if isinstance(t, bytes) else {"text": t}
            for key, special, add in (("ids", False, False), ("ids_special", True, False),
                                      ("ids_add_special", False, True)):
                ids = tokenize(m, b, special, add)
                c[key] = ids
                c["dec" + key[3:]] = detokenize(m, ids, special).hex()
            cases.append(c)
        result["settings"][name] = {"eog": eog_ids(m), "cases": cases}
        del m
    with open(os.path.join(out, "tiny_spm_ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--generated", type=int, default=900, help="generated lines")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit("%s: not found; run scripts/setup.sh --with-gemma3" % args.model)
    os.makedirs(args.out, exist_ok=True)
    tiny_fixtures(args.out)
    n, lossy, size = gemma_fixture(args.model, args.out, args.generated)
    print("wrote %d lines (%d not round trips, %d bytes) and the tiny vocabularies to %s"
          % (n, lossy, size, args.out))


if __name__ == "__main__":
    main()
