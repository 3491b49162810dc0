#!/usr/bin/env bash
# Runs one command as N JAX processes on this machine (CPU), for testing multi-process code.
#
#   bash launch/local.sh N [--devices-per-process D] -- python -m medda_jax.train \
#       --config=configs/metamedseg.py:smoke --workdir=DIR
#
# Every process gets MEDDA_COORDINATOR=127.0.0.1:<free port>, MEDDA_NUM_PROCESSES=N and its
# MEDDA_PROCESS_ID, which medda_jax.parallel passes to jax.distributed.initialize.
# Process 0 prints to this terminal; process i>0 writes to $MEDDA_LOG_DIR/process_<i>.log
# (default: a fresh temporary folder, named at the start).
#
# Bounded waits: a process that has not joined after MEDDA_INIT_TIMEOUT seconds (default 120)
# makes the others fail; every process is killed after MEDDA_RUN_TIMEOUT seconds (default
# 86400); when one process fails, the others are stopped and the script exits with its code.
# All processes stay in this script's process group, so killing the group stops them all.
set -euo pipefail

usage() {
  echo "usage: $0 N [--devices-per-process D] -- command [args...]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
num_processes=$1
shift
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, got '$num_processes'" >&2; exit 2; }
devices_per_process=1
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --devices-per-process)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "error: --devices-per-process needs a positive integer" >&2; exit 2; }
      devices_per_process=$2
      shift 2
      ;;
    *) echo "error: unknown option '$1'" >&2; usage ;;
  esac
done
[[ $# -ge 2 && $1 == "--" ]] || usage
shift

init_timeout=${MEDDA_INIT_TIMEOUT:-120}
run_timeout=${MEDDA_RUN_TIMEOUT:-86400}
log_dir=${MEDDA_LOG_DIR:-$(mktemp -d -t medda_local.XXXXXX)}
mkdir -p "$log_dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "launch/local.sh: $num_processes processes x $devices_per_process CPU devices, coordinator 127.0.0.1:$port, logs of processes 1..$((num_processes - 1)) in $log_dir" >&2

pids=()
# shellcheck disable=SC2329  # invoked by the traps
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  env_vars=(MEDDA_COORDINATOR="127.0.0.1:$port" MEDDA_NUM_PROCESSES="$num_processes"
            MEDDA_PROCESS_ID="$i" MEDDA_INIT_TIMEOUT="$init_timeout"
            JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices_per_process")
  if [[ $i -eq 0 ]]; then
    env "${env_vars[@]}" timeout --foreground --kill-after=30 "$run_timeout" "$@" &
  else
    env "${env_vars[@]}" timeout --foreground --kill-after=30 "$run_timeout" "$@" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

# Wait for the first process to end; if it failed, stop the rest and report.
status=0
running=("${pids[@]}")
remaining=$num_processes
while [[ $remaining -gt 0 ]]; do
  set +e
  wait -n -p finished "${running[@]}"
  code=$?
  set -e
  remaining=$((remaining - 1))
  for ((i = 0; i < num_processes; i++)); do
    [[ ${pids[$i]} == "$finished" ]] && rank=$i
  done
  running=()
  for pid in "${pids[@]}"; do
    [[ $pid != "$finished" ]] && kill -0 "$pid" 2>/dev/null && running+=("$pid")
  done
  if [[ $code -ne 0 ]]; then
    case $code in
      124|137) reason="timed out after ${run_timeout}s (MEDDA_RUN_TIMEOUT)" ;;
      134) reason="aborted (SIGABRT): usually a process that did not join within ${init_timeout}s (MEDDA_INIT_TIMEOUT) or a lost peer" ;;
      *) reason="exit code $code" ;;
    esac
    echo "launch/local.sh: process $rank failed: $reason; stopping the others" >&2
    [[ $rank -ne 0 ]] && { echo "--- last lines of $log_dir/process_$rank.log:" >&2; tail -n 20 "$log_dir/process_$rank.log" >&2; }
    status=$code
    break
  fi
done
exit "$status"
