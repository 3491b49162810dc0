"""The CateNorm U-Net (`DualNorm_Unet` of the CateNorm code), NHWC, logits.

Widths w1..w5 (default 32-64-128-256-512); every ResBlock is pre-activation:
norm_0 -> ReLU -> conv3x3 -> norm_1 -> ReLU -> conv3x3, plus the identity.

  inc     conv1x1(in_ch -> w1) -> ResBlock(w1)                          block 1
  down_k  maxpool2 -> conv3x3(w_k -> w_k+1) -> ResBlock(w_k+1), k=1..4   blocks 2-5
  mid     ResBlock(w5)
  up_k    norm -> ReLU -> ConvT3x3 s2 (c -> c/2) -> concat(skip, .) -> conv3x3 -> ResBlock
  outc    norm -> ReLU -> conv1x1(w1 -> n_classes)

A block named in `cnrb_blocks` is a CNRB: its norm_0 / norm_1 have CateNorm twins
(`cn_0`, `cn_1`) used when a class-probability `mask` is given. `mask=None` is the BN
pass (every block uses its ordinary norm); with a mask, the CNRBs use CateNorm and every
other layer is the same as in the BN pass, so the two passes share all convolutions.

`norm` picks the ordinary normalisation: "bn" (BatchNorm, PyTorch defaults), "in"
(InstanceNorm with affine), "gn" (GroupNorm) or "dsbn" (one BatchNorm per domain, picked
per sample by `domain`). The input side must be divisible by 16.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.errors import ConfigError
from medda_jax.models.conv import Conv, ConvTranspose

NORMS = ("bn", "in", "gn", "dsbn")
BLOCKS = ("inc", "down1", "down2", "down3", "down4")
BLOCK_1 = ("inc",)
BLOCKS_1_TO_4 = ("inc", "down1", "down2", "down3")

# PyTorch's default conv init (kaiming-uniform, a = sqrt(5)): the reference's layers.
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check_norm(norm: str, field: str = "norm") -> None:
  if norm not in NORMS:
    raise ConfigError(f"{field}={norm!r} is not a known normalisation; choose one of "
                      f"{list(NORMS)}")


def check_blocks(blocks: Sequence[str], field: str = "cnrb_blocks") -> None:
  unknown = [b for b in blocks if b not in BLOCKS]
  if unknown:
    raise ConfigError(f"{field} has unknown blocks {unknown}; CNRBs can be {list(BLOCKS)}")


# --------------------------------------------------------------------------- mask resize
def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of 1-D linear interpolation with align_corners=True: output i
  samples input position i * (n_in - 1) / (n_out - 1), so the end samples coincide."""
  pos = (np.zeros(1) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1))
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def resize_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [N, H, W, C] to `size` as PyTorch's
  `F.interpolate(..., mode="bilinear", align_corners=True)` (`jax.image.resize` uses
  half-pixel centres instead)."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(align_corners_matrix(h, size[0]), x.dtype)
  mw = jnp.asarray(align_corners_matrix(w, size[1]), x.dtype)
  return jnp.einsum("ph,qw,nhwc->npqc", mh, mw, x)


# --------------------------------------------------------------------------- norms
class DomainBatchNorm(nn.Module):
  """DSBN: one BatchNorm (scale, bias, running statistics) per domain; each sample is
  normalised with its domain's statistics. In training, each domain's batch statistics
  come from its own samples and only the domains present update their running stats."""

  n_domains: int
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, domain, train: bool):
    d, c = self.n_domains, x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d, c))
    bias = self.param("bias", nn.initializers.zeros, (d, c))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d, c), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((d, c), jnp.float32))
    if domain is None:
      domain = jnp.zeros(x.shape[:1], jnp.int32)
    onehot = jax.nn.one_hot(domain, d, dtype=jnp.float32)  # [N, D]
    xf = x.astype(jnp.float32)
    if train:
      count = onehot.sum(0) * (x.shape[1] * x.shape[2])
      denom = jnp.maximum(count, 1.0)[:, None]
      mean_d = jnp.einsum("nhwc,nd->dc", xf, onehot) / denom
      var_d = jnp.einsum("nhwc,nd->dc", xf * xf, onehot) / denom - mean_d ** 2
      var_d = jnp.maximum(var_d, 0.0)
      if not self.is_initializing():
        present = (count > 0)[:, None]
        m = self.momentum
        ra_mean.value = jnp.where(present, m * ra_mean.value + (1 - m) * mean_d, ra_mean.value)
        ra_var.value = jnp.where(present, m * ra_var.value + (1 - m) * var_d, ra_var.value)
    else:
      mean_d, var_d = ra_mean.value, ra_var.value
    mean, var = onehot @ mean_d, onehot @ var_d  # [N, C]
    y = (xf - mean[:, None, None]) * jax.lax.rsqrt(var[:, None, None] + self.epsilon)
    y = y * (onehot @ scale)[:, None, None] + (onehot @ bias)[:, None, None]
    return y.astype(x.dtype)


def _batch_norm(train: bool, dtype, name: str, affine: bool = True):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      use_scale=affine, use_bias=affine, name=name)


def normalise(kind: str, x, *, name: str, train: bool, domain, n_domains: int, dtype):
  """The ordinary norm `kind`, created in the calling compact module under `name`."""
  c = x.shape[-1]
  if kind == "bn":
    return _batch_norm(train, dtype, name)(x)
  if kind == "in":
    return nn.InstanceNorm(epsilon=1e-5, dtype=dtype, name=name)(x)
  if kind == "gn":
    return nn.GroupNorm(num_groups=math.gcd(32, c), epsilon=1e-5, dtype=dtype, name=name)(x)
  if kind == "dsbn":
    return DomainBatchNorm(n_domains, name=name)(x, domain, train)
  check_norm(kind)
  raise AssertionError(kind)


class CateNorm(nn.Module):
  """CateNorm (the code's `SPADE`): affine-free BatchNorm with its own running statistics,
  modulated per pixel by convolutions of the class-probability mask:
  x_hat * (1 + gamma(m)) + beta(m), m resized bilinearly (align_corners) to x."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    x_hat = _batch_norm(train, self.dtype, "bn", affine=False)(x)
    m = resize_align_corners(mask.astype(x.dtype), x.shape[1:3])
    conv = lambda f, name: Conv(f, (3, 3), padding="SAME", kernel_init=torch_conv_init,  # noqa: E731
                                   dtype=self.dtype, name=name)
    h = nn.relu(conv(max(1, self.features // 2), "shared")(m))
    gamma = conv(self.features, "gamma")(h)
    beta = conv(self.features, "beta")(h)
    return x_hat * (1.0 + gamma) + beta


# --------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
  """Pre-activation residual block; a CNRB (`cnrb=True`) swaps both norms for CateNorm
  when a mask is given."""

  features: int
  norm: str
  cnrb: bool = False
  n_domains: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool, domain=None):
    def norm(i, h):
      if self.cnrb and mask is not None:
        return CateNorm(self.features, self.dtype, name=f"cn_{i}")(h, mask, train)
      return normalise(self.norm, h, name=f"norm_{i}", train=train, domain=domain,
                       n_domains=self.n_domains, dtype=self.dtype)

    conv = lambda name: Conv(self.features, (3, 3), padding="SAME",  # noqa: E731
                                kernel_init=torch_conv_init, dtype=self.dtype, name=name)
    h = conv("conv_0")(nn.relu(norm(0, x)))
    h = conv("conv_1")(nn.relu(norm(1, h)))
    return x + h


class DualNormUNet(nn.Module):
  n_classes: int
  cnrb_blocks: Sequence[str] = BLOCK_1
  in_ch: int = 3
  widths: Sequence[int] = (32, 64, 128, 256, 512)
  norm: str = "bn"
  n_domains: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False, domain=None):
    """Logits [N, H, W, n_classes]. `mask` None: the BN pass; else the class
    probabilities [N, H', W', n_classes] (any size) that condition the CNRBs."""
    check_norm(self.norm)
    check_blocks(self.cnrb_blocks)
    if x.shape[-1] != self.in_ch:
      raise ConfigError(f"the network takes {self.in_ch} input channels, got {x.shape[-1]}")
    depth = len(self.widths) - 1
    if x.shape[1] % 2 ** depth or x.shape[2] % 2 ** depth:
      raise ConfigError(f"image side {x.shape[1:3]} must be divisible by {2 ** depth}")
    kw = dict(norm=self.norm, n_domains=self.n_domains, dtype=self.dtype)

    def res(block: str, h):
      return ResBlock(h.shape[-1], cnrb=block in self.cnrb_blocks, name=f"{block}_res", **kw)(
          h, mask, train, domain)

    def conv(f, k, name):
      return Conv(f, (k, k), padding="SAME", kernel_init=torch_conv_init, dtype=self.dtype,
                     name=name)

    def plain_norm(h, name):
      return normalise(self.norm, h, name=name, train=train, domain=domain,
                       n_domains=self.n_domains, dtype=self.dtype)

    x = x.astype(self.dtype)
    h = res("inc", conv(self.widths[0], 1, "inc_conv")(x))
    skips = [h]
    for k in range(1, depth + 1):
      h = nn.max_pool(h, (2, 2), (2, 2))
      h = res(f"down{k}", conv(self.widths[k], 3, f"down{k}_conv")(h))
      skips.append(h)
    h = res("mid", h)
    for k in range(1, depth + 1):
      cin = h.shape[-1]
      skip = skips[depth - k]
      h = nn.relu(plain_norm(h, f"up{k}_norm"))
      # ConvT 3x3, stride 2, padding 1, output_padding 1 (PyTorch): exactly 2x the side.
      h = ConvTranspose(cin // 2, (3, 3), (2, 2), padding=((1, 2), (1, 2)),
                           kernel_init=torch_conv_init, dtype=self.dtype, name=f"up{k}_convt")(h)
      h = jnp.concatenate([skip, h], axis=-1)
      h = res(f"up{k}", conv(skip.shape[-1], 3, f"up{k}_conv")(h))
    h = nn.relu(plain_norm(h, "outc_norm"))
    return conv(self.n_classes, 1, "outc_conv")(h).astype(jnp.float32)

  def both_passes(self, x, train: bool = False, domain=None):
    """BN pass -> softmax (stopped) -> CateNorm pass: (BN logits, CateNorm logits).
    Used for inference and to create every variable at init."""
    bn_logits = self(x, None, train, domain)
    mask = jax.lax.stop_gradient(jax.nn.softmax(bn_logits, axis=-1))
    return bn_logits, self(x, mask, train, domain)


def init_variables(model: DualNormUNet, rng, image_size: int):
  """All variables (BN and CateNorm branches) for [1, S, S, in_ch] inputs."""
  x = jnp.zeros((1, image_size, image_size, model.in_ch), jnp.float32)
  return model.init(rng, x, train=False, method=DualNormUNet.both_passes)
