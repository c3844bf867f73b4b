#!/usr/bin/env bash
# The main job: sets up (scripts/setup.sh fetches the default model and builds finch),
# describes the model, and generates from it with its chat template.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== finch info"
build/finch info
echo
echo "== finch generate --chat (greedy)"
build/finch generate --chat -p "What is the capital of France?" -n 64
echo
echo "== finch generate (sampled, plain text)"
build/finch generate -p "Once upon a time, in a small village by the sea," -n 64 --temp 0.8 --top-k 40 --top-p 0.95 --seed 42
