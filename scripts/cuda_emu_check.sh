#!/usr/bin/env bash
# Runs the CUDA backend's sources on the host, without a GPU or the CUDA toolkit: each .cu
# of src/kernels/cuda/ is compiled as C++ against tests/kernels/cuda_emu/emu.h (blocks,
# warps and shuffles emulated with threads and barriers, cuBLAS by its definition), and
# tests/kernels/test_cuda.c's checks run against the result, every op against the CPU
# backend with the test's own tolerances (the two largest attention shapes and the timings
# left out: emulated warps are slow). A check of the kernels' logic (indices, windows,
# segments, reductions, the operands handed to cuBLAS), not of the device: about 8 minutes
# on 2 cores. Not part of CI.
#
# With --train it runs tests/train/test_device.c instead, whose CUDA case then trains LoRA
# on the tiny model on the emulated backend against the CPU's losses: the model placed,
# the rows and parameters copied, every op of a training step on the CUDA sources, and a
# session's logits with the adapter, for LoRA and (IA)^3 (about 15 minutes on 2 cores). It
# builds the library without CUDA and MPI into BUILD_DIR (default build-emu) first.
#
# With --nccl it builds the CLI on the emulated backend, with NCCL emulated by MPI (emu.h),
# and trains the tiny model with --device cuda (no dropout: the ranks draw their own
# masks) in one process at batch 2 and under `mpirun -np 2` at batch 1 a rank, whose
# devices sum the gradients through the NCCL path (kernels/cuda/nccl.cu, train/loop.c):
# the losses and gradient norms must agree within 1e-5. It builds the
# library without CUDA, with MPI, into BUILD_DIR (default build-emu-mpi).
#
#   bash scripts/cuda_emu_check.sh [BUILD_DIR]   (a configured build, default build: its
#                                                 libfinch_kernels.a and libfinch_core.a)
#   bash scripts/cuda_emu_check.sh --train [BUILD_DIR]
#   bash scripts/cuda_emu_check.sh --nccl [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TRAIN=0
NCCL=0
if [ "${1:-}" = --train ]; then TRAIN=1; shift; fi
if [ "${1:-}" = --nccl ]; then NCCL=1; shift; fi
if [ $TRAIN = 1 ] || [ $NCCL = 1 ]; then
  if [ $NCCL = 1 ]; then BUILD="${1:-build-emu-mpi}"; MPI=ON; else BUILD="${1:-build-emu}"; MPI=OFF; fi
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFINCH_CUDA=OFF -DFINCH_WITH_MPI=$MPI \
    -DFINCH_TESTS=OFF >/dev/null
  cmake --build "$BUILD" -j2 >/dev/null
else
  BUILD="${1:-build}"
  [ -f "$BUILD/libfinch_kernels.a" ] || cmake --build "$BUILD" --target finch_kernels -j2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the header's declarations after emu.h, and each launch as a call of launch()
python3 - "$ROOT" "$work" <<'PY'
import re, sys
root, work = sys.argv[1], sys.argv[2]
real = open(f"{root}/src/kernels/cuda/cuda.h").read()
body = real[real.index("/* The process's device state"):].replace("#endif /* FINCH_KERNELS_CUDA_H */", "")
open(f"{work}/cuda_emu.h", "w").write('#include "cuda_emu/emu.h"\n' + body)
launch = re.compile(r"([\w<>]+)<<<(.*?),\s*([^<>]*?)>>>\((.*?)\);", re.S)
for name in ["matmul", "ops", "attention", "backend", "nccl"]:
    s = open(f"{root}/src/kernels/cuda/{name}.cu").read()
    s = s.replace('#include "kernels/cuda/cuda.h"', '#include "cuda_emu.h"')
    s = s.replace("#include <cuda_fp16.h>\n", "").replace("#include <nccl.h>\n", "")
    s = launch.sub(lambda m: f"launch({m[2]}, {m[3]}, [&] {{ {m[1]}({m[4]}); }});", s)
    open(f"{work}/{name}.cpp", "w").write(s)
PY
sed -e 's/cmocka_unit_test(test_bench),//' \
    -e '/check_attention(1, 300, 9, 3, 64, 0, false, &r);/d' \
    -e '/check_attention(1, 130, 4, 4, 128, 16, false, &r);/d' \
    tests/kernels/test_cuda.c >"$work/test_cuda_emu.c"

# the emulated backend answers as finch_cuda_backend_emu, beside the library's own; for
# the CLI (--nccl) as finch_cuda_backend itself, replacing the library's weak answer
if [ $NCCL = 1 ]; then
  # shellcheck disable=SC2207
  def=(-DFINCH_BUILD -DFINCH_HAVE_NCCL -DFINCH_NCCL_LINKED -D_POSIX_C_SOURCE=200809L
       $(mpicxx --showme:compile))
else
  def=(-DFINCH_BUILD -Dfinch_cuda_backend=finch_cuda_backend_emu -D_POSIX_C_SOURCE=200809L)
fi
for name in matmul ops attention backend nccl; do
  g++ -std=c++20 -O1 -ffp-contract=off -pthread -w -I"$work" -Itests/kernels -Isrc -Iinclude \
    "${def[@]}" -c "$work/$name.cpp" -o "$work/$name.o" &
done
wait
libs=()
for l in train peft generate eval export data dist model optim tokenizer io kernels core; do
  libs+=("$BUILD/libfinch_$l.a")
done
if [ $NCCL = 1 ]; then
  # shellcheck disable=SC2046
  g++ -pthread -o "$work/finch" "$BUILD"/CMakeFiles/finch_cli.dir/src/cli/*.c.o \
    "$work"/{matmul,ops,attention,backend,nccl}.o "${libs[@]}" $(mpicc --showme:link) \
    -ljansson -lpcre2-8 -lopenblas -fopenmp -lm
  run=(train -m tests/fixtures/model/tiny_llama.gguf --data datasets/wordnet/train.jsonl
       --device cuda --max-seq-len 32 --max-steps 3 --log-steps 1 --seed 1 -t 1
       --lora-dropout 0)
  echo "cuda_emu_check: one process on the emulated device, batch 2"
  "$work/finch" "${run[@]}" --batch-size 2 --out "$work/one" 2>&1 | tail -3
  echo "cuda_emu_check: two ranks on emulated devices summing through the NCCL path, batch 1 each"
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 "$work/finch" "${run[@]}" \
    --batch-size 1 --out "$work/two" 2>&1 | tee "$work/two.log" | tail -3
  grep -q "devices sum the gradients among themselves" "$work/two.log" ||
    { echo "cuda_emu_check: the ranks did not sum on their devices"; exit 1; }
  python3 - "$work/one/metrics.jsonl" "$work/two/metrics.jsonl" <<'PY'
import json, sys
one, two = ([json.loads(l) for l in open(p) if '"loss"' in l] for p in sys.argv[1:])
assert len(one) == len(two) == 3, (len(one), len(two))
for a, b in zip(one, two):
    print(f"step {a['step']}: loss {a['loss']:.6f} in one process, {b['loss']:.6f} on two ranks; "
          f"gradient norm {a['grad_norm']:.6f}, {b['grad_norm']:.6f}")
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), "losses differ"
    assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * abs(a["grad_norm"]), "norms differ"
print("cuda_emu_check: two ranks' device sums give one process's run")
PY
  exit
fi
if [ $TRAIN = 1 ]; then
  gcc -std=c11 -O1 -Isrc -Iinclude -Itests -Itests/train "${def[@]}" -D_GNU_SOURCE \
    -DFINCH_FIXTURES="\"$ROOT/tests/fixtures\"" -c tests/train/test_device.c -o "$work/test_device.o"
  g++ -pthread -o "$work/test_device_emu" "$work"/{matmul,ops,attention,backend,test_device}.o \
    "${libs[@]}" -ljansson -lpcre2-8 -lopenblas -lcmocka -fopenmp -lm
  echo "cuda_emu_check: training LoRA on the emulated CUDA backend (tests/train/test_device.c)"
  "$work/test_device_emu"
  exit
fi
gcc -std=c11 -O1 -ffp-contract=off -Isrc -Iinclude -Itests "${def[@]}" \
  -c "$work/test_cuda_emu.c" -o "$work/test_cuda_emu.o"
g++ -pthread -o "$work/test_cuda_emu" "$work"/*.o "$BUILD/libfinch_kernels.a" \
  "$BUILD/libfinch_core.a" -lopenblas -lcmocka -fopenmp -lm
echo "cuda_emu_check: running test_cuda's checks on the emulated CUDA backend"
"$work/test_cuda_emu"
