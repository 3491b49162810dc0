"""The residual 2-D U-Net of the cross-site transfer papers, with BatchNorm (NHWC, logits).

The network of the gradient-transfer paper (Goodman et al., DART 2022), which takes it from
the domain-shift code of the SpotTUnet / first-layers papers (`UNet2D(n_chans_in,
n_chans_out=1, n_filters_init=16)`). With n = `features`, channels n, 2n, 4n, 8n:

  init_path   Conv3x3(no bias) -> ResBlock x3                        x0 @ 1
  down1       PreAct(2x2, s2, no bias) -> ResBlock x3                 x1 @ 1/2
  down2       PreAct(2x2, s2, no bias) -> ResBlock x3                 x2 @ 1/4
  bottleneck  PreAct(2x2, s2, no bias) -> ResBlock x3 -> ConvT(2x2, s2)
  up2         ResBlock x3 -> ConvT     on  bottleneck(x2) + Conv1x1(x2)
  up1         ResBlock x3 -> ConvT     on  up2 + Conv1x1(x1)
  out_path    ResBlock x3 -> PreAct(1x1) -> BatchNorm   on  up1 + Conv1x1(x0)

PreAct = BatchNorm -> ReLU -> Conv; ResBlock = two PreAct 3x3 plus the identity. Skips are
additive. BatchNorm as PyTorch's defaults (momentum 0.1 = flax 0.9, eps 1e-5). Conv kernels
use PyTorch's default init (kaiming-uniform with a = sqrt(5) = variance scaling 1/3,
fan-in, uniform); biases start at zero. The input side must be divisible by 8.

`twin=True` builds the SpotTune form: every ResBlock holds a `frozen` and a `tuned` copy
and mixes them per sample with a gate in {0, 1} (1 = frozen), supplied by a policy
network; the other layers are shared. `twin_params` turns the plain network's variables
into the twin's (both copies start from the source weights).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv, ConvTranspose

STAGES = ("init", "down1", "down2", "bottleneck", "up2", "up1", "out")
BLOCKS_PER_STAGE = 3
NUM_BLOCKS = len(STAGES) * BLOCKS_PER_STAGE

torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def block_name(stage: str, i: int) -> str:
  return f"{stage}_res{i}"


def _bn(train: bool, dtype, name=None):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class PreAct(nn.Module):
  features: int
  kernel: int
  stride: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(_bn(train, self.dtype)(x))
    padding = "SAME" if self.stride == 1 else "VALID"
    return Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                   padding=padding, use_bias=self.use_bias, kernel_init=torch_conv_init,
                   dtype=self.dtype)(x)


class ResBlock(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = PreAct(self.features, 3, dtype=self.dtype)(x, train)
    y = PreAct(self.features, 3, dtype=self.dtype)(y, train)
    return x + y


class TwinResBlock(nn.Module):
  """SpotTune block: gate 1 takes the frozen copy (BatchNorm in inference mode, so its
  statistics stay the source's), gate 0 the fine-tuned copy."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, gate):
    frozen = ResBlock(self.features, self.dtype, name="frozen")(x, False)
    tuned = ResBlock(self.features, self.dtype, name="tuned")(x, train)
    g = gate.astype(x.dtype)[:, None, None, None]
    return g * frozen + (1 - g) * tuned


class ResUNet2D(nn.Module):
  features: int = 16
  out_channels: int = 1
  twin: bool = False
  dtype: Any = jnp.float32

  def _blocks(self, stage: str, features: int, x, train: bool, gates):
    s = STAGES.index(stage)
    for i in range(BLOCKS_PER_STAGE):
      name = block_name(stage, i)
      if self.twin:
        x = TwinResBlock(features, self.dtype, name=name)(x, train, gates[:, s * 3 + i])
      else:
        x = ResBlock(features, self.dtype, name=name)(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, gates=None, return_bottleneck: bool = False):
    """x [B, H, W, C] -> logits [B, H, W, out_channels] (float32). `gates` [B, NUM_BLOCKS]
    is required when `twin`. With `return_bottleneck` also returns the bottleneck features
    (before the up-convolution), the representation cross-site alignment methods use."""
    if self.twin and gates is None:
      raise ValueError("a twin (SpotTune) ResUNet2D needs gates [batch, NUM_BLOCKS]")
    if x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(f"input side must be divisible by 8, got {x.shape[1:3]}")
    n, dt = self.features, self.dtype
    x = x.astype(dt)

    def conv(f, k, name, stride=1, bias=True):
      return Conv(f, (k, k), (stride, stride), padding="SAME" if stride == 1 else "VALID",
                     use_bias=bias, kernel_init=torch_conv_init, dtype=dt, name=name)

    def up(f, name):
      return ConvTranspose(f, (2, 2), (2, 2), padding="VALID", use_bias=False,
                              kernel_init=torch_conv_init, dtype=dt, name=name)

    x0 = self._blocks("init", n, conv(n, 3, "init_conv", bias=False)(x), train, gates)
    x1 = self._blocks("down1", 2 * n, PreAct(2 * n, 2, 2, False, dt, name="down1_conv")(x0, train),
                      train, gates)
    x2 = self._blocks("down2", 4 * n, PreAct(4 * n, 2, 2, False, dt, name="down2_conv")(x1, train),
                      train, gates)
    b = self._blocks("bottleneck", 8 * n,
                     PreAct(8 * n, 2, 2, False, dt, name="bottleneck_conv")(x2, train), train, gates)
    y = up(4 * n, "bottleneck_up")(b) + conv(4 * n, 1, "skip2")(x2)
    y = up(2 * n, "up2_up")(self._blocks("up2", 4 * n, y, train, gates)) + conv(2 * n, 1, "skip1")(x1)
    y = up(n, "up1_up")(self._blocks("up1", 2 * n, y, train, gates)) + conv(n, 1, "skip0")(x0)
    y = self._blocks("out", n, y, train, gates)
    y = PreAct(self.out_channels, 1, dtype=dt, name="out_conv")(y, train)
    logits = _bn(train, dt, name="out_bn")(y).astype(jnp.float32)
    return (logits, b.astype(jnp.float32)) if return_bottleneck else logits


def twin_variables(variables: dict) -> dict:
  """Plain ResUNet2D variables -> the twin's: each ResBlock's subtree copied into
  `frozen` and `tuned`; every other layer kept as is."""
  blocks = {block_name(s, i) for s in STAGES for i in range(BLOCKS_PER_STAGE)}
  out = {}
  for collection, tree in variables.items():
    out[collection] = {k: ({"frozen": v, "tuned": jax.tree.map(jnp.array, v)} if k in blocks else v)
                       for k, v in tree.items()}
  return out


def is_frozen_path(path: tuple[str, ...]) -> bool:
  """True for parameters of the frozen copies in a twin network."""
  return "frozen" in path


class PolicyNet(nn.Module):
  """SpotTune's policy: a small CNN mapping the input slice to (tuned, frozen) logits per
  gated block. (The reference uses a ResNet-34; a small network keeps the demo cheap.)"""

  num_blocks: int = NUM_BLOCKS
  features: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate((self.features, 2 * self.features, 4 * self.features)):
      x = nn.relu(Conv(f, (3, 3), (2, 2), kernel_init=torch_conv_init, dtype=self.dtype,
                          name=f"conv{i}")(x.astype(self.dtype)))
    x = x.mean(axis=(1, 2))
    return nn.Dense(2 * self.num_blocks, dtype=self.dtype, name="logits")(x).reshape(
        x.shape[0], self.num_blocks, 2).astype(jnp.float32)


def gumbel_gates(logits, rng, temperature: float, hard_only: bool = False):
  """Per-sample, per-block gates in {0, 1} (1 = frozen) from logits [B, L, 2] (index 1 =
  frozen): a straight-through hard Gumbel-softmax sample when training, the argmax when
  `hard_only` (inference)."""
  if hard_only:
    return jnp.argmax(logits, axis=-1).astype(jnp.float32)
  g = jax.random.gumbel(rng, logits.shape)
  soft = jax.nn.softmax((logits + g) / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), 2)
  sample = hard + soft - jax.lax.stop_gradient(soft)
  return sample[..., 1]
