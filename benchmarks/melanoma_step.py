"""One LNTL and one CLGR training step (both half-steps): medda_jax vs a PyTorch peer.

Both frameworks run in this one process on one device with the same network (a
bottleneck ResNet trunk in the torchvision layout, main head Dropout(0.5) -> Linear(1),
bias head Linear(K)) and the same step as the reference `train_epoch_variations.py`:
  LNTL  BCE + lambda * mean sum p log p; main SGD step; then wCE(h(GRL(f(x))), b); main and
        bias SGD steps.
  CLGR  BCE + alpha * CE(uniform, p); main step, then the confusion SGD step on f; then
        wCE(h(GRL(f(x))), b); main and bias steps.
The torch peer zeroes gradients with zero_grad(set_to_none=False), as the PyTorch 1.8 the
reference pins did. Before timing, both sides start from the same weights (copied from
JAX to torch) with dropout off and take one step of each rule; the largest parameter
difference afterwards is reported as the output check.

  python benchmarks/melanoma_step.py            # GPU if there is one: ResNeXt-101 32x8d, batch 64 at 256x256
  python benchmarks/melanoma_step.py --cpu --quick
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

K = 2  # bias classes (Fitzpatrick17k: types 1 vs 2)
LR = {"main": 3e-4, "lntl_bias": 3e-4, "tabe_bias": 3e-3, "confusion": 3e-3}
LAMBDA, ALPHA, GRL = 0.01, 0.03, 0.1


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--batch", type=int, default=None, help="default 64 on GPU (the paper's), 16 on CPU")
  p.add_argument("--size", type=int, default=None, help="default 256 on GPU, 64 on CPU")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


def trunk_config(gpu: bool) -> dict:
  """ResNeXt-101 32x8d on the GPU (the paper's trunk); a one-block-per-stage ResNet of
  width 16 on the CPU."""
  if gpu:
    return {"stage_sizes": (3, 4, 23, 3), "width": 64, "groups": 32, "width_per_group": 8}
  return {"stage_sizes": (1, 1, 1, 1), "width": 16, "groups": 1, "width_per_group": 64}


# --------------------------------------------------------------------------- torch peer
def torch_modules(cfg: dict, dropout: float):
  import torch.nn as nn

  class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      inner = int(width * cfg["width_per_group"] / 64) * cfg["groups"]
      out = width * 4
      self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(inner)
      self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=cfg["groups"], bias=False)
      self.bn2 = nn.BatchNorm2d(inner)
      self.conv3 = nn.Conv2d(inner, out, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(out)
      self.relu = nn.ReLU()
      self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                       nn.BatchNorm2d(out)) if stride != 1 or cin != out else None)

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Trunk(nn.Module):
    def __init__(self):
      super().__init__()
      w = cfg["width"]
      self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(w)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = w
      for i, n in enumerate(cfg["stage_sizes"]):
        blocks = []
        for j in range(n):
          blocks.append(Bottleneck(cin, w * 2 ** i, (1 if i == 0 else 2) if j == 0 else 1))
          cin = w * 2 ** i * 4
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.features = cin

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for i in range(len(cfg["stage_sizes"])):
        x = getattr(self, f"layer{i + 1}")(x)
      return x.mean((2, 3))

  trunk = Trunk()
  main = nn.Sequential(nn.Dropout(dropout), nn.Linear(trunk.features, 1))
  bias = nn.Linear(trunk.features, K)
  return trunk, main, bias


def copy_jax_to_torch(params, stats, trunk, main, bias) -> None:
  """Flax variables (torchvision names) -> the torch modules' state dicts."""
  import jax
  import numpy as np
  import torch

  def to_torch(x):
    x = np.asarray(x)
    if x.ndim == 4:
      x = x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif x.ndim == 2:
      x = x.T
    # a copy: np.asarray of a JAX CPU array can share its buffer, which torch's in-place
    # updates would then overwrite
    return torch.from_numpy(np.array(x, np.float32, order="C", copy=True))

  names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
  state = {}
  for tree in (params["f"], stats):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = [str(p.key) for p in path]
      state[".".join(keys[:-1] + [names[keys[-1]]])] = to_torch(leaf)
  trunk.load_state_dict(state, strict=False)
  main[1].weight.data = to_torch(params["g"]["fc"]["kernel"])
  main[1].bias.data = to_torch(params["g"]["fc"]["bias"])
  bias.weight.data = to_torch(params["h"]["fc"]["kernel"])
  bias.bias.data = to_torch(params["h"]["fc"]["bias"])


def torch_step(method: str, trunk, main, bias_head, weights):
  """The reference's step with its three optimisers."""
  import torch
  import torch.nn.functional as F

  class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
      return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
      return -GRL * g

  opt = torch.optim.SGD(list(trunk.parameters()) + list(main.parameters()), LR["main"],
                        momentum=0.9)
  opt_aux = torch.optim.SGD(bias_head.parameters(),
                            LR["tabe_bias" if method == "clgr" else "lntl_bias"], momentum=0.9)
  opt_conf = torch.optim.SGD(trunk.parameters(), LR["confusion"], momentum=0.9)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

  def step(x, y, b):
    x = (x - mean.to(x.device)) / std.to(x.device)
    for o in (opt, opt_aux, opt_conf):
      o.zero_grad(set_to_none=False)
    z = trunk(x)
    loss = F.binary_cross_entropy_with_logits(main(z)[:, 0], y)
    p = torch.softmax(bias_head(z), 1)
    if method == "clgr":
      loss = loss - ALPHA * torch.sum(torch.full_like(p, 1.0 / K) * torch.log(p)) / p.shape[0]
    else:
      loss = loss + LAMBDA * torch.mean(torch.sum(p * torch.log(p), 1))
    loss.backward()
    opt.step()
    if method == "clgr":
      opt_conf.step()
    opt.zero_grad(set_to_none=False)
    opt_aux.zero_grad(set_to_none=False)
    loss_aux = F.cross_entropy(bias_head(GradReverse.apply(trunk(x))), b, weight=weights)
    loss_aux.backward()
    opt.step()
    opt_aux.step()
    return loss

  return step


# --------------------------------------------------------------------------- both sides
def jax_side(method: str, cfg: dict, size: int, dropout: float, dtype=None):
  import jax
  import jax.numpy as jnp
  from medda_jax.methods.melanoma_fairness import paper
  from medda_jax.models import resnet
  net = paper.Network(resnet.ResNet(num_classes=0, dtype=dtype or jnp.float32, **cfg),
                      paper.MainHead(dropout), paper.BiasHead(K))
  params, stats = jax.jit(lambda k: net.init(k, size))(jax.random.PRNGKey(0))
  hp = paper.hyper_for(method, LR["main"], LR["lntl_bias"], LR["tabe_bias"], LR["confusion"],
                       lntl_lambda=LAMBDA, tabe_alpha=ALPHA, grl_scale=GRL)
  state = paper.FairState.create(params, stats, paper.optimizers(hp), jax.random.PRNGKey(1))
  return net, params, stats, state, hp


def output_check(method, cfg, size, x_np, y_np, b_np, w_np) -> float:
  """Largest |parameter difference| after one step from the same weights, dropout off."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from medda_jax.methods.melanoma_fairness import paper
  net, params, stats, state, hp = jax_side(method, cfg, size, 0.0)
  trunk, main, bias_head = torch_modules(cfg, 0.0)
  copy_jax_to_torch(params, stats, trunk, main, bias_head)
  for m in (trunk, main, bias_head):
    m.train()
  step = torch_step(method, trunk, main, bias_head, torch.from_numpy(w_np))
  step(torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y_np).float(),
       torch.from_numpy(b_np).long())
  rule = jax.jit(paper.update_rule(method, net, hp, jnp.asarray(w_np)))
  state, _ = rule(state, {"images": jnp.asarray(x_np), "labels": jnp.asarray(y_np),
                          "bias": jnp.asarray(b_np)})
  trunk2, main2, bias2 = torch_modules(cfg, 0.0)
  copy_jax_to_torch(jax.device_get(state.params), jax.device_get(state.batch_stats),
                    trunk2, main2, bias2)
  diff = 0.0
  for a, b in ((trunk, trunk2), (main, main2), (bias_head, bias2)):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
      diff = max(diff, float(np.abs(pa.detach().numpy() - pb.detach().numpy()).max()))
  return diff


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
  cfg = trunk_config(gpu)
  timing = (dict(warmup=3, repeats=5, iters=5) if gpu else dict(warmup=2, repeats=5, iters=1))
  if args.quick:
    timing = dict(warmup=2, repeats=3, iters=1)
  rng = np.random.default_rng(0)
  x_np = rng.uniform(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
  y_np = rng.integers(0, 2, args.batch).astype(np.int32)
  b_np = rng.integers(0, K, args.batch).astype(np.int32)
  from medda_jax.engine.compile import compile_step
  from medda_jax.methods.melanoma_fairness import paper
  w_np = paper.class_weights(b_np, K)
  print(f"melanoma step on {device['name']}: batch {args.batch}, {args.size}x{args.size}x3, "
        f"trunk {cfg}, timing {timing}", flush=True)
  results, checks = {}, {}
  dev = "cuda" if gpu else "cpu"
  for method in ("lntl", "clgr"):
    if not gpu:  # the output check in float32 on the CPU (cuDNN / TF32 would blur it)
      checks[method] = output_check(method, cfg, min(args.size, 64), x_np[:4, :64, :64],
                                    y_np[:4], b_np[:4], w_np)
      print(f"  {method} max |param difference| after one step: {checks[method]:.2e}")
    torch.manual_seed(0)
    trunk, main_head, bias_head = (m.to(dev) for m in torch_modules(cfg, 0.5))
    step = torch_step(method, trunk, main_head, bias_head, torch.from_numpy(w_np).to(dev))
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
    y, b = torch.from_numpy(y_np).float().to(dev), torch.from_numpy(b_np).long().to(dev)
    name = f"torch eager fp32 {method}"
    try:
      t = common.time_repeats(lambda: step(x, y, b), lambda _: common.sync_fn(platform)(), **timing)
      results[name] = {"images_per_s": args.batch / t["seconds_per_call"], **t}
    except Exception as e:  # a failed variant is a result too
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
    for dname, dtype in (("fp32", jnp.float32),) + ((("bf16", jnp.bfloat16),) if gpu else ()):
      net, _, _, state, hp = jax_side(method, cfg, args.size, 0.5, dtype)
      rule = paper.update_rule(method, net, hp, jnp.asarray(w_np))
      batch = {"images": jnp.asarray(x_np), "labels": jnp.asarray(y_np), "bias": jnp.asarray(b_np)}
      name = f"jax jit {dname} {method}"
      try:
        t0 = time.perf_counter()
        compiled = compile_step(rule).lower(state, batch).compile()
        results[name] = common.time_state_step(compiled, state, batch, args.batch, timing,
                                               compile_seconds=time.perf_counter() - t0)
      except Exception as e:
        results[name] = {"error": common.error_text(e)}
      print(f"  {name:32s} {common.images_per_s_text(results[name])}", flush=True)
  ratio = {}
  for method in ("lntl", "clgr"):
    jn, jb = common.best_variant({k: v for k, v in results.items() if k.endswith(method)},
                                 "jax", "images_per_s")
    tn, tb = common.best_variant({k: v for k, v in results.items() if k.endswith(method)},
                                 "torch", "images_per_s")
    ratio[method] = {"jax_best": jn, "torch_best": tn,
                     "jax_best_over_torch_best": (jb / tb) if jb and tb else None}
  notes = [
      "One step = both half-steps of the rule (two trunk forwards and backwards, three or "
      "four SGD updates); images/s = batch / median seconds per step; compilation not timed.",
      "Output check (CPU only): both sides from the same weights, dropout off, one step on "
      "the first 4 images at 64x64; the largest absolute parameter difference afterwards.",
      "torch: zero_grad(set_to_none=False) as PyTorch 1.8 (the reference's), so momentum "
      "moves every parameter of an optimiser at each of its steps; the JAX rules do the same.",
  ]
  if not gpu:
    notes.append("CPU shapes scaled down from the GPU setting (ResNeXt-101 32x8d, batch 64 "
                 "at 256x256) to a one-block-per-stage ResNet of width 16.")
  path = args.out or common.result_path("melanoma_step", platform, device)
  common.write_json(path, benchmark="melanoma_step", platform=platform, device=device,
                    shapes={"batch": args.batch, "height": args.size, "width": args.size,
                            "channels": 3, "bias_classes": K, "trunk": {
                                k: list(v) if isinstance(v, tuple) else v
                                for k, v in cfg.items()}},
                    results=results, ratio=ratio, notes=notes, timing=timing,
                    model_info={"output_check_max_abs_param_diff": checks})
  print(f"ratio {ratio}\nwrote {path}")


if __name__ == "__main__":
  main()
