"""finch's tokenizer from a Hugging Face folder against the `tokenizers` library.

  python check_tokenizer.py HF_DIR FINCH_BINARY

HF_DIR holds tokenizer.json (and usually tokenizer_config.json and the model). Every test
line of tests/fixtures/tokenizer (smollm2_ids.jsonl: ASCII, accents, CJK, emoji, code,
whitespace runs, numbers, special-token text; and the texts of tokenizer-hf/ids.json) is
encoded by `finch tokenize -m HF_DIR --parse-special --no-add-special` and by
tokenizers' Tokenizer.encode(text, add_special_tokens=False) (which always splits out added
tokens, hence --parse-special): the ids must be equal. The ids are then decoded by
`finch tokenize --decode --parse-special` and by Tokenizer.decode(ids,
skip_special_tokens=False): the texts must be equal. Lines holding a newline or a NUL are
left out (`finch tokenize` reads one text per line).

Prints the counts; exits 0 when everything is equal, 1 otherwise.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")


def texts():
    out = []
    with open(os.path.join(FIX, "tokenizer", "smollm2_ids.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            if i > 0 and "text" in d:
                out.append(d["text"])
    with open(os.path.join(FIX, "tokenizer-hf", "ids.json"), encoding="utf-8") as f:
        out += json.load(f)["texts"]
    # one text per line; "\r" is kept by finch's line reader but let Python's text mode
    # alone: the lines are written and read as bytes
    seen, res = set(), []
    for t in out:
        if "\n" in t or "\0" in t or "\r" in t or t in seen:
            continue
        seen.add(t)
        res.append(t)
    return res


def finch(binary, hf_dir, args, lines):
    data = "".join(l + "\n" for l in lines).encode("utf-8")
    p = subprocess.run([binary, "tokenize", "-m", hf_dir] + args, input=data,
                       capture_output=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode("utf-8", "replace"))
        raise SystemExit("finch tokenize %s exited %d" % (" ".join(args), p.returncode))
    out = p.stdout.decode("utf-8", "surrogateescape").split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        raise SystemExit("finch tokenize %s wrote %d lines for %d" % (" ".join(args), len(out),
                                                                     len(lines)))
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    hf_dir, binary = sys.argv[1], sys.argv[2]
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    lines = texts()
    want = [tok.encode(t, add_special_tokens=False).ids for t in lines]
    got = [[int(x) for x in l.split()]
           for l in finch(binary, hf_dir, ["--parse-special", "--no-add-special"], lines)]
    bad_ids = [i for i in range(len(lines)) if got[i] != want[i]]
    for i in bad_ids[:5]:
        print("ids differ: %r\n  tokenizers %s\n  finch      %s" % (lines[i][:80], want[i][:20],
                                                                    got[i][:20]))
    # decoding: the library's ids back to text by both
    dec_want = [tok.decode(ids, skip_special_tokens=False) for ids in want]
    dec_got = finch(binary, hf_dir, ["--decode", "--parse-special"],
                    [" ".join(map(str, ids)) for ids in want])
    bad_dec = [i for i in range(len(lines)) if dec_got[i] != dec_want[i]]
    for i in bad_dec[:5]:
        print("decoding differs: %r\n  tokenizers %r\n  finch      %r" % (
            lines[i][:80], dec_want[i][:80], dec_got[i][:80]))
    print("%s: %d lines: ids equal on %d, decoded text equal on %d" % (
        hf_dir, len(lines), len(lines) - len(bad_ids), len(lines) - len(bad_dec)))
    return 0 if not bad_ids and not bad_dec else 1


if __name__ == "__main__":
    sys.exit(main())
