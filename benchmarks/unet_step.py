"""One U-Net segmentation training step (Adam, BCE): medda_jax vs a PyTorch peer.

Both frameworks run in this one process on one device, same shapes, same math:
forward, BCE-with-logits over the batch, backward, one Adam update (lr 1e-3).

Two networks (both `medda_jax.models.unet.UNet`, peers in `common.torch_unet`):
* deep — the shared peer benchmark's 5-level U-Net: transposed-conv up-sampling,
  instance norm with affine scale/shift, base width 32.
* metamedseg — MetaMedSeg's 3-level `UNet_Cells`: bilinear align_corners up-sampling,
  instance norm without affine parameters, N(0, 1) conv init.

Variants:
* torch eager fp32; torch eager bf16 autocast; on CUDA torch.compile + bf16 autocast +
  channels_last (the whole step compiled), on CPU torch.compile fp32 (and eager
  channels_last, which oneDNN often prefers).
* JAX jit fp32 and JAX jit bf16 (compute in bf16, parameters and optimiser state in
  float32), params and optimiser state donated on accelerators, as the trainers do
  (`engine.compile.donates_by_default`: not on the CPU).

Reported: images/s (median of the timed repeats), TFLOP/s from XLA's FLOP count of the
step, model FLOPs utilisation against the GPU's dense bf16 peak (GPU only), and the
ratio best JAX / best torch.

  python benchmarks/unet_step.py            # GPU if there is one, else CPU
  python benchmarks/unet_step.py --cpu      # force the CPU
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = ("deep", "metamedseg")


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--models", default="deep,metamedseg", help=f"comma list of {MODELS}")
  p.add_argument("--batch", type=int, default=None,
                 help="images per step (env BENCH_BATCH; default 32 on GPU, 2 on CPU)")
  p.add_argument("--size", type=int, default=None,
                 help="image height = width (env BENCH_SIZE; default 256 on GPU, 64 on CPU)")
  p.add_argument("--base", type=int, default=None, help="base width (env BENCH_BASE; 32)")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps (compilation)")
  p.add_argument("--repeats", type=int, default=None, help="timed blocks; the median is kept")
  p.add_argument("--iters", type=int, default=None, help="steps per timed block")
  p.add_argument("--quick", action="store_true", help="fewer repeats and steps")
  p.add_argument("--skip-torch-compile", action="store_true")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


def torch_variants(platform):
  """(name, autocast_bf16, compile, channels_last)."""
  if platform == "gpu":
    return [("torch eager fp32", False, False, False),
            ("torch eager bf16-autocast", True, False, False),
            ("torch compile bf16-autocast channels_last", True, True, True)]
  return [("torch eager fp32", False, False, False),
          ("torch eager fp32 channels_last", False, False, True),
          ("torch eager bf16-autocast", True, False, False),
          ("torch compile fp32", False, True, False)]


def bench_torch(kind, args, platform, x_np, y_np, timing, results):
  import torch
  import torch.nn.functional as F
  dev = "cuda" if platform == "gpu" else "cpu"
  if platform == "gpu":
    torch.backends.cudnn.benchmark = True
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
  y = torch.from_numpy(y_np).permute(0, 3, 1, 2).contiguous().to(dev)
  sync = common.sync_fn(platform)
  for name, amp, compiled, channels_last in torch_variants(platform):
    if compiled and args.skip_torch_compile:
      results[name] = {"skipped": "--skip-torch-compile"}
      continue
    torch.manual_seed(0)
    model = common.torch_unet(kind, args.base).to(dev)
    xx, yy = x, y
    if channels_last:
      model = model.to(memory_format=torch.channels_last)
      xx = x.contiguous(memory_format=torch.channels_last)
      yy = y.contiguous(memory_format=torch.channels_last)
    # fused Adam is the fastest eager optimiser on CUDA; the compiled step fuses its own.
    fused = platform == "gpu" and not compiled
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def step():
      opt.zero_grad(set_to_none=True)
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        logits = model(xx)
      loss = F.binary_cross_entropy_with_logits(logits.float(), yy)
      loss.backward()
      opt.step()
      return loss

    fn = torch.compile(step) if compiled else step
    try:
      t = common.time_repeats(fn, lambda _: sync(), **timing)
      results[name] = {"images_per_s": args.batch / t["seconds_per_call"], **t}
    except Exception as e:  # report and go on: a failed variant is a result too
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:45s} {_fmt(results[name])}", flush=True)
    del model, opt, fn
    gc.collect()
    if platform == "gpu":
      torch.cuda.empty_cache()


def torch_flops(kind, args, platform, x_np, y_np):
  """fwd + bwd FLOPs of one step as torch's FlopCounterMode counts them (cross-check)."""
  import torch
  import torch.nn.functional as F
  from torch.utils.flop_counter import FlopCounterMode
  dev = "cuda" if platform == "gpu" else "cpu"
  model = common.torch_unet(kind, args.base).to(dev)
  x = torch.from_numpy(x_np[:1]).permute(0, 3, 1, 2).contiguous().to(dev)
  y = torch.from_numpy(y_np[:1]).permute(0, 3, 1, 2).contiguous().to(dev)
  with FlopCounterMode(display=False) as counter:
    F.binary_cross_entropy_with_logits(model(x), y).backward()
  return counter.get_total_flops() * args.batch, common.count_params_torch(model)


def bench_jax(kind, args, platform, x_np, y_np, timing, results, notes):
  import jax
  import jax.numpy as jnp
  import optax
  from medda_jax.engine.compile import donates_by_default
  from medda_jax.losses import bce
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  flops = None
  affine = True
  try:
    common.jax_unet(kind, args.base).init(jax.random.PRNGKey(0), x[:1, :16, :16])
  except Exception as e:  # noqa: BLE001
    if kind != "deep":
      raise
    # Keep measuring: the affine scale/shift is one elementwise op per convolution.
    affine = False
    notes.append(f"{kind}: medda_jax UNet(affine_norm=True) does not initialise "
                 f"({common.error_text(e, 160)}); the JAX side ran with affine_norm=False "
                 "(torch peer keeps affine=True; the missing per-channel scale/shift is "
                 "an elementwise op after each instance norm, a small share of the step).")
  for name, dtype in (("jax jit fp32", jnp.float32), ("jax jit bf16", jnp.bfloat16)):
    model = common.jax_unet(kind, args.base, dtype, affine_norm=affine)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    n_params = common.count_params_jax(params)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
      loss, grads = jax.value_and_grad(lambda p: bce(model.apply(p, x), y))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    try:
      t0 = time.perf_counter()
      donate = (0, 1) if donates_by_default() else ()  # as the trainers' steps
      lowered = jax.jit(step, donate_argnums=donate).lower(params, opt_state, x, y)
      compiled = lowered.compile()
      compile_s = time.perf_counter() - t0
      if dtype == jnp.float32:
        flops = common.lowered_flops(lowered)
      carry = [params, opt_state]

      def run():
        carry[0], carry[1], loss = compiled(carry[0], carry[1], x, y)
        return loss

      t = common.time_repeats(run, common.jax_block, **timing)
      results[name] = {"images_per_s": args.batch / t["seconds_per_call"],
                       "compile_seconds": compile_s, **t}
    except Exception as e:
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:45s} {_fmt(results[name])}", flush=True)
    del params, opt_state
  return flops, n_params, affine


def _fmt(r):
  if "images_per_s" in r:
    return f"{r['images_per_s']:9.1f} images/s"
  return r.get("error") or r.get("skipped")


def main():
  args = parse_args()
  platform, device = common.start(args)
  import numpy as np
  gpu = platform == "gpu"
  args.batch = args.batch or common.env_int("BENCH_BATCH", 32 if gpu else 2)
  args.size = args.size or common.env_int("BENCH_SIZE", 256 if gpu else 64)
  args.base = args.base or common.env_int("BENCH_BASE", 32)
  if gpu:
    timing = dict(warmup=5, repeats=5, iters=20) if not args.quick else dict(
        warmup=3, repeats=3, iters=10)
  else:
    # Single steps: a bf16-autocast torch step takes seconds on a CPU without bf16 units.
    timing = dict(warmup=3, repeats=5, iters=1) if not args.quick else dict(
        warmup=3, repeats=3, iters=1)
  for k in timing:
    if getattr(args, k) is not None:
      timing[k] = getattr(args, k)
  models = [m for m in args.models.split(",") if m]
  for m in models:
    if m not in MODELS:
      sys.exit(f"--models: unknown model {m!r}; choose from {MODELS}")
    pools = 4 if m == "deep" else 2
    if args.size % 2**pools or args.size < 2**(pools + 1):
      sys.exit(f"--size {args.size}: the {m} U-Net pools {pools} times, so the size must be "
               f"a multiple of {2**pools} and at least {2**(pools + 1)} (instance norm needs "
               "more than one pixel at the bottom)")

  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((args.batch, args.size, args.size, 1), dtype=np.float32)
  y_np = (rng.random((args.batch, args.size, args.size, 1)) > 0.5).astype(np.float32)
  peak = device.get("peak_bf16_dense_flops")
  print(f"U-Net train step on {device['name']}: batch {args.batch}, {args.size}x{args.size}x1, "
        f"base {args.base}, timing {timing}", flush=True)

  results, ratio, notes, model_info = {}, {}, [], {}
  # Every JAX side first: torch.compile leaves worker threads and processes behind that
  # slowed a JAX side measured after it (deep U-Net, 2 threads: 16.0 against 29.8 images/s).
  jax_runs = {}
  for kind in models:
    print(f"[{kind}: jax]", flush=True)
    results[kind] = {}
    jax_runs[kind] = bench_jax(kind, args, platform, x_np, y_np, timing, results[kind], notes)
  for kind in models:
    print(f"[{kind}: torch]", flush=True)
    res = results[kind]
    bench_torch(kind, args, platform, x_np, y_np, timing, res)
    flops, n_params, affine = jax_runs[kind]
    try:
      t_flops, t_params = torch_flops(kind, args, platform, x_np, y_np)
    except Exception as e:  # a cross-check only
      t_flops, t_params = common.error_text(e, 200), None
    model_info[kind] = {"params_jax": n_params, "params_torch": t_params,
                        "jax_affine_norm": affine if kind == "deep" else False,
                        "flops_per_step_xla": flops, "flops_per_step_torch_counter": t_flops}
    for name, r in res.items():
      if "images_per_s" in r and flops:
        r["tflops_per_s"] = flops / r["seconds_per_call"] / 1e12
        r["mfu_vs_bf16_dense_peak"] = (flops / r["seconds_per_call"] / peak) if peak else None
    jname, jbest = common.best_variant(res, "jax", "images_per_s", max)
    tname, tbest = common.best_variant(res, "torch", "images_per_s", max)
    ratio[kind] = {
        "jax_best": jname, "torch_best": tname,
        "jax_best_over_torch_best": (jbest / tbest) if jbest and tbest else None,
        "jax_fp32_over_torch_eager_fp32": _pair(res, "jax jit fp32", "torch eager fp32"),
    }
    print(f"  ratio {ratio[kind]}", flush=True)

  notes += [
      "images/s = batch / median seconds per step over the timed repeats; warm-up steps "
      "(compilation included) are not timed; every timed block ends with "
      "block_until_ready / torch.cuda.synchronize.",
      "FLOPs per step from XLA's cost analysis of the lowered fp32 step (convolutions "
      "counted before they become backend library calls); the same count is used for "
      "every variant of a model. flops_per_step_torch_counter is torch's FlopCounterMode "
      "count (convolutions and matmuls only), a cross-check.",
      "MFU = FLOP/s / the device's dense bf16 peak (H100 SXM/H200 989.4, H100 PCIe 756, "
      "H100/H200 NVL 835, A100 312 TFLOP/s), also for the fp32 variants; null on CPU.",
      "Loss: mean BCE with logits in float32 on both sides (MetaMedSeg's sigmoid + "
      "nn.BCELoss is the same function). Adam lr 1e-3. Data on the device, NHWC for JAX, "
      "NCHW (or channels_last) for torch.",
  ]
  if gpu:
    notes.append("torch eager variants use Adam(fused=True) and cudnn.benchmark=True; fp32 "
                 "convolutions use TF32 on both sides (the defaults of torch and XLA).")
  else:
    notes.append(f"CPU shapes scaled down from the GPU setting (batch 32 at 256x256) so the "
                 f"whole run takes minutes on {device['cpu_cores']} cores; torch.compile is "
                 "measured in fp32 (no bf16 autocast / channels_last) on the CPU. bf16 on a "
                 "CPU without native bf16 units is emulated and slow on both sides.")
  if args.cpu_threads:
    notes.append(f"Both frameworks limited to {args.cpu_threads} intra-op CPU thread(s) "
                 f"(--cpu-threads); load average at start {device['load_average_at_start']}.")
  shapes = {"batch": args.batch, "height": args.size, "width": args.size, "channels": 1,
            "base_width": args.base, "models": {
                "deep": "UNet(features=base, levels=5, upsample='transpose', "
                        "affine_norm=True, init_std=None)",
                "metamedseg": "UNet(features=base) (levels=3, bilinear align_corners, "
                              "no affine norm, N(0,1) init)"}}
  path = args.out or common.result_path("unet_step", platform, device)
  common.write_json(path, benchmark="unet_step", platform=platform, device=device,
                    shapes=shapes, results=results, ratio=ratio, notes=notes,
                    timing=timing, model_info=model_info)
  print(f"wrote {path}")


def _pair(res, a, b):
  ra, rb = res.get(a, {}), res.get(b, {})
  if "images_per_s" in ra and "images_per_s" in rb:
    return ra["images_per_s"] / rb["images_per_s"]
  return None


if __name__ == "__main__":
  main()
