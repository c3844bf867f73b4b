#!/usr/bin/env bash
# finch train across two "hosts" on this machine: two network namespaces (ip netns) joined
# by a veth pair, each with its own address and hostname, and Open MPI between them over
# TCP only (no shared memory: --mca btl tcp,self). mpirun runs in the first namespace and
# starts the second's daemon through scripts/mpi-netns-agent.sh (used as the rsh agent in
# place of ssh: `ip netns exec` into the namespace that owns the address).
#
#   scripts/mpi-netns.sh up            make the namespaces (root; idempotent)
#   scripts/mpi-netns.sh train ARGS    mpirun -np 2 finch train ARGS, one rank per namespace
#   scripts/mpi-netns.sh demo          a short LoRA run of the default model across both
#                                      (tiny test model when the default is not fetched),
#                                      then the same run with rank 1 killed (kill -9) after
#                                      its third step: the job must end with a message and
#                                      the last checkpoint must load (--resume continues it)
#   scripts/mpi-netns.sh down          remove the namespaces
#
# Needs root (CAP_NET_ADMIN), iproute2, util-linux's unshare and Open MPI
# (`apt-get install openmpi-bin libopenmpi-dev`, which scripts/setup.sh installs), and finch
# built with MPI (build/finch; FINCH=path to use another). Each rank reads the model and the
# data from the shared filesystem, as every rank of a real cluster needs its own copy;
# only rank 0 writes the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NS=(finch-h1 finch-h2)
IP=(10.77.0.1 10.77.0.2)
FINCH=${FINCH:-$ROOT/build/finch}
AGENT=$ROOT/scripts/mpi-netns-agent.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

up() {
  if ip netns list | grep -qw "${NS[1]}"; then return; fi
  for n in "${NS[@]}"; do ip netns add "$n"; ip -n "$n" link set lo up; done
  ip link add finch-veth1 type veth peer name finch-veth2
  ip link set finch-veth1 netns "${NS[0]}"
  ip link set finch-veth2 netns "${NS[1]}"
  ip -n "${NS[0]}" addr add "${IP[0]}/24" dev finch-veth1
  ip -n "${NS[1]}" addr add "${IP[1]}/24" dev finch-veth2
  ip -n "${NS[0]}" link set finch-veth1 up
  ip -n "${NS[1]}" link set finch-veth2 up
  echo "mpi-netns: ${NS[0]} (${IP[0]}) <-> ${NS[1]} (${IP[1]}) over a veth pair"
}

down() {
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  echo "mpi-netns: namespaces removed"
}

# mpirun -np 2 in the first namespace (its own hostname), one rank per host, TCP only,
# out-of-band and data traffic on the veth subnet; the rest of the line is finch's.
mpi() {
  local hosts
  hosts=$(mktemp)
  printf '%s slots=1\n%s slots=1\n' "${IP[0]}" "${IP[1]}" >"$hosts"
  ip netns exec "${NS[0]}" unshare --uts sh -c "hostname ${NS[0]}; exec \"\$@\"" sh \
    mpirun --hostfile "$hosts" -np 2 --map-by node --bind-to none \
    --mca plm_rsh_agent "$AGENT" --mca btl tcp,self --mca pml ob1 \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x FINCH_THREADS=1 -x PATH "$@"
  local rc=$?
  rm -f "$hosts"
  return $rc
}

# prints each rank's host, to show the ranks really are in the two namespaces
where() {
  mpi sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname), $(ip -4 -o addr show scope global | awk "{print \$4}")"'
}

demo() {
  up
  where
  local model="" data=datasets/wordnet/train.jsonl run=${FINCH_RUN_DIR:-out/mpi-netns}
  if [ -f "${FINCH_CACHE:-$HOME/.cache/finch}/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    model=(--chat --max-seq-len 64)
  else
    model=(-m tests/fixtures/model/tiny_llama.gguf)
  fi
  local args=("${model[@]}" --data "$data" --target-modules all-linear --lora-r 16 \
    --lora-alpha 32 --learning-rate 1e-3 --batch-size 2 --log-steps 1 --save-steps 2)
  rm -rf "$run"
  echo "== a training run spanning both hosts (2 ranks x batch 2, 6 steps)"
  mpi "$FINCH" train "${args[@]}" --max-steps 6 --out "$run/full"
  echo
  echo "== the same run, rank 1 (on ${NS[1]}) killed with SIGKILL after its third step"
  set +e
  ( mpi "$FINCH" train "${args[@]}" --max-steps 40 --out "$run/killed" >"$run/killed.log" 2>&1 ) &
  local job=$!
  # rank 1 is the finch process in the second namespace
  local pid=""
  for _ in $(seq 600); do
    if [ -f "$run/killed/metrics.jsonl" ] && [ "$(grep -c '"loss"' "$run/killed/metrics.jsonl")" -ge 3 ]; then
      pid=$(ip netns pids "${NS[1]}" | while read -r p; do
        [ "$(cat /proc/"$p"/comm 2>/dev/null)" = finch ] && echo "$p"; done | head -n 1)
      break
    fi
    sleep 0.2
  done
  [ -n "$pid" ] && kill -9 "$pid" && echo "killed rank 1 (pid $pid)"
  wait "$job"
  local rc=$?
  set -e
  cat "$run/killed.log"
  echo "mpirun exit code: $rc"
  [ "$rc" -ne 0 ] || { echo "mpi-netns: error: the job did not fail" >&2; exit 1; }
  local last
  last=$(ls -d "$run"/killed/checkpoint-* | sort -t- -k2 -n | tail -n 1)
  echo "last checkpoint: $last ($(ls "$last" | tr '\n' ' '))"
  echo
  echo "== resuming it on both hosts for two more steps from the intact checkpoint"
  local step=${last##*-}
  mpi "$FINCH" train "${args[@]}" --max-steps 40 --out "$run/killed" --resume "$last" \
    --max-steps $((step + 2)) 2>&1 | tail -n 3
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  where) up; where ;;
  train) shift; up; mpi "$FINCH" train "$@" ;;
  demo) demo ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
