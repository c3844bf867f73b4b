#!/usr/bin/env bash
# Sets up the Python environment of the live interoperability checks (tests/interop/,
# `make interop`), and does nothing that is already done. Not needed to build or test finch.
#
#   $FINCH_CACHE/venv (default ~/.cache/finch/venv): Debian's python3 with its site packages,
#   so that Debian's python3-torch 1.13 is the torch used, plus pinned PyPI packages that work
#   with torch 1.13: transformers 4.46.3 (loads GGUF files with from_pretrained(gguf_file=)),
#   peft 0.15.2 (0.13 refuses the adapter_config.json keys newer peft writes, and finch
#   writes them too), gguf 0.10.0, safetensors, tokenizers, numpy 1.24 (the one torch 1.13
#   was built against).
#
#   $FINCH_CACHE/venv-adapters: the same, with transformers 4.45.2 and AdapterHub's adapters
#   1.0.1 (which needs that transformers) for the bottleneck-adapter check; also made by
#   tests/reference/make_adapter_reference.py's users.
#
# llama-cpp-python builds llama.cpp from source (about 10 minutes on 2 cores), so it is only
# installed into the venv when no interpreter has it already: the one named by
# $FINCH_LLAMACPP_PYTHON, or the python3 on PATH. tests/interop/run.sh looks in that order too.
set -euo pipefail

CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
VENV="$CACHE/venv"
PY="$VENV/bin/python"
# peft asks for torch>=1.13.0, which Debian's 1.13.0a0 does not satisfy in pip's eyes: it is
# installed without dependencies (its others are listed here) so pip does not fetch a torch 2.
PINNED=(transformers==4.46.3 tokenizers==0.20.3 accelerate==1.0.1 gguf==0.10.0
        sentencepiece==0.2.0 safetensors==0.4.5 numpy==1.24.2 huggingface_hub==0.26.5
        psutil==7.0.0 jinja2==3.1.6)
NODEPS=(peft==0.15.2)
LLAMACPP=llama-cpp-python==0.3.36

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
for p in python3-venv python3-torch; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "interop-env: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$PY" ]; then
  echo "interop-env: creating $VENV"
  mkdir -p "$CACHE"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Every pin already satisfied means nothing to do.
if "$PY" - "${PINNED[@]}" "${NODEPS[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        if want and version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "interop-env: python packages present in $VENV"
else
  echo "interop-env: installing ${PINNED[*]} ${NODEPS[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${PINNED[@]}"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "${NODEPS[@]}"
fi
"$PY" -c 'import torch, transformers, peft, gguf, safetensors, tokenizers
assert torch.__version__.startswith("1.13"), "expected Debian torch 1.13, got " + torch.__version__'

# AdapterHub's adapters, in its own venv (it pins transformers 4.45)
AVENV="$CACHE/venv-adapters"
APY="$AVENV/bin/python"
APINNED=(transformers==4.45.2 tokenizers==0.20.3 gguf==0.10.0 sentencepiece==0.2.0
         safetensors==0.4.5 numpy==1.24.2 huggingface_hub==0.26.5 psutil==7.0.0 jinja2==3.1.6)
ANODEPS=(adapters==1.0.1 peft==0.15.2 accelerate==1.0.1)
[ -x "$APY" ] || /usr/bin/python3 -m venv --system-site-packages "$AVENV"
if ! "$APY" -c 'import adapters, transformers, peft, gguf
assert adapters.__version__ == "1.0.1" and transformers.__version__ == "4.45.2"' 2>/dev/null; then
  echo "interop-env: installing ${APINNED[*]} ${ANODEPS[*]} into $AVENV"
  "$APY" -m pip install --quiet --disable-pip-version-check "${APINNED[@]}"
  "$APY" -m pip install --quiet --disable-pip-version-check --no-deps "${ANODEPS[@]}"
fi
"$APY" -c 'import torch, adapters
assert torch.__version__.startswith("1.13"), "expected Debian torch 1.13, got " + torch.__version__'

have_llamacpp() { [ -n "$1" ] && "$1" -c 'import llama_cpp' >/dev/null 2>&1; }
if have_llamacpp "${FINCH_LLAMACPP_PYTHON:-}" || have_llamacpp "$(command -v python3 || true)" ||
   have_llamacpp "$PY"; then
  echo "interop-env: llama-cpp-python present"
else
  echo "interop-env: building $LLAMACPP into $VENV (about 10 minutes)"
  # ggml's AMX kernels die with SIGILL on virtual CPUs that report AMX without its tile
  # state: a native build turns them on, so name the x86 features this CPU reports instead,
  # without AMX. finch's llamacpp numerics follow ggml's AVX-512 build: on a CPU without
  # AVX-512 the bit-for-bit checks of tests/interop will not hold, the rest will.
  on() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  grep -qw avx512f /proc/cpuinfo ||
    echo "interop-env: this CPU lacks AVX-512: llama.cpp is built for AVX2, so finch's llamacpp numerics will not match it bit for bit"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=$(on avx) -DGGML_AVX2=$(on avx2) -DGGML_FMA=$(on fma) \
-DGGML_F16C=$(on f16c) -DGGML_AVX512=$(on avx512f) -DGGML_AVX512_VBMI=$(on avx512_vbmi) \
-DGGML_AVX512_VNNI=$(on avx512_vnni) -DGGML_AVX512_BF16=$(on avx512_bf16) \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir "$LLAMACPP"
fi
echo "interop-env: ready: $VENV"
