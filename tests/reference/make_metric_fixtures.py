#!/usr/bin/env python3
"""make_metric_fixtures.py: (prediction, references) pairs and their scores from the
reference packages, for tests/eval/test_metrics.c.

Writes tests/fixtures/eval/metrics.jsonl: a first line with the package versions and the
corpus BLEU of all pairs, then one line per pair with ROUGE (rouge-score, with and
without stemming; P/R/F for rouge1, rouge2, rougeL, rougeLsum), sentence BLEU
(sacrebleu.sentence_bleu) and SQuAD-style EM/F1 (the SQuAD v2 script's definitions with
ASCII-only lowercasing, as finch documents). Deterministic (seeded).
Needs: pip install rouge-score sacrebleu nltk
"""
import json, os, random, re, string, collections
import sacrebleu, nltk
from importlib.metadata import version
from rouge_score import rouge_scorer

random.seed(4)
# Suffixes every step of the Porter stemmer looks at, to build words that reach each rule.
SUFFIXES = ("sses ies ss s ied eed ed ing at bl iz y ational tional enci anci izer bli alli entli "
            "eli ousli ization ation ator alism iveness fulness ousness aliti iviti biliti fulli "
            "logi icate ative alize iciti ical ful ness al ance ence er ic able ible ant ement "
            "ment ent ion sion tion ou ism ate iti ous ive ize e ll yy ying yed").split()
WORDS = ("the a an cat cats sat sitting on mat mats dog dogs running runs ran quickly happy "
         "happiness generalization generalizations relational conditional connected "
         "connection hopping hoped sky skies dying lying news agreed feed caresses ponies "
         "ties caress cats feudalism sensitivity electrical hopefulness 3.14 1,000 well-known "
         "U.S. e-mail don't it's New-York 1990s x y").split()
RARE = [
    "".join(random.choice("bcdfghlmnprstvwyaeiou") for _ in range(random.randint(1, 5))) + suf
    for suf in SUFFIXES for _ in range(2)]
PUNCT = list(".,;:!?-'\"()[]{}<>&/@#$%^*_=+~`|\\")
UNI = ["café", "naïve", "Straße", "東京", "日本語", "İstanbul", "Kelvin\u212a", "ÉCOLE", "—",
       "\u00a0", "\u3000", "élan", "über", "мир", "😀"]

def rand_text(n):
    out = []
    for _ in range(n):
        r = random.random()
        if r < 0.05: w = random.choice(RARE)
        elif r < 0.7: w = random.choice(WORDS)
        elif r < 0.8: w = random.choice(PUNCT)
        elif r < 0.9: w = random.choice(UNI)
        else: w = random.choice(WORDS).upper()
        out.append(w)
        if random.random() < 0.1: out.append(random.choice(PUNCT))
    s = " ".join(out)
    if random.random() < 0.2: s = s.replace(" . ", ".\n", 2)
    if random.random() < 0.3: s = "".join("\n" if c == " " and random.random() < 0.15 else c for c in s)
    if random.random() < 0.1: s = s.replace(" ", "", 3)
    return s

def mutate(s):
    w = s.split(" ")
    for _ in range(random.randint(0, 4)):
        op = random.random()
        if not w: break
        i = random.randrange(len(w))
        if op < 0.3: del w[i]
        elif op < 0.6: w.insert(i, random.choice(WORDS))
        elif op < 0.8: w[i] = random.choice(WORDS)
        else: w[i] = w[i] + random.choice(["s", "es", "ing", "ed", "ly", "ness", "ation", "al"])
    return " ".join(w)

pairs = [("", [""]), ("", ["the cat"]), ("the cat", [""]), ("...", ["!!!"]), ("?!", ["the cat."]),
         ("the the the the", ["the cat"]), ("cat cat cat cat cat", ["cat"]),
         ("東京 日本語", ["東京 日本語"]), ("café naïve", ["cafe naive"]),
         ("a b\nc d", ["c d\na b"]), ("&amp; &lt;skipped&gt; <skipped> x-\ny", ["& <skipped> x y"]),
         ("3.14 1,000 a.b, c,d 5-6 x-y", ["3.14 1,000 a.b , c,d 5 - 6"]),
         ("The Answer", ["answer", "an answer"]), ("İ K", ["i̇ k"]),
         ("a\u3000the\u00a0cat an\u2003dog", ["cat dog"]), ("éa thé", ["éa thé"])]
while len(pairs) < 560:
    k = random.random()
    n = random.choice([1, 2, 3, 5, 8, 13, 20, 40]) if k > 0.03 else random.randint(300, 600)
    ref = rand_text(n)
    nref = 1 if random.random() < 0.7 else random.randint(2, 4)
    refs = [ref] + [mutate(rand_text(n)) if random.random() < 0.5 else mutate(ref) for _ in range(nref - 1)]
    pred = mutate(ref) if random.random() < 0.7 else rand_text(random.randint(0, 30))
    pairs.append((pred, refs))

TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
plain = rouge_scorer.RougeScorer(TYPES, use_stemmer=False)
stem = rouge_scorer.RougeScorer(TYPES, use_stemmer=True)

def lower_ascii(s): return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)
def normalize(s):
    s = "".join(ch for ch in lower_ascii(s) if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())
def em_f1(pred, refs):
    em = max(float(normalize(pred) == normalize(r)) for r in refs)
    f1s = []
    for r in refs:
        p, g = normalize(pred).split(), normalize(r).split()
        if not p or not g: f1s.append(float(p == g)); continue
        c = sum((collections.Counter(p) & collections.Counter(g)).values())
        if c == 0: f1s.append(0.0); continue
        pr, rc = c / len(p), c / len(g)
        f1s.append(2 * pr * rc / (pr + rc))
    return em, max(f1s)

def rouge(sc, pred, refs):
    s = sc.score_multi(refs, pred)
    return [[s[t].precision, s[t].recall, s[t].fmeasure] for t in TYPES]

out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval", "metrics.jsonl")
maxr = max(len(r) for _, r in pairs)
corpus_refs = [[r[k] if k < len(r) else None for _, r in pairs] for k in range(maxr)]
cb = sacrebleu.corpus_bleu([p for p, _ in pairs], corpus_refs)
with open(out, "w", encoding="utf-8") as f:
    f.write(json.dumps({"versions": {"rouge-score": version("rouge-score"),
                                     "sacrebleu": sacrebleu.__version__, "nltk": nltk.__version__},
                        "corpus_bleu": cb.score, "sys_len": cb.sys_len, "ref_len": cb.ref_len},
                       ensure_ascii=False) + "\n")
    for pred, refs in pairs:
        sb = sacrebleu.sentence_bleu(pred, refs)
        em, f1 = em_f1(pred, refs)
        f.write(json.dumps({"pred": pred, "refs": refs, "rouge": rouge(plain, pred, refs),
                            "rouge_stem": rouge(stem, pred, refs), "bleu": sb.score,
                            "em": em, "f1": f1}, ensure_ascii=False) + "\n")
# The stemmer alone: synthetic words reaching every rule, stemmed by nltk.
porter = nltk.stem.porter.PorterStemmer()
words = set(WORDS) | set(RARE) | {"sky", "skies", "dying", "lying", "tying", "news", "innings", "outing",
                      "cannings", "howe", "proceed", "exceed", "succeed", "yyy", "y", "by"}
while len(words) < 6000:
    stem_ = "".join(random.choice("bcdfghjklmnprstvwxyzaeiouy") for _ in range(random.randint(0, 7)))
    words.add(stem_ + random.choice(SUFFIXES) + (random.choice(SUFFIXES) if random.random() < 0.3 else ""))
words = sorted(w for w in (w.lower() for w in words) if re.fullmatch("[a-z0-9]+", w))
with open(os.path.join(os.path.dirname(out), "porter.tsv"), "w") as f:
    for w in words:
        f.write(f"{w}\t{porter.stem(w)}\n")
print(len(words), "words,", len(pairs), "pairs,", os.path.getsize(out), "bytes")
