"""One 3x3 convolution in float32 and bfloat16: XLA:CPU against PyTorch (oneDNN) on the CPU.

The reproducer of why the U-Net step's best torch variant on an AVX512-BF16 CPU (eager
bf16 autocast) stays ahead of JAX: oneDNN runs a bf16 convolution with the CPU's bf16
dot-product instructions, about twice as fast as in float32, while XLA:CPU's bf16
convolution runs no faster than its float32 one. A plain bf16 matrix product (with f32
accumulation) does run about twice as fast in XLA, so the gap is the convolution kernels'.
It also times the convolution's two gradients (input and kernel) in float32, the bulk of a
training step's time (on one core of an AVX2 CPU both of XLA's were faster than oneDNN's,
so these alone do not explain the U-Net step's gap). Both sides compute the same convolution and gradients (checked before
timing); one core each.

  python benchmarks/cpu_conv_bf16.py --cpu-threads 1
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "cpu_conv_bf16"


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--size", type=int, default=64, help="image side")
  p.add_argument("--channels", type=int, default=64, help="input and output channels")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


def main():
  args = parse_args()
  args.cpu = True
  platform, device = common.start(args)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  rng = np.random.default_rng(0)
  b, s, c = args.batch, args.size, args.channels
  x = rng.normal(size=(b, s, s, c)).astype(np.float32)
  w = (rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32)
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  w_t = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  conv = jax.jit(lambda a, k: jax.lax.conv_general_dilated(
      a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  matmul = jax.jit(lambda a, k: jnp.dot(a, k, preferred_element_type=jnp.float32))
  m = rng.normal(size=(b * s * s, 9 * c)).astype(np.float32)  # the convolution as one GEMM
  k = rng.normal(size=(9 * c, c)).astype(np.float32)

  bf16 = lambda *arrays: tuple(jnp.asarray(a, jnp.bfloat16) for a in arrays)
  f32 = lambda *arrays: tuple(jnp.asarray(a) for a in arrays)
  jax_calls = {"jax conv fp32": (conv, f32(x, w)), "jax conv bf16": (conv, bf16(x, w)),
               "jax matmul fp32": (matmul, f32(m, k)), "jax matmul bf16": (matmul, bf16(m, k))}

  cotangent = rng.normal(size=(b, s, s, c)).astype(np.float32)
  conv_grads = jax.jit(lambda a, k, dy: jax.vjp(conv, a, k)[1](dy))
  jax_calls["jax conv grads fp32"] = (conv_grads, f32(x, w, cotangent))
  x_g, w_g = x_t.clone().requires_grad_(True), w_t.clone().requires_grad_(True)
  dy_t = torch.from_numpy(cotangent).permute(0, 3, 1, 2).contiguous()

  def torch_conv_grads():
    y = torch.nn.functional.conv2d(x_g, w_g, padding=1)
    return torch.autograd.grad(y, (x_g, w_g), dy_t)

  def torch_conv(autocast: bool):
    def run():
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return torch.nn.functional.conv2d(x_t, w_t, padding=1)
    return run

  torch_calls = {"torch conv fp32": torch_conv(False),
                 "torch conv bf16 autocast": torch_conv(True),
                 "torch conv grads fp32": torch_conv_grads}
  # the same convolution on both sides before timing
  want = torch_calls["torch conv fp32"]().permute(0, 2, 3, 1).numpy()
  for name, tol in (("jax conv fp32", 1e-4), ("jax conv bf16", 0.05)):
    f, operands = jax_calls[name]
    np.testing.assert_allclose(np.asarray(f(*operands), np.float32), want, rtol=tol, atol=tol)
  dx, dw = conv_grads(*jax_calls["jax conv grads fp32"][1])
  dx_t, dw_t = torch_conv_grads()
  np.testing.assert_allclose(np.asarray(dx), dx_t.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(np.asarray(dw), dw_t.permute(2, 3, 1, 0).numpy(), rtol=1e-3, atol=1e-2)

  results = {}
  timed = {**{n: ((lambda f=f, a=a: f(*a)), common.jax_block) for n, (f, a) in jax_calls.items()},
           **{n: (run, lambda out: None) for n, run in torch_calls.items()}}
  for name, (run, finish) in timed.items():  # operands are converted before: kernels only
    t = common.time_repeats(run, finish, warmup=3, repeats=args.repeats, iters=args.iters)
    results[name] = {"ms": t["seconds_per_call"] * 1e3,
                     "ms_repeats": [r * 1e3 for r in t["seconds_per_call_repeats"]]}
    print(f"  {name:28s} {results[name]['ms']:7.2f} ms", flush=True)
  ms = {k: v["ms"] for k, v in results.items()}
  ratio = {"jax_conv_bf16_over_fp32_speed": ms["jax conv fp32"] / ms["jax conv bf16"],
           "torch_conv_bf16_over_fp32_speed": ms["torch conv fp32"] / ms["torch conv bf16 autocast"],
           "jax_matmul_bf16_over_fp32_speed": ms["jax matmul fp32"] / ms["jax matmul bf16"],
           "jax_conv_grads_over_torch_conv_grads_fp32_speed": ms["torch conv grads fp32"]
                                                              / ms["jax conv grads fp32"],
           "jax_conv_best_over_torch_conv_best": min(ms["torch conv fp32"],
                                                     ms["torch conv bf16 autocast"])
                                                 / min(ms["jax conv fp32"], ms["jax conv bf16"])}
  print("  ratio", {k: round(v, 2) for k, v in ratio.items()})
  out = args.out or common.result_path(BENCHMARK, platform, device)
  common.write_json(out, benchmark=BENCHMARK, platform=platform, device=device,
                    shapes={"input": [b, s, s, c], "kernel": [3, 3, c, c],
                            "matmul": [list(m.shape), list(k.shape)]},
                    results=results, ratio=ratio,
                    notes=["ms per call, median of the timed blocks; one core for both frameworks "
                           "with --cpu-threads 1.",
                           "conv grads = the input and kernel gradients of the convolution "
                           "for one output cotangent (the backward pass of a training step).",
                           "speed ratios > 1 mean bf16 is faster than fp32."])
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
