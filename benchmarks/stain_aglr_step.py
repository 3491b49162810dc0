"""One Stain-AgLr training step: medda_jax vs a PyTorch peer.

Both frameworks run in this one process on one device with the same networks (appendix
Table 3: M_ft five stages of 2 x (conv3x3 + BatchNorm + ReLU) + 2x2 max-pool, M_cls
average pool -> dropout 0.5 -> Dense 256 + ReLU -> Dense 2, M_gen five stages of x2
bilinear up-sampling + conv block, then conv1x1 -> 3 + sigmoid) and the same step:
  x_hat = HED-light(x) (HED scale and shift per stain, brightness, contrast, noise; each
          patch its own draw, on the device)
  x and x_hat through M_ft in one batch; L = CE(x) / 2 + CE(x_hat) / 2
          + lambda1 * ||M_gen(M_ft(x_hat)) - x||^2 + lambda2 * KL(p || p_hat); one Adam step.
JAX: the engine's compiled chunk (`engine.supervised.build_train_chunk`, one step per
call, state donated on accelerators) over `stain_aglr.paper.stain_aglr_loss`. Before
timing on the CPU, both sides start from the same weights (copied from JAX to torch) with
dropout off, take one step on the same x_hat, and the largest parameter difference
afterwards is reported.

  python benchmarks/stain_aglr_step.py            # GPU if there is one: batch 64 at 256x256
  python benchmarks/stain_aglr_step.py --cpu --quick
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FEATURES = (32, 64, 128, 256, 512)  # M_ft (the paper's)
DECODER = (256, 128, 64, 32, 32)  # M_gen
HIDDEN, LR, LAMBDA_REG, LAMBDA_CONS = 256, 1e-2, 0.1, 10.0
JITTER = dict(sigma=0.05, bias=0.05, brightness=0.05, contrast=0.05, noise=0.02)  # config default


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--batch", type=int, default=None, help="default 64 on GPU (the paper's), 16 on CPU")
  p.add_argument("--size", type=int, default=None, help="default 256 on GPU (the paper's), 64 on CPU")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


# --------------------------------------------------------------------------- torch peer
def torch_modules(dropout: float):
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())

  class FeatureExtractor(nn.Module):
    def __init__(self):
      super().__init__()
      chans = (3,) + FEATURES
      self.blocks = nn.ModuleList(block(a, b) for a, b in zip(chans, chans[1:]))

    def forward(self, x):
      for b in self.blocks:
        x = F.max_pool2d(b(x), 2)
      return x

  class Classifier(nn.Module):
    def __init__(self):
      super().__init__()
      self.drop = nn.Dropout(dropout)
      self.fc1, self.fc2 = nn.Linear(FEATURES[-1], HIDDEN), nn.Linear(HIDDEN, 2)

    def forward(self, z):
      return self.fc2(F.relu(self.fc1(self.drop(z.mean((2, 3))))))

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      chans = (FEATURES[-1],) + DECODER
      self.blocks = nn.ModuleList(block(a, b) for a, b in zip(chans, chans[1:]))
      self.out = nn.Conv2d(DECODER[-1], 3, 1)

    def forward(self, z):
      for b in self.blocks:
        z = b(F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False))
      return torch.sigmoid(self.out(z))

  return FeatureExtractor(), Classifier(), Generator()


def torch_hed_light(x, generator=None):
  """HED-light of a [B, 3, H, W] batch, one draw per patch (hed.apply's formulas)."""
  import torch
  from medda_jax.methods.stain_aglr import hed
  from_rgb = torch.as_tensor(hed.HED_FROM_RGB, device=x.device)
  to_rgb = torch.as_tensor(hed.RGB_FROM_HED, device=x.device)
  floor = float(hed._LOG_FLOOR)
  n = x.shape[0]
  u = lambda shape, half: (torch.rand(shape, device=x.device, generator=generator) * 2 - 1) * half
  rgb = x.permute(0, 2, 3, 1)
  stains = torch.clamp(torch.log(torch.clamp(rgb, min=1e-6)) / floor @ from_rgb, min=0.0)
  stains = stains * (1 + u((n, 1, 1, 3), JITTER["sigma"])) + u((n, 1, 1, 3), JITTER["bias"])
  out = torch.clamp(torch.exp(stains * floor @ to_rgb), 0.0, 1.0)
  out = torch.clamp(out + u((n, 1, 1, 1), JITTER["brightness"]), 0.0, 1.0)
  mean = out.mean((1, 2, 3), keepdim=True)
  out = torch.clamp((out - mean) * (1 + u((n, 1, 1, 1), JITTER["contrast"])) + mean, 0.0, 1.0)
  scale = torch.rand((n, 1, 1, 1), device=x.device, generator=generator) * JITTER["noise"]
  noise = torch.randn(out.shape, device=x.device, generator=generator)
  return torch.clamp(out + scale * noise, 0.0, 1.0).permute(0, 3, 1, 2)


def torch_step(m_ft, m_cls, m_gen, channels_last: bool = False):
  import torch
  import torch.nn.functional as F
  params = [p for m in (m_ft, m_cls, m_gen) for p in m.parameters()]
  opt = torch.optim.Adam(params, LR)

  def step(x, y, x_hat=None):
    if x_hat is None:
      x_hat = torch_hed_light(x)
    both = torch.cat([x, x_hat])
    if channels_last:
      both = both.contiguous(memory_format=torch.channels_last)
    opt.zero_grad(set_to_none=True)
    z = m_ft(both)
    logits = m_cls(z)
    n = x.shape[0]
    lg, lg_hat = logits[:n], logits[n:]
    ce = 0.5 * (F.cross_entropy(lg, y) + F.cross_entropy(lg_hat, y))
    log_p, log_q = F.log_softmax(lg, -1), F.log_softmax(lg_hat, -1)
    cons = torch.mean(torch.sum(log_p.exp() * (log_p - log_q), -1))
    reg = torch.mean(torch.sum((m_gen(z[n:]) - x) ** 2, 1))
    loss = ce + LAMBDA_REG * reg + LAMBDA_CONS * cons
    loss.backward()
    opt.step()
    return loss

  return step


def copy_jax_to_torch(params, m_ft, m_cls, m_gen) -> None:
  """Flax parameters (module names of paper.StainAgLrNet) -> the torch modules."""
  import numpy as np
  import torch

  def t(x, transpose):
    # a copy: np.asarray of a JAX CPU array can share its buffer
    return torch.from_numpy(np.array(np.asarray(x).transpose(transpose), np.float32, copy=True))

  def blocks(flax_part, torch_blocks):
    for i, b in enumerate(torch_blocks):
      cb = flax_part[f"ConvBlock_{i}"]
      for j, (conv, bn) in enumerate(((b[0], b[1]), (b[3], b[4]))):
        conv.weight.data = t(cb[f"Conv_{j}"]["kernel"], (3, 2, 0, 1))
        bn.weight.data = t(cb[f"BatchNorm_{j}"]["scale"], (0,))
        bn.bias.data = t(cb[f"BatchNorm_{j}"]["bias"], (0,))

  blocks(params["m_ft"], m_ft.blocks)
  blocks(params["m_gen"], m_gen.blocks)
  m_gen.out.weight.data = t(params["m_gen"]["Conv_0"]["kernel"], (3, 2, 0, 1))
  m_gen.out.bias.data = t(params["m_gen"]["Conv_0"]["bias"], (0,))
  for k, fc in (("Dense_0", m_cls.fc1), ("Dense_1", m_cls.fc2)):
    fc.weight.data = t(params["m_cls"][k]["kernel"], (1, 0))
    fc.bias.data = t(params["m_cls"][k]["bias"], (0,))


# --------------------------------------------------------------------------- JAX side
def jax_side(size: int, dropout: float, dtype):
  import jax
  import jax.numpy as jnp
  from medda_jax.engine.supervised import TrainState
  from medda_jax.methods.stain_aglr import hed, paper
  net = paper.StainAgLrNet(FEATURES, DECODER, HIDDEN, False, dtype, dropout)
  example = jnp.zeros((1, size, size, 3))
  variables = jax.jit(lambda k: net.init(k, example, example, False,
                                         method=paper.StainAgLrNet.train_outputs))(
      jax.random.PRNGKey(0))
  tx = paper.adam(LR)
  weights = paper.weights_of(paper.VARIANTS["stain_aglr"], LAMBDA_REG, LAMBDA_CONS)
  state = TrainState.create(variables["params"], tx,
                            {"batch_stats": variables["batch_stats"], "weights": weights},
                            jax.random.PRNGKey(1))
  loss_fn = paper.stain_aglr_loss(net, hed.JitterRanges(**JITTER), False)
  return net, loss_fn, tx, state


def output_check(x_np, y_np) -> dict:
  """Both sides from the same weights on the same x_hat (drawn by JAX), dropout off,
  float32: the two losses and the largest gradient difference (Adam's first step moves
  each weight by about lr * sign(gradient), which would hide where a gradient is rounding
  noise, so the gradients are compared rather than the updated weights)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from medda_jax.methods.stain_aglr import hed
  size = x_np.shape[1]
  net, loss_fn, tx, state = jax_side(size, 0.0, jnp.float32)
  key = jax.random.PRNGKey(7)
  x = jnp.asarray(x_np)
  # the loss draws its jitter from the first half of the step key
  x_hat = hed.jitter_batch(jax.random.split(key)[0], x, hed.JitterRanges(**JITTER))
  m_ft, m_cls, m_gen = torch_modules(0.0)
  copy_jax_to_torch(jax.device_get(state.params), m_ft, m_cls, m_gen)
  step = torch_step(m_ft, m_cls, m_gen)
  to_t = lambda a: torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()
  torch_loss = step(to_t(x_np), torch.from_numpy(y_np).long(), to_t(x_hat)).item()
  (jax_loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.model_state, {"image": x, "label": jnp.asarray(y_np)}, key)
  g_ft, g_cls, g_gen = torch_modules(0.0)
  copy_jax_to_torch(jax.device_get(grads), g_ft, g_cls, g_gen)
  diff = scale = 0.0
  for a, b in ((m_ft, g_ft), (m_cls, g_cls), (m_gen, g_gen)):
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
      ga, gb = pa.grad.numpy(), pb.detach().numpy()
      diff, scale = max(diff, float(np.abs(ga - gb).max())), max(scale, float(np.abs(gb).max()))
  return {"loss_jax": float(jax_loss), "loss_torch": torch_loss,
          "max_abs_grad_diff": diff, "max_abs_grad": scale}


def main():
  args = parse_args()
  platform, device = common.start(args)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  gpu = platform == "gpu"
  args.batch = args.batch or (64 if gpu else 16)
  args.size = args.size or (256 if gpu else 64)
  timing = (dict(warmup=3, repeats=5, iters=5) if gpu else dict(warmup=2, repeats=5, iters=1))
  if args.quick:
    timing = dict(warmup=2, repeats=3, iters=1)
  rng = np.random.default_rng(0)
  x_np = rng.uniform(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
  y_np = rng.integers(0, 2, args.batch).astype(np.int32)
  print(f"Stain-AgLr step on {device['name']}: batch {args.batch} (+ as many stain-altered), "
        f"{args.size}x{args.size}x3, timing {timing}", flush=True)
  results, check = {}, None
  if not gpu:  # the output check in float32 on the CPU (cuDNN / TF32 would blur it)
    check = output_check(x_np[:4, :32, :32], y_np[:4])
    print(f"  output check: {check}", flush=True)
  dev = "cuda" if gpu else "cpu"
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
  y = torch.from_numpy(y_np).long().to(dev)
  for name, channels_last in (("torch eager fp32", False), ("torch eager fp32 channels_last", True)):
    torch.manual_seed(0)
    m_ft, m_cls, m_gen = (m.to(dev) for m in torch_modules(0.5))
    if channels_last:
      for m in (m_ft, m_cls, m_gen):
        m.to(memory_format=torch.channels_last)
    step = torch_step(m_ft, m_cls, m_gen, channels_last)
    try:
      t = common.time_repeats(lambda: step(x, y), lambda _: common.sync_fn(platform)(), **timing)
      results[name] = {"images_per_s": args.batch / t["seconds_per_call"], **t}
    except Exception as e:  # a failed variant is a result too
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
  from medda_jax.engine.supervised import build_train_chunk
  batches = {"image": jnp.asarray(x_np)[None], "label": jnp.asarray(y_np)[None]}
  for dname, dtype in (("fp32", jnp.float32),) + ((("bf16", jnp.bfloat16),) if gpu else ()):
    _, loss_fn, tx, state = jax_side(args.size, 0.5, dtype)
    name = f"jax jit {dname}"
    try:
      t0 = time.perf_counter()
      chunk = build_train_chunk(loss_fn, tx, "host")
      state, _ = chunk(state, batches)  # compiles
      jax.block_until_ready(state)
      results[name] = common.time_state_step(chunk, state, batches, args.batch, timing,
                                             first_call_seconds=time.perf_counter() - t0)
    except Exception as e:
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
  jn, jb = common.best_variant(results, "jax", "images_per_s")
  tn, tb = common.best_variant(results, "torch", "images_per_s")
  ratio = {"jax_best": jn, "torch_best": tn,
           "jax_best_over_torch_best": (jb / tb) if jb and tb else None}
  notes = [
      "One step = HED-light of the batch on the device, M_ft over [x, x_hat], M_cls on both, "
      "M_gen on x_hat's features, the three losses, one Adam update; images/s = batch (raw "
      "patches) / median seconds per step; the first call (compilation) not timed.",
      "Output check (CPU only): both sides from the same weights, dropout off, the same "
      "x_hat, the first 4 patches cut to 32x32: both losses and the largest absolute "
      "difference of any gradient (with the largest gradient for scale).",
  ]
  if not gpu:
    notes.append("CPU shapes scaled down from the paper's Camelyon17 setting (batch 64 at "
                 "256x256) to batch 16 at 64x64; the networks' widths are the paper's.")
  path = args.out or common.result_path("stain_aglr_step", platform, device)
  common.write_json(path, benchmark="stain_aglr_step", platform=platform, device=device,
                    shapes={"batch": args.batch, "height": args.size, "width": args.size,
                            "channels": 3, "features": list(FEATURES), "decoder": list(DECODER)},
                    results=results, ratio=ratio, notes=notes, timing=timing,
                    model_info={"output_check": check})
  print(f"ratio {ratio}\nwrote {path}")


if __name__ == "__main__":
  main()
