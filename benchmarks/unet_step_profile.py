"""Where a U-Net training step spends its time on the CPU: XLA's thunks against torch's ops.

The same step as `unet_step.py` (forward, BCE, backward, Adam; float32; one process, the
same core for both sides). JAX's side is read from XLA's own profile (`jax.profiler.trace`,
every thunk the CPU runtime executes, read back with `jax.profiler.ProfileData`) and
summed by kind (`ynn_fusion.12` -> `ynn_fusion`); torch's from `torch.profiler`, its ops'
self time. Both are per step, averaged over the profiled steps.

On a 2-core AMD EPYC (AVX512-BF16), deep network, batch 2, 64x64: XLA's convolutions
(the YNNPACK fusions) take about what oneDNN's forward and backward convolutions take,
and its `transpose_copy_fusion`s, the physical transposes XLA:CPU's layout assignment puts
before the convolutions of the gradients (a kernel with its in and out features swapped,
activations with batch and features swapped), about 12 % of the step: the part of the gap
to torch's float32 step that oneDNN does not pay (it reads transposed operands in place).

  python benchmarks/unet_step_profile.py --cpu-threads 1
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "unet_step_profile"


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--model", default="deep", choices=("deep", "metamedseg"))
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--base", type=int, default=32)
  p.add_argument("--steps", type=int, default=10, help="profiled steps")
  p.add_argument("--top", type=int, default=15, help="kinds / ops kept in the JSON")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


def _timed(run, steps):
  """ms per call of `run` (which waits for its result) over one block of `steps` calls."""
  t = common.time_repeats(run, lambda _: None, warmup=3, repeats=1, iters=steps)
  return t["seconds_per_call"] * 1e3


def profile_jax(args, x_np, y_np):
  import jax
  import optax
  from jax.profiler import ProfileData
  from medda_jax.losses import bce
  model = common.jax_unet(args.model, args.base)
  x, y = jax.numpy.asarray(x_np), jax.numpy.asarray(y_np)
  tx = optax.adam(1e-3)
  params = model.init(jax.random.PRNGKey(0), x[:1])
  carry = [params, tx.init(params)]

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: bce(model.apply(p, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def run():
    carry[:] = step(*carry)
    jax.block_until_ready(carry)

  ms = _timed(run, args.steps)
  kinds = collections.defaultdict(float)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        run()
    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    for plane in ProfileData.from_file(path).planes:
      for line in plane.lines:
        if not line.name.startswith("tf_XLA"):  # the runtime's threads, not Python's
          continue
        for event in line.events:
          if event.name.startswith(("ThunkExecutor", "end: ")):
            continue
          kinds[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns / 1e6 / args.steps
  return ms, kinds


def profile_torch(args, x_np, y_np):
  import torch
  from torch.profiler import ProfilerActivity, profile
  model = common.torch_unet(args.model, args.base)
  x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(y_np.transpose(0, 3, 1, 2).copy())
  opt = torch.optim.Adam(model.parameters(), 1e-3)

  def run():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    opt.step()

  ms = _timed(run, args.steps)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      run()
  ops = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in prof.key_averages()}
  return ms, ops


def _top(table, n):
  ranked = sorted(table.items(), key=lambda kv: -kv[1])
  return {k: round(v, 3) for k, v in ranked[:n]}, round(sum(table.values()), 3)


def main():
  import numpy as np
  args = parse_args()
  args.cpu = True
  platform, device = common.start(args)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, args.size, args.size, 1)).astype(np.float32)
  y = (rng.uniform(size=x.shape) > 0.5).astype(np.float32)
  jax_ms, kinds = profile_jax(args, x, y)
  torch_ms, ops = profile_torch(args, x, y)
  jax_top, jax_total = _top(kinds, args.top)
  torch_top, torch_total = _top(ops, args.top)
  print(f"jax step {jax_ms:.1f} ms (thunks {jax_total:.1f} ms); torch step {torch_ms:.1f} ms")
  for name, table in (("XLA thunks by kind", jax_top), ("torch ops, self time", torch_top)):
    print(f"[{name}, ms per step]")
    for k, v in table.items():
      print(f"  {v:8.2f}  {k}")
  transposes = sum(v for k, v in kinds.items() if "transpose" in k)
  results = {"jax": {"ms_per_step": jax_ms, "thunk_ms_per_step_total": jax_total,
                     "thunk_ms_per_step_by_kind": jax_top,
                     "transpose_ms_per_step": round(transposes, 3)},
             "torch": {"ms_per_step": torch_ms, "op_self_ms_per_step_total": torch_total,
                       "op_self_ms_per_step": torch_top}}
  ratio = {"jax_best_over_torch_best": torch_ms / jax_ms,
           "transpose_share_of_jax_thunks": transposes / jax_total}
  path = args.out or common.result_path(BENCHMARK, platform, device)
  print("wrote", common.write_json(
      path, benchmark=BENCHMARK, platform=platform, device=device,
      shapes={"model": args.model, "batch": args.batch, "size": args.size, "base": args.base,
              "dtype": "float32", "steps_profiled": args.steps},
      results=results, ratio=ratio,
      notes=["float32 on both sides; the profilers' own overhead is in neither step time "
             "(timed before profiling)."]))


if __name__ == "__main__":
  main()
