"""Makes tests/fixtures/report/run/eval.json: a small evaluation file in the schema of
`finch eval --json` (task generate, two systems, metrics per system, samples), whose ROUGE
and BLEU are computed by Google's rouge-score and sacrebleu, and whose samples carry text
that must be escaped in HTML (tags, quotes, ampersands, a control character).

The other files of that run directory are finch's own output, copied: metrics.jsonl and
adapter_config.json from the 60-step WordNet run of scripts/run.sh (out/wordnet-lora), and
run.json as finch train writes it, with that run's settings and relative paths.

Run: python3 tests/reference/make_report_fixture.py   (needs rouge-score, sacrebleu)
"""
import importlib.metadata
import json
import os

import sacrebleu
from rouge_score import rouge_scorer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "report", "run", "eval.json")

prompts = [
    'Define the word "parenthood" (noun).',
    'Define the word "mutational" (adjective).',
    'Define the word "indictment" (noun).',
]
refs = [
    "the state of being a parent",
    "of or relating to or resulting from mutation",
    "a formal document written for a prosecuting attorney charging a person with some offense",
]
outputs = {
    "base": [
        'Parenthood is <b>the state</b> of being a parent & raising "children".',
        "<script>alert('x')</script> Mutational means relating to mutation.",
        "An indictment is a formal accusation\x01 of a crime.",
    ],
    "run": [
        "the state of being a parent",
        "of or relating to mutation",
        "a formal document charging a person with an offense",
    ],
}

scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
metrics = []
for name, preds in outputs.items():
    m = {"system": name, "data": "datasets/wordnet/val.jsonl", "task": "generate"}
    for key in ["rouge1", "rouge2", "rougeL", "rougeLsum"]:
        m[key] = round(sum(scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs)) / len(refs), 6)
    m["bleu"] = round(sacrebleu.corpus_bleu(preds, [refs]).score, 4)
    m["em"] = round(sum(p == r for p, r in zip(preds, refs)) / len(refs), 6)
    metrics.append(m)

doc = {
    "task": "generate",
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "data": "datasets/wordnet/val.jsonl",
    "n_examples": len(refs),
    "seed": 0,
    "systems": [{"name": "base", "adapters": []},
                {"name": "run", "adapters": [{"path": "out/run", "weight": 1.0}]}],
    "metrics": metrics,
    "samples": [{"prompt": p, "reference": r, "outputs": {k: v[i] for k, v in outputs.items()}}
                for i, (p, r) in enumerate(zip(prompts, refs))],
    "versions": {"rouge-score": importlib.metadata.version("rouge-score"),
                 "sacrebleu": sacrebleu.__version__},
}
with open(OUT, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print("wrote", OUT)
