#!/usr/bin/env bash
# The main job: sets up (scripts/setup.sh fetches the default model and builds finch),
# fine-tunes the default model with LoRA on the bundled task (WordNet definitions) for a
# few minutes, then compares the base model and the tuned one on held-out examples:
# validation loss, and generations beside their references.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TRAIN=datasets/wordnet/train.jsonl
VAL=datasets/wordnet/val.jsonl
RUN=${FINCH_RUN_DIR:-out/wordnet-lora}
STEPS=${FINCH_STEPS:-60}

echo "== the base model"
build/finch info | head -n 12
echo
echo "== fine-tuning: LoRA r16 on all linear layers, $STEPS steps of 8 examples"
build/finch train --data "$TRAIN" --val "$VAL" --val-max-examples 100 --chat \
  --target-modules all-linear --lora-r 16 --lora-alpha 32 --learning-rate 1e-3 \
  --batch-size 8 --max-steps "$STEPS" --warmup-steps 5 --eval-steps 20 --log-steps 5 \
  --out "$RUN"
echo
echo "== validation loss (100 held-out examples), base and tuned"
printf 'base:  '; build/finch eval --data "$VAL" --chat --max-examples 100 | grep '^loss'
printf 'tuned: '; build/finch eval --data "$VAL" --chat --max-examples 100 --adapter "$RUN" | grep '^loss'
echo
echo "== held-out prompts: reference, base, tuned (greedy)"
head -n 4 "$VAL" | while IFS= read -r line; do
  prompt=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt"])')
  ref=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["completion"])')
  echo "prompt:    $prompt"
  echo "reference: $ref"
  printf 'base:      '; build/finch generate --chat -p "$prompt" -n 40
  printf 'tuned:     '; build/finch generate --chat -p "$prompt" -n 40 --adapter "$RUN"
  echo
done
