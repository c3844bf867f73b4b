#!/usr/bin/env bash
# Live interoperability checks against the reference tools (`make interop`): transformers,
# peft and llama.cpp on the default model (and on Gemma 3 270M when setup fetched it). Not part of CI: it needs the Python environment
# of scripts/interop-env.sh, which it sets up first (a no-op when done).
#
# Builds finch (with its tests, for the finch_interop_logits helper) in $FINCH_INTEROP_BUILD
# (default build-interop/ at the repository root), runs each check, prints its output and
# result, then "N passed, N failed"; exits 1 when any check failed. Generated files go to
# $FINCH_INTEROP_WORK (default a temporary directory, removed at the end), the HF folder
# to $FINCH_CACHE/smollm2-hf.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD="${FINCH_INTEROP_BUILD:-$ROOT/build-interop}"
VENV_PY="$CACHE/venv/bin/python"
HF_DIR="$CACHE/smollm2-hf"

bash "$ROOT/scripts/interop-env.sh" || exit 1
[ -f "$MODEL" ] || bash "$ROOT/scripts/setup.sh" || exit 1

echo "== building finch in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFINCH_WERROR=ON >/dev/null || exit 1
cmake --build "$BUILD" -j"$(nproc)" --target finch_cli finch_interop_logits >"$BUILD/interop-build.log" 2>&1 ||
  { cat "$BUILD/interop-build.log" >&2; exit 1; }
FINCH="$BUILD/finch"
LOGITS="$BUILD/tests/interop/finch_interop_logits"

# llama-cpp-python: the interpreter named by $FINCH_LLAMACPP_PYTHON, else python3 on PATH,
# else the venv (scripts/interop-env.sh builds it there when none has it).
LLAMA_PY=""
for py in "${FINCH_LLAMACPP_PYTHON:-}" "$(command -v python3 || true)" "$VENV_PY"; do
  if [ -n "$py" ] && "$py" -c 'import llama_cpp' >/dev/null 2>&1; then LLAMA_PY="$py"; break; fi
done

WORK="${FINCH_INTEROP_WORK:-}"
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/finch-interop.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
fi
COMMON=(--finch "$FINCH" --logits "$LOGITS" --model "$MODEL")

passed=0
failed=0
skipped=0
# check NAME PYTHON SCRIPT [ARGS...]: runs one check in its own scratch folder.
check() {
  local name="$1" py="$2" script="$3"
  shift 3
  echo "== $name"
  local start=$SECONDS
  if "$py" "$ROOT/tests/interop/$script" "${COMMON[@]}" --work "$WORK/$name" "$@" \
      2> >(grep -v -e 'it/s\]' -e '^\s*warnings.warn' -e 'Warning' -e 'n_ctx_train' >&2); then
    echo "-- $name: PASS ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "-- $name: FAIL ($((SECONDS - start)) s)"
    failed=$((failed + 1))
  fi
}
skip() {
  echo "== $1"
  echo "-- $1: SKIP ($2)"
  skipped=$((skipped + 1))
}

check peft "$VENV_PY" check_peft.py --data "$ROOT/datasets/wordnet/train.jsonl"
check adapters "$CACHE/venv-adapters/bin/python" check_adapters.py \
  --data "$ROOT/datasets/wordnet/train.jsonl"
check gpt2-adapters "$CACHE/venv-adapters/bin/python" check_gpt2_adapters.py
if [ -n "$LLAMA_PY" ]; then
  check llamacpp "$LLAMA_PY" check_llamacpp.py --data "$ROOT/datasets/wordnet/train.jsonl"
  check families "$LLAMA_PY" check_families.py
  check gpt2 "$VENV_PY" check_gpt2.py
  check quantize "$LLAMA_PY" check_quantize.py --gemma3 "$CACHE/gemma-3-270m-q4_k_m.gguf"
else
  echo "== llamacpp"
  echo "-- llamacpp: FAIL (no Python with llama-cpp-python; run scripts/interop-env.sh)"
  failed=$((failed + 1))
fi
check hf-folder "$VENV_PY" check_hf_folder.py --hf-dir "$HF_DIR"
if [ -n "$LLAMA_PY" ]; then
  check quantize-hf "$LLAMA_PY" check_quantize_hf.py --hf-dir "$HF_DIR"
fi
check gemma3-hf-folder "$VENV_PY" check_gemma3_hf.py
# transformers >= 4.50 (Gemma3ForCausalLM) with torch: the interpreter that has them
if [ -n "${FINCH_GEMMA3_TF_PYTHON:-}" ]; then
  check gemma3-hf-transformers "$FINCH_GEMMA3_TF_PYTHON" check_gemma3_hf.py --transformers
fi
GEMMA3="$CACHE/gemma-3-270m-q4_k_m.gguf"
if [ -n "$LLAMA_PY" ] && [ -f "$GEMMA3" ]; then
  check gemma3-lora "$LLAMA_PY" check_gemma3.py --model "$GEMMA3" \
    --data "$ROOT/datasets/wordnet/train.jsonl"
  check gemma3-lora-f32 "$LLAMA_PY" check_gemma3_exact.py --model "$GEMMA3" \
    --data "$ROOT/datasets/wordnet/train.jsonl"
else
  skip gemma3-lora "needs llama-cpp-python and Gemma 3 270M (scripts/setup.sh --with-gemma3)"
fi
if [ -f "$GEMMA3" ]; then
  # a Gemma 3 folder with a SentencePiece tokenizer (made from the GGUF) through
  # `finch quantize`: the original's ids, and llama.cpp's when the venv has it
  check gemma3-spm-quantize "$VENV_PY" check_spm_quantize.py --model "$GEMMA3"
else
  skip gemma3-spm-quantize "needs Gemma 3 270M (scripts/setup.sh --with-gemma3)"
fi
if [ -f "$ROOT/tests/interop/check_tokenizer.py" ]; then
  echo "== tokenizer"
  start=$SECONDS
  if "$VENV_PY" "$ROOT/tests/interop/check_tokenizer.py" "$HF_DIR" "$FINCH"; then
    echo "-- tokenizer: PASS ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "-- tokenizer: FAIL ($((SECONDS - start)) s)"
    failed=$((failed + 1))
  fi
else
  skip tokenizer "tests/interop/check_tokenizer.py is not there"
fi

echo "$passed passed, $failed failed$([ "$skipped" -eq 0 ] || echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
