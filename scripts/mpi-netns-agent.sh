#!/usr/bin/env bash
# Open MPI's rsh agent for scripts/mpi-netns.sh, in place of ssh: called as
# `mpi-netns-agent.sh HOST COMMAND...`, it runs COMMAND (the remote daemon's shell line)
# inside the network namespace that owns HOST's address, with that host's own hostname.
set -euo pipefail
host=$1
shift
case "$host" in
  10.77.0.1) ns=finch-h1 ;;
  10.77.0.2) ns=finch-h2 ;;
  *) echo "mpi-netns-agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
