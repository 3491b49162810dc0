"""One StarGAN training cycle: medda_jax's GAN engine vs a PyTorch peer in the style of the
public reference implementation (yunjey/stargan model.py and solver.py).

A cycle (spec stargan_cycada.md (c)) is n_critic = 5 critic updates, each on its own
batch (half source images, domain 0, half target images, domain 1; every image's target
domain is the other one):
    L_D = mean D_src(G(x, c_trg)) - mean D_src(x) + 10 GP + CE(D_cls(x), c_org),
GP on one interpolate per sample between x and the fake, the gradient of the summed patch
map; then one generator update on the 5th batch:
    L_G = -mean D_src(G(x, c_trg)) + CE(D_cls(G(x, c_trg)), c_trg) + 10 mean|x - G(G(x, c_trg), c_org)|.
Adam(1e-4, 0.5, 0.999) for both. No semantic loss (plain StarGAN: the reference has none).

JAX side: `medda_jax.methods.stargan_da.stargan_losses` (lambda_sem 0) in
`medda_jax.engine.gan.build_gan_chunk(n_critic=5, inner_loop=...)`, the state donated on
accelerators, batches on the device; executors "jax <inner_loop>/<steps_per_call> <dtype>".
PyTorch side: the reference's Generator / Discriminator / ResidualBlock (bias-free convs
and InstanceNorm(affine) in G; real and fake through D in separate passes and the penalty
from autograd.grad(create_graph=True), as its solver does). Executors: eager fp32, eager
bf16 autocast (+ channels_last on CUDA), and torch.compile of the whole cycle (the
penalty's double backward may refuse; the error is recorded) else of the parts that
compile.

Before timing, the JAX initial weights are copied into the torch modules and fakes, both
critic heads, both losses with their terms, and every parameter gradient are compared on
the same batch and the same interpolation eps. Gradients are held to torch in float64,
next to torch float32's own distance from it (the float32 noise of these losses).

  python benchmarks/stargan_cycle.py                      # GPU (128 px, batch 16, spec)
  python benchmarks/stargan_cycle.py --cpu --cpu-threads 1  # CPU at small shapes
"""

from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "stargan_cycle"
N_CRITIC = 5
LR, B1, B2 = 1e-4, 0.5, 0.999
LAMBDA_GP, LAMBDA_CLS, LAMBDA_REC = 10.0, 1.0, 10.0
TOL_VALUE = 1e-4  # |jax - torch| <= TOL_VALUE * (1 + max |value|)
# Gradients (all tensors together, relative L2) are held to torch in float64: JAX's
# distance from it may be at most max(TOL_GRAD_ALL, 2 x torch float32's own distance).
# At the CPU shapes torch float32 itself is 1.2e-3 from float64 on the generator's
# gradients: ReLU / LeakyReLU kinks flip for inputs within rounding of 0.
TOL_GRAD_ALL = 1e-4
GOAL = ("best JAX executor >= 1.5x faster per cycle than the best PyTorch executor on a GPU "
        "at 128x128x3, batch 16, generator and critic base 64, 6 residual blocks, 6 critic "
        "layers")


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--size", type=int, default=None, help="image side (128 GPU, 32 CPU)")
  p.add_argument("--batch", type=int, default=16, help="images per batch, half per domain")
  p.add_argument("--base", type=int, default=None, help="base channels of G and D (64 GPU, 16 CPU)")
  p.add_argument("--res-blocks", type=int, default=None, help="residual blocks (6 GPU, 4 CPU)")
  p.add_argument("--executors", default=None,
                 help="JAX executors <scan|host>/<steps_per_call>/<fp32|bf16>, comma separated")
  p.add_argument("--torch-variants", default=None,
                 help="eager_fp32, eager_bf16, eager_bf16_cl, compile_fp32, compile_bf16_cl")
  p.add_argument("--repeats", type=int, default=5, help="timed blocks (median kept)")
  p.add_argument("--iters", type=int, default=None, help="cycles per block (10 GPU, 2 CPU)")
  p.add_argument("--skip-check", action="store_true")
  p.add_argument("--check-only", action="store_true", help="the equivalence check, no timing")
  p.add_argument("--out", default=None)
  return p.parse_args()


# ------------------------------------------------------------------------------ torch
def torch_networks(args):
  import torch
  from torch import nn

  class ResidualBlock(nn.Module):
    def __init__(self, dim):
      super().__init__()
      self.main = nn.Sequential(
          nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.InstanceNorm2d(dim, affine=True),
          nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
          nn.InstanceNorm2d(dim, affine=True))

    def forward(self, x):
      return x + self.main(x)

  class Generator(nn.Module):
    def __init__(self, conv_dim, c_dim, repeat_num):
      super().__init__()
      layers = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
                nn.InstanceNorm2d(conv_dim, affine=True), nn.ReLU(inplace=True)]
      curr = conv_dim
      for _ in range(2):
        layers += [nn.Conv2d(curr, curr * 2, 4, 2, 1, bias=False),
                   nn.InstanceNorm2d(curr * 2, affine=True), nn.ReLU(inplace=True)]
        curr *= 2
      layers += [ResidualBlock(curr) for _ in range(repeat_num)]
      for _ in range(2):
        layers += [nn.ConvTranspose2d(curr, curr // 2, 4, 2, 1, bias=False),
                   nn.InstanceNorm2d(curr // 2, affine=True), nn.ReLU(inplace=True)]
        curr //= 2
      layers += [nn.Conv2d(curr, 3, 7, 1, 3, bias=False), nn.Tanh()]
      self.main = nn.Sequential(*layers)

    def forward(self, x, c):
      c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
      return self.main(torch.cat([x, c], dim=1))

  class Discriminator(nn.Module):
    def __init__(self, image_size, conv_dim, c_dim, repeat_num):
      super().__init__()
      layers = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
      curr = conv_dim
      for _ in range(1, repeat_num):
        layers += [nn.Conv2d(curr, curr * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
        curr *= 2
      self.main = nn.Sequential(*layers)
      self.conv1 = nn.Conv2d(curr, 1, 3, 1, 1, bias=False)
      self.conv2 = nn.Conv2d(curr, c_dim, image_size // 2 ** repeat_num, bias=False)

    def forward(self, x):
      h = self.main(x)
      return self.conv1(h), self.conv2(h).view(h.size(0), -1)

  return (Generator(args.base, 2, args.res_blocks),
          Discriminator(args.size, args.base, 2, args.layers))


def torch_batch(x_s, x_t, dev):
  import torch
  b = x_s.shape[0]
  x = torch.cat([x_s, x_t])
  org = torch.cat([torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)]).to(dev)
  return x, org, 1 - org


def torch_d_loss(G, D, x, org, trg, eps, amp, dev):
  import torch
  import torch.nn.functional as F
  onehot = lambda c: F.one_hot(c, 2).float()
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    src_real, cls_real = D(x)
    with torch.no_grad():
      fake = G(x, onehot(trg)).to(x.dtype)
    src_fake, _ = D(fake)
  adv = src_fake.float().mean() - src_real.float().mean()
  cls = F.cross_entropy(cls_real.float(), org)
  x_hat = (eps * x + (1 - eps) * fake).requires_grad_(True)
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    src_hat, _ = D(x_hat)
  grad, = torch.autograd.grad(src_hat.float().sum(), x_hat, create_graph=True)
  gp = ((grad.flatten(1).square().sum(1) + 1e-12).sqrt() - 1).square().mean()
  return adv + LAMBDA_GP * gp + LAMBDA_CLS * cls, {"wasserstein": -adv, "gp": gp, "cls": cls}


def torch_g_loss(G, D, x, org, trg, amp, dev):
  import torch
  import torch.nn.functional as F
  onehot = lambda c: F.one_hot(c, 2).float()
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    fake = G(x, onehot(trg))
    src, cls = D(fake)
    rec = G(fake, onehot(org))
  adv = -src.float().mean()
  cls = F.cross_entropy(cls.float(), trg)
  l1 = (x - rec.float()).abs().mean()
  return adv + LAMBDA_CLS * cls + LAMBDA_REC * l1, {"adv": adv, "cls": cls, "rec": l1}


def torch_cycle(G, D, opt_g, opt_d, batches, amp, dev, compile_whole, compile_parts):
  import torch
  g_params, d_params = list(G.parameters()), list(D.parameters())
  d_loss_fn, g_loss_fn = torch_d_loss, torch_g_loss
  if compile_parts:
    G_c, D_c = torch.compile(G), torch.compile(D)
  else:
    G_c, D_c = G, D

  def cycle():
    for k in range(N_CRITIC):
      x, org, trg, eps = batches[k]
      loss, _ = d_loss_fn(G_c, D, x, org, trg, eps, amp, dev)
      opt_d.zero_grad(set_to_none=True)
      loss.backward(inputs=d_params)
      opt_d.step()
    x, org, trg, _ = batches[N_CRITIC - 1]
    loss, _ = g_loss_fn(G_c, D_c, x, org, trg, amp, dev)
    opt_g.zero_grad(set_to_none=True)
    loss.backward(inputs=g_params)
    opt_g.step()
    return loss

  return torch.compile(cycle) if compile_whole else cycle


# ------------------------------------------------------------------------------ JAX
def jax_side(args, dtype):
  import types

  import jax
  import jax.numpy as jnp

  from medda_jax.methods.stargan_da import stargan_losses
  from medda_jax.models.stargan import StarDiscriminator, StarGenerator
  gen = StarGenerator(n_domains=2, base_channels=args.base, res_blocks=args.res_blocks,
                      dtype=dtype)
  critic = StarDiscriminator(size=args.size, n_domains=2, base_channels=args.base,
                             layers=args.layers, dtype=dtype)
  weights = types.SimpleNamespace(lambda_gp=LAMBDA_GP, lambda_cls=LAMBDA_CLS,
                                  lambda_rec=LAMBDA_REC, lambda_sem=0.0)
  critic_loss, generator_loss, _, _ = stargan_losses(gen, critic, None, weights)
  x = jnp.zeros((2, args.size, args.size, 3))
  key = jax.random.PRNGKey(0)
  params = {"g": gen.init(key, x, jnp.zeros((2,), jnp.int32))["params"],
            "d": critic.init(jax.random.fold_in(key, 1), x)["params"]}
  return gen, critic, critic_loss, generator_loss, params


def generator_pairs(params, res_blocks):
  """(flax path, kind) of the generator in the order of the torch Sequential's params."""
  pairs = []
  for i in range(3):
    pairs += [((f"Conv_{i}", "kernel"), "conv"), ((f"InstanceNorm_{i}", "scale"), "copy"),
              ((f"InstanceNorm_{i}", "bias"), "copy")]
  for r in range(res_blocks):
    for j in range(2):
      pairs += [((f"ResidualBlock_{r}", f"Conv_{j}", "kernel"), "conv"),
                ((f"ResidualBlock_{r}", f"InstanceNorm_{j}", "scale"), "copy"),
                ((f"ResidualBlock_{r}", f"InstanceNorm_{j}", "bias"), "copy")]
  for i in range(2):
    pairs += [((f"ConvTranspose4x4_{i}", "kernel"), "conv_transpose"),
              ((f"InstanceNorm_{3 + i}", "scale"), "copy"),
              ((f"InstanceNorm_{3 + i}", "bias"), "copy")]
  return pairs + [(("Conv_3", "kernel"), "conv")]


def critic_pairs(layers):
  pairs = []
  for i in range(layers):
    pairs += [((f"Conv_{i}", "kernel"), "conv"), ((f"Conv_{i}", "bias"), "copy")]
  return pairs + [(("src", "kernel"), "conv"), (("cls", "kernel"), "conv")]


def to_torch(x, kind):
  import numpy as np
  x = np.array(x, np.float32)
  if kind == "conv":  # HWIO -> OIHW
    return x.transpose(3, 2, 0, 1)
  if kind == "conv_transpose":  # ConvTranspose4x4 keeps torch's taps: (kh,kw,in,out) -> (in,out,kh,kw)
    return x.transpose(2, 3, 0, 1)
  return x


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def check_equivalence(args, dev):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from medda_jax import losses
  gen, critic, critic_loss, generator_loss, params = jax_side(args, jnp.float32)
  G, D = torch_networks(args)
  G, D = G.to(dev).train(), D.to(dev).train()
  counts = {"generator_jax": common.count_params_jax(params["g"]),
            "generator_torch": common.count_params_torch(G),
            "critic_jax": common.count_params_jax(params["d"]),
            "critic_torch": common.count_params_torch(D)}
  print(f"  parameters: {counts}", flush=True)
  if counts["generator_jax"] != counts["generator_torch"] or (
      counts["critic_jax"] != counts["critic_torch"]):
    sys.exit(f"parameter counts differ: {counts}")
  record = {"parameter_counts": counts}
  if args.skip_check:
    return dict(record, numeric="skipped")
  old_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  g_pairs, d_pairs = generator_pairs(params["g"], args.res_blocks), critic_pairs(args.layers)
  g_named = list(G.named_parameters())
  d_named = list(D.main.named_parameters()) + [("conv1.weight", D.conv1.weight),
                                                ("conv2.weight", D.conv2.weight)]
  assert len(g_pairs) == len(g_named) and len(d_pairs) == len(d_named)
  with torch.no_grad():
    for pairs, named, tree in ((g_pairs, g_named, params["g"]), (d_pairs, d_named, params["d"])):
      for (path, kind), (name, p) in zip(pairs, named):
        value = torch.from_numpy(np.ascontiguousarray(to_torch(_get(tree, path), kind)))
        assert p.shape == value.shape, (name, p.shape, value.shape)
        p.copy_(value)
  rng = np.random.default_rng(1)
  half = args.batch // 2
  batch = {"x_s": rng.uniform(-1, 1, (half, args.size, args.size, 3)).astype(np.float32),
           "y_s": np.zeros(half, np.int32),
           "x_t": rng.uniform(-1, 1, (half, args.size, args.size, 3)).astype(np.float32)}
  model_state = {"g": {}, "d": {}}
  key = jax.random.PRNGKey(7)
  (d_loss, (_, d_m)), d_grads = jax.value_and_grad(
      lambda p: critic_loss({**params, "d": p}, model_state, batch, key), has_aux=True)(
          params["d"])
  (g_loss, (_, g_m)), g_grads = jax.value_and_grad(
      lambda p: generator_loss({**params, "g": p}, model_state, batch, key), has_aux=True)(
          params["g"])
  x_all = np.concatenate([batch["x_s"], batch["x_t"]])
  trg_np = np.array([1] * half + [0] * half)
  fake = gen.apply({"params": params["g"]}, jnp.asarray(x_all), jnp.asarray(trg_np))
  # The draw gradient_penalty makes from the key: one eps per sample.
  eps = np.asarray(losses.interpolate(jnp.ones((2 * half, 1, 1, 1)),
                                      jnp.zeros((2 * half, 1, 1, 1)), key))
  src_j, cls_j = critic.apply({"params": params["d"]}, jnp.asarray(x_all))
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))).to(dev)
  x, org, trg = torch_batch(nchw(batch["x_s"]), nchw(batch["x_t"]), dev)
  results = {}

  def compare(name, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(a)))
    results[name] = {"max_abs_diff": diff, "ok": diff <= TOL_VALUE * (1 + scale)}
    print(f"    {name:30s} {diff:.2e} {'ok' if results[name]['ok'] else 'MISMATCH'}", flush=True)

  def compare_grads(name, grads, pairs, named, named64):
    """JAX's gradients against torch float64's, beside torch float32's own distance from
    float64: the float32 noise of this loss at these shapes (kinks of ReLU / LeakyReLU
    flip for inputs within rounding of 0)."""
    d_jax = d_t32 = norm = 0.0
    for (path, kind), (_, p32), (_, p64) in zip(pairs, named, named64):
      a = to_torch(_get(grads, path), kind).astype(np.float64)
      ref = p64.grad.double().cpu().numpy()
      d_jax += float(np.sum((a - ref) ** 2))
      d_t32 += float(np.sum((p32.grad.double().cpu().numpy() - ref) ** 2))
      norm += float(np.sum(ref ** 2))
    jax_rel, t32_rel = (d_jax / norm) ** 0.5, (d_t32 / norm) ** 0.5
    ok = jax_rel <= max(TOL_GRAD_ALL, 2 * t32_rel)
    results[name] = {"jax_vs_torch64_rel_l2": jax_rel, "torch32_vs_torch64_rel_l2": t32_rel,
                     "tensors": len(pairs), "ok": ok}
    print(f"    {name:30s} JAX {jax_rel:.2e} / torch fp32 {t32_rel:.2e} from torch fp64 "
          f"{'ok' if ok else 'MISMATCH'}", flush=True)

  import torch.nn.functional as F
  with torch.no_grad():
    compare("fakes G(x, c_trg)", np.asarray(fake).transpose(0, 3, 1, 2),
            G(x, F.one_hot(trg, 2).float()).cpu().numpy())
    src_t, cls_t = D(x)
    compare("critic patch map D_src", src_j, src_t[:, 0].cpu().numpy())
    compare("critic domain logits D_cls", cls_j, cls_t.cpu().numpy())
  # Float64 copies of the torch networks: the reference both float32 sides are held to.
  G64, D64 = copy.deepcopy(G).double(), copy.deepcopy(D).double()
  g_named64 = list(G64.named_parameters())
  d_named64 = list(D64.main.named_parameters()) + [("conv1.weight", D64.conv1.weight),
                                                    ("conv2.weight", D64.conv2.weight)]
  eps_t = torch.from_numpy(np.array(eps)).to(dev)
  torch_d_loss(G64, D64, x.double(), org, trg, eps_t.double(), False, dev)[0].backward(
      inputs=list(D64.parameters()))
  torch_g_loss(G64, D64, x.double(), org, trg, False, dev)[0].backward(
      inputs=list(G64.parameters()))
  D.zero_grad(set_to_none=True)
  t_loss, t_m = torch_d_loss(G, D, x, org, trg, eps_t, False, dev)
  t_loss.backward(inputs=list(D.parameters()))
  compare("critic loss", d_loss, t_loss.item())
  for k in ("wasserstein", "gp", "cls"):
    compare(f"critic {k}", d_m[k], t_m[k].item())
  compare_grads("critic gradients", d_grads, d_pairs, d_named, d_named64)
  G.zero_grad(set_to_none=True)
  t_loss, t_m = torch_g_loss(G, D, x, org, trg, False, dev)
  t_loss.backward(inputs=list(G.parameters()))
  compare("generator loss", g_loss, t_loss.item())
  for k in ("adv", "cls", "rec"):
    compare(f"generator {k}", g_m[k], t_m[k].item())
  compare_grads("generator gradients", g_grads, g_pairs, g_named, g_named64)
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
  return dict(record, numeric=results, passed=all(r["ok"] for r in results.values()),
              tolerance=f"values {TOL_VALUE} x (1 + max|value|); gradients: relative L2 "
                        f"distance from torch float64 at most max({TOL_GRAD_ALL}, 2 x torch "
                        "float32's); float32, TF32 off")


# ------------------------------------------------------------------------------ timing
def random_batches(args, n, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  half = args.batch // 2
  shape = (n, N_CRITIC, half, args.size, args.size, 3)
  return {"x_s": rng.uniform(-1, 1, shape).astype(np.float32),
          "y_s": np.zeros(shape[:3], np.int32),
          "x_t": rng.uniform(-1, 1, shape).astype(np.float32)}


def per_cycle(t, cycles_per_call):
  reps = [s / cycles_per_call * 1e3 for s in t["seconds_per_call_repeats"]]
  return {"ms_per_cycle": statistics.median(reps), "ms_per_cycle_repeats": reps,
          "warmup_seconds": t["warmup_seconds"]}


def bench_jax(args, platform, results):
  import jax
  import jax.numpy as jnp
  import optax

  from medda_jax.engine import gan
  for item in args.executors:
    loop, spc, short = item.split("/")
    spc = int(spc)
    name = f"jax {loop}/{spc} {short}"
    try:
      _, _, critic_loss, generator_loss, params = jax_side(
          args, {"fp32": jnp.float32, "bf16": jnp.bfloat16}[short])
      tx = optax.adam(LR, b1=B1, b2=B2)
      chunk = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=N_CRITIC,
                                  inner_loop=loop)
      state = jax.device_put(gan.GANState.create(params, {"g": {}, "d": {}}, tx, tx,
                                                 jax.random.PRNGKey(1)))
      batches = jax.device_put(random_batches(args, spc))
      t0 = time.perf_counter()
      compiled = chunk.lower(state, batches).compile()
      compile_s = time.perf_counter() - t0
      carry = [state]

      def run():
        carry[0], m = compiled(carry[0], batches)
        return m

      calls = max(1, math.ceil(args.iters / spc))
      t = common.time_repeats(run, common.jax_block, warmup=1, repeats=args.repeats,
                              iters=calls)
      m = jax.device_get(run())
      results[name] = {**per_cycle(t, spc), "compile_seconds": compile_s,
                       "finite": bool(m["finite"]), "last_g_loss": float(m["g_loss"][-1])}
    except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:44s} {results[name].get('ms_per_cycle', results[name].get('error'))}",
          flush=True)
    gc.collect()


VARIANTS = {"eager_fp32": (False, False, False), "eager_bf16": (True, False, False),
            "eager_bf16_cl": (True, False, True), "compile_fp32": (False, True, False),
            "compile_bf16_cl": (True, True, True)}


def bench_torch(args, platform, results, compile_log):
  import torch
  dev = "cuda" if platform == "gpu" else "cpu"
  sync = common.sync_fn(platform)
  raw = random_batches(args, 1)
  for key in args.torch_variants:
    amp, compiled, channels_last = VARIANTS[key]
    for how in (("whole", "parts") if compiled else ("eager",)):
      name = f"torch {key}" + (f" ({how})" if compiled else "")
      torch.manual_seed(0)
      G, D = torch_networks(args)
      G, D = G.to(dev).train(), D.to(dev).train()
      fmt = torch.channels_last if channels_last else torch.contiguous_format
      G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
      batches = []
      for k in range(N_CRITIC):
        to = lambda a: torch.from_numpy(a[0, k].transpose(0, 3, 1, 2).copy()).to(dev).contiguous(
            memory_format=fmt)
        x, org, trg = torch_batch(to(raw["x_s"]), to(raw["x_t"]), dev)
        batches.append((x, org, trg, torch.rand(args.batch, 1, 1, 1, device=dev)))
      fused = (platform == "gpu" and not compiled) or None
      opt_g = torch.optim.Adam(G.parameters(), LR, betas=(B1, B2), fused=fused)
      opt_d = torch.optim.Adam(D.parameters(), LR, betas=(B1, B2), fused=fused)
      fn = torch_cycle(G, D, opt_g, opt_d, batches, amp, dev, how == "whole", how == "parts")
      try:
        t = common.time_repeats(fn, lambda _: sync(), warmup=3 if compiled else 1,
                                repeats=args.repeats, iters=args.iters)
        results[name] = {**per_cycle(t, 1), "finite": math.isfinite(float(fn().detach()))}
        if how == "whole":
          compile_log[key] = "whole cycle compiled and ran"
      except Exception as e:  # noqa: BLE001
        results[name] = {"error": common.error_text(e, 600)}
        if how == "whole":
          compile_log[key] = results[name]["error"]
      print(f"  {name:44s} {results[name].get('ms_per_cycle', results[name].get('error'))}",
            flush=True)
      del G, D, opt_g, opt_d, fn
      gc.collect()
      if "ms_per_cycle" in results[name]:
        break
      torch._dynamo.reset()


def main():
  args = parse_args()
  platform, device = common.start(args)
  gpu = platform == "gpu"
  args.size = args.size or (128 if gpu else 32)
  args.base = args.base or (64 if gpu else 16)
  args.res_blocks = args.res_blocks or (6 if gpu else 4)
  from medda_jax.models.stargan import critic_layers
  args.layers = critic_layers(args.size)
  args.iters = args.iters or (10 if gpu else 2)
  args.executors = (args.executors or ("scan/1/fp32,scan/10/fp32,host/1/fp32,scan/1/bf16,"
                                       "scan/10/bf16" if gpu else
                                       "host/1/fp32,host/1/bf16,scan/1/fp32")).split(",")
  args.torch_variants = (args.torch_variants or (
      "eager_fp32,eager_bf16,eager_bf16_cl,compile_bf16_cl" if gpu else
      "eager_fp32,eager_bf16,compile_fp32")).split(",")
  shapes = {"image": [args.size, args.size, 3], "batch": args.batch, "base_channels": args.base,
            "res_blocks": args.res_blocks, "critic_layers": args.layers, "n_critic": N_CRITIC}
  print(f"{BENCHMARK} on {device.get('name', platform)}: {shapes}", flush=True)
  dev = "cuda" if gpu else "cpu"
  check = check_equivalence(args, dev)
  if args.check_only:
    return
  results, compile_log = {}, {}
  bench_jax(args, platform, results)  # first: torch.compile's leftovers slow a later JAX side
  bench_torch(args, platform, results, compile_log)
  best_t = common.best_variant(results, "torch", "ms_per_cycle", pick=min)
  best_j = common.best_variant(results, "jax", "ms_per_cycle", pick=min)
  ratio = {"best_torch": best_t[0], "best_jax": best_j[0],
           "jax_speedup_vs_torch": (best_t[1] / best_j[1]) if best_t[1] and best_j[1] else None,
           "goal": GOAL}
  print(f"  speed-up of the best JAX over the best torch: {ratio['jax_speedup_vs_torch']}")
  path = args.out or common.result_path(BENCHMARK, platform, device)
  common.write_json(path, benchmark=BENCHMARK, platform=platform, device=device, shapes=shapes,
                    results=results, ratio=ratio, check=check,
                    torch_compile=compile_log,
                    notes=["One cycle = 5 critic updates with gradient penalty + 1 generator "
                           "update (StarGAN, two domains, no semantic loss)."])
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
