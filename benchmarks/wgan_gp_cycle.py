"""One WGAN-GP training cycle: medda_jax's GAN engine vs a faithful PyTorch peer.

A cycle is what one generator step of the WGAN augmentation method costs (spec
wgan_synth_aug.md (b), with the WGAN-GP objective): n_critic = 5 critic updates, each on
its own real batch and fresh z, with loss E[f(G(z))] - E[f(x)] + 10 * GP (gradient
penalty on one random interpolate per sample), then one generator update on -E[f(G(z))].
Adam(1e-4, b1 0.5, b2 0.9) for both networks, as in WGAN-GP; no weight clipping.

Networks (the spec's layout, `medda_jax.models.wgan`): generator Dense -> 4x4xC0 -> BN ->
LeakyReLU(0.2), then per doubling ConvTranspose 4x4/2 (padding 1, no bias) -> BN ->
LeakyReLU -> Conv 3x3 (no bias) -> BN -> LeakyReLU, channels halving from C0 to 32; Conv
3x3 -> 1 channel and tanh. Critic: per halving SN-Conv 4x4/2 -> LeakyReLU -> SN-Conv 3x3
-> LeakyReLU, channels doubling from 32 up to 512; flatten -> SN-Dense -> 1 score. Spectral
norm on every critic layer, one power iteration per forward.

JAX side: `medda_jax.methods.wgan_aug.wgan_losses` (real and fake in one critic pass that
advances the spectral-norm vectors, the penalty's pass with update_stats=False, generator
in train-mode BatchNorm) in `medda_jax.engine.gan.build_gan_chunk(n_critic=5,
inner_loop=...)`, one cycle per call (steps_per_call 1) and ten cycles per call
(steps_per_call 10, reported per cycle), compute in float32 or bfloat16 (parameters and
optimiser state float32), the state donated, the real batches already on the device. The
generator's up-sampling runs in the model's default form (`--jax-subpixel` overrides it).
Executor names: jax <inner_loop>/<steps_per_call> <dtype>.

PyTorch side, the same layers and math: BatchNorm2d(eps 1e-5, momentum 0.1),
`torch.nn.utils.parametrizations.spectral_norm` on every critic conv and the linear layer,
real and fake concatenated in one critic pass (the generator run under no_grad), the
penalty from `torch.autograd.grad(create_graph=True)` at interpolates with one eps per
sample, each loss backpropagated only into the parameters its update changes. Executors:
eager fp32, eager bf16 autocast (on CUDA also with channels_last), and torch.compile — of
the whole cycle if it compiles and runs (the penalty's double backward may not), else of
what can be compiled, labelled so. cudnn.benchmark on CUDA.

Before timing, the two sides are checked to compute the same functions: parameter counts
of generator and critic must match; then the JAX initial weights are copied into the torch
modules (with the spectral-norm vectors set to exact singular vectors, so that both
sides' power iterations sit at the same fixed point) and critic scores, generated images,
both losses (Wasserstein term and penalty included) and every parameter gradient are
compared on the same z, eps and real images.

  python benchmarks/wgan_gp_cycle.py            # GPU if there is one, else CPU
  python benchmarks/wgan_gp_cycle.py --cpu      # force the CPU
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "wgan_gp_cycle"
N_CRITIC = 5
GP_WEIGHT = 10.0
LEARNING_RATE, ADAM_B1, ADAM_B2 = 1e-4, 0.5, 0.9
BN_EPS = 1e-5
CHECK_TOL = 1e-4  # values: |jax - torch| <= CHECK_TOL * (1 + max |value|)
# Gradients: ||jax - torch|| <= CHECK_TOL_GRAD * ||jax|| per tensor. Looser: the float32
# differences of the two generators (~5e-6 in the images) pass through the train-mode
# BatchNorms and the critic's LeakyReLU kinks (1e-4 to 2e-4 seen at the CPU shapes).
CHECK_TOL_GRAD = 1e-3
GPU_EXECUTORS = "scan/1,scan/10,host/1"
# fp32 only on a CPU (bf16 convolutions run no faster there, benchmarks/cpu_conv_bf16.py);
# host/10 unrolls 60 updates, each with a double backward, and its XLA:CPU compilation
# takes far longer than the whole run.
CPU_EXECUTORS = "host/1,scan/1/fp32,scan/10/fp32"
GOAL = ("best JAX executor >= 1.5x faster per critic-and-generator cycle than the best "
        "PyTorch executor, on a GPU at the spec's shapes (128x128x1, batch 64, latent 100, "
        "generator 4x4x512 halving to 32, critic 32 doubling to 512)")


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--size", type=int, default=None,
                 help="image height = width, 4 * 2^k (env BENCH_SIZE; 128 on GPU, 32 on CPU)")
  p.add_argument("--batch", type=int, default=None,
                 help="images per critic / generator batch (env BENCH_BATCH; 64 GPU, 16 CPU)")
  p.add_argument("--latent", type=int, default=100, help="latent dimension (100)")
  p.add_argument("--max-channels", type=int, default=None,
                 help="generator's first and critic's widest channel count (512 GPU, 128 CPU)")
  p.add_argument("--min-channels", type=int, default=32,
                 help="generator's narrowest and critic's first channel count (32)")
  p.add_argument("--executors", default=None,
                 help="comma list of JAX executors <inner_loop>/<steps_per_call>[/<dtype>], "
                      "inner_loop scan or host, dtype fp32 or bf16 (both when left out); "
                      f"default {GPU_EXECUTORS} on GPU, {CPU_EXECUTORS} on CPU")
  p.add_argument("--torch-variants", default=None,
                 help="comma list of eager_fp32, eager_bf16, eager_bf16_cl, compile_fp32, "
                      "compile_bf16_cl (default: eager_fp32,eager_bf16,eager_bf16_cl,"
                      "compile_bf16_cl on GPU; eager_fp32,eager_bf16,compile_fp32 on CPU)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed torch cycles (compilation; 5 on GPU; on CPU 3 under "
                      "torch.compile, 1 eager); JAX executors are compiled ahead of time and "
                      "get ceil(warmup / steps_per_call) untimed calls on GPU, one on CPU")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed blocks; the median is kept (5; --quick 3)")
  p.add_argument("--iters", type=int, default=None,
                 help="cycles per timed block (10 on GPU, 1 on CPU; a block of a 10-cycle "
                      "executor holds ceil(iters / 10) calls)")
  p.add_argument("--budget", type=float, default=None,
                 help="seconds of timed blocks per executor (40 on CPU, none on GPU): fewer "
                      "repeats (at least one) for an executor whose warm-up call shows that "
                      "the repeats would take longer")
  p.add_argument("--jax-subpixel", choices=("default", "on", "off"), default="default",
                 help="how medda_jax's generator runs its 4x4/2 up-sampling "
                      "(Generator.subpixel, where the model has it): the model's default, "
                      "or forced on / off")
  p.add_argument("--quick", action="store_true", help="fewer timed blocks")
  p.add_argument("--skip-check", action="store_true", help="skip the equivalence check")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


def num_blocks(size: int) -> int:
  blocks = round(math.log2(size / 4)) if size >= 8 else 0
  if size < 8 or 4 * 2**blocks != size:
    sys.exit(f"--size {size}: must be 4 * 2^k with k >= 1 (8, 16, 32, 64, 128, ...)")
  return blocks


# ---------------------------------------------------------------------------------------
# PyTorch peer networks (NCHW).

def torch_networks(size, latent, max_channels, min_channels, channels=1):
  """(generator, critic): the PyTorch peers of medda_jax.models.wgan's Generator(size,
  channels, latent, max_channels, min_channels) and Critic(size, base_channels=
  min_channels, max_channels=max_channels, spectral_norm=True), layer for layer."""
  import torch
  from torch import nn
  from torch.nn.utils.parametrizations import spectral_norm

  blocks = num_blocks(size)

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.width0 = max_channels
      self.fc = nn.Linear(latent, 16 * max_channels, bias=False)
      self.bn0 = nn.BatchNorm2d(max_channels, eps=BN_EPS, momentum=0.1)
      self.ups, self.up_bns, self.convs, self.conv_bns = (nn.ModuleList() for _ in range(4))
      width = max_channels
      for _ in range(blocks):
        new = max(width // 2, min_channels)
        self.ups.append(nn.ConvTranspose2d(width, new, 4, stride=2, padding=1, bias=False))
        self.up_bns.append(nn.BatchNorm2d(new, eps=BN_EPS, momentum=0.1))
        self.convs.append(nn.Conv2d(new, new, 3, padding=1, bias=False))
        self.conv_bns.append(nn.BatchNorm2d(new, eps=BN_EPS, momentum=0.1))
        width = new
      self.out = nn.Conv2d(width, channels, 3, padding=1)
      self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, z):
      x = self.act(self.bn0(self.fc(z).view(z.shape[0], self.width0, 4, 4)))
      for up, up_bn, conv, conv_bn in zip(self.ups, self.up_bns, self.convs, self.conv_bns):
        x = self.act(up_bn(up(x)))
        x = self.act(conv_bn(conv(x)))
      return torch.tanh(self.out(x))

  class Critic(nn.Module):
    def __init__(self):
      super().__init__()
      self.downs, self.sames = nn.ModuleList(), nn.ModuleList()
      c_in, width = channels, min_channels
      for _ in range(blocks):
        self.downs.append(spectral_norm(nn.Conv2d(c_in, width, 4, stride=2, padding=1)))
        self.sames.append(spectral_norm(nn.Conv2d(width, width, 3, padding=1)))
        c_in, width = width, min(width * 2, max_channels)
      self.fc = spectral_norm(nn.Linear(16 * c_in, 1))
      self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
      for down, same in zip(self.downs, self.sames):
        x = self.act(same(self.act(down(x))))
      return self.fc(x.flatten(1))[:, 0]

  return Generator(), Critic()


def torch_critic_loss(G, D, real, z, eps, amp, dev, D_pass=None, fake=None):
  """(loss, wasserstein, gp) of one critic update, as wgan_losses computes it: the fakes
  G(z) made under no_grad (or given as `fake`), real and fake in one critic pass (`D_pass`,
  default `D`), the penalty's pass through `D` with the input gradient kept for the double
  backward."""
  import torch
  D_pass = D if D_pass is None else D_pass
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    if fake is None:
      with torch.no_grad():
        fake = G(z).to(real.dtype)
    scores = D_pass(torch.cat([real, fake])).float()
  n = real.shape[0]
  wasserstein = scores[:n].mean() - scores[n:].mean()
  x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    hat_scores = D(x_hat).float()
  grads, = torch.autograd.grad(hat_scores.sum(), x_hat, create_graph=True)
  norms = torch.sqrt(grads.float().flatten(1).square().sum(1) + 1e-12)
  gp = (norms - 1.0).square().mean()
  return -wasserstein + GP_WEIGHT * gp, wasserstein, gp


def torch_generator_loss(G, D, z, amp, dev):
  """-E[f(G(z))], generator in train mode."""
  import torch
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
    scores = D(G(z)).float()
  return -scores.mean()


def torch_cycle_fn(G, D, opt_g, opt_d, reals, *, batch, latent, amp, dev, compile_whole,
                   compile_parts):
  """One cycle as a Python function: eager, compiled whole (`compile_whole`), or with the
  generator, the critic's real/fake pass, the generator update and both optimiser steps
  compiled and the penalty's pass (double backward) eager (`compile_parts`)."""
  import torch
  g_params, d_params = list(G.parameters()), list(D.parameters())
  G_fake = torch.compile(G) if compile_parts else G
  D_pass = torch.compile(D) if compile_parts else D

  def critic_update(real):
    z = torch.randn(batch, latent, device=dev)
    eps = torch.rand(batch, 1, 1, 1, device=dev)
    loss, _, _ = torch_critic_loss(G_fake, D, real, z, eps, amp, dev, D_pass=D_pass)
    opt_d.zero_grad(set_to_none=True)
    loss.backward(inputs=d_params)  # not into the interpolates: nothing needs their grad
    return loss

  def generator_update():
    loss = torch_generator_loss(G, D, torch.randn(batch, latent, device=dev), amp, dev)
    opt_g.zero_grad(set_to_none=True)
    loss.backward(inputs=g_params)  # the critic's weight gradients are not needed
    return loss

  d_step, g_step = opt_d.step, opt_g.step
  if compile_parts:
    generator_update = torch.compile(generator_update)
    d_step, g_step = torch.compile(opt_d.step), torch.compile(opt_g.step)

  def cycle():
    for k in range(N_CRITIC):
      critic_update(reals[k])
      d_step()
    loss = generator_update()
    g_step()
    return loss

  return torch.compile(cycle) if compile_whole else cycle


# ---------------------------------------------------------------------------------------
# Weight mapping medda_jax (NHWC, HWIO) -> torch (NCHW, OIHW).

def generator_pairs(blocks, params):
  """(flax param path, torch param name, kind) for every generator parameter. The
  up-sampling layer is medda_jax's ConvTranspose4x4 (kernel[ky, kx, in, out] = torch's
  weight[in, out, ky, kx]) or, in older versions of the model, flax's nn.ConvTranspose."""
  torch_taps = "ConvTranspose4x4_0" in params
  up_name, up_kind = (("ConvTranspose4x4", "conv_transpose_torch_taps") if torch_taps
                      else ("ConvTranspose", "conv_transpose"))
  pairs = [(("Dense_0", "kernel"), "fc.weight", "dense_to_map"),
           (("BatchNorm_0", "scale"), "bn0.weight", "copy"),
           (("BatchNorm_0", "bias"), "bn0.bias", "copy")]
  for b in range(blocks):
    pairs += [((f"{up_name}_{b}", "kernel"), f"ups.{b}.weight", up_kind),
              ((f"BatchNorm_{2 * b + 1}", "scale"), f"up_bns.{b}.weight", "copy"),
              ((f"BatchNorm_{2 * b + 1}", "bias"), f"up_bns.{b}.bias", "copy"),
              ((f"Conv_{b}", "kernel"), f"convs.{b}.weight", "conv"),
              ((f"BatchNorm_{2 * b + 2}", "scale"), f"conv_bns.{b}.weight", "copy"),
              ((f"BatchNorm_{2 * b + 2}", "bias"), f"conv_bns.{b}.bias", "copy")]
  pairs += [((f"Conv_{blocks}", "kernel"), "out.weight", "conv"),
            ((f"Conv_{blocks}", "bias"), "out.bias", "copy")]
  return pairs


def critic_pairs(blocks):
  """(flax param path, torch param name, kind); the spectral-norm layers' index k in
  flax is SpectralNorm_k around Conv_k (Dense_0 last)."""
  pairs = []
  for b in range(blocks):
    for j, mod in ((2 * b, f"downs.{b}"), (2 * b + 1, f"sames.{b}")):
      pairs += [((f"Conv_{j}", "kernel"), f"{mod}.parametrizations.weight.original", "conv"),
                ((f"Conv_{j}", "bias"), f"{mod}.bias", "copy")]
  pairs += [(("Dense_0", "kernel"), "fc.parametrizations.weight.original", "map_to_dense"),
            (("Dense_0", "bias"), "fc.bias", "copy")]
  return pairs


def to_torch_layout(x, kind):
  """One flax parameter (numpy) in its torch layout."""
  import numpy as np
  x = np.array(x, np.float32)  # a writable copy
  if kind == "copy":
    return x
  if kind == "conv":  # HWIO -> OIHW
    return x.transpose(3, 2, 0, 1)
  if kind == "conv_transpose":
    # flax ConvTranspose (transpose_kernel=False) correlates the stride-dilated input with
    # the kernel as stored; torch's ConvTranspose2d correlates with the spatially flipped
    # kernel, stored (in, out, kh, kw).
    return x[::-1, ::-1].transpose(2, 3, 0, 1)
  if kind == "conv_transpose_torch_taps":  # (kh, kw, in, out) -> (in, out, kh, kw)
    return x.transpose(2, 3, 0, 1)
  if kind == "dense_to_map":  # (latent, 4*4*C) in (h, w, c) order -> (C*4*4, latent)
    latent, n = x.shape
    c = n // 16
    return x.reshape(latent, 4, 4, c).transpose(0, 3, 1, 2).reshape(latent, n).T
  if kind == "map_to_dense":  # (4*4*C, 1) in (h, w, c) order -> (1, C*4*4)
    c = x.shape[0] // 16
    return x.reshape(4, 4, c, 1).transpose(3, 2, 0, 1).reshape(1, -1)
  raise ValueError(kind)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def check_equivalence(args, platform, dev):
  """Copies the JAX initial weights into the torch peers and compares both sides' critic
  scores, generated images, losses and gradients; returns the record for the JSON."""
  import contextlib

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  blocks = num_blocks(args.size)
  generator, critic, critic_loss, generator_loss = jax_networks(args, jnp.float32)
  g_vars, d_vars = jax_init_vars(generator, critic, args, seed=0)
  G, D = torch_networks(args.size, args.latent, args.max_channels, args.min_channels)
  G, D = G.to(dev).train(), D.to(dev).train()
  counts = {"generator_jax": common.count_params_jax(g_vars["params"]),
            "generator_torch": common.count_params_torch(G),
            "critic_jax": common.count_params_jax(d_vars["params"]),
            "critic_torch": common.count_params_torch(D)}
  print(f"  parameters: generator JAX {counts['generator_jax']:,} / torch "
        f"{counts['generator_torch']:,}; critic JAX {counts['critic_jax']:,} / torch "
        f"{counts['critic_torch']:,}", flush=True)
  if (counts["generator_jax"] != counts["generator_torch"]
      or counts["critic_jax"] != counts["critic_torch"]):
    sys.exit(f"parameter counts differ between JAX and torch: {counts}")
  record = {"parameter_counts": counts}
  if args.skip_check:
    record["numeric"] = "skipped (--skip-check)"
    return record

  # Full fp32 on both sides for the check (no TF32 on a GPU).
  old_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  named_g, named_d = dict(G.named_parameters()), dict(D.named_parameters())
  g_pairs, d_pairs = generator_pairs(blocks, g_vars["params"]), critic_pairs(blocks)
  assert len(g_pairs) == len(named_g) and len(d_pairs) == len(named_d)
  with torch.no_grad():
    for pairs, named, params in ((g_pairs, named_g, g_vars["params"]),
                                 (d_pairs, named_d, d_vars["params"])):
      for path, name, kind in pairs:
        value = torch.from_numpy(np.ascontiguousarray(to_torch_layout(_get(params, path), kind)))
        assert named[name].shape == value.shape, (name, named[name].shape, value.shape)
        named[name].copy_(value)
    # Exact leading singular vectors on both sides: one power iteration keeps them (up to
    # rounding), so both sides divide by the same sigma whatever their iteration order.
    sn_stats = {}
    sn_modules = [*[m for pair in zip(D.downs, D.sames) for m in pair], D.fc]
    for k, mod in enumerate(sn_modules):
      para = mod.parametrizations.weight[0]
      w = mod.parametrizations.weight.original.detach().double().flatten(1)  # (out, K)
      u_s, s, vh = torch.linalg.svd(w, full_matrices=False)
      u, v = u_s[:, 0], vh[0]
      para._u.copy_(u.float())
      para._v.copy_(v.float())
      layer = f"Conv_{k}" if k < 2 * blocks else "Dense_0"
      sn_stats[f"SpectralNorm_{k}"] = {
          f"{layer}/kernel/u": jnp.asarray(u.float().cpu().numpy())[None, :],
          f"{layer}/kernel/sigma": jnp.asarray(s[0].float().cpu().numpy())}
  d_vars = {"params": d_vars["params"], "batch_stats": sn_stats}
  params = {"g": g_vars["params"], "d": d_vars["params"]}
  model_state = {"g": {"batch_stats": g_vars["batch_stats"]},
                 "d": {"batch_stats": sn_stats}}

  rng = np.random.default_rng(1)
  real_np = rng.uniform(-1, 1, (args.batch, args.size, args.size, 1)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  to_t = lambda a: torch.from_numpy(np.array(a, np.float32)).to(dev)  # a writable copy
  nchw = lambda a: to_t(np.asarray(a).transpose(0, 3, 1, 2))
  results = {}

  def compare(name, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(a)))
    ok = bool(diff <= CHECK_TOL * (1.0 + scale))
    results[name] = {"max_abs_diff": diff, "max_abs_value": scale, "ok": ok}
    print(f"    {name:34s} max |jax - torch| {diff:.2e} (values up to {scale:.3g}) "
          f"{'ok' if ok else 'MISMATCH'}", flush=True)

  def compare_grads(name, grads, pairs, named):
    """Every parameter gradient: ||jax - torch|| / ||jax|| per tensor (L2)."""
    per_tensor = {}
    for path, tname, kind in pairs:
      a = to_torch_layout(_get(grads, path), kind).astype(np.float64)
      b = named[tname].grad.double().cpu().numpy()
      diff = float(np.linalg.norm(a - b))
      per_tensor[tname] = diff / float(np.linalg.norm(a)) if diff else 0.0
    worst = max(per_tensor, key=per_tensor.get)
    ok = per_tensor[worst] <= CHECK_TOL_GRAD
    results[name] = {"tensors": len(per_tensor), "max_rel_l2_diff": per_tensor[worst],
                     "worst_tensor": worst, "ok": ok}
    print(f"    {name:34s} ||diff|| / ||g|| {per_tensor[worst]:.2e} at worst over "
          f"{len(per_tensor)} tensors ({worst}) {'ok' if ok else 'MISMATCH'}", flush=True)

  precision = (jax.default_matmul_precision("highest") if platform == "gpu"
               else contextlib.nullcontext())
  with precision:
    # Loss of one critic update: z and eps drawn as wgan_losses draws them from `key`.
    (loss, (_, metrics)), grads_d = jax.value_and_grad(
        lambda p: critic_loss({**params, "d": p}, model_state, {"image": real_np}, key),
        has_aux=True)(params["d"])
    z_key, gp_key = jax.random.split(key)
    z = jax.random.normal(z_key, (args.batch, args.latent))
    eps = jax.random.uniform(gp_key, (args.batch, 1, 1, 1), jnp.float32)
    fake_jax, _ = generator.apply(g_vars, z, train=True, mutable=["batch_stats"])
    x_both = jnp.concatenate([real_np, fake_jax])
    scores_jax = critic.apply(d_vars, x_both, update_stats=False)
    g_key = jax.random.PRNGKey(8)
    g_loss, grads_g = jax.value_and_grad(
        lambda p: generator_loss({**params, "g": p}, model_state, None, g_key)[0])(params["g"])
    z_g = jax.random.normal(g_key, (args.batch, args.latent))

  with torch.no_grad():
    compare("generator images G(z), train BN", np.asarray(fake_jax).transpose(0, 3, 1, 2),
            G(to_t(z)).cpu().numpy())
    compare("critic scores f(real, fake)", scores_jax, D(nchw(x_both)).cpu().numpy())
  D.zero_grad(set_to_none=True)
  # The same fakes on both sides (the JAX generator's, compared above): the penalty's
  # gradients jump where a LeakyReLU input changes sign, so the generators' float32
  # rounding differences (~1e-6) would flip a few units and move the gradients ~1e-3.
  t_loss, t_w, t_gp = torch_critic_loss(G, D, nchw(real_np), None, to_t(eps), False, dev,
                                        fake=nchw(fake_jax))
  t_loss.backward()
  compare("critic loss (W + 10 GP)", loss, t_loss.item())
  compare("Wasserstein estimate", metrics["wasserstein"], t_w.item())
  compare("gradient penalty", metrics["gp"], t_gp.item())
  compare_grads("critic loss gradients", grads_d, d_pairs, named_d)
  G.zero_grad(set_to_none=True)
  t_g_loss = torch_generator_loss(G, D, to_t(z_g), False, dev)
  t_g_loss.backward(inputs=list(G.parameters()))
  compare("generator loss -E f(G(z))", g_loss, t_g_loss.item())
  compare_grads("generator loss gradients", grads_g, g_pairs, named_g)
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
  record.update(
      numeric=results, passed=all(r["ok"] for r in results.values()),
      tolerance=(f"values: max |jax - torch| <= {CHECK_TOL} * (1 + max |value|); gradients: "
                 f"||jax - torch|| <= {CHECK_TOL_GRAD} * ||jax|| per tensor; float32 "
                 "(TF32 off)"),
      what=("One model, two frameworks: the JAX initial weights copied into the torch "
            "modules (Dense columns (h,w,c) -> (c,h,w); conv HWIO -> OIHW; the generator's "
            "4x4/2 up-sampling kernel (kh,kw,in,out) -> torch's ConvTranspose2d (in,out,kh,kw)"
            ", spatially flipped when the model uses flax's nn.ConvTranspose), the "
            "spectral-norm vectors set to the exact leading singular vectors of every critic "
            "weight on both sides (one power iteration then keeps them, so both divide by "
            "the same sigma); the same real batch, z and eps (drawn from the JAX keys as "
            "wgan_losses draws them). Compared: the generated images G(z) (train-mode BN), "
            "critic scores on real+fake, the critic loss of one update with its Wasserstein "
            "and gradient-penalty terms, every critic parameter gradient (double backward "
            "included), the generator loss and every generator parameter gradient. The "
            "critic-loss comparison feeds both sides the JAX generator's fakes: the "
            "penalty's gradients jump where a LeakyReLU input changes sign, so the two "
            "generators' float32 rounding differences (~1e-6) would flip a few units and "
            "move the critic gradients by ~1e-3 (seen at the CPU shapes)."))
  del G, D
  return record


# ---------------------------------------------------------------------------------------
# JAX side.

def generator_options(subpixel):
  """Keyword arguments selecting how the JAX generator up-samples: {} keeps the model's
  default (what the method trains with); True / False set `Generator.subpixel` where the
  model has that switch."""
  from medda_jax.models.wgan import Generator
  if subpixel is None or "subpixel" not in getattr(Generator, "__dataclass_fields__", {}):
    return {}
  return {"subpixel": subpixel}


_FROM_ARGS = object()


def jax_networks(args, dtype, subpixel=_FROM_ARGS):
  """(generator, critic, critic_loss, generator_loss) as the method builds them;
  `subpixel`: None (the model's default), True or False; by default --jax-subpixel."""
  from medda_jax.methods.wgan_aug import wgan_losses
  from medda_jax.models.wgan import Critic, Generator
  subpixel = args.jax_subpixel if subpixel is _FROM_ARGS else subpixel
  generator = Generator(size=args.size, channels=1, latent_dim=args.latent,
                        max_channels=args.max_channels, min_channels=args.min_channels,
                        dtype=dtype, **generator_options(subpixel))
  critic = Critic(size=args.size, base_channels=args.min_channels,
                  max_channels=args.max_channels, spectral_norm=True, dtype=dtype)
  critic_loss, generator_loss = wgan_losses(generator, critic, args.latent, args.batch,
                                            "wgan_gp", GP_WEIGHT)
  return generator, critic, critic_loss, generator_loss


def jax_init_vars(generator, critic, args, seed):
  """Initial variables as `ClassGAN.init_state` makes them."""
  import jax
  import jax.numpy as jnp
  z = jnp.zeros((args.batch, args.latent))
  x = jnp.zeros((args.batch, args.size, args.size, 1))
  k = jax.random.PRNGKey(seed)
  return (generator.init(k, z),
          critic.init(jax.random.fold_in(k, 1), x, update_stats=True))


def jax_state(generator, critic, args, seed, g_tx, d_tx):
  import jax

  from medda_jax.engine import gan
  g_vars, d_vars = jax_init_vars(generator, critic, args, seed)
  params = {"g": g_vars["params"], "d": d_vars["params"]}
  model_state = {"g": {"batch_stats": g_vars["batch_stats"]},
                 "d": {"batch_stats": d_vars.get("batch_stats", {})}}
  return gan.GANState.create(params, model_state, g_tx, d_tx, jax.random.PRNGKey(seed + 1))


def parse_executors(text):
  """[(inner_loop, steps_per_call, dtype short name)] from "scan/1,host/10/bf16,..."."""
  out = []
  for item in text.split(","):
    if not item:
      continue
    parts = item.split("/")
    ok = (len(parts) in (2, 3) and parts[0] in ("scan", "host") and parts[1].isdigit()
          and int(parts[1]) >= 1 and (len(parts) == 2 or parts[2] in ("fp32", "bf16")))
    if not ok:
      sys.exit(f"--executors: {item!r} is not <scan|host>/<steps_per_call>[/<fp32|bf16>]")
    for dtype in parts[2:] or ("fp32", "bf16"):
      out.append((parts[0], int(parts[1]), dtype))
  return out


def bench_jax(args, platform, reals_np, timing, results):
  import jax
  import jax.numpy as jnp
  import optax

  from medda_jax.engine import gan
  dtypes = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
  nets = {}
  for loop, spc, short in args.executors:
    name = f"jax {loop}/{spc} {short}"
    if short not in nets:
      nets[short] = jax_networks(args, dtypes[short])
    generator, critic, critic_loss, generator_loss = nets[short]
    g_tx = optax.adam(LEARNING_RATE, b1=ADAM_B1, b2=ADAM_B2)
    d_tx = optax.adam(LEARNING_RATE, b1=ADAM_B1, b2=ADAM_B2)
    chunk = gan.build_gan_chunk(critic_loss, generator_loss, g_tx, d_tx, n_critic=N_CRITIC,
                                inner_loop=loop)
    # [steps_per_call, n_critic, batch, H, W, 1]: every critic update its own batch.
    batches = {"image": jax.device_put(jnp.asarray(reals_np[:spc]))}
    carry = [jax_state(generator, critic, args, 0, g_tx, d_tx)]
    try:
      t0 = time.perf_counter()
      compiled = chunk.lower(carry[0], batches).compile()
      compile_s = time.perf_counter() - t0

      def run(carry=carry, compiled=compiled, batches=batches):
        carry[0], metrics = compiled(carry[0], batches)  # the state is donated on accelerators
        return metrics

      calls = lambda cycles, spc=spc: max(1, -(-cycles // spc))  # ceil
      t, metrics = common.time_within_budget(
          run, common.jax_block, warmup=calls(timing["warmup"]) if platform == "gpu" else 1,
          repeats=timing["repeats"], iters=calls(timing["iters"]), budget=timing["budget"])
      metrics = jax.device_get(metrics)
      results[name] = {**per_cycle(t, spc), "wall_seconds": time.perf_counter() - t0,
                       "steps_per_call": spc, "inner_loop": loop,
                       "compute_dtype": {"fp32": "float32", "bf16": "bfloat16"}[short],
                       "compile_seconds": compile_s, "finite": bool(metrics["finite"]),
                       "last_d_loss": float(metrics["d_loss"][-1]),
                       "last_g_loss": float(metrics["g_loss"][-1])}
    except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
      results[name] = {"error": common.error_text(e)}
    print(f"  {name:52s} {_fmt(results[name])}", flush=True)
    carry = batches = compiled = None
    gc.collect()


def jax_flops_per_cycle(args):
  """FLOPs of one cycle from XLA's cost analysis of the lowered fp32 host/1 chunk, with the
  generator's up-sampling as a plain transposed convolution where the model can switch
  (the sub-pixel form adds multiplications by zero taps: not model FLOPs)."""
  import jax
  import jax.numpy as jnp
  import optax

  from medda_jax.engine import gan
  generator, critic, critic_loss, generator_loss = jax_networks(args, jnp.float32,
                                                                subpixel=False)
  tx = optax.adam(LEARNING_RATE, b1=ADAM_B1, b2=ADAM_B2)
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=N_CRITIC,
                              inner_loop="host")
  state = jax_state(generator, critic, args, 0, tx, tx)
  batches = {"image": jax.ShapeDtypeStruct((1, N_CRITIC, args.batch, args.size, args.size, 1),
                                           jnp.float32)}
  return common.lowered_flops(chunk.lower(state, batches))


def per_cycle(t, cycles_per_call):
  reps = [s / cycles_per_call for s in t["seconds_per_call_repeats"]]
  med = statistics.median(reps)
  return {"ms_per_cycle": med * 1e3, "cycles_per_s": 1.0 / med,
          "ms_per_cycle_min": min(reps) * 1e3, "ms_per_cycle_max": max(reps) * 1e3,
          "ms_per_cycle_repeats": [r * 1e3 for r in reps],
          "seconds_per_call": t["seconds_per_call"], "warmup_seconds": t["warmup_seconds"],
          "warmup_calls": t["warmup_calls"], "timed_blocks": t["repeats"],
          "calls_per_block": t["calls_per_block"]}


# ---------------------------------------------------------------------------------------
# PyTorch side.

TORCH_VARIANTS = {  # key: (name, bf16 autocast, compile, channels_last)
    "eager_fp32": ("torch eager fp32", False, False, False),
    "eager_bf16": ("torch eager bf16-autocast", True, False, False),
    "eager_bf16_cl": ("torch eager bf16-autocast channels_last", True, False, True),
    "compile_fp32": ("torch compile fp32", False, True, False),
    "compile_bf16_cl": ("torch compile bf16-autocast channels_last", True, True, True),
}


def bench_torch(args, platform, reals_np, timing, results, compile_log):
  import torch
  dev = "cuda" if platform == "gpu" else "cpu"
  sync = common.sync_fn(platform)
  reals = torch.from_numpy(reals_np[0]).permute(0, 1, 4, 2, 3).contiguous().to(dev)
  for key in args.torch_variants:
    name, amp, compiled, channels_last = TORCH_VARIANTS[key]
    attempts = [("whole", True, False), ("parts", False, True)] if compiled else [
        ("eager", False, False)]
    for how, whole, parts in attempts:
      torch.manual_seed(0)
      G, D = torch_networks(args.size, args.latent, args.max_channels, args.min_channels)
      G, D = G.to(dev).train(), D.to(dev).train()
      rr = reals
      if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        rr = [r.contiguous(memory_format=torch.channels_last) for r in reals]
      # fused Adam is the fastest eager optimiser on CUDA; compiled steps fuse their own.
      fused = (platform == "gpu" and not compiled) or None
      opt_g = torch.optim.Adam(G.parameters(), lr=LEARNING_RATE, betas=(ADAM_B1, ADAM_B2),
                               fused=fused)
      opt_d = torch.optim.Adam(D.parameters(), lr=LEARNING_RATE, betas=(ADAM_B1, ADAM_B2),
                               fused=fused)
      fn = torch_cycle_fn(G, D, opt_g, opt_d, rr, batch=args.batch, latent=args.latent,
                           amp=amp, dev=dev, compile_whole=whole, compile_parts=parts)
      label = name if how != "parts" else name.replace(
          "torch compile", "torch compile-parts (critic GP pass eager)")
      try:
        # An eager step has nothing to compile: one warm-up cycle on a CPU is enough.
        warmup = timing["warmup"] if compiled or platform == "gpu" else 1
        t0 = time.perf_counter()
        t, loss = common.time_within_budget(fn, lambda _: sync(), warmup=warmup,
                                            repeats=timing["repeats"], iters=timing["iters"],
                                            budget=timing["budget"])
        loss = float(loss.detach())
        results[label] = {**per_cycle(t, 1), "compiled": how, "last_g_loss": loss,
                          "wall_seconds": time.perf_counter() - t0,
                          "finite": math.isfinite(loss)}
        if how == "whole":
          compile_log[name] = "whole cycle compiled and ran"
      except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
        results[label] = {"error": common.error_text(e, 600), "compiled": how,
                          "wall_seconds": time.perf_counter() - t0}
        if how == "whole":
          compile_log[name] = (f"whole cycle under torch.compile failed: {type(e).__name__}: "
                               f"{' '.join(str(e).split())[:600]}")
      print(f"  {label:52s} {_fmt(results[label])}", flush=True)
      del G, D, opt_g, opt_d, fn
      gc.collect()
      if platform == "gpu":
        torch.cuda.empty_cache()
      if "ms_per_cycle" in results[label]:
        break
      if compiled:
        torch._dynamo.reset()


def torch_flops_per_cycle(args, platform):
  """Convolution/matmul FLOPs of one eager fp32 cycle (torch FlopCounterMode; cross-check)."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  dev = "cuda" if platform == "gpu" else "cpu"
  G, D = torch_networks(args.size, args.latent, args.max_channels, args.min_channels)
  G, D = G.to(dev), D.to(dev)
  opt_g = torch.optim.Adam(G.parameters(), lr=LEARNING_RATE, betas=(ADAM_B1, ADAM_B2))
  opt_d = torch.optim.Adam(D.parameters(), lr=LEARNING_RATE, betas=(ADAM_B1, ADAM_B2))
  reals = torch.zeros(N_CRITIC, args.batch, 1, args.size, args.size, device=dev)
  fn = torch_cycle_fn(G, D, opt_g, opt_d, reals, batch=args.batch, latent=args.latent,
                       amp=False, dev=dev, compile_whole=False, compile_parts=False)
  counter = FlopCounterMode(display=False)

  class _NoModuleTracker:  # the per-module tracker's hooks reject autograd.grad (the GP)
    parents = frozenset({"Global"})
    __enter__ = lambda self: self
    __exit__ = lambda self, *exc: None

  counter.mod_tracker = _NoModuleTracker()
  with counter:
    fn()
  return counter.get_total_flops()


def _fmt(r):
  if "ms_per_cycle" in r:
    return (f"{r['ms_per_cycle']:9.1f} ms/cycle ({r['ms_per_cycle_min']:.1f}-"
            f"{r['ms_per_cycle_max']:.1f}) {r['cycles_per_s']:7.2f} cycles/s")
  return r.get("error") or r.get("skipped")


def main():
  args = parse_args()
  platform, device = common.start(args)
  import jax.numpy as jnp
  import numpy as np
  gpu = platform == "gpu"
  args.size = args.size or common.env_int("BENCH_SIZE", 128 if gpu else 32)
  args.batch = args.batch or common.env_int("BENCH_BATCH", 64 if gpu else 16)
  args.max_channels = args.max_channels or (512 if gpu else 128)
  blocks = num_blocks(args.size)
  args.jax_subpixel = {"default": None, "on": True, "off": False}[args.jax_subpixel]
  executors_text = args.executors or (GPU_EXECUTORS if gpu else CPU_EXECUTORS)
  args.executors = parse_executors(executors_text)
  args.torch_variants = [v for v in (args.torch_variants or (
      "eager_fp32,eager_bf16,eager_bf16_cl,compile_bf16_cl" if gpu
      else "eager_fp32,eager_bf16,compile_fp32")).split(",") if v]
  for key in args.torch_variants:
    if key not in TORCH_VARIANTS:
      sys.exit(f"--torch-variants: unknown variant {key!r}; choose from {list(TORCH_VARIANTS)}")
  timing = {"warmup": 5 if gpu else 3, "repeats": 3 if args.quick else 5,
            "iters": 10 if gpu else 1, "budget": None if gpu else 40.0}
  for k in timing:
    if getattr(args, k) is not None:
      timing[k] = getattr(args, k)
  if gpu:
    import torch
    torch.backends.cudnn.benchmark = True

  max_spc = max([spc for _, spc, _ in args.executors] + [1])
  rng = np.random.default_rng(0)
  # Real batches in [-1, 1], NHWC: [steps_per_call, n_critic, batch, H, W, 1].
  reals_np = rng.uniform(-1, 1, (max_spc, N_CRITIC, args.batch, args.size, args.size, 1)
                         ).astype(np.float32)
  g_widths = [args.max_channels]
  for _ in range(blocks):
    g_widths.append(max(g_widths[-1] // 2, args.min_channels))
  d_widths = [min(args.min_channels * 2**b, args.max_channels) for b in range(blocks)]
  print(f"WGAN-GP cycle on {device['name']}: {args.size}x{args.size}x1, batch {args.batch}, "
        f"latent {args.latent}, generator {g_widths}, critic {d_widths}, n_critic {N_CRITIC}, "
        f"timing {timing}", flush=True)

  subpixel_used = getattr(jax_networks(args, jnp.float32)[0], "subpixel", None)
  print("[equivalence check]", flush=True)
  check = check_equivalence(args, platform, "cuda" if gpu else "cpu")
  if check.get("passed") is False:
    print("  WARNING: the equivalence check failed; timings are still taken and written.",
          flush=True)

  results, compile_log, notes = {}, {}, []
  # JAX first: torch.compile leaves worker threads and processes behind that slowed a JAX
  # side measured after it (a 2-thread U-Net step 16.0 against 29.8 images/s).
  print("[jax]", flush=True)
  bench_jax(args, platform, reals_np, timing, results)
  print("[torch]", flush=True)
  bench_torch(args, platform, reals_np, timing, results, compile_log)
  try:
    flops = jax_flops_per_cycle(args)
  except Exception as e:  # noqa: BLE001 (FLOPs are informative only)
    flops, notes = None, notes + [f"XLA FLOP count failed: {common.error_text(e, 200)}"]
  try:
    t_flops = torch_flops_per_cycle(args, platform)
  except Exception as e:  # noqa: BLE001 (a cross-check only)
    t_flops = common.error_text(e, 200)
  peak = device.get("peak_bf16_dense_flops")
  for r in results.values():
    if "ms_per_cycle" in r and flops:
      r["tflops_per_s"] = flops / (r["ms_per_cycle"] / 1e3) / 1e12
      r["mfu_vs_bf16_dense_peak"] = (flops / (r["ms_per_cycle"] / 1e3) / peak) if peak else None

  jname, jbest = common.best_variant(results, "jax", "ms_per_cycle", min)
  tname, tbest = common.best_variant(results, "torch", "ms_per_cycle", min)
  ref = results.get("torch eager fp32", {}).get("ms_per_cycle")
  spec_shapes = (args.size == 128 and args.batch == 64 and args.latent == 100
                 and args.max_channels == 512 and args.min_channels == 32)
  ratio = {
      "jax_best": jname, "torch_best": tname,
      "speedup_jax_best_over_torch_best": (tbest / jbest) if jbest and tbest else None,
      "speedup_jax_best_over_torch_eager_fp32": (ref / jbest) if jbest and ref else None,
      "ms_per_cycle": {k: v["ms_per_cycle"] for k, v in results.items() if "ms_per_cycle" in v},
      "goal": GOAL,
      "goal_applies": gpu and spec_shapes,
  }
  print(f"  ratio {ratio}", flush=True)

  notes += [
      ("ms per cycle = median over the timed blocks (each ends with block_until_ready / "
       "torch.cuda.synchronize) of block time / cycles in the block; min and max of the "
       "blocks give the spread. Warm-up calls (torch.compile's compilation included) are not "
       "timed; JAX executors are compiled ahead of time (compile_seconds) before their "
       "warm-up. A steps_per_call=10 executor runs 10 cycles per call and is reported per "
       "cycle. With a time budget (CPU) an executor whose warm-up call is slow gets fewer "
       "timed blocks (timed_blocks in its result)."),
      ("A cycle: 5 critic updates (each its own real batch and fresh z; real and fake in one "
       "critic pass; gradient penalty, weight 10, on one interpolate per sample) and one "
       "generator update; Adam(1e-4, 0.5, 0.9) on both sides; no weight clipping."),
      ("Spectral norm: one power iteration per critic forward on both sides (two per critic "
       "update, one in the generator update); the JAX critic stores only the vectors of the "
       "real/fake pass (wgan_losses), torch's parametrization stores each (same work)."),
      ("torch backpropagates each loss only into the parameters its update changes "
       "(backward(inputs=...)): no critic weight gradients in the generator update, no "
       "gradient into the interpolates in the critic update, as the JAX side differentiates "
       "params['d'] or params['g'] only; the critic's fakes are made under torch.no_grad "
       "(JAX: stop_gradient, dead code removed)."),
      (f"JAX generator up-sampling: ConvTranspose4x4 with subpixel={subpixel_used} (null: "
       "the model has no such switch). FLOPs per cycle from XLA's cost analysis of the "
       "lowered fp32 host/1 chunk with subpixel=False (a plain transposed convolution: the "
       "sub-pixel form's zero taps are not model FLOPs), used for every executor; "
       "flops_per_cycle_torch_counter is torch's FlopCounterMode count of one eager fp32 "
       "cycle (convolutions and matmuls only, double backward included), a cross-check."),
      ("torch.compile: the whole cycle is tried first; if it fails the error is kept "
       "(torch_compile) and 'torch compile-parts (critic GP pass eager)' compiles the "
       "generator, the critic's real/fake pass, the generator update and both optimiser "
       "steps, the penalty's double-backward pass staying eager."),
  ]
  if gpu:
    notes.append("torch eager variants use Adam(fused=True) and cudnn.benchmark=True; fp32 "
                 "convolutions use TF32 on both sides (the defaults of torch and XLA; the "
                 "equivalence check turned TF32 off).")
  else:
    notes.append(f"CPU shapes scaled down from the GPU setting (128x128, batch 64, 512 "
                 f"channels) so the whole run takes minutes on {device['cpu_cores']} cores. "
                 "The default CPU executors are "
                 f"{CPU_EXECUTORS}: host/10 (10 unrolled cycles, 60 updates each with a "
                 "double backward) takes far longer to compile than the whole run, and "
                 "XLA:CPU's bf16 convolutions run no faster than its fp32 ones "
                 "(benchmarks/cpu_conv_bf16.py).")
  if args.cpu_threads:
    notes.append(f"Both frameworks limited to {args.cpu_threads} intra-op CPU thread(s) "
                 f"(--cpu-threads); load average at start {device['load_average_at_start']}.")
  for variant, outcome in compile_log.items():
    notes.append(f"{variant}: {outcome}.")
  shapes = {"height": args.size, "width": args.size, "channels": 1, "batch": args.batch,
            "latent_dim": args.latent, "n_critic": N_CRITIC, "gp_weight": GP_WEIGHT,
            "generator_channels": g_widths, "critic_channels": d_widths,
            "optimizer": f"Adam(lr={LEARNING_RATE}, b1={ADAM_B1}, b2={ADAM_B2}) both",
            "spectral_norm": "every critic layer, 1 power iteration per forward"}
  path = args.out or common.result_path(BENCHMARK, platform, device)
  common.write_json(path, benchmark=BENCHMARK, platform=platform, device=device,
                    shapes=shapes, results=results, ratio=ratio, notes=notes, timing=timing,
                    executors={"jax": [f"{l}/{n}/{d}" for l, n, d in args.executors],
                               "torch": args.torch_variants},
                    equivalence_check=check, torch_compile=compile_log,
                    model_info={"jax_generator_subpixel": subpixel_used,
                                "flops_per_cycle_xla": flops,
                                "flops_per_cycle_torch_counter": t_flops,
                                **check["parameter_counts"]})
  print(f"wrote {path}")
  if check.get("passed") is False:
    sys.exit("the equivalence check failed (see equivalence_check in the JSON)")


if __name__ == "__main__":
  main()
