"""The "United" model of stepwise incremental pre-training (Guo et al., DART 2022): a Models
Genesis-style 3-D U-Net split into a discriminative encoder, a pseudo-label head and a
restorative decoder, plus a separate adversary encoder. NDHWC, one-channel inputs in [0, 1].

Each part is its own top-level submodule (`encoder`, `head`, `decoder`), so the parameter
tree of the D stage is {encoder, head} and that of the (D)+R and ((D)+R)+A stages is
{encoder, head, decoder}: a stage's checkpoint grafts into the next stage part by part
(`methods/dira/paper.graft_stage`). The adversary (`Adversary3D`) has parameters of its own.

Normalisation: Models Genesis uses BatchNorm; here every 3x3x3 convolution is followed by
a per-sample layer norm over channels and space (`nn.GroupNorm` with one group, learned
scale and shift) instead, so the networks carry no batch statistics: a train state is
parameters only, the adversary's real and fake passes cannot leak statistics into each
other, and a stage's checkpoint holds everything the next stage needs. Not instance norm:
it zeroes every channel's spatial mean, so the head's global average pool of the bottleneck
would see only the shape of each channel's distribution.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv, ConvTranspose
from medda_jax.models.dense import Dense


def _double_conv(x, features: int, name: str, dtype: Any):
  """Two (3x3x3 convolution -> layer norm over channels and space -> ReLU), the unit of
  every U-Net level."""
  for i in range(2):
    x = Conv(features, (3, 3, 3), padding=1, dtype=dtype, name=f"{name}_conv{i}")(x)
    x = nn.relu(nn.GroupNorm(num_groups=1, dtype=dtype, name=f"{name}_norm{i}")(x))
  return x


class Encoder3D(nn.Module):
  """`levels` resolutions with `features * 2**i` channels (Models Genesis: 32 -> 512 over
  5 levels), max-pooled by 2 between levels (levels - 1 poolings).

  Returns (bottleneck [N, D / 2**(levels-1), ..., features * 2**(levels-1)], skips): the
  skips are the outputs of levels 0 .. levels - 2, finest first."""

  features: int = 32
  levels: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    skips = []
    for i in range(self.levels):
      x = _double_conv(x, self.features * 2**i, f"level{i}", self.dtype)
      if i < self.levels - 1:
        skips.append(x)
        x = nn.max_pool(x, (2, 2, 2), (2, 2, 2))
    return x, tuple(skips)


class Decoder3D(nn.Module):
  """Per level, coarsest first: a 2x2x2 stride-2 transposed convolution, the encoder's skip
  of that level concatenated, two convolutions; then a 1x1x1 convolution and a sigmoid
  (images in [0, 1], as Models Genesis). float32 [N, D, H, W, out_channels]."""

  features: int = 32
  levels: int = 5
  out_channels: int = 1
  dtype: Any = jnp.float32
  logits: bool = False  # True: the output convolution's logits (a segmentation target)

  @nn.compact
  def __call__(self, bottleneck, skips):
    x = bottleneck
    for i in reversed(range(self.levels - 1)):
      x = ConvTranspose(self.features * 2**i, (2, 2, 2), (2, 2, 2), dtype=self.dtype,
                        name=f"up{i}")(x)
      x = _double_conv(jnp.concatenate([x, skips[i]], axis=-1), self.features * 2**i,
                       f"level{i}", self.dtype)
    x = Conv(self.out_channels, (1, 1, 1), dtype=self.dtype, name="output")(x)
    return x.astype(jnp.float32) if self.logits else jax.nn.sigmoid(x.astype(jnp.float32))


class DiscriminativeHead(nn.Module):
  """Global average pool (`pool="mean"`) or the whole flattened bottleneck
  (`pool="flatten"`: keeps where each feature is, which Jigsaw's arrangement classes need on
  small inputs) + one linear layer per head.

  `num_classes` an int: logits float32 [N, num_classes]. A tuple (several pseudo-label
  tasks on one input, e.g. Rubik's Cube ordering + per-cube rotations): a tuple of logits,
  one [N, classes] per head."""

  num_classes: int | tuple[int, ...] = 10
  pool: str = "mean"  # or "flatten"

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    pooled = x.mean(axis=(1, 2, 3)) if self.pool == "mean" else x.reshape(x.shape[0], -1)
    if isinstance(self.num_classes, int):
      return Dense(self.num_classes, name="dense")(pooled)
    return tuple(Dense(k, name=f"dense{i}")(pooled) for i, k in enumerate(self.num_classes))


class United(nn.Module):
  """Encoder + head, and the decoder when `restore` (stages (D)+R and ((D)+R)+A).

  `__call__(x [N, D, H, W, 1], train=False) -> (logits, restoration or None)`; `train` is
  accepted for the engine's calling convention and changes nothing (no dropout, no batch
  statistics). Spatial sides must be divisible by 2**(levels - 1)."""

  features: int = 32
  levels: int = 5
  num_classes: int | tuple[int, ...] = 10
  restore: bool = True
  out_channels: int = 1
  dtype: Any = jnp.float32
  segment: bool = False  # the decoder gives logits (a segmentation network; head unused)
  head_pool: str = "mean"

  def setup(self):
    self.encoder = Encoder3D(self.features, self.levels, self.dtype)
    self.head = DiscriminativeHead(self.num_classes, self.head_pool)
    if self.restore:
      self.decoder = Decoder3D(self.features, self.levels, self.out_channels, self.dtype,
                               logits=self.segment)

  def __call__(self, x, train: bool = False):
    del train
    bottleneck, skips = self.encoder(x)
    logits = self.head(bottleneck)
    restored = self.decoder(bottleneck, skips) if self.restore else None
    return logits, restored


class Adversary3D(nn.Module):
  """The adversary encoder A(T(x), candidate): the pair concatenated on channels, `levels`
  stride-2 3x3x3 convolutions (`features * 2**i` channels) with leaky ReLU (slope 0.2, as in
  pix2pix discriminators), a global average pool and one linear unit. One logit per sample,
  float32 [N]. No normalisation: on the coarse levels of small inputs a per-sample norm
  would see one voxel and output zeros."""

  features: int = 32
  levels: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, distorted, candidate):
    x = jnp.concatenate([distorted, candidate], axis=-1).astype(self.dtype)
    for i in range(self.levels):
      x = Conv(self.features * 2**i, (3, 3, 3), (2, 2, 2), padding=1, dtype=self.dtype,
               name=f"conv{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    pooled = x.astype(jnp.float32).mean(axis=(1, 2, 3))
    return Dense(1, name="logit")(pooled)[:, 0]
