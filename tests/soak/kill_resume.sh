#!/usr/bin/env bash
# kill_resume.sh: a training run killed with SIGKILL at random moments resumes every time
# and ends with an adapter byte-identical to an uninterrupted run's.
#
#   tests/soak/kill_resume.sh FINCH [--kills N] [--model GGUF] [--steps S] [--seed X]
#
# The uninterrupted run is timed first (T seconds, model loading included). Then `finch
# train` starts (with --resume OUT once a checkpoint-<step> is there, from scratch before),
# is killed with SIGKILL after a delay drawn uniformly from [0, T), and is started again,
# until N kills have landed; a run that ends before its kill completes a cycle: its
# adapter (adapter_model.safetensors, adapter_config.json) is compared with the
# uninterrupted run's, byte for byte, and a new cycle starts from an empty directory. The
# last cycle runs to its end. Every cycle's result, and its metrics.jsonl (each step logged
# once, with the uninterrupted run's values; tokens_per_s aside), must be identical, every
# start after a kill must succeed or be killed in turn, and no temporary file may be left.
# The draws come from bash's RANDOM seeded with --seed, so a failure can be replayed.
# Prints the kills, the checkpoint each resume started from, and the cycles. Exit 0 on
# success.
set -euo pipefail

finch=${1:?usage: kill_resume.sh FINCH [--kills N] [--model GGUF] [--steps S] [--seed X]}
shift
kills=50
model="$(cd "$(dirname "$0")/../fixtures/model" && pwd)/tiny_llama.gguf"
steps=40
seed=1
while [ $# -gt 0 ]; do
  case "$1" in
  --kills) kills=$2; shift 2 ;;
  --model) model=$2; shift 2 ;;
  --steps) steps=$2; shift 2 ;;
  --seed) seed=$2; shift 2 ;;
  *) echo "kill_resume.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed

# /dev/shm where there is one: a SIGKILL loses nothing the page cache holds, so tmpfs tests
# the same thing and spares the fsyncs of a checkpoint per step
tmp=${TMPDIR:-/tmp}
[ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && tmp=/dev/shm
work=$(mktemp -d "$tmp/finch_soak_XXXXXX")
trap 'rm -rf "$work"' EXIT
data=$work/train.jsonl
for i in $(seq 0 31); do
  printf '{"prompt": "count %d:", "completion": " %d %d"}\n' "$i" $((i + 1)) $((i + 2))
done >"$data"

train() { # train OUT [extra flags]: exec's finch, so that a background train's $! is finch
  local out=$1
  shift
  exec "$finch" train -m "$model" --data "$data" --out "$out" --max-seq-len 24 --batch-size 2 \
    --lora-r 4 --lora-dropout 0.1 --target-modules all-linear --learning-rate 0.02 \
    --max-steps "$steps" --save-steps 1 --save-total-limit 2 --log-steps 1 --seed 7 \
    --threads 2 "$@"
}

now_ms() { date +%s%3N; }

t0=$(now_ms)
(train "$work/ref") >"$work/ref.log" 2>&1 || { cat "$work/ref.log" >&2; exit 1; }
span=$(($(now_ms) - t0))
[ "$span" -gt 0 ] || span=1
echo "uninterrupted run: $steps steps in $span ms"

no_speed() { # a metrics file without its tokens_per_s fields (they differ between runs)
  sed 's/"tokens_per_s": [0-9.e+-]*, //' "$1"
}

check_result() { # check_result OUT CYCLE
  local f
  for f in adapter_model.safetensors adapter_config.json; do
    if ! cmp -s "$1/$f" "$work/ref/$f"; then
      echo "error: cycle $2: $1/$f differs from the uninterrupted run's" >&2
      exit 1
    fi
  done
  if ! cmp -s <(no_speed "$1/metrics.jsonl") <(no_speed "$work/ref/metrics.jsonl"); then
    echo "error: cycle $2: $1/metrics.jsonl differs from the uninterrupted run's:" >&2
    diff <(no_speed "$1/metrics.jsonl") <(no_speed "$work/ref/metrics.jsonl") | head >&2
    exit 1
  fi
  local left
  left=$(find "$1" -name '*.tmp.*' -o -name '.checkpoint-*')
  if [ -n "$left" ]; then
    echo "error: cycle $2: temporary files left: $left" >&2
    exit 1
  fi
}

latest_checkpoint() { # the step of OUT's newest checkpoint, or nothing
  find "$1" -maxdepth 1 -name 'checkpoint-*' -printf '%f\n' 2>/dev/null |
    sed 's/checkpoint-//' | sort -n | tail -1
}

out=$work/run
landed=0 cycles=0 starts=0 fresh=0
resumed_from=()
rm -rf "$out"
while :; do
  from=$(latest_checkpoint "$out" || true)
  resume=()
  if [ -n "$from" ]; then
    resume=(--resume "$out")
    resumed_from+=("$from")
  else
    fresh=$((fresh + 1))
  fi
  starts=$((starts + 1))
  if [ "$landed" -ge "$kills" ]; then
    # the kills are done: this start runs to its end
    (train "$out" "${resume[@]}") >"$work/last.log" 2>&1 || {
      cat "$work/last.log" >&2
      exit 1
    }
    cycles=$((cycles + 1))
    check_result "$out" "$cycles"
    break
  fi
  (train "$out" "${resume[@]}") >"$work/last.log" 2>&1 &
  pid=$!
  delay=$(((RANDOM * 32768 + RANDOM) % span))
  sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  kill -KILL "$pid" 2>/dev/null || true
  rc=0
  { wait "$pid"; } 2>/dev/null || rc=$? # (bash would report "Killed")
  if [ "$rc" -eq 137 ]; then
    landed=$((landed + 1))
    echo "kill $landed at $delay ms (start $starts, from checkpoint ${from:-none})"
  elif [ "$rc" -eq 0 ]; then
    # it ended before the kill: a cycle is complete
    cycles=$((cycles + 1))
    check_result "$out" "$cycles"
    echo "cycle $cycles complete and identical; starting a new one"
    rm -rf "$out"
  else
    echo "error: start $starts (from checkpoint ${from:-none}) failed with exit $rc:" >&2
    cat "$work/last.log" >&2
    exit 1
  fi
done
echo "ok: $landed SIGKILLs over $starts starts ($fresh from scratch, ${#resumed_from[@]} resumed" \
  "from a checkpoint), $cycles cycles, each ending with the uninterrupted run's adapter" \
  "byte for byte and its metrics line for line"
