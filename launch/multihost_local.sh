#!/usr/bin/env bash
# N jaxcls processes on this machine, on CPU, forming one multi-process JAX job (for testing
# the multi-host path without a cluster). Each process gets one CPU device; the batch is split
# over them and gradients are reduced over gloo, as over the network between hosts.
#
#   launch/multihost_local.sh 2 --config configs/default.py --workdir runs/mh [--config.X=Y ...]
#
# Every process runs `python -m jaxcls.main` with the same arguments and
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (read by
# jaxcls.training.parallel.initialize_distributed); process 0 writes the logs and results.json.
# Logs: WORKDIR/process_I.log. Exit status: the first failing process's, else 0.
# $PYTHON picks the interpreter (default: python on PATH, e.g. an activated venv's).
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES --config FILE --workdir DIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
num_processes=$1
shift
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--workdir" ]]; then j=$((i + 1)); workdir="${!j}"; fi
done
[[ -n "$workdir" ]] || { echo "$0: --workdir is required" >&2; exit 2; }
mkdir -p "$workdir"

python=${PYTHON:-python}  # The interpreter with jaxcls installed (default: python on PATH).
port=${JAX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
pids=()
for ((rank = 0; rank < num_processes; rank++)); do
  JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" \
  JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$num_processes" \
  JAX_PROCESS_ID="$rank" \
    "$python" -m jaxcls.main "$@" > "$workdir/process_$rank.log" 2>&1 &
  pids+=($!)
done
status=0
for rank in "${!pids[@]}"; do
  code=0
  wait "${pids[$rank]}" || code=$?
  if [[ $code -ne 0 ]]; then
    echo "process $rank failed (exit $code); its log: $workdir/process_$rank.log" >&2
    tail -n 20 "$workdir/process_$rank.log" >&2
    [[ $status -ne 0 ]] || status=$code
  fi
done
exit $status
