"""Fourier domain adaptation of one whole target volume: restyle every slice with n_MST
donors (k-space low-frequency swap), segment every version with the residual U-Net,
average the probabilities, threshold. JAX (one jit: vmapped swap, lax.map over slice
chunks) against a PyTorch peer (torch.fft, the same ResUNet2D written in torch, weights
copied from the JAX model and the probabilities checked against each other).

  python benchmarks/fda_volume.py                 # GPU: 172 slices, 256 x 256, 7 donors
  python benchmarks/fda_volume.py --cpu --quick   # CPU: small volume

Writes benchmarks/results/fda_volume_<platform>.json.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--quick", action="store_true", help="fewer timed repeats")
  p.add_argument("--slices", type=int, default=None, help="slices of the volume")
  p.add_argument("--size", type=int, default=None, help="slice side (multiple of 8)")
  p.add_argument("--donors", type=int, default=7, help="n_MST")
  p.add_argument("--features", type=int, default=16, help="n_filters_init of the U-Net")
  p.add_argument("--chunk", type=int, default=None, help="target slices per forward pass")
  p.add_argument("--beta", type=float, default=0.02)
  p.add_argument("--out", default=None)
  return p.parse_args()


# --------------------------------------------------------------------------- torch peer
def torch_resunet(features: int):
  """ResUNet2D (medda_jax/models/unet2d_res.py) in torch, NCHW, eval-mode BatchNorm."""
  import torch
  from torch import nn

  class PreAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, bias=True):
      super().__init__()
      self.bn = nn.BatchNorm2d(cin, eps=1e-5)
      self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0,
                            bias=bias)

    def forward(self, x):
      return self.conv(torch.relu(self.bn(x)))

  class ResBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.a, self.b = PreAct(c, c, 3), PreAct(c, c, 3)

    def forward(self, x):
      return x + self.b(self.a(x))

  def blocks(c):
    return nn.Sequential(*[ResBlock(c) for _ in range(3)])

  class Net(nn.Module):
    def __init__(self, n):
      super().__init__()
      self.init_conv = nn.Conv2d(1, n, 3, padding=1, bias=False)
      self.init = blocks(n)
      self.down1_conv, self.down1 = PreAct(n, 2 * n, 2, 2, False), blocks(2 * n)
      self.down2_conv, self.down2 = PreAct(2 * n, 4 * n, 2, 2, False), blocks(4 * n)
      self.bottleneck_conv = PreAct(4 * n, 8 * n, 2, 2, False)
      self.bottleneck = blocks(8 * n)
      self.bottleneck_up = nn.ConvTranspose2d(8 * n, 4 * n, 2, 2, bias=False)
      self.skip2, self.up2 = nn.Conv2d(4 * n, 4 * n, 1), blocks(4 * n)
      self.up2_up = nn.ConvTranspose2d(4 * n, 2 * n, 2, 2, bias=False)
      self.skip1, self.up1 = nn.Conv2d(2 * n, 2 * n, 1), blocks(2 * n)
      self.up1_up = nn.ConvTranspose2d(2 * n, n, 2, 2, bias=False)
      self.skip0, self.out = nn.Conv2d(n, n, 1), blocks(n)
      self.out_conv = PreAct(n, 1, 1)
      self.out_bn = nn.BatchNorm2d(1, eps=1e-5)

    def forward(self, x):
      x0 = self.init(self.init_conv(x))
      x1 = self.down1(self.down1_conv(x0))
      x2 = self.down2(self.down2_conv(x1))
      b = self.bottleneck(self.bottleneck_conv(x2))
      y = self.bottleneck_up(b) + self.skip2(x2)
      y = self.up2_up(self.up2(y)) + self.skip1(x1)
      y = self.up1_up(self.up1(y)) + self.skip0(x0)
      return self.out_bn(self.out_conv(self.out(y)))

  return Net(features)


def copy_jax_weights(net, variables) -> None:
  """Flax ResUNet2D variables -> the torch peer (HWIO -> OIHW; a flax ConvTranspose
  without kernel transposition is torch's with the kernel flipped in space)."""
  import numpy as np
  import torch
  params, stats = variables["params"], variables["batch_stats"]

  def t(a):
    return torch.from_numpy(np.array(a, np.float32))

  def conv(mod, p):
    mod.weight.data = t(np.transpose(p["kernel"], (3, 2, 0, 1)))
    if "bias" in p:
      mod.bias.data = t(p["bias"])

  def bn(mod, p, s):
    mod.weight.data, mod.bias.data = t(p["scale"]), t(p["bias"])
    mod.running_mean.data, mod.running_var.data = t(s["mean"]), t(s["var"])

  def preact(mod, p, s):
    bn(mod.bn, p["BatchNorm_0"], s["BatchNorm_0"])
    conv(mod.conv, p["Conv_0"])

  def stage(seq, name):
    for i, block in enumerate(seq):
      p, s = params[f"{name}_res{i}"], stats[f"{name}_res{i}"]
      preact(block.a, p["PreAct_0"], s["PreAct_0"])
      preact(block.b, p["PreAct_1"], s["PreAct_1"])

  def up(mod, p):
    mod.weight.data = t(np.transpose(np.asarray(p["kernel"])[::-1, ::-1], (2, 3, 0, 1)))

  conv(net.init_conv, params["init_conv"])
  for name in ("init", "down1", "down2", "bottleneck", "up2", "up1", "out"):
    stage(getattr(net, name), name)
  for name in ("down1_conv", "down2_conv", "bottleneck_conv", "out_conv"):
    preact(getattr(net, name), params[name], stats[name])
  for name in ("skip2", "skip1", "skip0"):
    conv(getattr(net, name), params[name])
  for name in ("bottleneck_up", "up2_up", "up1_up"):
    up(getattr(net, name), params[name])
  bn(net.out_bn, params["out_bn"], stats["out_bn"])


def torch_pipeline(net, beta: float, chunk: int):
  """The same volume pipeline in torch: swap (torch.fft), segment, average, threshold."""
  import torch

  def swap(src, tgt):  # [Z, n, H, W], [Z, 1, H, W]
    h, w = tgt.shape[-2:]
    u = (torch.arange(h, device=tgt.device) - h // 2)[:, None].float()
    v = (torch.arange(w, device=tgt.device) - w // 2)[None, :].float()
    mask = (u * u + v * v < (beta * min(h, w)) ** 2).float()
    fs = torch.fft.fftshift(torch.fft.fft2(src), dim=(-2, -1))
    ft = torch.fft.fftshift(torch.fft.fft2(tgt), dim=(-2, -1))
    amp = mask * fs.abs() + (1 - mask) * ft.abs()
    mixed = torch.polar(amp, ft.angle().expand_as(amp))
    out = torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).abs()
    return out / out.amax(dim=(-2, -1), keepdim=True)

  @torch.inference_mode()
  def run(donors, target):
    probs = []
    for s in range(0, target.shape[0], chunk):
      d, t = donors[s:s + chunk], target[s:s + chunk, None]
      restyled = swap(d, t)
      z, n, h, w = restyled.shape
      logits = net(restyled.reshape(z * n, 1, h, w)).reshape(z, n, h, w)
      probs.append(torch.sigmoid(logits).mean(dim=1))
    prob = torch.cat(probs)
    return prob, prob > 0.5

  return run


# --------------------------------------------------------------------------- JAX side
def jax_pipeline(model, beta: float, chunk: int):
  import importlib.util

  import jax

  # paper.py alone (pure jax): the package's __init__ also loads the experiment's data stack
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "medda_jax", "methods", "fda", "paper.py")
  spec = importlib.util.spec_from_file_location("fda_paper", path)
  paper = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(paper)

  @jax.jit
  def run(variables, donors, target):  # [Z, n, H, W], [Z, H, W]; Z divisible by chunk
    z, n, h, w = donors.shape

    def one(args):
      d, t = args
      restyled = paper.restyle_slices(d, t, beta)
      logits = model.apply(variables, restyled.reshape(-1, h, w, 1), train=False)
      return jax.nn.sigmoid(logits.reshape(chunk, n, h, w)).mean(axis=1)

    prob = jax.lax.map(one, (donors.reshape(z // chunk, chunk, n, h, w),
                             target.reshape(z // chunk, chunk, h, w))).reshape(z, h, w)
    return prob, prob > 0.5

  return run


def main():
  args = parse_args()
  platform, device = common.start(args)
  import jax
  import numpy as np
  import torch

  from medda_jax.models import unet2d_res
  gpu = platform == "gpu"
  slices = args.slices or (172 if gpu else (16 if args.quick else 48))
  size = args.size or (256 if gpu else 64)
  chunk = args.chunk or (4 if gpu else 4)
  if slices % chunk or size % 8:
    sys.exit(f"--slices {slices} must be divisible by --chunk {chunk}, --size by 8")
  timing = (dict(warmup=2, repeats=3, iters=1) if args.quick else
            dict(warmup=2, repeats=5, iters=1))
  rng = np.random.default_rng(0)
  target = rng.random((slices, size, size), dtype=np.float32)
  donors = rng.random((slices, args.donors, size, size), dtype=np.float32)
  print(f"FDA volume on {device['name']}: {slices} slices {size}x{size}, {args.donors} donors, "
        f"features {args.features}, chunk {chunk}, timing {timing}", flush=True)

  model = unet2d_res.ResUNet2D(features=args.features)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 1), np.float32),
                         train=False)
  # non-trivial BatchNorm statistics, so the check covers them
  variables = {"params": variables["params"], "batch_stats": jax.tree.map(
      lambda x: x + 0.1 * np.abs(rng.standard_normal(x.shape)).astype(np.float32),
      variables["batch_stats"])}
  results = {}

  run_jax = jax_pipeline(model, args.beta, chunk)
  dv, dd, dt = jax.device_put((variables, donors, target))
  r, (jax_prob, _) = common.time_within_budget(lambda: run_jax(dv, dd, dt), common.jax_block,
                                               budget=120, **timing)
  results["jax jit fp32"] = dict(r, volumes_per_s=1.0 / r["seconds_per_call"])
  jax_prob = np.asarray(jax_prob)

  dev = "cuda" if gpu else "cpu"
  net = torch_resunet(args.features)
  copy_jax_weights(net, jax.device_get(variables))
  net = net.to(dev).eval()
  run_torch = torch_pipeline(net, args.beta, chunk)
  td, tt = torch.from_numpy(donors).to(dev), torch.from_numpy(target).to(dev)
  sync = common.sync_fn(platform)
  r, (torch_prob, _) = common.time_within_budget(lambda: run_torch(td, tt),
                                                 lambda _: sync(), budget=120, **timing)
  results["torch eager fp32"] = dict(r, volumes_per_s=1.0 / r["seconds_per_call"])
  torch_prob = torch_prob.cpu().numpy()
  gap = float(np.max(np.abs(torch_prob - jax_prob)))
  agree = float(np.mean((torch_prob > 0.5) == (jax_prob > 0.5)))
  print(f"  probabilities max |jax - torch| = {gap:.2e}; masks agree on {agree:.6f}")
  for name, res in results.items():
    print(f"  {name}: {res['seconds_per_call']:.3f} s per volume")
  ratio = results["torch eager fp32"]["seconds_per_call"] / results["jax jit fp32"][
      "seconds_per_call"]
  notes = [
      "One call = the whole volume: FDA swap of every slice with each of its donors, "
      "segmentation of every restyled slice (eval-mode BatchNorm), mean of the sigmoid "
      "probabilities over donors, threshold 0.5. Data on the device before timing; "
      "block_until_ready / torch.cuda.synchronize end every timed call.",
      "JAX: one jit, paper.restyle_slices vmapped over donors and slices, lax.map over "
      f"chunks of {chunk} target slices ({chunk} x n_MST images per forward pass). torch: "
      "the same chunks, torch.fft, inference_mode, the same network with the JAX weights "
      "copied (check: max probability gap and mask agreement above).",
      "torch.compile not measured.",
  ]
  shapes = {"slices": slices, "size": size, "donors": args.donors, "features": args.features,
            "chunk": chunk, "beta": args.beta, "window": "circle"}
  path = args.out or common.result_path("fda_volume", platform, device)
  common.write_json(path, benchmark="fda_volume", platform=platform, device=device,
                    shapes=shapes, results=results,
                    ratio={"torch_seconds_over_jax_seconds": ratio},
                    check={"max_abs_probability_gap": gap, "mask_agreement": agree},
                    notes=notes, timing=timing)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
