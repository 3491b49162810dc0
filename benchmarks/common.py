"""Shared helpers of the benchmarks: platform set-up, device and version description,
timing, FLOP accounting and the JSON result files.

Every benchmark runs the JAX side and its PyTorch peer in one process on one device.
Import this module before jax or torch and call `setup_platform` first: it sets the
environment variables that must be in place before the two frameworks start (JAX must
not pre-allocate the GPU memory that torch needs in the same process).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform as _platform
import re
import statistics
import sys
import time
from typing import Any, Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

PACKAGES = ("torch", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "einops",
            "grain")

# Dense (no sparsity) bf16 tensor-core peak in FLOP/s, from the vendor data sheets. The
# first entry whose key occurs in the device name wins, so specific names come first.
PEAK_BF16_FLOPS = (
    ("H200 NVL", 835e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
)


def setup_platform(force_cpu: bool = False, cpu_threads: int | None = None) -> None:
  """Environment for one process that holds JAX and torch side by side.

  cpu_threads: CPU cores of both frameworks (None: their defaults, all cores). The process
  is pinned to that many cores: XLA:CPU sizes its thread pool by the cores a process may
  run on and ignores `--xla_cpu_multi_thread_eigen=false` in its current runtime (a
  jitted matrix product used 1.9 s of CPU time per second of wall time with that flag),
  so without the pin a "one thread" JAX side ran on every core while torch ran on one.
  On a CPU shared with other jobs, torch's OpenMP threads wait at every barrier for a
  descheduled sibling (a batch-1 U-Net step was 40x slower with 2 threads than with 1
  under a load of 6 on 2 cores), so fewer threads than cores is then the fair setting.
  Must run before jax and torch are imported; call `apply_torch_threads` after.
  """
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if force_cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
  if cpu_threads:
    pin_to_cores(cpu_threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
      os.environ[var] = str(cpu_threads)


def pin_to_cores(count: int) -> None:
  """Lets this process (and the threads and processes it starts) run on `count` cores."""
  cores = sorted(os.sched_getaffinity(0))
  if count > len(cores):
    raise SystemExit(f"error: --cpu-threads {count}: this process may use {len(cores)} cores")
  os.sched_setaffinity(0, cores[:count])


def apply_torch_threads(cpu_threads: int | None) -> None:
  import torch
  if cpu_threads:
    torch.set_num_threads(cpu_threads)


def detect_platform() -> str:
  """"gpu" when both JAX and torch see a CUDA device, "cpu" when neither does.

  A mixed set-up (e.g. a CPU-only torch next to a CUDA jaxlib) would compare two
  different devices, so it stops with a message instead.
  """
  import jax
  import torch
  jax_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
  torch_gpu = torch.cuda.is_available()
  if jax_gpu and torch_gpu:
    return "gpu"
  if not jax_gpu and not torch_gpu:
    return "cpu"
  sys.exit(f"JAX backend is {jax.default_backend()!r} but torch.cuda.is_available() is "
           f"{torch_gpu}: both frameworks must run on the same device. Install the CUDA "
           "builds of both, or pass --cpu to measure both on the CPU.")


def versions() -> dict[str, str]:
  out = {"python": _platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "absent"
  return out


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return _platform.processor() or _platform.machine()


def cpu_vector_extensions() -> list[str]:
  """The CPU's AVX-512 / AMX / AVX2 flags: the kernels both frameworks pick depend on them."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return []
  return sorted(f for f in set(flags) if f.startswith(("avx512", "amx")) or f == "avx2")


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def device_info(platform: str) -> dict[str, Any]:
  import jax
  import torch
  info: dict[str, Any] = {
      "cpu": cpu_model(),
      "cpu_cores": usable_cores(),  # the cores this process ran on (see setup_platform)
      "cpu_vector_extensions": cpu_vector_extensions(),
      "load_average_at_start": load_average(),
      "torch_threads": torch.get_num_threads(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_devices": [str(d) for d in jax.devices()],
  }
  if platform == "gpu":
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    info.update(name=name, jax_device_kind=jax.devices()[0].device_kind,
                memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                peak_bf16_dense_flops=peak_bf16_flops(name))
  else:
    info["name"] = f"CPU: {info['cpu']} ({info['cpu_cores']} cores)"
  return info


def jax_device_info(platform: str) -> dict[str, Any]:
  """`device_info` without torch, for a benchmark with no PyTorch peer."""
  import jax
  info: dict[str, Any] = {
      "cpu": cpu_model(), "cpu_cores": usable_cores(),
      "cpu_vector_extensions": cpu_vector_extensions(),
      "load_average_at_start": load_average(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_devices": [str(d) for d in jax.devices()]}
  if platform == "gpu":
    info["name"] = jax.devices()[0].device_kind
  else:
    info["name"] = f"CPU: {info['cpu']} ({info['cpu_cores']} cores)"
  return info


def peak_bf16_flops(device_name: str) -> float | None:
  for key, peak in PEAK_BF16_FLOPS:
    if key.lower() in device_name.lower():
      return peak
  return None


def device_slug(device: dict[str, Any]) -> str:
  """"h100-80gb-hbm3" for "NVIDIA H100 80GB HBM3": the file-name part of a GPU run."""
  name = re.sub(r"^nvidia\s+", "", device["name"], flags=re.IGNORECASE)
  return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def result_path(benchmark: str, platform: str, device: dict[str, Any], suffix: str = "") -> str:
  """benchmarks/results/<benchmark>_cpu<suffix>.json or <benchmark>_gpu_<device><suffix>.json."""
  tag = "cpu" if platform == "cpu" else f"gpu_{device_slug(device)}"
  return os.path.join(RESULTS_DIR, f"{benchmark}_{tag}{suffix}.json")


def sync_fn(platform: str) -> Callable[[], None]:
  if platform == "gpu":
    import torch
    return torch.cuda.synchronize
  return lambda: None


def time_repeats(run: Callable[[], Any], finish: Callable[[Any], None], *, warmup: int,
                 repeats: int, iters: int) -> dict[str, Any]:
  """Median seconds per call of `run` over `repeats` timed blocks of `iters` calls.

  `finish(last_output)` must wait for the device (block_until_ready or
  torch.cuda.synchronize); it runs after the warm-up and after every timed block.
  """
  out = None
  t0 = time.perf_counter()
  for _ in range(warmup):
    out = run()
  finish(out)
  warmup_s = time.perf_counter() - t0
  per_call = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(iters):
      out = run()
    finish(out)
    per_call.append((time.perf_counter() - t) / iters)
  return {"seconds_per_call": statistics.median(per_call),
          "seconds_per_call_repeats": per_call,
          "warmup_seconds": warmup_s}


def time_within_budget(run, finish, *, warmup, repeats, iters, budget):
  """common.time_repeats after `warmup` untimed calls, with the repeats cut to fit `budget`
  seconds (at least one) by the last warm-up call's time. Also returns the last output."""
  last = [None]

  def call():
    last[0] = run()
    return last[0]

  warm, call_s = 0.0, None
  for _ in range(warmup):
    t0 = time.perf_counter()
    finish(call())
    call_s = time.perf_counter() - t0
    warm += call_s
  if budget and call_s:
    repeats = max(1, min(repeats, int(budget // (call_s * iters))))
  t = time_repeats(call, finish, warmup=0, repeats=repeats, iters=iters)
  return dict(t, warmup_seconds=warm, warmup_calls=warmup, repeats=repeats,
              calls_per_block=iters), last[0]


def time_state_step(step, state, batch, images: int, timing: dict, **extra) -> dict[str, Any]:
  """time_repeats of a JAX step `step(state, batch) -> (state, metrics)` that may donate its
  state: each call takes the state the last one returned. Returns images/s (`images` per
  call), `extra` (e.g. compile seconds) and the timing."""
  carry = [state]

  def run():
    carry[0], metrics = step(carry[0], batch)
    return metrics["loss"]

  t = time_repeats(run, jax_block, **timing)
  return {"images_per_s": images / t["seconds_per_call"], **extra, **t}


def images_per_s_text(result: dict[str, Any]) -> str:
  """One result's images/s for the progress lines, or its error."""
  if "images_per_s" in result:
    return f"{result['images_per_s']:9.2f} images/s"
  return result.get("error")


def jax_block(tree) -> None:
  import jax
  jax.block_until_ready(tree)


def lowered_flops(lowered) -> float | None:
  """FLOPs of one call from XLA's cost analysis of the lowered (unoptimised) module.

  The lowered module still holds every convolution and dot as such; after compilation
  for a GPU they become cuDNN/cuBLAS custom calls that the compiled module's cost
  analysis does not count, so the lowered count is the one that stays comparable
  across backends.
  """
  try:
    ca = lowered.cost_analysis()
  except Exception:  # cost analysis is best effort
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = (ca or {}).get("flops")
  return float(flops) if flops else None


def error_text(e: BaseException, limit: int = 400) -> str:
  text = " ".join(str(e).split())
  return f"failed: {type(e).__name__}: {text[:limit]}"


# The name each benchmark's `ratio` gives its best-JAX-over-best-torch speed figure (> 1:
# JAX faster); `headline` reads them into the one top-level key every JSON carries.
HEADLINE_KEYS = ("jax_best_over_torch_best", "speedup_jax_best_over_torch_best",
                 "jax_speedup_vs_torch", "torch_seconds_over_jax_seconds",
                 "jax_conv_best_over_torch_conv_best")


def headline(ratio: dict[str, Any]):
  """Best JAX over best torch speed: a number; {setting: number} for a benchmark measured
  at several settings (networks, batch sizes); None for one without a torch peer."""
  for key in HEADLINE_KEYS:
    if isinstance(ratio.get(key), (int, float)):
      return ratio[key]
  per_setting = {k: headline(v) for k, v in ratio.items() if isinstance(v, dict)}
  return {k: v for k, v in per_setting.items() if v is not None} or None


def write_json(path: str, *, benchmark: str, platform: str, device: dict[str, Any],
               shapes: dict[str, Any], results: dict[str, Any], ratio: dict[str, Any],
               notes: list[str], **extra) -> str:
  """Writes one benchmark's result file; every file has the same top-level keys (the
  figures themselves under `results`, the comparison under `ratio` and, as one number or
  one per setting, under `jax_best_over_torch_best`)."""
  notes = list(notes)
  if platform == "cpu":
    notes.insert(0, "CPU only: both sides measured on the CPU in one process; these figures "
                 "are not the GPU goal and say nothing about GPU speed.")
  device = dict(device, load_average_at_end=load_average())
  payload = {
      "benchmark": benchmark,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
      "device": device,
      "platform": platform,
      "versions": versions(),
      "shapes": shapes,
      **extra,
      "results": results,
      "ratio": ratio,
      "jax_best_over_torch_best": headline(ratio),
      "notes": notes,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  return path


def env_int(name: str, default: int) -> int:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else default


# ---------------------------------------------------------------------------------------
# PyTorch peers of medda_jax.models.unet.UNet (NCHW, logits out).

def torch_unet(kind: str, base: int = 32):
  """The PyTorch peer network of one benchmark setting.

  kind="deep": the shared peer benchmark's U-Net — 5 levels, transposed-conv
  up-sampling, instance norm with affine scale/shift, torch's default init; in medda_jax
  UNet(features=base, levels=5, upsample="transpose", affine_norm=True, init_std=None).
  kind="metamedseg": MetaMedSeg's reference `UNet_Cells` — 3 levels, bilinear x2
  up-sampling with align_corners=True, InstanceNorm2d(affine=False), every conv weight
  N(0, 1) and zero biases; in medda_jax UNet() with its defaults.
  """
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  def double_conv(ci, co, affine):
    return nn.Sequential(
        nn.Conv2d(ci, co, 3, padding=1), nn.InstanceNorm2d(co, affine=affine),
        nn.ReLU(inplace=True),
        nn.Conv2d(co, co, 3, padding=1), nn.InstanceNorm2d(co, affine=affine),
        nn.ReLU(inplace=True))

  class DeepUNet(nn.Module):
    def __init__(self, c):
      super().__init__()
      ch = [c * 2**i for i in range(5)]
      self.downs = nn.ModuleList([double_conv(1, ch[0], True)] +
                                 [double_conv(ch[i], ch[i + 1], True) for i in range(4)])
      self.ups = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2)
                                for i in reversed(range(4))])
      self.dec = nn.ModuleList([double_conv(2 * ch[i], ch[i], True) for i in reversed(range(4))])
      self.out = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x):
      skips = []
      for i, down in enumerate(self.downs):
        x = down(x)
        if i < 4:
          skips.append(x)
          x = F.max_pool2d(x, 2)
      for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
        x = dec(torch.cat([up(x), skip], 1))
      return self.out(x)

  class UNetCells(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.enc1 = double_conv(1, c, False)
      self.enc2 = double_conv(c, 2 * c, False)
      self.mid = double_conv(2 * c, 4 * c, False)
      self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
      self.dec2 = double_conv(6 * c, 2 * c, False)
      self.dec1 = double_conv(3 * c, c, False)
      self.out = nn.Conv2d(c, 1, 1)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.normal_(m.weight, 0.0, 1.0)
          nn.init.zeros_(m.bias)

    def forward(self, x):
      e1 = self.enc1(x)
      e2 = self.enc2(F.max_pool2d(e1, 2))
      mid = self.mid(F.max_pool2d(e2, 2))
      d2 = self.dec2(torch.cat([self.up(mid), e2], 1))
      d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
      return self.out(d1)

  if kind == "deep":
    return DeepUNet(base)
  if kind == "metamedseg":
    return UNetCells(base)
  raise ValueError(f"kind must be 'deep' or 'metamedseg', got {kind!r}")


def jax_unet(kind: str, base: int = 32, dtype=None, affine_norm: bool = True):
  """medda_jax's UNet configured as `torch_unet(kind, base)` (affine_norm: deep only)."""
  import jax.numpy as jnp
  from medda_jax.models.unet import UNet
  dtype = dtype or jnp.float32
  if kind == "deep":
    return UNet(features=base, levels=5, upsample="transpose", affine_norm=affine_norm,
                init_std=None, dtype=dtype)
  if kind == "metamedseg":
    return UNet(features=base, dtype=dtype)
  raise ValueError(f"kind must be 'deep' or 'metamedseg', got {kind!r}")


def count_params_torch(model) -> int:
  return sum(p.numel() for p in model.parameters())


def count_params_jax(params) -> int:
  import jax
  return int(sum(x.size for x in jax.tree.leaves(params)))


def best_variant(results: dict, prefix: str, metric: str, pick=max):
  """(name, value) of the variant starting with `prefix` whose `metric` is best by `pick`
  (max for throughput, min for time), or (None, None) when none has the metric."""
  ok = {k: v[metric] for k, v in results.items() if k.startswith(prefix) and metric in v}
  if not ok:
    return None, None
  name = pick(ok, key=ok.get)
  return name, ok[name]


def start(args):
  """Thread limits and platform set-up shared by the benchmark scripts: returns
  (platform, device description)."""
  args.cpu_threads = args.cpu_threads or env_int("BENCH_CPU_THREADS", 0) or None
  setup_platform(args.cpu, args.cpu_threads)
  apply_torch_threads(args.cpu_threads)
  platform = detect_platform()
  return platform, device_info(platform)


def argument_parser(doc: str):
  """The options every benchmark takes (`--cpu`, `--cpu-threads`), read by `start`."""
  import argparse
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  p.add_argument("--cpu", action="store_true", help="measure both sides on the CPU")
  p.add_argument("--cpu-threads", type=int, default=None,
                 help="intra-op CPU threads of torch and XLA (env BENCH_CPU_THREADS; "
                      "default: the frameworks' own, all cores)")
  return p
