#!/usr/bin/env bash
# Runs libFuzzer targets for a while each and folds what they found into the committed
# corpora. Usage (from the repository root, after a FINCH_FUZZ build):
#   CC=clang cmake -S . -B build-fuzz -DFINCH_FUZZ=ON && cmake --build build-fuzz -j
#   tests/fuzz/campaign.sh build-fuzz SECONDS target...   (targets: gguf jsonl report ...)
# Each target runs on a scratch copy of tests/fuzz/corpus/<target>/ at the lowest priority
# until it has used SECONDS of CPU time (so a busy machine slows a campaign, never shortens it); crashes go to $FUZZ_OUT/<target>/ (default /tmp/finch-fuzz)
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
  nice -n 19 "$bin" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
      -artifact_prefix="$work/crashes/" "$work/corpus" >"$work/log" 2>&1 &
  pid=$!
  # under the scheduler's autogroups the nice value only ranks processes of one session:
  # lower this session's group too, or the fuzzer takes a full share beside benchmarks
  echo 19 2>/dev/null >/proc/"$pid"/autogroup || true
  tick=$(getconf CLK_TCK)
  cpu=0
  while kill -0 "$pid" 2>/dev/null; do
    # utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks
    cpu=$(awk -v t="$tick" '{printf "%d", ($14 + $15) / t}' /proc/"$pid"/stat 2>/dev/null || echo "$cpu")
    if [ "$cpu" -ge "$seconds" ]; then kill -INT "$pid"; break; fi
    sleep 5
  done
  wait "$pid"
  rc=$?
  set -e
  # libFuzzer exits 72 after SIGINT once its final statistics are printed
  [ "$rc" -eq 72 ] && ! ls "$work/crashes"/* >/dev/null 2>&1 && rc=0
  user=$cpu sys=0
  runs=$( (grep -E "^stat::number_of_executed_units" "$work/log" || true) | awk '{print $2}')
  cov=$( (grep -oE "cov: [0-9]+ ft: [0-9]+" "$work/log" || true) | tail -1)
  echo "$t: rc $rc, cpu $(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.0f", u + s}') s, ${runs:-?} runs, $cov"
  if [ "$rc" -ne 0 ]; then
    echo "$t: finding in $work/crashes (log $work/log)" >&2
    exit 1
  fi
  nice -n 19 "$bin" -merge=1 tests/fuzz/corpus/"$t" "$work/corpus" >"$work/merge.log" 2>&1
  echo "$t: corpus now $(ls tests/fuzz/corpus/"$t" | wc -l) files"
done
