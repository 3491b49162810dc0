"""U-Nets with instance normalisation, NHWC, logits out.

`UNet()` with its defaults is MetaMedSeg's network (reference code `UNet_Cells`):
three levels (32-64-128 channels), double 3x3 convolutions each followed by
instance norm without affine parameters and ReLU, bilinear x2 up-sampling with
align_corners semantics, a 1x1 output convolution and every conv weight drawn
from N(0, 1). Other settings give the deeper transposed-convolution U-Net of the
shared PyTorch benchmark and the 16-filter U-Net of the transfer experiments.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.models.conv import Conv, ConvTranspose


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation matrix: output i samples input i*(n_in-1)/(n_out-1)."""
  if n_out == 1 or n_in == 1:
    m = np.zeros((n_out, n_in), np.float32)
    m[:, 0] = 1.0
    return m
  pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


def upsample_bilinear_align_corners(x: jax.Array, factor: int = 2) -> jax.Array:
  """Bilinear up-sampling of NHWC `x` as torch's `align_corners=True` does it.

  `jax.image.resize` uses half-pixel centres, which differs at every pixel, so the
  two separable interpolations are written as small matrix products.
  """
  _, h, w, _ = x.shape
  rows = jnp.asarray(align_corners_matrix(h, h * factor), x.dtype)
  cols = jnp.asarray(align_corners_matrix(w, w * factor), x.dtype)
  return jnp.einsum("ph,qw,nhwc->npqc", rows, cols, x)


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-sample, per-channel normalisation over H and W, statistics in float32."""
  return _instance_norm32(x.astype(jnp.float32), eps).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _instance_norm32(x, eps):
  return _instance_norm32_fwd(x, eps)[0]


def _instance_norm32_fwd(x, eps):
  centred = x - x.mean(axis=(1, 2), keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(centred).mean(axis=(1, 2), keepdims=True) + eps)
  x_hat = centred * rstd
  return x_hat, (x_hat, rstd)


def _instance_norm32_bwd(eps, residuals, g):
  # The textbook backward, dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std, in one pass
  # over the saved x_hat: autodiff of mean and var left XLA:CPU about 13 % more work in a
  # U-Net's backward pass (5-level net, one core: 208 against 183 ms forward + backward).
  x_hat, rstd = residuals
  mean = lambda t: t.mean(axis=(1, 2), keepdims=True)  # noqa: E731
  return (rstd * (g - mean(g) - x_hat * mean(g * x_hat)),)


_instance_norm32.defvjp(_instance_norm32_fwd, _instance_norm32_bwd)


class DoubleConv(nn.Module):
  """[conv3x3 -> instance norm -> ReLU] x 2."""

  features: int
  affine_norm: bool = False
  kernel_init: Callable = nn.initializers.normal(stddev=1.0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = Conv(self.features, (3, 3), padding=1, kernel_init=self.kernel_init,
                  dtype=self.dtype)(x)
      x = instance_norm(x)
      if self.affine_norm:
        scale = self.param(f"norm_scale_{i}", nn.initializers.ones, (self.features,))
        bias = self.param(f"norm_bias_{i}", nn.initializers.zeros, (self.features,))
        x = x * scale.astype(x.dtype) + bias.astype(x.dtype)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net with `levels` resolutions (levels - 1 poolings) and `features * 2**i` channels.

  Attributes:
    features: channels at the finest level (32 in MetaMedSeg, 16 in the transfer paper).
    levels: resolutions, including the bottleneck (3 in MetaMedSeg).
    upsample: "bilinear" (align_corners, MetaMedSeg) or "transpose" (2x2 stride-2 conv).
    affine_norm: learnable scale and shift after instance norm.
    init_std: std of the normal conv-weight init; None uses LeCun normal.
    out_channels: output logits.
    dtype: compute dtype (parameters stay float32); logits are returned in float32.
  """

  features: int = 32
  levels: int = 3
  upsample: str = "bilinear"
  affine_norm: bool = False
  init_std: float | None = 1.0
  out_channels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.upsample not in ("bilinear", "transpose"):
      raise ValueError(f"upsample must be 'bilinear' or 'transpose', got {self.upsample!r}")
    init = (nn.initializers.normal(stddev=self.init_std) if self.init_std is not None
            else nn.initializers.lecun_normal())
    block = lambda c: DoubleConv(c, self.affine_norm, init, self.dtype)
    x = x.astype(self.dtype)
    skips = []
    for i in range(self.levels):
      x = block(self.features * 2**i)(x)
      if i < self.levels - 1:
        skips.append(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
    for i in reversed(range(self.levels - 1)):
      if self.upsample == "bilinear":
        x = upsample_bilinear_align_corners(x)
      else:
        x = ConvTranspose(self.features * 2**i, (2, 2), (2, 2), kernel_init=init,
                             dtype=self.dtype)(x)
      x = block(self.features * 2**i)(jnp.concatenate([x, skips[i]], axis=-1))
    logits = Conv(self.out_channels, (1, 1), kernel_init=init, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)
