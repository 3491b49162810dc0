"""Convolutional WGAN generator and spectral-norm critic (Alrajhi et al., one GAN per class).

The paper starts from the MLP WGAN of PyTorch-GAN and only says it added convolutions to
both networks and spectral normalisation to the critic; the layout here is the spec's.

Generator G(z), z ~ N(0, I) of `latent_dim`: Dense -> 4x4xC0 -> BN -> LeakyReLU(0.2); then
log2(size / 4) up-blocks, each ConvTranspose 4x4/2 (PyTorch padding 1, `ConvTranspose4x4`) -> BN -> LeakyReLU
-> Conv 3x3 -> BN -> LeakyReLU, halving the channels per block down to `min_channels`;
Conv 3x3 -> `channels` and tanh (images in [-1, 1]). Layers followed by BatchNorm have
no bias (BN removes it; its gradient is zero and Adam would amplify rounding noise).

Critic f(x): log2(size / 4) down-blocks, each SN-Conv 4x4/2 -> LeakyReLU -> SN-Conv 3x3 ->
LeakyReLU, doubling channels from `base_channels` up to `max_channels`; flatten -> SN-Dense
-> 1 score (no sigmoid). No normalisation besides spectral norm, so the gradient penalty's
per-sample gradients are exact. Spectral norm (Miyato et al., 2018) is Flax's
`SpectralNorm` with one power iteration per call; its `u` vectors and `sigma` live in the
"batch_stats" collection and advance only when `update_stats=True` (critic updates), not
in the generator's loss or at evaluation.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from medda_jax.models.conv import Conv, conv_general_dilated, conv_transpose


def _num_blocks(size: int) -> int:
  blocks = int(round(math.log2(size / 4))) if size >= 8 else 0
  if size < 8 or 4 * 2 ** blocks != size:
    raise ValueError(f"image size must be 4 * 2^k with k >= 1, got {size}")
  return blocks


# Output phase (0: even, 1: odd row/column) -> {offset in a 3x3 window (0, 1, 2 for input
# index m - 1, m, m + 1): tap of the 4x4 transposed-conv kernel}. From o = 2i - 1 + k.
_PHASE_TAPS = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}


def subpixel_conv_transpose(x, tap, phase_taps: dict, window: int, padding, features: int):
  """A stride-2 transposed convolution as one convolution over a `window` x `window`
  neighbourhood to 4 x `features` channels (one group per output phase) followed by
  depth-to-space. `phase_taps[a]` maps an offset in the window to the kernel row that
  output phase a takes there (columns alike); `tap(ky, kx)` is that tap's [in, features]
  matrix; `padding` is the convolution's ((top, bottom), (left, right))."""
  cin = x.shape[-1]
  k = jnp.zeros((window, window, cin, 2, 2, features), x.dtype)
  for a, rows in phase_taps.items():
    for b, cols in phase_taps.items():
      for dy, ky in rows.items():
        for dx, kx in cols.items():
          k = k.at[dy, dx, :, a, b, :].set(tap(ky, kx))
  y = conv_general_dilated(x, k.reshape(window, window, cin, 4 * features), (1, 1),
                                   padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, features)


class ConvTranspose4x4(nn.Module):
  """PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1, no bias): doubles H and W.

  `kernel[ky, kx, in, out]` is torch's `weight[in, out, ky, kx]`, so that
  out[2i - 1 + ky, 2j - 1 + kx] += x[i, j] @ kernel[ky, kx]. With `subpixel=True` (default)
  the same map runs as one 3x3 convolution to 4 x features channels (one group per output
  phase, the unused taps zero) followed by depth-to-space: XLA:CPU computes the kernel
  gradient of a real transposed convolution about 6x slower than this (670 vs 104 ms at
  64x8x8x128 -> 64, measured). `subpixel=False` calls lax.conv_transpose (cuDNN's kernels
  on GPU; no wasted multiply-adds).
  """
  features: int
  subpixel: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, cin, self.features))
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    dims = ("NHWC", "HWIO", "NHWC")
    if not self.subpixel:
      # flax/lax transposed convs correlate the dilated input: torch's taps, flipped.
      return conv_transpose(x, kernel[::-1, ::-1], (2, 2), ((2, 2), (2, 2)),
                            dimension_numbers=dims)
    return subpixel_conv_transpose(x, lambda ky, kx: kernel[ky, kx], _PHASE_TAPS, 3,
                                   ((1, 1), (1, 1)), self.features)


class Generator(nn.Module):
  size: int = 128
  channels: int = 1
  latent_dim: int = 100
  max_channels: int = 512
  min_channels: int = 32
  subpixel: bool = True  # how ConvTranspose4x4 runs (same map, see there)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    blocks = _num_blocks(self.size)
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                              dtype=self.dtype)
    act = lambda x: nn.leaky_relu(x, 0.2)
    width = self.max_channels
    x = nn.Dense(4 * 4 * width, use_bias=False, dtype=self.dtype)(z)
    x = act(bn()(x.reshape(z.shape[0], 4, 4, width)))
    for _ in range(blocks):
      width = max(width // 2, self.min_channels)
      x = ConvTranspose4x4(width, self.subpixel, dtype=self.dtype)(x)
      x = act(bn()(x))
      x = act(bn()(Conv(width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    x = Conv(self.channels, (3, 3), dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Critic(nn.Module):
  size: int = 128
  base_channels: int = 32
  max_channels: int = 512
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    blocks = _num_blocks(self.size)
    if x.shape[1] != self.size or x.shape[2] != self.size:
      raise ValueError(f"critic built for {self.size}x{self.size} images, got {x.shape[1:3]}")

    def layer(module, h):
      if self.spectral_norm:
        return nn.SpectralNorm(module)(h, update_stats=update_stats)
      return module(h)

    act = lambda h: nn.leaky_relu(h, 0.2)
    h = x.astype(self.dtype)
    width = self.base_channels
    for _ in range(blocks):
      h = act(layer(Conv(width, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                            dtype=self.dtype), h))
      h = act(layer(Conv(width, (3, 3), dtype=self.dtype), h))
      width = min(width * 2, self.max_channels)
    h = h.reshape(h.shape[0], -1)
    return layer(nn.Dense(1, dtype=self.dtype), h)[:, 0].astype(jnp.float32)
