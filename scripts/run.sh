#!/usr/bin/env bash
# The main job: sets up (scripts/setup.sh fetches the default model and builds finch),
# fine-tunes the default model with LoRA on the bundled task (WordNet definitions) for a
# few minutes, then compares the base model and the tuned one on held-out examples
# (loss; generations scored by ROUGE, BLEU, exact match, F1; loss on a general set to show
# forgetting) and writes an HTML report of the run (curves, settings, metrics, samples).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TRAIN=datasets/wordnet/train.jsonl
VAL=datasets/wordnet/val.jsonl
TEST=datasets/wordnet/test.jsonl
RUN=${FINCH_RUN_DIR:-out/wordnet-lora}
STEPS=${FINCH_STEPS:-60}
GEN_EXAMPLES=${FINCH_GEN_EXAMPLES:-50}

echo "== the base model"
build/finch info | head -n 12
echo
echo "== fine-tuning: LoRA r16 on all linear layers, $STEPS steps of 8 examples"
build/finch train --data "$TRAIN" --val "$VAL" --val-max-examples 100 --chat \
  --target-modules all-linear --lora-r 16 --lora-alpha 32 --learning-rate 1e-3 \
  --batch-size 8 --max-steps "$STEPS" --warmup-steps 5 --eval-steps 20 --log-steps 5 \
  --out "$RUN"
echo
echo "== base vs tuned on held-out test examples: validation loss, then generations"
echo "   scored against the references, and the loss on a general set (quotations) for forgetting"
build/finch eval --data "$TEST" --chat --task loss --max-examples 100 --compare \
  --adapter "$RUN" --json-out "$RUN/eval-loss.json"
echo
build/finch eval --data "$TEST" --chat --task generate --metrics rouge,bleu,em,f1 \
  --max-examples "$GEN_EXAMPLES" --max-new-tokens 48 --samples 4 --compare --adapter "$RUN" \
  --general datasets/quotes/general.jsonl --general-max-examples 100 \
  --json-out "$RUN/eval-generate.json"
echo
echo "== report"
build/finch report "$RUN" -o "$RUN/report.html"
echo "open $RUN/report.html in a browser: loss curves, settings, metrics and samples"
