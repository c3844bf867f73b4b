#!/usr/bin/env bash
# The main job: sets up (scripts/setup.sh fetches the default model and builds finch),
# describes the model, measures it on the bundled task (WordNet definitions, held-out
# validation set) and generates from it with its chat template.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VAL=datasets/wordnet/val.jsonl

echo "== finch info"
build/finch info
echo
echo "== finch eval: validation loss on the bundled task (WordNet definitions, chat format)"
build/finch eval --data "$VAL" --chat --max-examples 100
echo
echo "== finch generate --chat (greedy): held-out prompts and their references"
head -n 3 "$VAL" | while IFS= read -r line; do
  prompt=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt"])')
  ref=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completion"])')
  echo "prompt:    $prompt"
  echo "reference: $ref"
  printf 'finch:     '
  build/finch generate --chat -p "$prompt" -n 48
  echo
done
echo "== finch generate (sampled, plain text)"
build/finch generate -p "Once upon a time, in a small village by the sea," -n 64 --temp 0.8 --top-k 40 --top-p 0.95 --seed 42
