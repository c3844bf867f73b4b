#!/usr/bin/env bash
# Runs libFuzzer targets for a while each and folds what they found into the committed
# corpora. Usage (from the repository root, after a FINCH_FUZZ build):
#   CC=clang cmake -S . -B build-fuzz -DFINCH_FUZZ=ON && cmake --build build-fuzz -j
#   tests/fuzz/campaign.sh build-fuzz SECONDS target...   (targets: gguf jsonl report ...)
# Each target runs on a scratch copy of tests/fuzz/corpus/<target>/ for SECONDS of wall
# time at the lowest priority; crashes go to $FUZZ_OUT/<target>/ (default /tmp/finch-fuzz)
# and stop the script; otherwise the inputs that add coverage are merged (-merge=1) into
# the committed corpus, whose files stay as they are. Prints execs, coverage and the CPU seconds each target used.
set -euo pipefail
build=$1 seconds=$2
shift 2
out=${FUZZ_OUT:-/tmp/finch-fuzz}
for t in "$@"; do
  bin=$build/tests/fuzz/fuzz_$t
  [ -x "$bin" ] || { echo "no $bin: build with -DFINCH_FUZZ=ON under clang" >&2; exit 2; }
  work=$out/$t
  rm -rf "$work/corpus"
  mkdir -p "$work/corpus" "$work/crashes"
  cp tests/fuzz/corpus/"$t"/* "$work/corpus/"
  set +e
  /usr/bin/time -f "%U %S" -o "$work/time" nice -n 19 "$bin" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
      -artifact_prefix="$work/crashes/" "$work/corpus" >"$work/log" 2>&1
  rc=$?
  set -e
  read -r user sys <"$work/time" || true
  stats=$(grep -E "^#[0-9]+ +DONE" "$work/log" | tail -1)
  echo "$t: rc $rc, cpu $(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.0f", u + s}') s, $stats"
  if [ "$rc" -ne 0 ]; then
    echo "$t: finding in $work/crashes (log $work/log)" >&2
    exit 1
  fi
  nice -n 19 "$bin" -merge=1 tests/fuzz/corpus/"$t" "$work/corpus" >"$work/merge.log" 2>&1
  echo "$t: corpus now $(ls tests/fuzz/corpus/"$t" | wc -l) files"
done
