"""One SIFA + SynthMix training iteration: medda_jax's GAN engine vs a PyTorch port of the
same networks and sub-steps (SIFA: Chen et al., TMI 2020, reference code cchen-cc/SIFA in
TensorFlow; SynthMix's Mixup Inspector).

An iteration (spec synthmix_sifa.md, `medda_jax.methods.sifa.paper`) on one unpaired batch
(x_s with labels y_s, x_t) runs eight sub-steps in the reference's order, each its own
forward pass, gradient and Adam step of its own networks on the weights the earlier
sub-steps left:
    fake_t = G(x_s), fake_s = U(E(x_t)), cyc_s = U(E(fake_t)), cyc_t = G(fake_s)
    cycle = 10 |cyc_s - x_s| + 10 |cyc_t - x_t|
    1. G:          cycle + LS(D_T(fake_t), 1) + 0.1 BCE(I(M fake_t + (1 - M) x_s), m)
    2. D_T:        1/2 [LS(D_T(x_t), 1) + LS(D_T(pool_T(fake_t)), 0)]
    3. E, C, C_ll: CE + Dice of C(E(fake_t)) + 0.1 (CE + Dice) of C_ll + 1e-4 L2 + 0.1 L_U
                   + 0.1 LS(D_P(C(E(x_t))), 1) + 0.01 LS(D_P_ll(C_ll(E(x_t))), 1)
                   + 0.1 LS(D_S_aux(fake_s), 1)
    4. U:          L_U = cycle + LS(D_S_main(fake_s), 1) + 0.1 BCE(I(M x_t + (1 - M) fake_s), m)
    5. D_S:        main head: x_s vs pool_S(fake_s); auxiliary head: cyc_s vs pool_S(fake_s)
    6. D_P, 7. D_P_ll: C(E(fake_t)) "real" vs C(E(x_t)) "fake" (and the low-level pair)
    8. I:          0.1 [BCE(I(x_s), 0) + BCE(I(x_t), 1) + BCE(I(M x_t + (1 - M) x_s), m)]
LS is the LSGAN loss, m a k x k Bernoulli(0.5) mask per image drawn once per iteration and
M its nearest upsampling; the pools are SIFA's batch-level pools (50 whole batches, once
full a coin per batch swaps it with a stored one). G, D_T, U, D_S, D_P, D_P_ll and I use
Adam(2e-4, betas (0.5, 0.999)); E, C and C_ll Adam(2e-4) with the default betas. E's
batch norm runs in training mode in every pass (its running statistics move), U's
residual blocks drop 25 % of their activations (both at the reference's settings).

JAX side: `medda_jax.methods.sifa.experiment.Sifa(config, "synthmix", mesh, inner_loop,
dtype)`: `sifa_losses` in `engine.gan.build_gan_chunk(generator_first=True,
side_updates=...)`, the state (both pools included) donated on accelerators and the
batches on the device; executors "jax <inner_loop>/<iterations_per_call> <dtype>" (bf16:
compute dtype, parameters and optimiser state float32). PyTorch side: the networks of
`medda_jax.models.sifa` written as nn.Modules layer by layer (TF "SAME" paddings as
explicit pads: (0, 1) for the 3x3/2 convolutions and (1, 2) for the Inspector's 4x4 global
head; TF's 3x3/2 "SAME" transposed convolution as ConvTranspose2d(3, 2, padding=0) with
its last row and column cropped; TF instance norm with eps 1e-6 and affine parameters, the
Inspector's affine-free with eps 1e-5; BatchNorm2d(eps 1e-3, momentum 0.1), whose running
variance averages the unbiased batch variance where flax's averages the biased one: the
losses never read it, every pass of E normalising with its batch statistics), SIFA's batch
pool as a Python list with random.random / random.randint, and the iteration as eight
sub-steps each with its own backward (`backward(inputs=...)`: only the updated side's
weight gradients) and its own Adam; the sub-steps whose loss updates a critic (5-7) make
their translations under no_grad. Executors: eager fp32, eager bf16 autocast (+
channels_last on CUDA) and torch.compile of the whole iteration, else of the parts
(networks and optimiser steps), the error kept.

Timing runs with both pools already full (random batches), so every query draws its
coin and may swap on both sides, and with the dropout on. Before timing, the equivalence
check sets U's dropout to 0 on both sides (the only randomness left is the mask m, drawn
by the JAX generator loss and fed to torch), copies the JAX initial weights into the torch
networks (conv kernels HWIO -> OIHW; the transposed kernels, [kh, kw, out, in] in both
flax layers, -> ConvTranspose2d's [in, out, kh, kw], unflipped) and runs one iteration on
empty pools (the pools then hand back the fakes themselves):
  * JAX: the loss functions of `sifa_losses` called directly one sub-step after the other
    (jitted value_and_grad of each, then the side's Adam update);
  * torch float32 and torch float64: the same iteration, each sub-step's own Adam step
    kept for comparison and then replaced by JAX's updated weights, so that every
    sub-step starts from the same weights on all three sides.
Compared: the translations, features and reconstructions of the first forward pass
(|jax - torch float32| <= 1e-4 (1 + max |value|)); every loss term and total of all
eight sub-steps (the same tolerance); every sub-step's gradients against torch float64,
beside torch float32's distance from it (relative L2 over the side's tensors <= 3e-2 or
2x torch float32's); every sub-step's Adam update against torch float64's (<= 1e-3 lr
per element where the gradient is resolved); and the engine chunk's iteration (the
timed code, chaining its own updates) against the direct calls: the same mask, and each
sub-step's loss within the value tolerance or twice the distance between torch float32
and float64 each chaining its own updates, whichever is larger. The TOL_* constants say
why the gradient and chain tolerances are that wide: SIFA's float32 gradients are noisy.

  python benchmarks/sifa_iteration.py                        # GPU (256 px, batch 8)
  python benchmarks/sifa_iteration.py --cpu --cpu-threads 1  # CPU at small shapes
"""

from __future__ import annotations

import copy
import gc
import math
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARK = "sifa_iteration"
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "synthmix.py")
LR, B1, B2 = 2e-4, 0.5, 0.999
SEG_BETAS = (0.9, 0.999)
NUM_CLASSES = 5
CHANNELS = 1
SUBSTEPS = ("g", "d", "seg", "u", "d_s", "d_p", "d_p_ll", "inspector")
SUBSTEP_NAMES = {"g": "1 G", "d": "2 D_T", "seg": "3 E+C+C_ll", "u": "4 U", "d_s": "5 D_S",
                 "d_p": "6 D_P", "d_p_ll": "7 D_P_ll", "inspector": "8 Inspector"}
TOL_VALUE = 1e-4  # |jax - torch float32| <= TOL_VALUE * (1 + max |value|)
# Gradients (all tensors of a sub-step's side together, relative L2) are held to torch in
# float64: JAX's distance may be at most max(TOL_GRAD_ALL, 2 x torch float32's own distance).
# SIFA's float32 gradients are noisy: through the stacked normalisations (instance norm in
# G, U and the critics, batch norm in E) a gradient is the small remainder of large
# cancelling terms, and the rectifier kinks near 0 flip with the rounding. At the CPU
# shapes, on identical weights, torch float32 was up to 1.5e-2 (E+C+C_ll), 4.3e-3 (G) and
# 2.4e-3 (U) from torch float64 and JAX up to 1.2e-2, either side the larger one from
# sub-step to sub-step (U: JAX jitted 7.6e-4, JAX op by op 1.3e-3, torch float32 2.4e-3 on
# one set of weights), while the critics' and the Inspector's gradients agree to 1e-6. A
# wrong layout, order or stop-gradient moves a gradient by O(1).
TOL_GRAD_ALL = 3e-2
# Adam's first update is -lr g / (|g| + 1e-8), about -lr sign(g): it is compared where the
# gradient is resolved, |g| > UPDATE_RESOLVED x the side's rms gradient with the JAX and
# torch float32 gradients within UPDATE_AGREE x |g| of torch float64's (elsewhere the
# float32 noise above may turn its sign), to |jax - torch float64| <= TOL_UPDATE x lr.
UPDATE_RESOLVED = 0.05
UPDATE_AGREE = 0.1
TOL_UPDATE = 1e-3
# The same noise makes a chained iteration (each run applying its own updates) drift:
# Adam moves every weight by about lr, whatever the gradient's size, so the elements whose
# sign is noise move differently and the later sub-steps' losses part. At the CPU shapes
# torch float32 and float64, each chaining its own updates, parted by up to 1.0e-2 (D_P_ll)
# and 7.7e-3 (D_S), and the engine chunk and the direct calls (two compilations of the same
# JAX losses) by up to 3e-4; the engine's losses are held to twice torch's float32 / float64
# distance.
GPU_EXECUTORS = ",".join(f"{loop}/{n}/{dtype}" for dtype in ("fp32", "bf16")
                         for loop in ("scan", "host") for n in (1, 10))
# XLA:CPU takes one to one and a half minutes to compile one SIFA iteration on a shared
# 2-core machine (68 s fp32, 91 s bf16 at the CPU shapes) and runs convolutions inside a
# lax.scan far slower than in straight-line code before models/conv.py: the CPU default
# keeps the unrolled single-iteration executors (run_all.sh --cpu adds scan/2).
CPU_EXECUTORS = "host/1/fp32,host/1/bf16"
GPU_TORCH = "eager_fp32,eager_bf16,eager_bf16_cl,compile_bf16_cl"
CPU_TORCH = "eager_fp32,eager_bf16"
GOAL = ("best JAX executor >= 1.5x faster per iteration than the best PyTorch executor on a "
        "GPU at 256x256x1, batch 8, SIFA's reference widths (ngf 32, 9 generator blocks, "
        "encoder 16, 4 decoder blocks, ndf 64) with SynthMix (k 8, Inspector width 64)")


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--size", type=int, default=None,
                 help="image side, a power of 2 >= 16 (env BENCH_SIZE; 256 GPU, 64 CPU)")
  p.add_argument("--batches", default=None,
                 help="comma list of batch sizes, each measured (8 GPU; 4 CPU)")
  p.add_argument("--method", choices=("synthmix", "sifa"), default="synthmix",
                 help="synthmix: the eight sub-steps; sifa: baseline SIFA (no L_mix, no "
                      "Inspector: seven sub-steps)")
  p.add_argument("--ngf", type=int, default=None, help="G and U width (32 GPU, 8 CPU)")
  p.add_argument("--n-blocks", type=int, default=None, help="G's residual blocks (9)")
  p.add_argument("--encoder-features", type=int, default=None,
                 help="E's first width (16 GPU, 4 CPU)")
  p.add_argument("--decoder-blocks", type=int, default=None, help="U's residual blocks (4)")
  p.add_argument("--ndf", type=int, default=None, help="PatchGAN width (64 GPU, 16 CPU)")
  p.add_argument("--inspector-features", type=int, default=None,
                 help="Mixup Inspector width (64 GPU, 16 CPU)")
  p.add_argument("--mask-k", type=int, default=8, help="SynthMix mask cells per side (8)")
  p.add_argument("--pool-size", type=int, default=50, help="batches per pool (50)")
  p.add_argument("--executors", default=None,
                 help="JAX executors <scan|host>/<iterations_per_call>/<fp32|bf16>, comma "
                      f"separated (GPU: {GPU_EXECUTORS}; CPU: {CPU_EXECUTORS})")
  p.add_argument("--torch-variants", default=None,
                 help=f"of eager_fp32, eager_bf16, eager_bf16_cl, compile_fp32, "
                      f"compile_bf16_cl (GPU: {GPU_TORCH}; CPU: {CPU_TORCH})")
  p.add_argument("--first-batch-only", default="",
                 help="executors and torch variants (as named above) measured at the first "
                      "batch size only (default: none)")
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
                 help="seconds of timed blocks per executor (CPU 20, GPU none): fewer blocks, "
                      "at least one, for an executor whose warm-up shows they would take longer")
  p.add_argument("--check-batch", type=int, default=2,
                 help="batch of the equivalence check (2: per-image norms, batch statistics)")
  p.add_argument("--quick", action="store_true", help="fewer timed blocks")
  p.add_argument("--skip-check", action="store_true", help="skip the numeric equivalence check")
  p.add_argument("--check-only", action="store_true", help="the equivalence check, no timing")
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
  return p.parse_args()


# ------------------------------------------------------------------------------ torch
def full(x):
  """A network output into the losses: float32 when autocast made it bf16 / fp16, else as
  it is (float32, or float64 in the check's reference run)."""
  import torch
  return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def torch_classes():
  """The networks of medda_jax.models.sifa as torch modules. Submodules carry the flax
  modules' names (c1, c1_norm, r1, ...), so `torch_paths` maps every torch parameter to
  its flax path."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  def tf_instance_norm(c):
    """TF contrib instance_norm: eps 1e-6, scale and offset per channel."""
    return nn.InstanceNorm2d(c, eps=1e-6, affine=True)

  def batch_norm(c):
    """TF contrib batch_norm(decay=0.9), eps 1e-3 (torch's momentum is 1 - decay)."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)

  class PadConv(nn.Conv2d):
    """Conv2d after an explicit zero pad (left, right, top, bottom): TF "SAME" where its
    pad is asymmetric (the extra pixel at the bottom / right)."""

    def __init__(self, *args, pad, **kwargs):
      super().__init__(*args, **kwargs)
      self.pad = pad

    def forward(self, x):
      return super().forward(F.pad(x, self.pad))

  class ConvTransposeSame(nn.ConvTranspose2d):
    """TF conv2d_transpose(3x3, stride 2, "SAME") with bias: out[2i + k] += x[i] W[k],
    the row and column 2H dropped: torch's padding 0 (2H + 1 outputs) cropped to 2H."""

    def __init__(self, cin, cout):
      super().__init__(cin, cout, 3, stride=2, padding=0, bias=True)

    def forward(self, x):
      h, w = x.shape[-2:]
      return super().forward(x)[..., :2 * h, :2 * w]

  class GeneratorResBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.c1, self.c1_norm = nn.Conv2d(c, c, 3, padding=1), tf_instance_norm(c)
      self.c2, self.c2_norm = nn.Conv2d(c, c, 3, padding=1), tf_instance_norm(c)

    def forward(self, x):
      h = F.relu(self.c1_norm(self.c1(x)))
      return F.relu(x + self.c2_norm(self.c2(h)))

  class Generator(nn.Module):
    """G_{S->T}: 7x7 conv, two 3x3/2 convs, n residual blocks at 4F, two transposed
    convs, 7x7 conv, tanh(x + out); instance norm + ReLU after every conv but the last."""

    def __init__(self, f, n_blocks):
      super().__init__()
      self.c1, self.c1_norm = nn.Conv2d(CHANNELS, f, 7, padding=3), tf_instance_norm(f)
      self.c2 = PadConv(f, 2 * f, 3, stride=2, pad=(0, 1, 0, 1))
      self.c2_norm = tf_instance_norm(2 * f)
      self.c3 = PadConv(2 * f, 4 * f, 3, stride=2, pad=(0, 1, 0, 1))
      self.c3_norm = tf_instance_norm(4 * f)
      self.blocks = [f"r{i + 1}" for i in range(n_blocks)]
      for name in self.blocks:
        setattr(self, name, GeneratorResBlock(4 * f))
      self.c4, self.c4_norm = ConvTransposeSame(4 * f, 2 * f), tf_instance_norm(2 * f)
      self.c5, self.c5_norm = ConvTransposeSame(2 * f, f), tf_instance_norm(f)
      self.c6 = nn.Conv2d(f, 1, 7, padding=3)

    def forward(self, x):
      h = F.relu(self.c1_norm(self.c1(x)))
      h = F.relu(self.c2_norm(self.c2(h)))
      h = F.relu(self.c3_norm(self.c3(h)))
      for name in self.blocks:
        h = getattr(self, name)(h)
      h = F.relu(self.c4_norm(self.c4(h)))
      h = F.relu(self.c5_norm(self.c5(h)))
      return torch.tanh(x + full(self.c6(h)))

  class ResBlock(nn.Module):
    """ReLU(pad_channels(x) + [conv -> (dropout) -> norm -> ReLU -> conv -> (dropout) ->
    norm]), 3x3 convs without bias, the shortcut zero-padded on both sides of the
    channels."""

    def __init__(self, cin, c, norm="batch", dropout=0.0):
      super().__init__()
      make = batch_norm if norm == "batch" else tf_instance_norm
      self.c1, self.c1_norm = nn.Conv2d(cin, c, 3, padding=1, bias=False), make(c)
      self.c2, self.c2_norm = nn.Conv2d(c, c, 3, padding=1, bias=False), make(c)
      self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
      self.extra = (c - cin) // 2

    def forward(self, x):
      h = F.relu(self.c1_norm(self.drop(self.c1(x))))
      h = self.c2_norm(self.drop(self.c2(h)))
      if self.extra:
        x = F.pad(x, (0, 0, 0, 0, self.extra, self.extra))
      return F.relu(x + h)

  class DrnBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.c1 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
      self.c1_norm = batch_norm(c)
      self.c2 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
      self.c2_norm = batch_norm(c)

    def forward(self, x):
      h = F.relu(self.c1_norm(self.c1(x)))
      return F.relu(x + self.c2_norm(self.c2(h)))

  class Encoder(nn.Module):
    """E: returns (f, f_ll), both [B, 32 fb, H/8, W/8]."""

    def __init__(self, fb):
      super().__init__()
      self.c1 = nn.Conv2d(CHANNELS, fb, 7, padding=3, bias=False)
      self.c1_norm = batch_norm(fb)
      widths = [(fb, fb), (fb, 2 * fb), (2 * fb, 4 * fb), (4 * fb, 4 * fb), (4 * fb, 8 * fb),
                (8 * fb, 8 * fb), (8 * fb, 16 * fb), (16 * fb, 16 * fb), (16 * fb, 16 * fb),
                (16 * fb, 16 * fb), (16 * fb, 32 * fb), (32 * fb, 32 * fb)]
      for i, (cin, c) in enumerate(widths):
        setattr(self, f"r{i + 1}", ResBlock(cin, c))
      self.d1, self.d2 = DrnBlock(32 * fb), DrnBlock(32 * fb)
      self.c2 = nn.Conv2d(32 * fb, 32 * fb, 3, padding=1, bias=False)
      self.c2_norm = batch_norm(32 * fb)
      self.c3 = nn.Conv2d(32 * fb, 32 * fb, 3, padding=1, bias=False)
      self.c3_norm = batch_norm(32 * fb)

    def forward(self, x):
      h = F.relu(self.c1_norm(self.c1(x)))
      h = F.max_pool2d(self.r1(h), 2)
      h = F.max_pool2d(self.r2(h), 2)
      h = F.max_pool2d(self.r4(self.r3(h)), 2)
      for name in ("r5", "r6", "r7", "r8", "r9", "r10", "r11"):
        h = getattr(self, name)(h)
      f_ll = self.r12(h)
      h = self.d2(self.d1(f_ll))
      h = F.relu(self.c2_norm(self.c2(h)))
      f = F.relu(self.c3_norm(self.c3(h)))
      return full(f), full(f_ll)

  class Decoder(nn.Module):
    """U: 3x3 conv, residual blocks with instance norm and dropout, one transposed conv
    per factor 2 up to the input's size, 7x7 conv, tanh(x_in + out)."""

    def __init__(self, cin, ngf, n_blocks, stages, dropout):
      super().__init__()
      self.c1 = nn.Conv2d(cin, 4 * ngf, 3, padding=1, bias=False)
      self.c1_norm = tf_instance_norm(4 * ngf)
      self.blocks = [f"r{i + 1}" for i in range(n_blocks)]
      for name in self.blocks:
        setattr(self, name, ResBlock(4 * ngf, 4 * ngf, "instance", dropout))
      self.ups, c = [], 4 * ngf
      for i in range(stages):
        width = ngf if i == stages - 1 else 2 * ngf
        setattr(self, f"up{i + 1}", ConvTransposeSame(c, width))
        setattr(self, f"up{i + 1}_norm", tf_instance_norm(width))
        self.ups.append(f"up{i + 1}")
        c = width
      self.c6 = nn.Conv2d(ngf, 1, 7, padding=3, bias=False)

    def forward(self, f, x_in):
      h = F.relu(self.c1_norm(self.c1(f)))
      for name in self.blocks:
        h = getattr(self, name)(h)
      for name in self.ups:
        h = F.relu(getattr(self, f"{name}_norm")(getattr(self, name)(h)))
      return torch.tanh(x_in + full(self.c6(h)))

  class Segmenter(nn.Module):
    """C / C_ll: 1x1 conv, then bilinear resizing with half-pixel centres."""

    def __init__(self, cin):
      super().__init__()
      self.c8 = nn.Conv2d(cin, NUM_CLASSES, 1, bias=False)

    def forward(self, f, size):
      return F.interpolate(full(self.c8(f)), size=size, mode="bilinear", align_corners=False)

  class PatchDiscriminator(nn.Module):
    def __init__(self, cin, ndf, out_channels):
      super().__init__()
      self.c1 = nn.Conv2d(cin, ndf, 4, stride=2, padding=2, bias=False)
      self.c2 = nn.Conv2d(ndf, 2 * ndf, 4, stride=2, padding=2, bias=False)
      self.c2_norm = tf_instance_norm(2 * ndf)
      self.c3 = nn.Conv2d(2 * ndf, 4 * ndf, 4, stride=2, padding=2, bias=False)
      self.c3_norm = tf_instance_norm(4 * ndf)
      self.c4 = nn.Conv2d(4 * ndf, 8 * ndf, 4, stride=1, padding=2, bias=False)
      self.c4_norm = tf_instance_norm(8 * ndf)
      self.c5 = nn.Conv2d(8 * ndf, out_channels, 4, stride=1, padding=2, bias=False)

    def forward(self, x):
      h = F.leaky_relu(self.c1(x), 0.2)
      for name in ("c2", "c3", "c4"):
        h = F.leaky_relu(getattr(self, f"{name}_norm")(getattr(self, name)(h)), 0.2)
      return full(self.c5(h))

  class MixupInspector(nn.Module):
    """4x4/2 convs (pad 1) down to 4 x 4, 4x4/2 transposed convs (pad 1) up to k x k, a 3x3
    map head; a 4x4 "SAME" global head on the bottleneck, averaged. Returns ([B, k, k],
    [B]) logits."""

    def __init__(self, size, k, f, max_features=512):
      super().__init__()
      n_down, n_up = int(math.log2(size)) - 2, int(math.log2(k)) - 2
      c, self.downs, self.up_names = CHANNELS, [], []
      for i in range(n_down):
        width = min(f * 2 ** i, max_features)
        setattr(self, f"down{i}", nn.Conv2d(c, width, 4, stride=2, padding=1))
        self.downs.append(f"down{i}")
        c = width
      bottleneck = c
      for i in range(n_up):
        width = max(4 * f // 2 ** i, f // 2, 1)
        setattr(self, f"up{i}", nn.ConvTranspose2d(c, width, 4, stride=2, padding=1))
        self.up_names.append(f"up{i}")
        c = width
      self.map_head = nn.Conv2d(c, 1, 3, padding=1)
      self.global_head = PadConv(bottleneck, 1, 4, pad=(1, 2, 1, 2))

    def forward(self, x):
      h = x
      for i, name in enumerate(self.downs):
        h = getattr(self, name)(h)
        h = F.leaky_relu(h if i == 0 else F.instance_norm(h, eps=1e-5), 0.2)
      bottleneck = h
      for name in self.up_names:
        h = F.relu(F.instance_norm(getattr(self, name)(h), eps=1e-5))
      cells = full(self.map_head(h))[:, 0]
      return cells, full(self.global_head(bottleneck)).mean(dim=(1, 2, 3))

  return {"Generator": Generator, "Encoder": Encoder, "Decoder": Decoder,
          "Segmenter": Segmenter, "PatchDiscriminator": PatchDiscriminator,
          "MixupInspector": MixupInspector}


def torch_networks(args, dropout):
  """{name: network}: g (G), e, c, c_ll, u, d (D_T), d_s, d_p, d_p_ll and (SynthMix)
  inspector, at the benchmark's widths."""
  k = torch_classes()
  fb = args.encoder_features
  nets = {"g": k["Generator"](args.ngf, args.n_blocks), "e": k["Encoder"](fb),
          "c": k["Segmenter"](32 * fb), "c_ll": k["Segmenter"](32 * fb),
          "u": k["Decoder"](32 * fb, args.ngf, args.decoder_blocks, 3, dropout),
          "d": k["PatchDiscriminator"](CHANNELS, args.ndf, 1),
          "d_s": k["PatchDiscriminator"](CHANNELS, args.ndf, 2),
          "d_p": k["PatchDiscriminator"](NUM_CLASSES, args.ndf, 1),
          "d_p_ll": k["PatchDiscriminator"](NUM_CLASSES, args.ndf, 1)}
  if args.method == "synthmix":
    nets["inspector"] = k["MixupInspector"](args.size, args.mask_k, args.inspector_features)
  return nets


# Each sub-step's side: the networks it updates, as (torch network, flax sub-tree prefix).
SIDE_NETS = {"g": (("g", ()),), "d": (("d", ()),),
             "seg": (("e", ("e",)), ("c", ("c",)), ("c_ll", ("c_ll",))),
             "u": (("u", ()),), "d_s": (("d_s", ()),), "d_p": (("d_p", ()),),
             "d_p_ll": (("d_p_ll", ()),), "inspector": (("inspector", ()),)}


def torch_paths(net, prefix=()):
  """[(flax path, torch parameter)] of a torch network in `parameters()` order: the
  module path, then "kernel" (conv weights), "scale" (norm weights) or "bias"."""
  from torch import nn
  out = []
  for name, p in net.named_parameters():
    *mods, leaf = name.split(".")
    module = net.get_submodule(".".join(mods))
    if leaf == "bias":
      key = "bias"
    else:
      key = "scale" if isinstance(module, (nn.InstanceNorm2d, nn.BatchNorm2d)) else "kernel"
    out.append((prefix + tuple(mods) + (key,), p))
  return out


def to_torch_layout(x):
  """A flax leaf in torch's layout: conv kernels HWIO -> OIHW; the transposed convs'
  kernel[kh, kw, out, in] -> ConvTranspose2d's weight[in, out, kh, kw] (the same axis
  order (3, 2, 0, 1), no spatial flip); vectors as they are."""
  import numpy as np
  x = np.asarray(x)
  return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x


def copy_jax_weights(model, params, batch_stats):
  """The JAX parameters (and E's running statistics) into the torch networks."""
  import numpy as np
  import torch
  from flax import traverse_util
  with torch.no_grad():
    for side, pairs in model.paths.items():
      flat = traverse_util.flatten_dict(params[side])
      if set(flat) != {path for path, _ in pairs}:
        sys.exit(f"{side}: flax and torch parameters differ: "
                 f"{sorted(set(flat) ^ {path for path, _ in pairs})[:6]}")
      for path, p in pairs:
        value = to_torch_layout(flat[path])
        if tuple(p.shape) != value.shape:
          sys.exit(f"{side} {path}: torch {tuple(p.shape)} vs flax {value.shape}")
        p.copy_(torch.from_numpy(np.array(value, np.float32)))  # a writable copy
    for path, value in traverse_util.flatten_dict(batch_stats).items():
      module = model.nets["e"].get_submodule(".".join(path[:-1]))
      buf = module.running_mean if path[-1] == "mean" else module.running_var
      buf.copy_(torch.from_numpy(np.array(value, np.float32)))


class BatchPool:
  """SIFA's `fake_image_pool`: up to pool_size earlier batches; once full, the new batch
  is swapped with a random stored one with probability 0.5."""

  def __init__(self, pool_size):
    self.pool_size, self.num_fakes, self.images = pool_size, 0, []

  def query(self, fake):
    if self.pool_size == 0:
      return fake
    if self.num_fakes < self.pool_size:
      self.images.append(fake)
      self.num_fakes += 1
      return fake
    if random.random() > 0.5:
      random_id = random.randint(0, self.pool_size - 1)
      temp = self.images[random_id]
      self.images[random_id] = fake
      return temp
    return fake


class SifaModel:
  """The SIFA (+ SynthMix) iteration in torch: eight sub-steps in the reference's order.
  `amp` wraps every forward pass and loss in bf16 autocast (the backward passes run outside
  it). `mask` (when set) replaces the per-iteration Bernoulli draw; `record`, when a dict,
  receives every sub-step's loss terms and gradients (and the first forward's outputs);
  `after_update(model, side)`, when set, runs after each sub-step's optimiser step."""

  def __init__(self, nets, args, dev, amp=False, fused=None):
    import torch
    self.nets, self.dev, self.amp = nets, dev, amp
    self.synthmix = "inspector" in nets
    self.k, self.ratio, self.lambda_i = args.mask_k, 0.5, 0.1
    self.sides = [s for s in SUBSTEPS if s in SIDE_NETS and (s != "inspector" or self.synthmix)]
    self.paths = {side: [pair for name, prefix in SIDE_NETS[side]
                         for pair in torch_paths(nets[name], prefix)] for side in self.sides}
    self.params = {side: [p for _, p in pairs] for side, pairs in self.paths.items()}
    self.opt = {side: torch.optim.Adam(self.params[side], lr=LR,
                                       betas=SEG_BETAS if side == "seg" else (B1, B2),
                                       fused=fused)
                for side in self.sides}
    self.pool_t, self.pool_s = BatchPool(args.pool_size), BatchPool(args.pool_size)
    self.mask = None
    self.record = None
    self.after_update = None
    self.record_grads = True

  def autocast(self):
    import torch
    return torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.amp)

  def set_input(self, x_s, labels, x_t, memory_format=None):
    import torch
    import torch.nn.functional as F
    self.x_s, self.x_t = x_s, x_t
    self.onehot = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).to(x_s.dtype)
    self.onehot = self.onehot.contiguous(memory_format=memory_format or torch.contiguous_format)

  def prefill_pools(self, batches_t, batches_s):
    """Both pools full (training past its first pool_size iterations)."""
    for pool, batches in ((self.pool_t, batches_t), (self.pool_s, batches_s)):
      pool.images = list(batches)
      pool.num_fakes = len(pool.images)

  # -- losses
  @staticmethod
  def ls(scores, target):
    return (full(scores) - target).square().mean()

  def ls_critic(self, real, fake):
    return 0.5 * (self.ls(real, 1.0) + self.ls(fake, 0.0))

  @staticmethod
  def l1(a, b):
    return (full(a) - full(b)).abs().mean()

  def task_loss(self, logits):
    """SIFA's class-weighted cross-entropy and Dice loss (background included)."""
    import torch
    p = torch.softmax(full(logits), dim=1)
    y = self.onehot
    w = 1.0 - y.sum(dim=(0, 2, 3)) / y.sum()
    ce = (-(w[None, :, None, None] * y * torch.log(p.clamp(0.005, 1.0)))).sum(dim=1).mean()
    dice = 2.0 * (p * y).sum(dim=(0, 2, 3)) / ((p * p).sum(dim=(0, 2, 3))
                                                + y.sum(dim=(0, 2, 3)) + 1e-7)
    return ce, 1.0 - dice.mean()

  def upsample(self, m):
    size = self.x_s.shape[-1]
    return m.repeat_interleave(size // self.k, 1).repeat_interleave(size // self.k, 2)[:, None]

  def inspector_bce(self, images, m):
    import torch.nn.functional as F
    cells, glob = self.nets["inspector"](images)
    return (F.binary_cross_entropy_with_logits(cells, m)
            + F.binary_cross_entropy_with_logits(glob, m.mean(dim=(1, 2))))

  def mix(self, m_up, where_one, where_zero):
    return m_up * where_one + (1.0 - m_up) * where_zero

  def forward(self):
    n = self.nets
    fake_t = n["g"](self.x_s)
    f_t, f_t_ll = n["e"](self.x_t)
    fake_s = n["u"](f_t, self.x_t)
    f_ft, f_ft_ll = n["e"](fake_t)
    cyc_s = n["u"](f_ft, fake_t)
    cyc_t = n["g"](fake_s)
    return dict(fake_t=fake_t, fake_s=fake_s, cyc_s=cyc_s, cyc_t=cyc_t, f_t=f_t,
                f_t_ll=f_t_ll, f_ft=f_ft, f_ft_ll=f_ft_ll)

  def cycle(self, fw):
    return 10.0 * self.l1(fw["cyc_s"], self.x_s) + 10.0 * self.l1(fw["cyc_t"], self.x_t)

  def u_objective(self, fw, m, m_up, scores_s=None):
    """L_U; `scores_s`: D_S's scores of fake_s when the caller has them already."""
    if scores_s is None:
      scores_s = self.nets["d_s"](fw["fake_s"])
    terms = {"cycle": self.cycle(fw), "gan_s": self.ls(scores_s[:, 0], 1.0)}
    if self.synthmix:
      terms["mix_t"] = self.lambda_i * self.inspector_bce(self.mix(m_up, self.x_t, fw["fake_s"]), m)
    return terms

  def update(self, side, terms):
    loss = sum(terms.values())
    self.opt[side].zero_grad(set_to_none=True)
    loss.backward(inputs=self.params[side])
    if self.record is not None:
      self.record[side] = {
          "terms": {k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach()),
          "grads": {path: p.grad.detach().double().cpu().numpy().copy()
                    for path, p in self.paths[side]} if self.record_grads else None}
    self.opt[side].step()
    if self.after_update is not None:
      self.after_update(self, side)
    return loss

  # -- the iteration
  def optimize_parameters(self):
    import torch
    n, x_s, x_t = self.nets, self.x_s, self.x_t
    size = tuple(x_s.shape[-2:])
    m = self.mask if self.mask is not None else torch.bernoulli(
        torch.full((x_s.shape[0], self.k, self.k), self.ratio, device=x_s.device,
                   dtype=x_s.dtype))
    m_up = self.upsample(m)
    # 1. G
    with self.autocast():
      fw = self.forward()
      terms = {"cycle": self.cycle(fw), "gan_t": self.ls(n["d"](fw["fake_t"]), 1.0)}
      if self.synthmix:
        terms["mix_s"] = self.lambda_i * self.inspector_bce(
            self.mix(m_up, fw["fake_t"], x_s), m)
    if self.record is not None:
      self.record["forward"] = {k: v.detach().double().cpu().numpy().copy()
                                for k, v in fw.items()}
    self.update("g", terms)
    fake_t = fw["fake_t"].detach()
    # 2. D_T on the target images and the pooled translations
    pooled = self.pool_t.query(fake_t)
    with self.autocast():
      terms = {"d_t": self.ls_critic(n["d"](x_t), n["d"](pooled))}
    self.update("d", terms)
    # 3. E, C, C_ll
    with self.autocast():
      fw = self.forward()
      ce, dice = self.task_loss(n["c"](fw["f_ft"], size))
      ce_ll, dice_ll = self.task_loss(n["c_ll"](fw["f_ft_ll"], size))
      pred_t = n["c"](fw["f_t"], size)
      pred_t_ll = n["c_ll"](fw["f_t_ll"], size)
      scores_s = n["d_s"](fw["fake_s"])
      u = self.u_objective(fw, m, m_up, scores_s)
      terms = {"ce": ce, "dice": dice, "ce_ll": 0.1 * ce_ll, "dice_ll": 0.1 * dice_ll,
               "l2": 1e-4 * sum(0.5 * full(p).square().sum() for p in self.params["seg"]),
               "u": 0.1 * sum(u.values()),
               "adv_p": 0.1 * self.ls(n["d_p"](pred_t), 1.0),
               "adv_p_ll": 0.01 * self.ls(n["d_p_ll"](pred_t_ll), 1.0),
               "aux": 0.1 * self.ls(scores_s[:, 1], 1.0)}
    seg_loss = self.update("seg", terms)
    # 4. U
    with self.autocast():
      fw = self.forward()
      terms = self.u_objective(fw, m, m_up)
    self.update("u", terms)
    fake_s = fw["fake_s"].detach()
    # 5. D_S: main head on source vs pooled translations, auxiliary head on
    # reconstructions vs pooled translations
    pooled = self.pool_s.query(fake_s)
    with self.autocast():
      with torch.no_grad():
        ft = n["g"](x_s)
        cyc_s = n["u"](n["e"](ft)[0], ft)
      real, pooled_scores, cyc = n["d_s"](x_s), n["d_s"](pooled), n["d_s"](cyc_s)
      terms = {"main": self.ls_critic(real[:, 0], pooled_scores[:, 0]),
               "aux": self.ls_critic(cyc[:, 1], pooled_scores[:, 1])}
    self.update("d_s", terms)
    # 6, 7. D_P and D_P_ll: source-like predictions "real", target ones "fake"
    for side, head, i in (("d_p", "c", 0), ("d_p_ll", "c_ll", 1)):
      with self.autocast():
        with torch.no_grad():
          ft = n["g"](x_s)
          f_t = n["e"](x_t)
          f_ft = n["e"](ft)
          source_like = n[head](f_ft[i], size)
          target = n[head](f_t[i], size)
        terms = {"loss_" + side: self.ls_critic(n[side](source_like), n[side](target))}
      self.update(side, terms)
    # 8. the Inspector, on real images only
    if self.synthmix:
      with self.autocast():
        zeros, ones = torch.zeros_like(m), torch.ones_like(m)
        terms = {"l_i": self.lambda_i * (self.inspector_bce(x_s, zeros)
                                         + self.inspector_bce(x_t, ones)
                                         + self.inspector_bce(self.mix(m_up, x_t, x_s), m))}
      self.update("inspector", terms)
    return seg_loss


def torch_model(args, dev, amp=False, channels_last=False, fused=None, dropout=0.25, seed=0):
  import torch
  torch.manual_seed(seed)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  nets = {k: v.to(dev).train().to(memory_format=fmt)
          for k, v in torch_networks(args, dropout).items()}
  return SifaModel(nets, args, dev, amp=amp, fused=fused)


def nhwc_to_torch(x, dev):
  import numpy as np
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(dev)


# ------------------------------------------------------------------------------ JAX
def jax_config(args, batch, steps_per_call=1, dropout=None):
  """configs/synthmix.py with the benchmark's shapes."""
  from medda_jax.config_utils import load_config
  c = load_config(CONFIG)
  c.data.image_size = args.size
  c.sifa.batch_size = batch
  c.sifa.ngf, c.sifa.n_blocks = args.ngf, args.n_blocks
  c.sifa.encoder_features, c.sifa.decoder_blocks = args.encoder_features, args.decoder_blocks
  c.sifa.ndf, c.sifa.pool_size, c.sifa.steps_per_call = args.ndf, args.pool_size, steps_per_call
  c.synthmix.inspector_features, c.synthmix.mask_k = args.inspector_features, args.mask_k
  if dropout is not None:
    c.sifa.decoder_dropout = dropout
  return c


def jax_sifa(args, batch, loop, dtype, steps_per_call=1, dropout=None):
  """(experiment.Sifa, config, mesh) as the experiment builds them."""
  from medda_jax import parallel
  from medda_jax.methods.sifa.experiment import Sifa
  c = jax_config(args, batch, steps_per_call, dropout)
  mesh = parallel.data_mesh()
  return Sifa(c, args.method, mesh, loop, dtype), c, mesh


def jax_state(args, sifa, mesh, prefill_seed=None):
  """The experiment's initial state (seed 0); with `prefill_seed` both pools start full of
  random batches."""
  import jax.numpy as jnp

  from medda_jax import parallel
  state = sifa.init_state(0)
  if prefill_seed is not None and args.pool_size:
    ms = dict(state.model_state)
    for key, images in zip(("d", "d_s"), pool_batches(args, sifa.c.sifa.batch_size,
                                                      prefill_seed)):
      pool = ms[key]["pool"]
      ms[key] = {**ms[key], "pool": pool.replace(
          images=jnp.asarray(images), count=jnp.asarray(args.pool_size, jnp.int32))}
    state = parallel.replicate(state.replace(model_state=ms), mesh)
  return state


def pool_batches(args, batch, seed):
  """Random batches in [-1, 1] NHWC for the two pools (T, S) of a pre-filled start:
  [pool_size, batch, H, W, 1] each."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (args.pool_size, batch, args.size, args.size, CHANNELS)
  return (rng.uniform(-1, 1, shape).astype(np.float32),
          rng.uniform(-1, 1, shape).astype(np.float32))


def random_batches(args, batch, n, seed=0):
  """{"source", "label", "target"}: [n, 1, batch, H, W(, 1)], the engine's layout."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (n, 1, batch, args.size, args.size)
  return {"source": rng.uniform(-1, 1, shape + (CHANNELS,)).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, shape).astype(np.int32),
          "target": rng.uniform(-1, 1, shape + (CHANNELS,)).astype(np.float32)}


def losses_config(c, method):
  """The `s` of sifa_losses, as experiment.Sifa builds it."""
  import ml_collections
  return ml_collections.ConfigDict({**c.sifa.to_dict(), **c.synthmix.to_dict(),
                                    "synthmix": method == "synthmix"})


# ------------------------------------------------------------------------------ check
def check_equivalence(args, platform, dev):
  import contextlib

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch
  from flax import traverse_util

  from medda_jax.engine import gan
  from medda_jax.methods.sifa.paper import sifa_losses
  batch_n = args.check_batch
  precision = lambda: (jax.default_matmul_precision("highest") if platform == "gpu"
                       else contextlib.nullcontext())
  sifa, c, mesh = jax_sifa(args, batch_n, "host", jnp.float32, dropout=0.0)
  with precision():
    state = sifa.init_state(0)
  params = jax.device_get(state.params)
  stats = jax.device_get(state.model_state["seg"]["batch_stats"])
  model = torch_model(args, dev, dropout=0.0)
  counts = {}
  for side in model.sides:
    counts[side] = {"jax": common.count_params_jax(params[side]),
                    "torch": sum(p.numel() for p in model.params[side])}
  print(f"  parameters per sub-step side: {counts}", flush=True)
  if any(v["jax"] != v["torch"] for v in counts.values()):
    sys.exit(f"parameter counts differ: {counts}")
  record = {"parameter_counts": counts}
  if args.skip_check:
    return dict(record, numeric="skipped")
  old_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  copy_jax_weights(model, params, stats)
  # Four torch runs from the same initial weights: float32 and float64 each taking JAX's
  # weights after every sub-step, and float32 and float64 chaining their own updates.
  copies = lambda double: {k: (copy.deepcopy(v).double() if double else copy.deepcopy(v))
                           for k, v in model.nets.items()}
  runs = {"t32": model, "t64": SifaModel(copies(True), args, dev),
          "chain32": SifaModel(copies(False), args, dev),
          "chain64": SifaModel(copies(True), args, dev)}

  one = random_batches(args, batch_n, 1, seed=1)
  batch = {k: v[0, 0] for k, v in one.items()}
  critic_loss, generator_loss, sides = sifa_losses(sifa.nets, losses_config(c, args.method))
  # The keys the engine hands each loss in the first iteration of `state` (see
  # engine.gan.build_gan_step), so that the engine's iteration below draws the same mask.
  _, step_rng = jax.random.split(state.rng)
  order = [("g", generator_loss, jax.random.fold_in(step_rng, 1), sifa.g_tx),
           ("d", critic_loss, jax.random.split(jax.random.fold_in(step_rng, 0), 1)[0],
            sifa.d_tx)]
  order += [(name, fn, jax.random.fold_in(step_rng, 2 + i), sifa.side_txs[name])
            for i, (name, fn) in enumerate(sides.items())]
  if [o[0] for o in order] != model.sides:
    sys.exit(f"sub-step order differs: JAX {[o[0] for o in order]}, torch {model.sides}")

  # JAX: each sub-step's loss function called directly on the weights the earlier ones left.
  jax_out = {}
  torch_flat = lambda tree: {path: to_torch_layout(v) for path, v in
                             traverse_util.flatten_dict(jax.device_get(tree)).items()}
  with precision():
    p, ms = jax.tree.map(jnp.asarray, params), state.model_state
    for side, fn, key, tx in order:
      value_grad = jax.jit(jax.value_and_grad(
          lambda ps, p, ms, b, k, side=side, fn=fn: fn({**p, side: ps}, ms, b, k),
          has_aux=True))
      (loss, (ms, terms)), grads = value_grad(p[side], p, ms, batch, key)
      updates, _ = tx.update(grads, tx.init(p[side]), p[side])
      p = {**p, side: optax.apply_updates(p[side], updates)}
      jax_out[side] = {"loss": float(loss), "terms": {k: float(v) for k, v in terms.items()},
                       "grads": {k: v.astype(np.float64) for k, v in torch_flat(grads).items()},
                       "before": torch_flat(params[side]), "after": torch_flat(p[side])}
      print(f"    JAX sub-step {SUBSTEP_NAMES[side]:14s} loss {float(loss):.6g}", flush=True)
    mask = np.array(ms["g"]["mask"]) if args.method == "synthmix" else None
    # The first forward pass on the initial weights (E in training mode, no dropout).
    nets = sifa.nets

    def forward(p, stats, x_s, x_t):
      e_vars = lambda: {"params": p["seg"]["e"], "batch_stats": stats}
      fake_t = nets.generator.apply({"params": p["g"]}, x_s)
      (f_t, f_t_ll), _ = nets.encoder.apply(e_vars(), x_t, train=True, mutable=["batch_stats"])
      fake_s = nets.decoder.apply({"params": p["u"]}, f_t, x_t, deterministic=True)
      (f_ft, f_ft_ll), _ = nets.encoder.apply(e_vars(), fake_t, train=True,
                                              mutable=["batch_stats"])
      cyc_s = nets.decoder.apply({"params": p["u"]}, f_ft, fake_t, deterministic=True)
      cyc_t = nets.generator.apply({"params": p["g"]}, fake_s)
      return dict(fake_t=fake_t, fake_s=fake_s, cyc_s=cyc_s, cyc_t=cyc_t, f_t=f_t,
                  f_t_ll=f_t_ll, f_ft=f_ft, f_ft_ll=f_ft_ll)

    fw_jax = jax.device_get(jax.jit(forward)(params, stats, batch["source"], batch["target"]))
    # The engine's chunk: the same iteration as one compiled call (state donated on accelerators).
    engine_batches = gan.shard_batches({k: v[:1] for k, v in one.items()}, mesh)
    new_state, metrics = sifa.chunk(state, engine_batches)
    engine = jax.device_get(metrics)
    engine_mask = (np.array(new_state.model_state["g"]["mask"])
                   if args.method == "synthmix" else None)

  def take_jax_weights(m, side):
    """After a torch sub-step's own Adam step: keep its parameters, then load JAX's."""
    m.record.setdefault("after", {})[side] = {
        path: t.detach().double().cpu().numpy().copy() for path, t in m.paths[side]}
    with torch.no_grad():
      for path, t in m.paths[side]:
        t.copy_(torch.from_numpy(np.array(jax_out[side]["after"][path])))

  torch_out = {}
  for label, m in runs.items():
    dtype = torch.float64 if label.endswith("64") else torch.float32
    m.record, m.record_grads = {}, not label.startswith("chain")
    m.after_update = None if label.startswith("chain") else take_jax_weights
    if mask is not None:
      m.mask = torch.from_numpy(mask).to(dev, dtype)
    m.set_input(nhwc_to_torch(batch["source"], dev).to(dtype),
                torch.from_numpy(batch["label"]).long().to(dev),
                nhwc_to_torch(batch["target"], dev).to(dtype))
    m.optimize_parameters()
    torch_out[label] = m.record
    m.record = m.mask = m.after_update = None
  t32, t64 = torch_out["t32"], torch_out["t64"]
  results = {}

  def verdict(ok):
    return "ok" if ok else "MISMATCH"

  def compare(name, a, b, tol=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(a)))
    tol = max(TOL_VALUE * (1 + scale), tol or 0.0)
    results[name] = {"max_abs_diff": diff, "max_abs_value": scale, "tolerance": tol,
                     "ok": diff <= tol}
    print(f"    {name:44s} {diff:.2e} (|value| <= {scale:.3g}) {verdict(diff <= tol)}",
          flush=True)

  def compare_grads(name, jax_grads, g32, g64):
    """All of a side's gradients against torch float64's, beside torch float32's own
    distance (relative L2 over the side's tensors together), and the worst tensor."""
    d_jax = d_t32 = norm = 0.0
    per_tensor = {}
    for path, ref in g64.items():
      d = float(np.sum((jax_grads[path] - ref) ** 2))
      d_jax, d_t32 = d_jax + d, d_t32 + float(np.sum((g32[path] - ref) ** 2))
      norm += float(np.sum(ref ** 2))
      per_tensor[path] = (d, float(np.sum(ref ** 2)))
    significant = {k: (d / n) ** 0.5 for k, (d, n) in per_tensor.items() if n > 1e-4 * norm}
    worst = max(significant, key=significant.get)
    jax_rel, t32_rel = (d_jax / norm) ** 0.5, (d_t32 / norm) ** 0.5
    ok = jax_rel <= max(TOL_GRAD_ALL, 2 * t32_rel)
    results[name] = {"jax_vs_torch64_rel_l2": jax_rel, "torch32_vs_torch64_rel_l2": t32_rel,
                     "tensors": len(g64), "worst_tensor": "/".join(worst),
                     "worst_tensor_jax_vs_torch64_rel_l2": significant[worst], "ok": ok}
    print(f"    {name:44s} JAX {jax_rel:.2e} / torch fp32 {t32_rel:.2e} from torch fp64 "
          f"{verdict(ok)}", flush=True)

  def compare_updates(name, side):
    """The sub-step's Adam step (after minus before, the same weights before on all
    sides) against torch float64's where the gradient is resolved: |g| > UPDATE_RESOLVED x
    the side's rms gradient and the JAX and torch float32 gradients within
    UPDATE_AGREE x |g| of torch float64's (Adam's first step is about -lr sign(g), so an
    element whose float32 gradient is noise may take either sign); torch float32's
    distance beside it, and how many elements moved differently by more than lr / 10 in
    all."""
    g64 = t64[side]["grads"]
    rms = math.sqrt(sum(float(np.sum(g ** 2)) for g in g64.values())
                    / sum(g.size for g in g64.values()))
    worst, off = {"jax": 0.0, "torch32": 0.0}, {"jax": 0, "torch32": 0}
    checked = total = 0
    for path, g in g64.items():
      p0 = jax_out[side]["before"][path].astype(np.float64)
      ref = t64["after"][side][path] - p0
      resolved = ((np.abs(g) > UPDATE_RESOLVED * rms)
                  & (np.abs(jax_out[side]["grads"][path] - g) <= UPDATE_AGREE * np.abs(g))
                  & (np.abs(t32[side]["grads"][path] - g) <= UPDATE_AGREE * np.abs(g)))
      checked, total = checked + int(resolved.sum()), total + g.size
      for who, after in (("jax", jax_out[side]["after"][path]),
                         ("torch32", t32["after"][side][path])):
        err = np.abs((np.asarray(after, np.float64) - p0) - ref) / LR
        if resolved.any():
          worst[who] = max(worst[who], float(err[resolved].max()))
        off[who] += int((err > 0.1).sum())
    ok = worst["jax"] <= TOL_UPDATE
    results[name] = {"jax_max_abs_diff_over_lr": worst["jax"],
                     "torch32_max_abs_diff_over_lr": worst["torch32"],
                     "resolved_elements": checked, "elements": total,
                     "elements_off_by_over_lr_10": off, "ok": ok}
    print(f"    {name:44s} JAX {worst['jax']:.2e} / torch fp32 {worst['torch32']:.2e} x lr "
          f"on {checked}/{total} ({off['jax']} / {off['torch32']} elements off by > lr/10 "
          f"in all) {verdict(ok)}", flush=True)

  for k in ("fake_t", "f_t", "f_t_ll", "fake_s", "f_ft", "cyc_s", "cyc_t"):
    compare(f"forward {k}", np.asarray(fw_jax[k]).transpose(0, 3, 1, 2), t32["forward"][k])
  for side in model.sides:
    label = SUBSTEP_NAMES[side]
    for k, v in jax_out[side]["terms"].items():
      compare(f"{label} term {k}", v, t32[side]["terms"][k])
    compare(f"{label} loss", jax_out[side]["loss"], t32[side]["loss"])
  for side in model.sides:
    compare_grads(f"{SUBSTEP_NAMES[side]} gradients", jax_out[side]["grads"],
                  t32[side]["grads"], t64[side]["grads"])
  for side in model.sides:
    compare_updates(f"{SUBSTEP_NAMES[side]} Adam update", side)
  chain = {}
  for side in model.sides:
    a, b = torch_out["chain32"][side]["loss"], torch_out["chain64"][side]["loss"]
    chain[SUBSTEP_NAMES[side]] = {"torch32": a, "torch64": b, "abs_diff": abs(a - b)}
    compare(f"engine chunk {SUBSTEP_NAMES[side]} loss", engine[f"{side}_loss"][0],
            jax_out[side]["loss"], tol=2 * abs(a - b))
  if mask is not None:
    same = bool(np.array_equal(mask, engine_mask))
    results["engine chunk mask = direct calls' mask"] = {"ok": same}
    print(f"    {'engine chunk mask = direct calls mask':44s} {same}", flush=True)
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
  return dict(
      record, batch=batch_n, numeric=results,
      passed=all(r["ok"] for r in results.values()),
      torch_chained_losses=chain,
      what=("U's dropout 0 on both sides; the JAX initial weights (experiment.Sifa.init_state "
            "seed 0) copied into torch (conv HWIO -> OIHW, transposed-conv [kh, kw, out, in] "
            "-> [in, out, kh, kw], E's running statistics); one random batch; the mask drawn "
            "by the JAX generator loss from the key the engine gives it, fed to torch; empty "
            "pools. JAX: the loss functions of sifa_losses called one after the other "
            "(jitted value_and_grad, then the side's Adam update). torch float32 and float64: "
            "SifaModel.optimize_parameters, each sub-step's Adam step kept for comparison "
            "and then replaced by JAX's updated weights, so that every sub-step starts from "
            "the same weights on all sides. Compared: the first forward pass; every loss "
            "term and total of every sub-step; every sub-step's gradients and Adam update; "
            "the engine chunk's per-sub-step losses and mask against the direct calls."),
      tolerance=(f"values: |jax - torch float32| <= {TOL_VALUE} x (1 + max |value|); "
                 f"gradients: relative L2 distance from torch float64 (a sub-step's tensors "
                 f"together) at most max({TOL_GRAD_ALL}, 2 x torch float32's); Adam updates: "
                 f"|jax - torch float64| <= {TOL_UPDATE} x lr per element where |grad| > "
                 f"{UPDATE_RESOLVED} x the side's rms gradient and the three gradients agree "
                 f"to {UPDATE_AGREE} x |grad|; engine chunk vs direct "
                 "calls (each chaining its own updates): the value tolerance or twice the "
                 "distance between torch float32 and float64 chaining their own updates "
                 "(torch_chained_losses), whichever is larger; the same mask; float32 "
                 "(TF32 off, JAX matmul precision highest on a GPU)"))


# ------------------------------------------------------------------------------ timing
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


def bench_jax(args, platform, batch, timing, results, flops, save):
  import jax
  import jax.numpy as jnp

  from medda_jax.engine import gan
  dtypes = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
  for loop, spc, short in args.executors:
    if batch != args.batches[0] and f"{loop}/{spc}/{short}" in args.first_batch_only:
      continue
    name = f"jax {loop}/{spc} {short}"
    carry, batches, compiled = [None], None, None
    t0 = time.perf_counter()
    try:
      sifa, _, mesh = jax_sifa(args, batch, loop, dtypes[short], steps_per_call=spc)
      carry[0] = jax_state(args, sifa, mesh, prefill_seed=2)
      batches = gan.shard_batches(random_batches(args, batch, spc), mesh)
      lowered = sifa.chunk.lower(carry[0], batches)
      if spc == 1 and short == "fp32" and f"batch_{batch}" not in flops:
        flops[f"batch_{batch}"] = common.lowered_flops(lowered)
      compiled = lowered.compile()
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
                       "last_seg_loss": float(metrics["seg_loss"][-1]),
                       "last_g_loss": float(metrics["g_loss"][-1])}
    except Exception as e:  # noqa: BLE001 (a failed executor is a result too)
      results[name] = {"error": common.error_text(e), "wall_seconds": time.perf_counter() - t0}
    print(f"  {name:44s} {_fmt(results[name])}", flush=True)
    carry = batches = compiled = None
    gc.collect()
    save()


def jax_flops_per_iteration(args, batch):
  """FLOPs of one iteration from XLA's cost analysis of the lowered fp32 host/1 chunk."""
  import jax
  import jax.numpy as jnp
  sifa, _, _ = jax_sifa(args, batch, "host", jnp.float32)
  state = sifa.init_state(0)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
            for k, v in random_batches(args, batch, 1).items()}
  return common.lowered_flops(sifa.chunk.lower(state, shapes))


TORCH_VARIANTS = {  # key: (bf16 autocast, torch.compile, channels_last)
    "eager_fp32": (False, False, False), "eager_bf16": (True, False, False),
    "eager_bf16_cl": (True, False, True), "compile_fp32": (False, True, False),
    "compile_bf16_cl": (True, True, True)}


def compile_parts(model):
  """torch.compile of what compiles on its own: every network and every optimiser step;
  the pools, the losses' glue and the backward calls stay eager."""
  import torch
  for name in list(model.nets):
    model.nets[name] = torch.compile(model.nets[name])
  for opt in model.opt.values():
    opt.step = torch.compile(opt.step)
  return model.optimize_parameters


def graph_counts(reset=False):
  """Graphs torch.compile made and graph breaks it hit since the last reset."""
  from torch._dynamo.utils import counters
  if reset:
    counters.clear()
  return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
          "graph_breaks": int(sum(counters["graph_break"].values()))}


def bench_torch(args, platform, batch, timing, results, compile_log, init, save):
  import torch
  dev = "cuda" if platform == "gpu" else "cpu"
  sync = common.sync_fn(platform)
  raw = random_batches(args, batch, 1)
  pool_t, pool_s = pool_batches(args, batch, 2)
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
      copy_jax_weights(model, *init)
      fmt = torch.channels_last if channels_last else torch.contiguous_format
      to = lambda x: nhwc_to_torch(x, dev).contiguous(memory_format=fmt)
      model.set_input(to(raw["source"][0, 0]),
                      torch.from_numpy(raw["label"][0, 0]).long().to(dev),
                      to(raw["target"][0, 0]), memory_format=fmt)
      model.prefill_pools([to(b) for b in pool_t], [to(b) for b in pool_s])
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
        results[name] = {**per_iteration(t, 1, batch), "last_seg_loss": loss,
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
      save()
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
  if args.size < 16 or args.size & (args.size - 1):
    sys.exit(f"--size {args.size}: must be a power of 2 >= 16 (the encoder pools three "
             "times, the Inspector halves down to 4 x 4)")
  if args.mask_k & (args.mask_k - 1) or not 4 <= args.mask_k <= args.size:
    sys.exit(f"--mask-k {args.mask_k}: must be a power of 2 in [4, {args.size}]")
  args.batches = [int(b) for b in (args.batches or ("8" if gpu else "4")).split(",")]
  args.ngf = args.ngf or (32 if gpu else 8)
  args.encoder_features = args.encoder_features or (16 if gpu else 4)
  args.ndf = args.ndf or (64 if gpu else 16)
  args.inspector_features = args.inspector_features or (64 if gpu else 16)
  args.n_blocks = args.n_blocks if args.n_blocks is not None else 9
  args.decoder_blocks = args.decoder_blocks if args.decoder_blocks is not None else 4
  args.executors = parse_executors(args.executors or (GPU_EXECUTORS if gpu else CPU_EXECUTORS))
  args.torch_variants = [v for v in (args.torch_variants or (
      GPU_TORCH if gpu else CPU_TORCH)).split(",") if v]
  for key in args.torch_variants:
    if key not in TORCH_VARIANTS:
      sys.exit(f"--torch-variants: unknown variant {key!r}; choose from {list(TORCH_VARIANTS)}")
  args.first_batch_only = [v for v in args.first_batch_only.split(",") if v]
  timing = {"warmup": 5 if gpu else 1, "repeats": 3 if args.quick else 5,
            "iters": 20 if gpu else 1, "budget": None if gpu else 20.0}
  for k in timing:
    if getattr(args, k) is not None:
      timing[k] = getattr(args, k)
  if gpu:
    import torch
    torch.backends.cudnn.benchmark = True
  shapes = {"image": [args.size, args.size, CHANNELS], "batches": args.batches,
            "method": args.method, "num_classes": NUM_CLASSES, "ngf": args.ngf,
            "n_blocks": args.n_blocks, "encoder_features": args.encoder_features,
            "decoder_blocks": args.decoder_blocks, "decoder_dropout": 0.25, "ndf": args.ndf,
            "inspector_features": args.inspector_features, "mask_k": args.mask_k,
            "mask_ratio": 0.5, "pool_size_batches": args.pool_size,
            "sub_steps": [SUBSTEP_NAMES[s] for s in SUBSTEPS
                          if s != "inspector" or args.method == "synthmix"],
            "optimizers": (f"Adam(lr={LR}, betas=({B1}, {B2})) per GAN side; Adam(lr={LR}, "
                           f"betas={SEG_BETAS}) for E, C, C_ll")}
  print(f"{BENCHMARK} on {device['name']}: {shapes}, timing {timing}", flush=True)
  dev = "cuda" if gpu else "cpu"
  print("[equivalence check]", flush=True)
  check = check_equivalence(args, platform, dev)
  if check.get("passed") is False:
    print("  WARNING: the equivalence check failed; timings are still taken and written.",
          flush=True)
  if args.check_only:
    sys.exit(0 if check.get("passed", True) else 1)
  spec_shapes = (args.size == 256 and args.ngf == 32 and args.n_blocks == 9
                 and args.encoder_features == 16 and args.decoder_blocks == 4
                 and args.ndf == 64 and args.inspector_features == 64 and args.mask_k == 8
                 and args.pool_size == 50 and args.method == "synthmix")
  results, ratio, compile_log, flops = {}, {}, {}, {}
  notes = [
      ("ms per iteration = median over the timed blocks (each ends with block_until_ready / "
       "torch.cuda.synchronize) of block time / iterations in the block; min and max give "
       "the spread. Warm-up calls (torch.compile's compilation included) are not timed; JAX "
       "executors are compiled ahead of time (compile_seconds) before their warm-up. With a "
       "time budget (CPU) an executor whose warm-up call is slow gets fewer timed blocks "
       "(timed_blocks)."),
      ("Timing starts with both 50-batch pools full (random batches), so every query draws "
       "a coin and may swap, as in training after its first 50 iterations; U's dropout "
       "(0.25) is on and the SynthMix mask is drawn every iteration on both sides. The "
       "equivalence check runs one iteration on empty pools without dropout instead."),
      ("torch: eight sub-steps, each its own forward pass under autocast when bf16, "
       "loss.backward(inputs=<the side's parameters>) (no weight gradients of the other "
       "networks) and its own Adam; the critic sub-steps 5-7 make their translations under "
       "no_grad; the batch pools are Python lists with random.random / random.randint; "
       "the bf16 variants keep the losses in float32. Both sides start from the JAX "
       "initial weights."),
      ("FLOPs per iteration from XLA's cost analysis of the lowered fp32 host/1 (or scan/1) "
       "chunk, used for every executor of that batch size."),
  ]
  path = args.out or common.result_path(BENCHMARK, platform, device)

  def save(final=False):
    common.write_json(
        path, benchmark=BENCHMARK, platform=platform, device=device, shapes=shapes,
        results=results, ratio=ratio, notes=notes + ([] if final else [
            "PARTIAL: written after each executor; the run did not finish."]),
        timing=timing, complete=final,
        executors={"jax": [f"{l}/{n}/{d}" for l, n, d in args.executors],
                   "torch": args.torch_variants,
                   "first_batch_only": args.first_batch_only},
        equivalence_check=check, torch_compile=compile_log,
        flops_per_iteration_xla=flops)

  import jax
  import jax.numpy as jnp
  for batch in args.batches:
    print(f"[batch {batch}]", flush=True)
    res = results[f"batch_{batch}"] = {}
    sifa, _, _ = jax_sifa(args, batch, "host", jnp.float32)
    init_state = sifa.init_state(0)
    init = jax.device_get((init_state.params, init_state.model_state["seg"]["batch_stats"]))
    del sifa, init_state
    bench_torch(args, platform, batch, timing, res, compile_log, init, save)
    bench_jax(args, platform, batch, timing, res, flops, save)
    if f"batch_{batch}" not in flops:
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
    save()
  ratio["goal"] = GOAL
  ratio["goal_applies"] = gpu and spec_shapes and 8 in args.batches
  ratio["goal_met"] = ((ratio.get("batch_8", {}).get("speedup_jax_best_over_torch_best")
                        or 0) >= 1.5 if ratio["goal_applies"] else None)
  if gpu:
    notes.append("torch eager variants use Adam(fused=True) and cudnn.benchmark=True; fp32 "
                 "convolutions use TF32 on both sides (the defaults of torch and XLA; the "
                 "equivalence check turned TF32 off).")
  else:
    notes.append(f"CPU shapes scaled down from the GPU setting (256x256, batch 8, ngf 32, "
                 f"encoder 16, ndf 64, Inspector 64) to {args.size}x{args.size}, batch "
                 f"{','.join(map(str, args.batches))}, ngf {args.ngf}, encoder "
                 f"{args.encoder_features}, ndf {args.ndf}, Inspector "
                 f"{args.inspector_features} (the demo config's quarter widths; block counts "
                 f"as the reference) so the run takes minutes on {device['cpu_cores']} cores. "
                 "XLA:CPU takes one to one and a half minutes to compile one SIFA iteration "
                 "here (compile_seconds), so the CPU executors "
                 f"are {CPU_EXECUTORS} by default. torch.compile is left out of the CPU default "
                 "(--torch-variants compile_fp32 runs it): in a trial run of this script at "
                 "batch 2 on this machine, compiling the whole iteration took 584 s (33 "
                 "graphs, 42 graph breaks, the pools' Python random among them) and the "
                 "compiled iteration then ran at 328 ms against eager fp32's 305 ms.")
  if args.cpu_threads:
    notes.append(f"Both frameworks limited to {args.cpu_threads} intra-op CPU thread(s) "
                 f"(--cpu-threads); load average at start {device['load_average_at_start']}.")
  save(final=True)
  print(f"wrote {path}")
  if check.get("passed") is False:
    sys.exit("the equivalence check failed (see equivalence_check in the JSON)")


if __name__ == "__main__":
  main()
