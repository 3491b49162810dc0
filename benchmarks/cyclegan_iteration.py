"""One CycleGAN training iteration: medda_jax's GAN engine vs a PyTorch peer in the style of
the public reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix: models/networks.py,
models/cycle_gan_model.py, util/image_pool.py).

An iteration (spec cyclegan_uda.md (b), the reference's `optimize_parameters`) on one
unpaired batch (a, b) updates all four networks once:
    fake_b = G_A(a), rec_a = G_B(fake_b), fake_a = G_B(b), rec_b = G_A(fake_a)
    L_G = LS(D_A(fake_b), 1) + LS(D_B(fake_a), 1) + 10 |rec_a - a| + 10 |rec_b - b|
        + 0.5 (10 |G_A(b) - b| + 10 |G_B(a) - a|)           -> one Adam step of G_A and G_B
    L_D = 1/2 [LS(D_A(b), 1) + LS(D_A(pool_B(fake_b)), 0)]
        + 1/2 [LS(D_B(a), 1) + LS(D_B(pool_A(fake_a)), 0)]  -> one Adam step of D_A and D_B
LS is the LSGAN loss (mean squared error to the label), |.| the mean absolute error, the
pools hold 50 images each, and both Adams run at 2e-4 with betas (0.5, 0.999).

JAX side: `medda_jax.methods.cyclegan_uda.cyclegan_losses` in
`medda_jax.engine.gan.build_gan_chunk(n_critic=1, generator_first=True, inner_loop=...)`,
the state (pools included) donated on accelerators and the batches on the device; executors "jax
<inner_loop>/<iterations_per_call> <dtype>" (bf16: compute dtype, parameters and optimiser
state float32). PyTorch side: the reference's ResnetGenerator (9 blocks at the spec's
shapes) and NLayerDiscriminator with norm='instance' (InstanceNorm2d without affine
parameters or running statistics, so every conv keeps its bias), its CycleGANModel's
iteration (forward, G update with the critics frozen, then D_A and D_B backward through
the ImagePool, one Adam over both G and one over both D) and its ImagePool. Executors:
eager fp32, eager bf16 autocast (+ channels_last on CUDA) and torch.compile of the whole
iteration, else of the parts (networks and optimiser steps), the error kept.

Timing runs with both pools already full (the state of training after its first 50
images), so every pool query draws its coins and swaps on both sides. Before timing, the
JAX initial weights are copied into the torch networks and one iteration on empty pools
(the pools then hand back the fakes themselves: no randomness) is compared: the four
translated images of the forward pass, every loss term, every parameter gradient and the
parameters after both Adam steps. Gradients and updates are held to torch in float64,
next to torch float32's own distance from it.

  python benchmarks/cyclegan_iteration.py                        # GPU (256 px, batch 1 and 8)
  python benchmarks/cyclegan_iteration.py --cpu --cpu-threads 1  # CPU at small shapes
"""

from __future__ import annotations

import copy
import gc
import itertools
import math
import os
import random
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "cyclegan_iteration"
LR, B1, B2 = 2e-4, 0.5, 0.999
LAMBDA_A = LAMBDA_B = 10.0
LAMBDA_IDENTITY = 0.5
CHANNELS = 1  # grey mammograms
TOL_VALUE = 1e-4  # |jax - torch| <= TOL_VALUE * (1 + max |value|)
# Gradients (all tensors of a side together, relative L2) are held to torch in float64:
# JAX's distance may be at most max(TOL_GRAD_ALL, 2 x torch float32's own distance). The
# floor is for the rectifier kinks: a ReLU / LeakyReLU input within float32 rounding of 0
# passes the gradient on one side and blocks it on the other. At the CPU shapes the jitted
# JAX gradients were 7e-4 (generators) from torch float64 where JAX's own op-by-op
# evaluation of the same loss was 2e-6, as torch float32 was; a wrong layout, order or
# stop-gradient moves them by O(1).
TOL_GRAD_ALL = 2e-3
# Adam's first update is -lr g / (|g| + 1e-8), about -lr sign(g): it is compared where the
# float64 gradient is resolved, |g| > UPDATE_RESOLVED x the side's rms gradient (elsewhere
# a kink flip may turn its sign; the biases of convolutions followed by instance norm have
# a zero gradient in exact arithmetic, rounding noise in float32, and fall out here too),
# to |jax - torch float64| <= TOL_UPDATE x lr per element.
UPDATE_RESOLVED = 0.05
TOL_UPDATE = 1e-3
GPU_EXECUTORS = ",".join(f"{loop}/{n}/{dtype}" for dtype in ("fp32", "bf16")
                         for loop in ("scan", "host") for n in (1, 10))
# host/10 unrolls ten iterations of six generator passes (minutes to compile): the CPU
# default keeps the executors that finish within minutes.
CPU_EXECUTORS = "host/1/fp32,host/1/bf16,scan/1/fp32"
GPU_TORCH = "eager_fp32,eager_bf16,eager_bf16_cl,compile_bf16_cl"
CPU_TORCH = "eager_fp32,eager_bf16,compile_fp32"
# On a CPU torch.compile takes about two minutes per batch size (without inductor's on-disk
# cache): it is measured at the first batch size only there, as the scanned executor (6x
# slower than the host one before models/conv.py), so the CPU run stays near five minutes.
CPU_FIRST_BATCH_ONLY = "compile_fp32,scan/1/fp32"
GOAL = ("best JAX executor >= 1.5x faster per iteration than the best PyTorch executor on a "
        "GPU at 256x256x1, ngf 64, 9 residual blocks, ndf 64, 3 critic layers, at batch 1 and "
        "at batch 8 (each)")


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--size", type=int, default=None,
                 help="image side, a multiple of 4 (env BENCH_SIZE; 256 GPU, 64 CPU)")
  p.add_argument("--batches", default=None,
                 help="comma list of batch sizes, each measured (1,8 GPU; 1,4 CPU)")
  p.add_argument("--ngf", type=int, default=None, help="generator width (64 GPU, 16 CPU)")
  p.add_argument("--n-blocks", type=int, default=None, help="residual blocks (9 GPU, 3 CPU)")
  p.add_argument("--ndf", type=int, default=None, help="critic width (64 GPU, 16 CPU)")
  p.add_argument("--n-layers", type=int, default=3, help="critic's stride-2 layers (3)")
  p.add_argument("--pool-size", type=int, default=50, help="images per pool (50)")
  p.add_argument("--executors", default=None,
                 help="JAX executors <scan|host>/<iterations_per_call>/<fp32|bf16>, comma "
                      f"separated (GPU: {GPU_EXECUTORS}; CPU: {CPU_EXECUTORS})")
  p.add_argument("--torch-variants", default=None,
                 help=f"of eager_fp32, eager_bf16, eager_bf16_cl, compile_fp32, "
                      f"compile_bf16_cl (GPU: {GPU_TORCH}; CPU: {CPU_TORCH})")
  p.add_argument("--first-batch-only", default=None,
                 help="executors and torch variants (as named above) measured at the first "
                      f"batch size only (GPU: none; CPU: {CPU_FIRST_BATCH_ONLY})")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed iterations (GPU 5; CPU 1 eager, 3 under torch.compile); a JAX "
                      "executor is compiled ahead of time and gets ceil(warmup / "
                      "iterations_per_call) untimed calls, one on CPU")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed blocks, median kept (5; --quick 3)")
  p.add_argument("--iters", type=int, default=None,
                 help="iterations per timed block (20 GPU, 1 CPU; a block of a 10-iteration "
                      "executor holds ceil(iters / 10) calls)")
  p.add_argument("--budget", type=float, default=None,
                 help="seconds of timed blocks per executor (CPU 15, GPU none): fewer blocks, "
                      "at least one, for an executor whose warm-up shows they would take longer")
  p.add_argument("--check-batch", type=int, default=2,
                 help="batch of the equivalence check (2: per-image norms and pool slots)")
  p.add_argument("--quick", action="store_true", help="fewer timed blocks")
  p.add_argument("--skip-check", action="store_true", help="skip the numeric equivalence check")
  p.add_argument("--check-only", action="store_true", help="the equivalence check, no timing")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


# ------------------------------------------------------------------------------ torch
def torch_networks(args):
  """(ResnetGenerator, NLayerDiscriminator) as the reference's networks.py builds them with
  norm='instance', no dropout, padding_type='reflect'."""
  import functools

  from torch import nn
  norm_layer = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
  use_bias = norm_layer.func == nn.InstanceNorm2d

  class ResnetBlock(nn.Module):
    def __init__(self, dim):
      super().__init__()
      self.conv_block = nn.Sequential(
          nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
          norm_layer(dim), nn.ReLU(True),
          nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
          norm_layer(dim))

    def forward(self, x):
      return x + self.conv_block(x)

  class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_blocks):
      super().__init__()
      model = [nn.ReflectionPad2d(3),
               nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
               norm_layer(ngf), nn.ReLU(True)]
      n_downsampling = 2
      for i in range(n_downsampling):
        mult = 2 ** i
        model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1,
                            bias=use_bias), norm_layer(ngf * mult * 2), nn.ReLU(True)]
      mult = 2 ** n_downsampling
      for _ in range(n_blocks):
        model += [ResnetBlock(ngf * mult)]
      for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2,
                                     padding=1, output_padding=1, bias=use_bias),
                  norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
      model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
                nn.Tanh()]
      self.model = nn.Sequential(*model)

    def forward(self, x):
      return self.model(x)

  class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf, n_layers):
      super().__init__()
      kw, padw = 4, 1
      sequence = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                  nn.LeakyReLU(0.2, True)]
      nf_mult = 1
      for n in range(1, n_layers):
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2,
                               padding=padw, bias=use_bias),
                     norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
      nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
      sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1,
                             padding=padw, bias=use_bias),
                   norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
      sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
      self.model = nn.Sequential(*sequence)

    def forward(self, x):
      return self.model(x)

  return (lambda: ResnetGenerator(CHANNELS, CHANNELS, args.ngf, args.n_blocks),
          lambda: NLayerDiscriminator(CHANNELS, args.ndf, args.n_layers))


class ImagePool:
  """The reference's util/image_pool.py: up to pool_size earlier fakes; once full, each
  image is swapped with a random stored one with probability 0.5."""

  def __init__(self, pool_size):
    self.pool_size = pool_size
    if self.pool_size > 0:
      self.num_imgs = 0
      self.images = []

  def query(self, images):
    import torch
    if self.pool_size == 0:
      return images
    return_images = []
    for image in images:
      image = torch.unsqueeze(image.data, 0)
      if self.num_imgs < self.pool_size:
        self.num_imgs = self.num_imgs + 1
        self.images.append(image)
        return_images.append(image)
      else:
        p = random.uniform(0, 1)
        if p > 0.5:
          random_id = random.randint(0, self.pool_size - 1)
          tmp = self.images[random_id].clone()
          self.images[random_id] = image
          return_images.append(tmp)
        else:
          return_images.append(image)
    return torch.cat(return_images, 0)


class CycleGANModel:
  """The reference's models/cycle_gan_model.py training iteration (isTrain, gan_mode
  'lsgan'). `amp` wraps every forward pass and loss in bf16 autocast (the backward passes
  run outside it); `record`, when given a dict, receives the fakes, loss terms, gradients
  (before each optimiser step) of one iteration for the equivalence check."""

  def __init__(self, nets, args, dev, amp=False, fused=None):
    import torch
    self.netG_A, self.netG_B, self.netD_A, self.netD_B = nets
    self.dev, self.amp = dev, amp
    self.lambda_A, self.lambda_B, self.lambda_idt = LAMBDA_A, LAMBDA_B, LAMBDA_IDENTITY
    self.fake_A_pool = ImagePool(args.pool_size)
    self.fake_B_pool = ImagePool(args.pool_size)
    self.criterionCycle = torch.nn.L1Loss()
    self.criterionIdt = torch.nn.L1Loss()
    self.mse = torch.nn.MSELoss()
    self.real_label = torch.tensor(1.0, device=dev)
    self.fake_label = torch.tensor(0.0, device=dev)
    self.optimizer_G = torch.optim.Adam(
        itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()), lr=LR,
        betas=(B1, B2), fused=fused)
    self.optimizer_D = torch.optim.Adam(
        itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()), lr=LR,
        betas=(B1, B2), fused=fused)
    self.record = None

  def full(self, x):
    """Network outputs into the losses: float32 under autocast, else as they are."""
    return x.float() if self.amp else x

  def criterionGAN(self, prediction, target_is_real):
    """GANLoss('lsgan'): MSE against the label broadcast to the patch map."""
    prediction = self.full(prediction)
    target = self.real_label if target_is_real else self.fake_label
    return self.mse(prediction, target.to(prediction.dtype).expand_as(prediction))

  def autocast(self):
    import torch
    return torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.amp)

  def set_input(self, real_A, real_B):
    self.real_A, self.real_B = real_A, real_B

  def set_requires_grad(self, nets, requires_grad=False):
    for net in nets:
      for param in net.parameters():
        param.requires_grad = requires_grad

  def forward(self):
    with self.autocast():
      self.fake_B = self.netG_A(self.real_A)
      self.rec_A = self.netG_B(self.fake_B)
      self.fake_A = self.netG_B(self.real_B)
      self.rec_B = self.netG_A(self.fake_A)

  def backward_D_basic(self, netD, real, fake):
    with self.autocast():
      loss_D_real = self.criterionGAN(netD(real), True)
      loss_D_fake = self.criterionGAN(netD(fake.detach()), False)
      loss_D = (loss_D_real + loss_D_fake) * 0.5
    loss_D.backward()
    return loss_D

  def backward_D_A(self):
    fake_B = self.fake_B_pool.query(self.fake_B)
    self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B, fake_B)

  def backward_D_B(self):
    fake_A = self.fake_A_pool.query(self.fake_A)
    self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A, fake_A)

  def backward_G(self):
    with self.autocast():
      if self.lambda_idt > 0:
        self.idt_A = self.netG_A(self.real_B)
        self.loss_idt_A = (self.criterionIdt(self.full(self.idt_A), self.real_B)
                           * self.lambda_B * self.lambda_idt)
        self.idt_B = self.netG_B(self.real_A)
        self.loss_idt_B = (self.criterionIdt(self.full(self.idt_B), self.real_A)
                           * self.lambda_A * self.lambda_idt)
      else:
        self.loss_idt_A = self.loss_idt_B = 0
      self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
      self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
      self.loss_cycle_A = self.criterionCycle(self.full(self.rec_A), self.real_A) * self.lambda_A
      self.loss_cycle_B = self.criterionCycle(self.full(self.rec_B), self.real_B) * self.lambda_B
      self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B
                     + self.loss_idt_A + self.loss_idt_B)
    self.loss_G.backward()

  def optimize_parameters(self):
    self.forward()
    self.set_requires_grad([self.netD_A, self.netD_B], False)
    self.optimizer_G.zero_grad()
    self.backward_G()
    if self.record is not None:
      self.record["g_grads"] = [p.grad.detach().clone() for net in (self.netG_A, self.netG_B)
                                for p in net.parameters()]
    self.optimizer_G.step()
    self.set_requires_grad([self.netD_A, self.netD_B], True)
    self.optimizer_D.zero_grad()
    self.backward_D_A()
    self.backward_D_B()
    if self.record is not None:
      self.record["d_grads"] = [p.grad.detach().clone() for net in (self.netD_A, self.netD_B)
                                for p in net.parameters()]
    self.optimizer_D.step()
    return self.loss_G

  def prefill_pools(self, images_A, images_B):
    """Both pools full (training past its first pool_size images)."""
    for pool, images in ((self.fake_A_pool, images_A), (self.fake_B_pool, images_B)):
      pool.images = [img.unsqueeze(0) for img in images]
      pool.num_imgs = len(pool.images)


def torch_model(args, dev, amp=False, channels_last=False, fused=None, seed=0):
  import torch
  torch.manual_seed(seed)
  make_g, make_d = torch_networks(args)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  nets = [make().to(dev).train().to(memory_format=fmt)
          for make in (make_g, make_g, make_d, make_d)]
  return CycleGANModel(nets, args, dev, amp=amp, fused=fused)


# ------------------------------------------------------------------------------ JAX
def jax_side(args, dtype):
  import jax
  import jax.numpy as jnp

  from medda_jax.methods.cyclegan_uda.paper import cyclegan_losses
  from medda_jax.models.cyclegan import NLayerDiscriminator, ResnetGenerator
  gen = ResnetGenerator(channels=CHANNELS, features=args.ngf, n_blocks=args.n_blocks,
                        dtype=dtype)
  critic = NLayerDiscriminator(features=args.ndf, n_layers=args.n_layers, dtype=dtype)
  weights = types.SimpleNamespace(lambda_a=LAMBDA_A, lambda_b=LAMBDA_B,
                                  lambda_identity=LAMBDA_IDENTITY)
  critic_loss, generator_loss = cyclegan_losses(gen, critic, weights)
  x = jnp.zeros((1, args.size, args.size, CHANNELS))
  key = jax.random.PRNGKey(0)
  init = jax.jit(lambda k: (
      {w: gen.init(jax.random.fold_in(k, i), x)["params"] for i, w in enumerate("ab")},
      {w: critic.init(jax.random.fold_in(k, 2 + i), x)["params"] for i, w in enumerate("ab")}))
  generators, critics = init(key)
  return gen, critic, critic_loss, generator_loss, {"g": generators, "d": critics}


def jax_state(args, params, batch, tx, prefill_seed=None):
  """The engine state of a CycleGAN as the experiment builds it; with `prefill_seed` both
  pools start full of random images."""
  import jax
  import jax.numpy as jnp

  from medda_jax.engine import gan
  from medda_jax.methods.cyclegan_uda.paper import initial_critic_state
  shape = (args.size, args.size, CHANNELS)
  critic_state = initial_critic_state(batch, shape, args.pool_size)
  if prefill_seed is not None and args.pool_size:
    a, b = pool_images(args, prefill_seed)
    for key, images in (("pool_a", a), ("pool_b", b)):
      critic_state[key] = critic_state[key].replace(
          images=jnp.asarray(images), count=jnp.asarray(args.pool_size, jnp.int32))
  state = gan.GANState.create(params, {"g": {}, "d": critic_state}, tx, tx,
                              jax.random.PRNGKey(1))
  return jax.device_put(state)


def pool_images(args, seed):
  """Random images in [-1, 1] NHWC for the two pools (A, B) of a pre-filled start."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (args.pool_size, args.size, args.size, CHANNELS)
  return (rng.uniform(-1, 1, shape).astype(np.float32),
          rng.uniform(-1, 1, shape).astype(np.float32))


def generator_paths(n_blocks):
  """Flax module paths of the generator's convolutions, in the torch modules' order."""
  return ([("stem",), ("down_0",), ("down_1",)]
          + [(f"block_{i}", f"conv_{j}") for i in range(n_blocks) for j in range(2)]
          + [("up_0",), ("up_1",), ("head",)])


def critic_paths(n_layers):
  return [(f"conv_{n}",) for n in range(n_layers + 1)] + [("head",)]


def torch_layout(tree, paths):
  """A network's parameters as torch's `net.parameters()` lists them (weight, bias per
  conv). Conv kernels HWIO -> OIHW; the transposed convs' kernel[ky, kx, out, in] ->
  torch's [in, out, ky, kx]: the same axis order (3, 2, 0, 1)."""
  import numpy as np
  out = []
  for path in paths:
    layer = tree
    for k in path:
      layer = layer[k]
    out += [np.asarray(layer["kernel"], np.float64).transpose(3, 2, 0, 1),
            np.asarray(layer["bias"], np.float64)]
  return out


def jax_lists(args, tree):
  """{"g": [G_A then G_B parameters], "d": [D_A then D_B]} in torch's layout and order."""
  g_paths, d_paths = generator_paths(args.n_blocks), critic_paths(args.n_layers)
  return {"g": torch_layout(tree["g"]["a"], g_paths) + torch_layout(tree["g"]["b"], g_paths),
          "d": torch_layout(tree["d"]["a"], d_paths) + torch_layout(tree["d"]["b"], d_paths)}


def nhwc_to_torch(x, dev):
  import numpy as np
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(dev)


# ------------------------------------------------------------------------------ check
def check_equivalence(args, dev):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch

  from medda_jax.engine import gan
  gen, critic, critic_loss, generator_loss, params = jax_side(args, jnp.float32)
  model = torch_model(args, dev)
  nets = {"g": [model.netG_A, model.netG_B], "d": [model.netD_A, model.netD_B]}
  counts = {"generator_jax": common.count_params_jax(params["g"]["a"]),
            "generator_torch": common.count_params_torch(model.netG_A),
            "critic_jax": common.count_params_jax(params["d"]["a"]),
            "critic_torch": common.count_params_torch(model.netD_A)}
  print(f"  parameters per network: {counts}", flush=True)
  if counts["generator_jax"] != counts["generator_torch"] or (
      counts["critic_jax"] != counts["critic_torch"]):
    sys.exit(f"parameter counts differ: {counts}")
  record = {"parameter_counts": counts}
  if args.skip_check:
    return dict(record, numeric="skipped")
  old_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  initial = jax_lists(args, params)
  with torch.no_grad():
    for side in ("g", "d"):
      torch_params = [p for net in nets[side] for p in net.parameters()]
      assert len(torch_params) == len(initial[side])
      for p, value in zip(torch_params, initial[side]):
        assert tuple(p.shape) == value.shape, (p.shape, value.shape)
        p.copy_(torch.from_numpy(value.astype(np.float32)))
  model64 = copy.deepcopy(model)  # same weights, Adam state empty
  for net in (model64.netG_A, model64.netG_B, model64.netD_A, model64.netD_B):
    net.double()
  model64.optimizer_G = torch.optim.Adam(
      itertools.chain(model64.netG_A.parameters(), model64.netG_B.parameters()), lr=LR,
      betas=(B1, B2))
  model64.optimizer_D = torch.optim.Adam(
      itertools.chain(model64.netD_A.parameters(), model64.netD_B.parameters()), lr=LR,
      betas=(B1, B2))

  rng = np.random.default_rng(1)
  shape = (args.check_batch, args.size, args.size, CHANNELS)
  batch = {"a": rng.uniform(-1, 1, shape).astype(np.float32),
           "b": rng.uniform(-1, 1, shape).astype(np.float32)}
  # JAX: the fakes, both losses with their terms and gradients, then one engine iteration.
  translate = jax.jit(lambda p, x: gen.apply({"params": p}, x))
  fakes_j = {"fake_b": translate(params["g"]["a"], batch["a"])}
  fakes_j["rec_a"] = translate(params["g"]["b"], fakes_j["fake_b"])
  fakes_j["fake_a"] = translate(params["g"]["b"], batch["b"])
  fakes_j["rec_b"] = translate(params["g"]["a"], fakes_j["fake_a"])
  tx = optax.adam(LR, b1=B1, b2=B2)
  state = jax_state(args, jax.tree.map(jnp.array, params), args.check_batch, tx)  # donated
  key = jax.random.PRNGKey(7)
  g_value_grad = jax.jit(jax.value_and_grad(
      lambda pg, ms: generator_loss({**params, "g": pg}, ms, batch, key), has_aux=True))
  (g_loss, (handed_on, g_terms)), g_grads = g_value_grad(params["g"], state.model_state)
  d_value_grad = jax.jit(jax.value_and_grad(
      lambda pd, ms: critic_loss({**params, "d": pd}, ms, batch, key), has_aux=True))
  (d_loss, (_, d_terms)), d_grads = d_value_grad(params["d"], handed_on)
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=1,
                              inner_loop="host", generator_first=True)
  engine_batches = {k: v[None, None] for k, v in batch.items()}
  new_state, metrics = chunk(state, engine_batches)
  updated_j = jax_lists(args, jax.device_get(new_state.params))
  engine_terms = jax.device_get(metrics)

  # torch float32 and float64: one reference iteration each on empty pools.
  outcomes = {}
  for label, m, dtype in (("t32", model, torch.float32), ("t64", model64, torch.float64)):
    m.record = {}
    m.set_input(nhwc_to_torch(batch["a"], dev).to(dtype), nhwc_to_torch(batch["b"], dev).to(dtype))
    m.optimize_parameters()
    outcomes[label] = {
        "fakes": {k: getattr(m, name).detach().double().cpu().numpy() for k, name in (
            ("fake_b", "fake_B"), ("rec_a", "rec_A"), ("fake_a", "fake_A"), ("rec_b", "rec_B"))},
        "terms": {k: float(getattr(m, name).detach()) for k, name in (
            ("gan_a", "loss_G_A"), ("gan_b", "loss_G_B"), ("cycle_a", "loss_cycle_A"),
            ("cycle_b", "loss_cycle_B"), ("idt_a", "loss_idt_A"), ("idt_b", "loss_idt_B"),
            ("d_a", "loss_D_A"), ("d_b", "loss_D_B"))},
        "grads": {"g": [g.double().cpu().numpy() for g in m.record["g_grads"]],
                  "d": [g.double().cpu().numpy() for g in m.record["d_grads"]]},
        "params": {side: [p.detach().double().cpu().numpy() for net in (
            (m.netG_A, m.netG_B) if side == "g" else (m.netD_A, m.netD_B))
            for p in net.parameters()] for side in ("g", "d")}}
    m.record = None
  t32, t64 = outcomes["t32"], outcomes["t64"]
  results = {}

  def compare(name, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(a)))
    results[name] = {"max_abs_diff": diff, "ok": diff <= TOL_VALUE * (1 + scale)}
    print(f"    {name:36s} {diff:.2e} {'ok' if results[name]['ok'] else 'MISMATCH'}",
          flush=True)

  def compare_lists(name, jax_list, t32_list, t64_list):
    """JAX's tensors against torch float64's, beside torch float32's own distance."""
    d_jax = d_t32 = norm = 0.0
    for a, b32, ref in zip(jax_list, t32_list, t64_list):
      d_jax += float(np.sum((a - ref) ** 2))
      d_t32 += float(np.sum((b32 - ref) ** 2))
      norm += float(np.sum(ref ** 2))
    jax_rel, t32_rel = (d_jax / norm) ** 0.5, (d_t32 / norm) ** 0.5
    ok = jax_rel <= max(TOL_GRAD_ALL, 2 * t32_rel)
    results[name] = {"jax_vs_torch64_rel_l2": jax_rel, "torch32_vs_torch64_rel_l2": t32_rel,
                     "tensors": len(jax_list), "ok": ok}
    print(f"    {name:36s} JAX {jax_rel:.2e} / torch fp32 {t32_rel:.2e} from torch fp64 "
          f"{'ok' if ok else 'MISMATCH'}", flush=True)

  def compare_updates(name, before, jax_after, t32_after, t64_after, t64_grads):
    """Each side's Adam step, parameters after minus before, against torch float64's where
    its gradient is resolved (see UPDATE_RESOLVED); torch float32's distance beside it, and
    how many elements of all moved differently by more than lr / 10 (kink and noise)."""
    rms = math.sqrt(sum(float(np.sum(g ** 2)) for g in t64_grads)
                    / sum(g.size for g in t64_grads))
    worst = {"jax": 0.0, "torch32": 0.0}
    off = {"jax": 0, "torch32": 0}
    checked = total = 0
    for p0, pj, p32, p64, g in zip(before, jax_after, t32_after, t64_after, t64_grads):
      resolved = np.abs(g) > UPDATE_RESOLVED * rms
      checked, total = checked + int(resolved.sum()), total + g.size
      for who, after in (("jax", pj), ("torch32", p32)):
        err = np.abs((after - p0) - (p64 - p0)) / LR
        if resolved.any():
          worst[who] = max(worst[who], float(err[resolved].max()))
        off[who] += int((err > 0.1).sum())
    ok = worst["jax"] <= TOL_UPDATE
    results[name] = {"jax_max_abs_diff_over_lr": worst["jax"],
                     "torch32_max_abs_diff_over_lr": worst["torch32"],
                     "resolved_elements": checked, "elements": total,
                     "elements_off_by_over_lr_10": off, "ok": ok}
    print(f"    {name:36s} JAX {worst['jax']:.2e} / torch fp32 {worst['torch32']:.2e} x lr "
          f"from torch fp64 on {checked}/{total} ({off['jax']} / {off['torch32']} elements "
          f"off by > lr/10 in all) {'ok' if ok else 'MISMATCH'}", flush=True)

  for k, v in fakes_j.items():
    compare(f"forward {k}", np.asarray(v).transpose(0, 3, 1, 2), t32["fakes"][k])
  for k, v in {**g_terms, **d_terms}.items():
    compare(f"loss term {k}", v, t32["terms"][k])
  compare("generator loss", g_loss, sum(t32["terms"][k] for k in g_terms))
  compare("critic loss", d_loss, t32["terms"]["d_a"] + t32["terms"]["d_b"])
  compare("engine iteration generator loss", engine_terms["g_loss"][0], g_loss)
  compare("engine iteration critic loss", engine_terms["d_loss"][0], d_loss)
  grads_j = jax_lists(args, {"g": g_grads, "d": d_grads})
  compare_lists("gradients G_A, G_B", grads_j["g"], t32["grads"]["g"], t64["grads"]["g"])
  compare_lists("gradients D_A, D_B", grads_j["d"], t32["grads"]["d"], t64["grads"]["d"])
  for side, label in (("g", "Adam update G_A, G_B"), ("d", "Adam update D_A, D_B")):
    compare_updates(label, initial[side], updated_j[side], t32["params"][side],
                    t64["params"][side], t64["grads"][side])
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
  return dict(record, batch=args.check_batch, numeric=results,
              passed=all(r["ok"] for r in results.values()),
              tolerance=f"values {TOL_VALUE} x (1 + max|value|) against torch float32; "
                        f"gradients: relative L2 distance from torch float64 at most "
                        f"max({TOL_GRAD_ALL}, 2 x torch float32's); Adam updates (parameters "
                        f"after minus before): |jax - torch float64| <= {TOL_UPDATE} x lr per "
                        f"element where |grad| > {UPDATE_RESOLVED} x the side's rms gradient; "
                        "float32, TF32 off; one iteration on empty pools")


# ------------------------------------------------------------------------------ timing
def random_batches(args, batch, n, seed=0):
  """{"a", "b"}: [n, 1, batch, H, W, 1] in [-1, 1], the engine's layout."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (n, 1, batch, args.size, args.size, CHANNELS)
  return {"a": rng.uniform(-1, 1, shape).astype(np.float32),
          "b": rng.uniform(-1, 1, shape).astype(np.float32)}


def per_iteration(t, iterations_per_call, batch):
  reps = [s / iterations_per_call for s in t["seconds_per_call_repeats"]]
  med = statistics.median(reps)
  return {"ms_per_iteration": med * 1e3, "iterations_per_s": 1.0 / med,
          "images_per_s": batch / med,
          "ms_per_iteration_min": min(reps) * 1e3, "ms_per_iteration_max": max(reps) * 1e3,
          "ms_per_iteration_repeats": [r * 1e3 for r in reps],
          "warmup_seconds": t["warmup_seconds"], "warmup_calls": t["warmup_calls"],
          "timed_blocks": t["repeats"], "calls_per_block": t["calls_per_block"]}


def _fmt(r):
  if "ms_per_iteration" in r:
    return (f"{r['ms_per_iteration']:9.1f} ms/iteration ({r['ms_per_iteration_min']:.1f}-"
            f"{r['ms_per_iteration_max']:.1f})")
  return r.get("error")


def bench_jax(args, platform, batch, timing, results):
  import jax
  import jax.numpy as jnp
  import optax

  from medda_jax.engine import gan
  dtypes = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
  for loop, spc, short in args.executors:
    if batch != args.batches[0] and f"{loop}/{spc}/{short}" in args.first_batch_only:
      continue
    name = f"jax {loop}/{spc} {short}"
    carry, batches, compiled = [None], None, None
    t0 = time.perf_counter()
    try:
      _, _, critic_loss, generator_loss, params = jax_side(args, dtypes[short])
      tx = optax.adam(LR, b1=B1, b2=B2)
      chunk = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=1,
                                  inner_loop=loop, generator_first=True)
      carry[0] = jax_state(args, params, batch, tx, prefill_seed=2)
      batches = jax.device_put(random_batches(args, batch, spc))
      compiled = chunk.lower(carry[0], batches).compile()
      compile_s = time.perf_counter() - t0

      def run(carry=carry, compiled=compiled, batches=batches):
        carry[0], metrics = compiled(carry[0], batches)  # the state is donated on accelerators
        return metrics

      calls = lambda iterations, spc=spc: max(1, -(-iterations // spc))  # ceil
      t, metrics = common.time_within_budget(
          run, common.jax_block, warmup=calls(timing["warmup"]) if platform == "gpu" else 1,
          repeats=timing["repeats"], iters=calls(timing["iters"]), budget=timing["budget"])
      metrics = jax.device_get(metrics)
      results[name] = {**per_iteration(t, spc, batch), "iterations_per_call": spc,
                       "inner_loop": loop,
                       "compute_dtype": {"fp32": "float32", "bf16": "bfloat16"}[short],
                       "compile_seconds": compile_s,
                       "wall_seconds": time.perf_counter() - t0,
                       "finite": bool(metrics["finite"]),
                       "last_g_loss": float(metrics["g_loss"][-1]),
                       "last_d_loss": float(metrics["d_loss"][-1])}
    except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
      results[name] = {"error": common.error_text(e), "wall_seconds": time.perf_counter() - t0}
    print(f"  {name:44s} {_fmt(results[name])}", flush=True)
    carry = batches = compiled = None
    gc.collect()


def jax_flops_per_iteration(args, batch):
  """FLOPs of one iteration from XLA's cost analysis of the lowered fp32 host/1 chunk."""
  import jax
  import jax.numpy as jnp
  import optax

  from medda_jax.engine import gan
  _, _, critic_loss, generator_loss, params = jax_side(args, jnp.float32)
  tx = optax.adam(LR, b1=B1, b2=B2)
  chunk = gan.build_gan_chunk(critic_loss, generator_loss, tx, tx, n_critic=1,
                              inner_loop="host", generator_first=True)
  state = jax_state(args, params, batch, tx)
  shape = jax.ShapeDtypeStruct((1, 1, batch, args.size, args.size, CHANNELS), jnp.float32)
  return common.lowered_flops(chunk.lower(state, {"a": shape, "b": shape}))


TORCH_VARIANTS = {  # key: (bf16 autocast, torch.compile, channels_last)
    "eager_fp32": (False, False, False), "eager_bf16": (True, False, False),
    "eager_bf16_cl": (True, False, True), "compile_fp32": (False, True, False),
    "compile_bf16_cl": (True, True, True)}


def compile_parts(model):
  """torch.compile of what compiles on its own: the four networks and both optimiser
  steps; the pools, the losses' glue and the backward calls stay eager."""
  import torch
  for name in ("netG_A", "netG_B", "netD_A", "netD_B"):
    setattr(model, name, torch.compile(getattr(model, name)))
  model.optimizer_G.step = torch.compile(model.optimizer_G.step)
  model.optimizer_D.step = torch.compile(model.optimizer_D.step)
  return model.optimize_parameters


def graph_counts(reset=False):
  """Graphs torch.compile made and graph breaks it hit since the last reset."""
  from torch._dynamo.utils import counters
  if reset:
    counters.clear()
  return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
          "graph_breaks": int(sum(counters["graph_break"].values()))}


def bench_torch(args, platform, batch, timing, results, compile_log):
  import torch
  dev = "cuda" if platform == "gpu" else "cpu"
  sync = common.sync_fn(platform)
  raw = random_batches(args, batch, 1)
  pool_a, pool_b = pool_images(args, 2)
  for key in args.torch_variants:
    if batch != args.batches[0] and key in args.first_batch_only:
      continue
    amp, compiled, channels_last = TORCH_VARIANTS[key]
    for how in (("whole", "parts") if compiled else ("eager",)):
      name = f"torch {key}" + (f" ({how})" if compiled else "")
      t0 = time.perf_counter()
      random.seed(0)
      fused = (platform == "gpu" and not compiled) or None
      model = torch_model(args, dev, amp=amp, channels_last=channels_last, fused=fused)
      fmt = torch.channels_last if channels_last else torch.contiguous_format
      to = lambda x: nhwc_to_torch(x, dev).contiguous(memory_format=fmt)
      model.set_input(to(raw["a"][0, 0]), to(raw["b"][0, 0]))
      model.prefill_pools(to(pool_a), to(pool_b))
      if compiled:
        torch._dynamo.reset()
        graph_counts(reset=True)
        fn = (torch.compile(model.optimize_parameters) if how == "whole"
              else compile_parts(model))
      else:
        fn = model.optimize_parameters
      try:
        warmup = timing["warmup"] if platform == "gpu" else (3 if compiled else 1)
        t, loss = common.time_within_budget(fn, lambda _: sync(), warmup=warmup,
                                            repeats=timing["repeats"], iters=timing["iters"],
                                            budget=timing["budget"])
        loss = float(loss.detach())
        results[name] = {**per_iteration(t, 1, batch), "last_g_loss": loss,
                         "finite": math.isfinite(loss), "wall_seconds": time.perf_counter() - t0}
        if compiled:
          results[name]["torch_compile"] = graph_counts()
        if how == "whole":
          compile_log[f"batch {batch} {key}"] = (
              f"whole iteration compiled and ran ({graph_counts()['unique_graphs']} graphs, "
              f"{graph_counts()['graph_breaks']} graph breaks)")
      except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
        results[name] = {"error": common.error_text(e, 600),
                         "wall_seconds": time.perf_counter() - t0}
        if how == "whole":
          compile_log[f"batch {batch} {key}"] = results[name]["error"]
      print(f"  {name:44s} {_fmt(results[name])}", flush=True)
      del model, fn
      gc.collect()
      if platform == "gpu":
        torch.cuda.empty_cache()
      if "ms_per_iteration" in results[name]:
        break


def parse_executors(text):
  out = []
  for item in [t for t in text.split(",") if t]:
    parts = item.split("/")
    if not (len(parts) == 3 and parts[0] in ("scan", "host") and parts[1].isdigit()
            and int(parts[1]) >= 1 and parts[2] in ("fp32", "bf16")):
      sys.exit(f"--executors: {item!r} is not <scan|host>/<iterations_per_call>/<fp32|bf16>")
    out.append((parts[0], int(parts[1]), parts[2]))
  return out


def main():
  args = parse_args()
  platform, device = common.start(args)
  gpu = platform == "gpu"
  args.size = args.size or common.env_int("BENCH_SIZE", 256 if gpu else 64)
  if args.size % 4:
    sys.exit(f"--size {args.size}: must be a multiple of 4")
  args.batches = [int(b) for b in (args.batches or ("1,8" if gpu else "1,4")).split(",")]
  args.ngf = args.ngf or (64 if gpu else 16)
  args.ndf = args.ndf or (64 if gpu else 16)
  args.n_blocks = args.n_blocks if args.n_blocks is not None else (9 if gpu else 3)
  args.executors = parse_executors(args.executors or (GPU_EXECUTORS if gpu else CPU_EXECUTORS))
  args.torch_variants = [v for v in (args.torch_variants or (
      GPU_TORCH if gpu else CPU_TORCH)).split(",") if v]
  for key in args.torch_variants:
    if key not in TORCH_VARIANTS:
      sys.exit(f"--torch-variants: unknown variant {key!r}; choose from {list(TORCH_VARIANTS)}")
  if args.first_batch_only is None:
    args.first_batch_only = "" if gpu else CPU_FIRST_BATCH_ONLY
  args.first_batch_only = [v for v in args.first_batch_only.split(",") if v]
  timing = {"warmup": 5 if gpu else 1, "repeats": 3 if args.quick else 5,
            "iters": 20 if gpu else 1, "budget": None if gpu else 15.0}
  for k in timing:
    if getattr(args, k) is not None:
      timing[k] = getattr(args, k)
  if gpu:
    import torch
    torch.backends.cudnn.benchmark = True
  shapes = {"image": [args.size, args.size, CHANNELS], "batches": args.batches, "ngf": args.ngf,
            "n_blocks": args.n_blocks, "ndf": args.ndf, "n_layers": args.n_layers,
            "pool_size": args.pool_size, "lambda_a": LAMBDA_A, "lambda_b": LAMBDA_B,
            "lambda_identity": LAMBDA_IDENTITY,
            "optimizer": f"Adam(lr={LR}, betas=({B1}, {B2})), one over both G, one over both D"}
  print(f"{BENCHMARK} on {device['name']}: {shapes}, timing {timing}", flush=True)
  dev = "cuda" if gpu else "cpu"
  print("[equivalence check]", flush=True)
  check = check_equivalence(args, dev)
  if check.get("passed") is False:
    print("  WARNING: the equivalence check failed; timings are still taken and written.",
          flush=True)
  if args.check_only:
    sys.exit(0 if check.get("passed", True) else 1)
  spec_shapes = (args.size == 256 and args.ngf == 64 and args.n_blocks == 9 and args.ndf == 64
                 and args.n_layers == 3 and args.pool_size == 50)
  results, ratio, compile_log, flops = {}, {}, {}, {}
  notes = [
      ("ms per iteration = median over the timed blocks (each ends with block_until_ready / "
       "torch.cuda.synchronize) of block time / iterations in the block; min and max give "
       "the spread. Warm-up calls (torch.compile's compilation included) are not timed; JAX "
       "executors are compiled ahead of time (compile_seconds) before their warm-up. With a "
       "time budget (CPU) an executor whose warm-up call is slow gets fewer timed blocks "
       "(timed_blocks)."),
      ("Timing starts with both 50-image pools full on both sides (random images), so every "
       "query draws a coin per image and may swap, as in training after its first 50 "
       "images; the equivalence check runs one iteration on empty pools instead."),
      ("torch follows the reference's optimize_parameters: requires_grad of both critics "
       "switched off for the generator update, ImagePool as a Python list with "
       "random.uniform / random.randint per image; the bf16 variants wrap every forward "
       "pass and loss in autocast (losses in float32), backward outside it."),
      ("FLOPs per iteration from XLA's cost analysis of the lowered fp32 host/1 chunk, used "
       "for every executor of that batch size."),
  ]
  path = args.out or common.result_path(BENCHMARK, platform, device)

  def save(final):
    common.write_json(
        path, benchmark=BENCHMARK, platform=platform, device=device, shapes=shapes,
        results=results, ratio=ratio, notes=notes + ([] if final else [
            "PARTIAL: written after each batch size; the run did not finish."]),
        timing=timing, complete=final,
        executors={"jax": [f"{l}/{n}/{d}" for l, n, d in args.executors],
                   "torch": args.torch_variants,
                   "first_batch_only": args.first_batch_only},
        equivalence_check=check, torch_compile=compile_log,
        flops_per_iteration_xla=flops)

  for batch in args.batches:
    print(f"[batch {batch}]", flush=True)
    res = results[f"batch_{batch}"] = {}
    bench_torch(args, platform, batch, timing, res, compile_log)
    bench_jax(args, platform, batch, timing, res)
    try:
      flops[f"batch_{batch}"] = jax_flops_per_iteration(args, batch)
    except Exception as e:  # noqa: BLE001 (FLOPs are informative only)
      flops[f"batch_{batch}"] = common.error_text(e, 200)
    f = flops[f"batch_{batch}"]
    peak = device.get("peak_bf16_dense_flops")
    for r in res.values():
      if "ms_per_iteration" in r and isinstance(f, float):
        r["tflops_per_s"] = f / (r["ms_per_iteration"] / 1e3) / 1e12
        r["mfu_vs_bf16_dense_peak"] = (f / (r["ms_per_iteration"] / 1e3) / peak) if peak else None
    jname, jbest = common.best_variant(res, "jax", "ms_per_iteration", min)
    tname, tbest = common.best_variant(res, "torch", "ms_per_iteration", min)
    ref = res.get("torch eager_fp32", {}).get("ms_per_iteration")
    ratio[f"batch_{batch}"] = {
        "jax_best": jname, "torch_best": tname,
        "speedup_jax_best_over_torch_best": (tbest / jbest) if jbest and tbest else None,
        "speedup_jax_best_over_torch_eager_fp32": (ref / jbest) if jbest and ref else None,
        "ms_per_iteration": {k: v["ms_per_iteration"] for k, v in res.items()
                             if "ms_per_iteration" in v}}
    print(f"  batch {batch}: best JAX {jname} over best torch {tname}: "
          f"{ratio[f'batch_{batch}']['speedup_jax_best_over_torch_best']}", flush=True)
    save(final=False)
  ratio["goal"] = GOAL
  ratio["goal_applies"] = gpu and spec_shapes and {1, 8} <= set(args.batches)
  ratio["goal_met"] = (all((ratio.get(f"batch_{b}", {}).get("speedup_jax_best_over_torch_best")
                            or 0) >= 1.5 for b in (1, 8))
                       if ratio["goal_applies"] else None)
  if gpu:
    notes.append("torch eager variants use Adam(fused=True) and cudnn.benchmark=True; fp32 "
                 "convolutions use TF32 on both sides (the defaults of torch and XLA; the "
                 "equivalence check turned TF32 off).")
  else:
    notes.append(f"CPU shapes scaled down from the GPU setting (256x256, ngf 64, 9 blocks, "
                 f"ndf 64, batch 1 and 8) so the whole run takes minutes on "
                 f"{device['cpu_cores']} cores. The CPU executors are "
                 f"{CPU_EXECUTORS} by default; {', '.join(args.first_batch_only) or 'none'} "
                 "measured at the first batch size only (torch.compile takes about two "
                 "minutes per batch size on this CPU without inductor's on-disk cache).")
  if args.cpu_threads:
    notes.append(f"Both frameworks limited to {args.cpu_threads} intra-op CPU thread(s) "
                 f"(--cpu-threads); load average at start {device['load_average_at_start']}.")
  save(final=True)
  print(f"wrote {path}")
  if check.get("passed") is False:
    sys.exit("the equivalence check failed (see equivalence_check in the JSON)")


if __name__ == "__main__":
  main()
