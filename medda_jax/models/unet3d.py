"""A compact 3-D U-Net (nnU-Net-like: double 3x3x3 conv -> instance norm -> leaky ReLU per
level, strided-pool down, transposed-conv up), NDHWC, logits out.

The input of the first normalisation layer (the first convolution's output) is sown as
`intermediates/norm1_input`: ODEx reads its features there (`apply(..., capture=True)`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv, ConvTranspose


def instance_norm3d(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-sample, per-channel normalisation over D, H and W (statistics in float32)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=(1, 2, 3), keepdims=True)
  var = jnp.square(x32 - mean).mean(axis=(1, 2, 3), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class UNet3D(nn.Module):
  """`levels` resolutions (levels - 1 poolings by 2), `features * 2**i` channels."""

  features: int = 8
  levels: int = 3
  out_channels: int = 1
  dtype: Any = jnp.float32

  def block(self, x, features: int, name: str):
    for i in range(2):
      x = Conv(features, (3, 3, 3), padding=1, dtype=self.dtype, name=f"{name}_conv{i}")(x)
      if name == "enc0" and i == 0:
        self.sow("intermediates", "norm1_input", x)
      x = nn.leaky_relu(instance_norm3d(x), 0.01)
    return x

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    skips = []
    for i in range(self.levels):
      x = self.block(x, self.features * 2**i, f"enc{i}")
      if i < self.levels - 1:
        skips.append(x)
        x = nn.max_pool(x, (2, 2, 2), (2, 2, 2))
    for i in reversed(range(self.levels - 1)):
      x = ConvTranspose(self.features * 2**i, (2, 2, 2), (2, 2, 2), dtype=self.dtype)(x)
      x = self.block(jnp.concatenate([x, skips[i]], axis=-1), self.features * 2**i, f"dec{i}")
    return Conv(self.out_channels, (1, 1, 1), dtype=self.dtype)(x).astype(jnp.float32)
