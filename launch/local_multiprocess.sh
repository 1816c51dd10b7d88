#!/bin/bash
# N kd_jax processes on this machine, joined over loopback (CPU devices),
# e.g. to check a multi-host set-up before a cluster run:
#   bash launch/local_multiprocess.sh 2 configs/quickstart.py:runlocal /tmp/kd_mp
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES CONFIG[:arg] WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
N=$1; CONFIG=$2; WORKDIR=$3; shift 3
PORT=${KD_JAX_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu KD_JAX_COORDINATOR=127.0.0.1:$PORT KD_JAX_NUM_PROCESSES=$N \
  KD_JAX_PROCESS_ID=$i python -m kd_jax.main --config="$CONFIG" \
    --workdir="$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
