"""One CateNorm training iteration (both half-steps): medda_jax vs a PyTorch peer.

Both frameworks run in this one process on one device with the same network
(`DualNormUNet`, widths 32-64-128-256-512, CNRB block 1, 2 classes, 3 input channels)
and the same iteration as the reference `train.py`: BN forward, Dice loss, backward,
Adam step; CateNorm forward conditioned on the detached softmax of the first forward,
Dice loss, backward, gradients clipped to +-0.1, Adam step.

The torch peer keeps one Adam over all parameters, as the reference does; the JAX step
keeps one Adam state per parameter group (shared / BN / CateNorm, spec f) — the same
arithmetic per updated parameter, and no update of the branch a half-step does not use.

  python benchmarks/catenorm_step.py            # GPU if there is one: batch 4 at 384x384
  python benchmarks/catenorm_step.py --cpu --quick
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

WIDTHS = (32, 64, 128, 256, 512)
N_CLASSES = 2


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--batch", type=int, default=None, help="default 4 (the paper's)")
  p.add_argument("--size", type=int, default=None, help="default 384 on GPU, 64 on CPU")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


# --------------------------------------------------------------------------- torch peer
def torch_net(n_classes=N_CLASSES, widths=WIDTHS, cnrb=("inc",)):
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  class Spade(nn.Module):  # the reference's SPADE
    def __init__(self, c):
      super().__init__()
      self.bn = nn.BatchNorm2d(c, affine=False)
      self.shared = nn.Conv2d(n_classes, c // 2, 3, padding=1)
      self.gamma = nn.Conv2d(c // 2, c, 3, padding=1)
      self.beta = nn.Conv2d(c // 2, c, 3, padding=1)

    def forward(self, x, mask):
      m = F.interpolate(mask, size=x.shape[2:], mode="bilinear", align_corners=True)
      h = F.relu(self.shared(m))
      return self.bn(x) * (1 + self.gamma(h)) + self.beta(h)

  class Res(nn.Module):
    def __init__(self, c, dual):
      super().__init__()
      self.norm_0, self.norm_1 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
      self.conv_0 = nn.Conv2d(c, c, 3, padding=1)
      self.conv_1 = nn.Conv2d(c, c, 3, padding=1)
      self.dual = dual
      if dual:
        self.cn_0, self.cn_1 = Spade(c), Spade(c)

    def forward(self, x, mask=None):
      use = self.dual and mask is not None
      h = self.cn_0(x, mask) if use else self.norm_0(x)
      h = self.conv_0(F.relu(h))
      h = self.cn_1(h, mask) if use else self.norm_1(h)
      return x + self.conv_1(F.relu(h))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      w = widths
      self.inc_conv = nn.Conv2d(3, w[0], 1)
      self.inc = Res(w[0], "inc" in cnrb)
      self.down_conv = nn.ModuleList(nn.Conv2d(w[k - 1], w[k], 3, padding=1)
                                     for k in range(1, 5))
      self.down = nn.ModuleList(Res(w[k], f"down{k}" in cnrb) for k in range(1, 5))
      self.mid = Res(w[4], False)
      ups = []
      c = w[4]
      for k in range(1, 5):
        skip = w[4 - k]
        ups.append(nn.ModuleDict({
            "norm": nn.BatchNorm2d(c),
            "convt": nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1),
            "conv": nn.Conv2d(c // 2 + skip, skip, 3, padding=1), "res": Res(skip, False)}))
        c = skip
      self.up = nn.ModuleList(ups)
      self.out_norm = nn.BatchNorm2d(w[0])
      self.out_conv = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x, mask=None):
      h = self.inc(self.inc_conv(x), mask)
      skips = [h]
      for conv, res in zip(self.down_conv, self.down):
        h = res(conv(F.max_pool2d(h, 2)), mask)
        skips.append(h)
      h = self.mid(h)
      for k, up in enumerate(self.up, start=1):
        h = up["convt"](F.relu(up["norm"](h)))
        h = up["res"](up["conv"](torch.cat([skips[4 - k], h], 1)))
      return self.out_conv(F.relu(self.out_norm(h)))

  return Net()


def torch_dice_loss(logits, onehot):
  import torch
  p = torch.softmax(logits.float(), 1)
  inter = (p * onehot).sum((2, 3))
  total = p.sum((2, 3)) + onehot.sum((2, 3))
  return 1 - ((2 * inter + 1e-6) / (total + 1e-6)).mean()


def bench_torch(args, platform, x_np, y_np, timing, results):
  import torch
  import torch.nn.functional as F
  dev = "cuda" if platform == "gpu" else "cpu"
  if platform == "gpu":
    torch.backends.cudnn.benchmark = True
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
  y = F.one_hot(torch.from_numpy(y_np).long(), N_CLASSES).permute(0, 3, 1, 2).float().to(dev)
  variants = [("torch eager fp32", False)] + ([("torch eager bf16-autocast", True)]
                                              if platform == "gpu" else [])
  for name, amp in variants:
    torch.manual_seed(0)
    net = torch_net().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=(platform == "gpu") or None)

    def step():
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        pred_bn = net(x)
      loss_bn = torch_dice_loss(pred_bn, y)
      opt.zero_grad(set_to_none=True)
      loss_bn.backward()
      opt.step()
      mask = torch.softmax(pred_bn.float(), 1).detach()
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        pred_cn = net(x, mask)
      loss_cn = torch_dice_loss(pred_cn, y)
      opt.zero_grad(set_to_none=True)
      loss_cn.backward()
      torch.nn.utils.clip_grad_value_(net.parameters(), 0.1)
      opt.step()
      return loss_cn

    try:
      t = common.time_repeats(step, lambda _: common.sync_fn(platform)(), **timing)
      results[name] = {"images_per_s": args.batch / t["seconds_per_call"], **t}
    except Exception as e:  # a failed variant is a result too
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
    n_params = sum(p.numel() for p in net.parameters())
    gc.collect()
  return n_params


def bench_jax(args, x_np, y_np, timing, results):
  import jax
  import jax.numpy as jnp
  from medda_jax.engine.compile import compile_step
  from medda_jax.methods.catenorm import paper
  from medda_jax.models import dualnorm_unet as dn
  batch = {"images": jnp.asarray(x_np), "labels": jnp.asarray(y_np, jnp.int32),
           "domains": jnp.zeros((args.batch,), jnp.int32)}
  flops, n_params = None, None
  for name, dtype in (("jax jit fp32", jnp.float32), ("jax jit bf16", jnp.bfloat16)):
    model = dn.DualNormUNet(N_CLASSES, cnrb_blocks=dn.BLOCK_1, widths=WIDTHS, dtype=dtype)
    variables = jax.jit(lambda k, model=model: dn.init_variables(model, k, args.size))(
        jax.random.PRNGKey(0))
    n_params = common.count_params_jax(variables["params"])
    schedule = paper.plateau(50)
    state = paper.create_state(variables, dn.BLOCK_1, 1e-3, schedule)
    step = paper.build_train_step(model, catenorm=True, dice_weight=1.0, clip_value=0.1,
                                  schedule=schedule)
    try:
      t0 = time.perf_counter()
      lowered = compile_step(step).lower(state, batch)  # as the trainer compiles it
      compiled = lowered.compile()
      compile_s = time.perf_counter() - t0
      if dtype == jnp.float32:
        flops = common.lowered_flops(lowered)
      results[name] = common.time_state_step(compiled, state, batch, args.batch, timing,
                                             compile_seconds=compile_s)
    except Exception as e:
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
  return flops, n_params


def main():
  args = parse_args()
  platform, device = common.start(args)
  import numpy as np
  gpu = platform == "gpu"
  args.batch = args.batch or 4
  args.size = args.size or (384 if gpu else 64)
  if gpu:
    timing = dict(warmup=3, repeats=5, iters=10) if not args.quick else dict(
        warmup=2, repeats=3, iters=5)
  else:
    timing = dict(warmup=2, repeats=5, iters=1) if not args.quick else dict(
        warmup=2, repeats=3, iters=1)
  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((args.batch, args.size, args.size, 3), dtype=np.float32)
  y_np = (rng.random((args.batch, args.size, args.size)) > 0.7).astype(np.int64)
  print(f"CateNorm iteration on {device['name']}: batch {args.batch}, {args.size}x{args.size}x3,"
        f" timing {timing}", flush=True)
  results = {}
  t_params = bench_torch(args, platform, x_np, y_np, timing, results)
  flops, j_params = bench_jax(args, x_np, y_np, timing, results)
  for r in results.values():
    if "images_per_s" in r and flops:
      r["tflops_per_s"] = flops / r["seconds_per_call"] / 1e12
  jname, jbest = common.best_variant(results, "jax", "images_per_s")
  tname, tbest = common.best_variant(results, "torch", "images_per_s")
  ratio = {"jax_best": jname, "torch_best": tname,
           "jax_best_over_torch_best": (jbest / tbest) if jbest and tbest else None}
  notes = [
      "One iteration = both half-steps (two forwards, two backwards, two Adam updates); "
      "images/s = batch / median seconds per iteration; warm-up (compilation) not timed.",
      "FLOPs per iteration from XLA's cost analysis of the lowered fp32 step.",
      "Loss: the code's binary Dice (per sample and class, eps 1e-6) on both sides.",
      "torch: one Adam over all parameters (reference train.py); JAX: three Adam states "
      "(shared / BN / CateNorm) so unused branches are not moved.",
  ]
  if not gpu:
    notes.append(f"CPU shapes scaled down from the GPU setting (batch 4 at 384x384) to "
                 f"{args.size}x{args.size}; bf16 variants only on the GPU for torch.")
  shapes = {"batch": args.batch, "height": args.size, "width": args.size, "channels": 3,
            "widths": list(WIDTHS), "cnrb": ["inc"], "classes": N_CLASSES}
  path = args.out or common.result_path("catenorm_step", platform, device)
  common.write_json(path, benchmark="catenorm_step", platform=platform, device=device,
                    shapes=shapes, results=results, ratio=ratio, notes=notes, timing=timing,
                    model_info={"params_jax": j_params, "params_torch": t_params,
                                "flops_per_step_xla": flops})
  print(f"ratio {ratio}\nwrote {path}")


if __name__ == "__main__":
  main()
