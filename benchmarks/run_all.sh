#!/usr/bin/env bash
# Runs every benchmark of benchmarks/ and writes its JSON to benchmarks/results/.
#
#   bash benchmarks/run_all.sh          # GPU defaults (the spec's shapes), at most 10 minutes
#   bash benchmarks/run_all.sh --cpu    # each benchmark's CPU mode at its quickest settings
#
# The GPU run is the first command to run when a device is lent: each benchmark has its own
# time cap (they add up to 600 s), so one that hangs or runs long cannot eat the others' time.
# Set PYTHON to choose the interpreter (default: python3).
set -euo pipefail

usage() { echo "usage: bash benchmarks/run_all.sh [--cpu]" >&2; exit 2; }

cpu=0
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    -h|--help) echo "usage: bash benchmarks/run_all.sh [--cpu]"; exit 0 ;;
    *) echo "error: unknown argument '$arg'" >&2; usage ;;
  esac
done

cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"

if [[ "$cpu" == 0 ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no GPU found (nvidia-smi lists none); pass --cpu to run the CPU benchmarks" >&2
    exit 2
  fi
  gpus=$(nvidia-smi -L | grep -c '^GPU')
  # scaling.py measures 1, 2, 4, ... devices, up to the GPUs this machine has.
  counts=1
  for n in 2 4 8; do
    if (( n <= gpus )); then counts="$counts,$n"; fi
  done
fi

failed=()
run() {  # run SECONDS SCRIPT [ARGS...]: one benchmark under its own time cap
  local cap=$1 script=$2
  shift 2
  echo "== $script $* (cap ${cap} s)"
  local start=$SECONDS
  if timeout --signal=TERM --kill-after=10 "$cap" "$py" "benchmarks/$script" "$@"; then
    echo "== $script done in $((SECONDS - start)) s"
  else
    echo "== $script FAILED (exit $?) after $((SECONDS - start)) s" >&2
    failed+=("$script")
  fi
}

if [[ "$cpu" == 1 ]]; then
  # One core each (--cpu-threads 1 pins the process; as the committed CPU figures). JAX's scanned executor (the
  # default) beside the unrolled host one; each torch peer's CPU variants (eager fp32, bf16
  # autocast, torch.compile where it compiles).
  run 600 unet_step.py --cpu --cpu-threads 1 --repeats 5 --iters 3
  run 600 cpu_conv_bf16.py --cpu-threads 1
  run 600 unet_step_profile.py --cpu-threads 1
  run 600 reptile_meta_iteration.py --cpu --cpu-threads 1 --quick --executors map,host \
    --steps-per-call 15
  run 600 wgan_gp_cycle.py --cpu --cpu-threads 1 --quick \
    --executors scan/10/fp32,scan/1/fp32,host/1/fp32
  run 600 stargan_cycle.py --cpu --cpu-threads 1 --repeats 3 --iters 2 \
    --executors scan/5/fp32,scan/1/fp32,host/1/fp32
  run 600 cyclegan_iteration.py --cpu --cpu-threads 1 --batches 1,4 --repeats 3 --iters 2 \
    --executors scan/2/fp32,host/1/fp32
  run 600 sifa_iteration.py --cpu --cpu-threads 1 --repeats 3 --iters 2 \
    --executors scan/2/fp32,host/1/fp32
  # The three headline comparisons again with two threads each.
  run 600 unet_step.py --cpu --cpu-threads 2 --repeats 5 --iters 3 \
    --out benchmarks/results/unet_step_cpu_2threads.json
  run 600 wgan_gp_cycle.py --cpu --cpu-threads 2 --quick --executors scan/1/fp32,host/1/fp32 \
    --out benchmarks/results/wgan_gp_cycle_cpu_2threads.json
  run 600 stargan_cycle.py --cpu --cpu-threads 2 --repeats 3 --iters 2 \
    --executors scan/5/fp32,host/1/fp32 --out benchmarks/results/stargan_cycle_cpu_2threads.json
  run 600 scaling.py --cpu
  # The committed figures: full DenseNet-121 at the default sizes.
  run 600 input_pipeline.py --cpu --full-densenet
  run 600 volume_memory.py --cpu
  run 600 fda_volume.py --cpu --cpu-threads 1 --quick
  run 600 catenorm_step.py --cpu --quick
  run 600 catenorm_step.py --cpu --cpu-threads 1 --quick \
    --out benchmarks/results/catenorm_step_cpu_1thread.json
  run 600 melanoma_step.py --cpu --cpu-threads 1 --quick
  run 600 stain_aglr_step.py --cpu --cpu-threads 1 --quick
  run 600 sissi_pipeline.py --cpu --cpu-threads 1 --quick
  # One SimMIM pre-training step (tiny ViT and Swin at 96 px), then its input pipeline
  # against that step's JSON.
  run 600 simmim_step.py --cpu --cpu-threads 1 --quick
  run 600 simmim_pipeline.py --cpu --cpu-threads 1 --quick --step-json auto
  # Time to the first training call of every demo, host loop vs scan (about 20 minutes).
  run 1800 first_step.py --cpu
else
  # Caps in seconds, 600 in all; the order puts the spec's two GPU goals first.
  run 57 unet_step.py
  run 65 reptile_meta_iteration.py
  run 59 wgan_gp_cycle.py
  run 59 stargan_cycle.py
  # The likeliest best executor of each side at batch 1 and 8; the full set: run it alone.
  run 54 cyclegan_iteration.py --skip-check --repeats 3 --executors scan/10/bf16 \
    --torch-variants eager_fp32,eager_bf16_cl
  # Batch 8 at 256 px; the same pick of executors (its JSON is written after each one).
  run 50 sifa_iteration.py --skip-check --repeats 3 --iters 10 --executors scan/10/bf16 \
    --torch-variants eager_fp32,eager_bf16_cl
  run 21 scaling.py --devices "$counts"
  run 30 input_pipeline.py
  run 15 volume_memory.py --cases 10,40 --volume 96,96,40 --size 96 --batches 20
  # A whole 172-slice target volume at 256 px, 7 donors; one CateNorm step, batch 4, 384 px.
  run 33 fda_volume.py --quick
  run 33 catenorm_step.py --quick
  # One LNTL and one CLGR step, ResNeXt-101 32x8d, batch 64 at 256 px (20 s from the two
  # above).
  run 18 melanoma_step.py --quick
  # One Stain-AgLr step, batch 64 at 256 px (20 s from the scaling and pipeline caps).
  run 18 stain_aglr_step.py --quick
  # SISSI's cloning and batch assembly against its detector step at 512 px (20 s from the
  # reptile and WGAN caps).
  run 18 sissi_pipeline.py --quick --images 4
  # One SimMIM pre-training step of ViT-B/16 and Swin-B at 224, batch 64, the likeliest
  # best of each side (JAX bf16, torch eager bf16; the JSON is written after each one), then
  # the input pipeline against that JSON's JAX step (70 s taken from every cap above).
  run 55 simmim_step.py --quick --skip-check --jax-dtypes bf16 --torch-variants eager_bf16
  run 15 simmim_pipeline.py --quick --images 256 --threads 4,8 --step-json auto
fi

if (( ${#failed[@]} )); then
  echo "error: failed or over their cap: ${failed[*]}" >&2
  exit 1
fi
echo "all benchmarks done in ${SECONDS} s; results in benchmarks/results/"
