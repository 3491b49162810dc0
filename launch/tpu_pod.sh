#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM slice, as one JAX job.
#
#   bash launch/tpu_pod.sh --name medda-pod --zone us-central2-b --type v4-32 [--create] \
#       [--version tpu-ubuntu2204-base] [--project P] [--skip-install] \
#       -- python -m medda_jax.train --config=configs/metamedseg.py --workdir=/mnt/shared/mms
#
# 1. With --create, creates the slice if it does not exist (otherwise it must exist), then
#    waits until it is READY (at most MEDDA_TPU_READY_TIMEOUT seconds, default 1200).
# 2. Copies this checkout (git archive of HEAD) to ~/medda_jax on all workers and installs it
#    with jax[tpu] (skipped with --skip-install).
# 3. Runs the command in ~/medda_jax on all workers at once with MEDDA_DISTRIBUTED=1: JAX
#    finds the slice's workers itself. A worker that does not join within
#    MEDDA_INIT_TIMEOUT seconds (default 300) makes the others fail; every worker is
#    stopped after MEDDA_RUN_TIMEOUT seconds (default 86400).
# The workdir must be a filesystem every worker mounts at the same path (Filestore, a
# gcsfuse mount); the data root likewise.
set -euo pipefail

usage() {
  echo "usage: $0 --name NAME --zone ZONE --type ACCELERATOR_TYPE [--create] [--version RUNTIME] [--project PROJECT] [--skip-install] -- command [args...]" >&2
  exit 2
}

name="" zone="" type="" version="tpu-ubuntu2204-base" project="" create=0 install=1
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --name|--zone|--type|--version|--project)
      [[ $# -ge 2 ]] || { echo "error: $1 needs a value" >&2; usage; }
      declare "${1#--}=$2"
      shift 2
      ;;
    --create) create=1; shift ;;
    --skip-install) install=0; shift ;;
    *) echo "error: unknown option '$1'" >&2; usage ;;
  esac
done
[[ $# -ge 2 && $1 == "--" ]] || { echo "error: no command given after --" >&2; usage; }
shift
for setting in name zone type; do
  [[ -n ${!setting} ]] || { echo "error: --$setting is required" >&2; usage; }
done
command -v gcloud >/dev/null || { echo "error: gcloud is not on PATH (install the Google Cloud CLI)" >&2; exit 2; }

ready_timeout=${MEDDA_TPU_READY_TIMEOUT:-1200}
init_timeout=${MEDDA_INIT_TIMEOUT:-300}
run_timeout=${MEDDA_RUN_TIMEOUT:-86400}
tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")

state=$("${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || true)
if [[ -z $state ]]; then
  if [[ $create -eq 0 ]]; then
    echo "error: TPU VM '$name' does not exist in $zone; pass --create to create it" >&2
    exit 2
  fi
  echo "tpu_pod.sh: creating $name ($type, $version) in $zone" >&2
  "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version"
fi

deadline=$((SECONDS + ready_timeout))
until [[ $("${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)') == READY ]]; do
  if ((SECONDS >= deadline)); then
    echo "error: $name is not READY after ${ready_timeout}s (MEDDA_TPU_READY_TIMEOUT)" >&2
    exit 1
  fi
  sleep 15
done

on_all_workers() {
  "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

if [[ $install -eq 1 ]]; then
  archive=$(mktemp -t medda_jax.XXXXXX.tar.gz)
  trap 'rm -f "$archive"' EXIT
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  "${tpu[@]}" scp "$archive" "$name:medda_jax.tar.gz" "${where[@]}" --worker=all
  on_all_workers "rm -rf ~/medda_jax && mkdir -p ~/medda_jax && tar -xzf ~/medda_jax.tar.gz -C ~/medda_jax && python3 -m pip install -q -e ~/medda_jax'[tfds]' 'jax[tpu]'"
fi

printf -v quoted '%q ' "$@"
echo "tpu_pod.sh: running on every worker of $name: $quoted" >&2
on_all_workers "cd ~/medda_jax && MEDDA_DISTRIBUTED=1 MEDDA_INIT_TIMEOUT=$init_timeout timeout --foreground --kill-after=30 $run_timeout $quoted"
