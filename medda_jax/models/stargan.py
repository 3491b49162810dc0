"""StarGAN's domain-conditioned generator and PatchGAN critic, and CyCADA's LeNet.

Layouts follow the public references the paper builds on (`yunjey/stargan` model.py and
`jhoffman/cycada_release` task_net.py), with PyTorch's paddings written out (a 4x4 stride-2
convolution with padding 1 is `padding=((1, 1), (1, 1))`, never "SAME").

Generator G(x, c): the image concatenated with the one-hot target domain tiled over H x W;
Conv 7x7 -> 2 down-sampling Conv 4x4/2 -> `res_blocks` residual blocks -> 2 transposed Conv
4x4/2 -> Conv 7x7 -> tanh. Every convolution is bias-free and, except the last, followed by
InstanceNorm (affine, instance statistics always: the reference never switches G to eval
mode) and ReLU. Widths: `base_channels`, x2, x4, then back.

Critic D(x) -> (src, cls): `layers` Conv 4x4/2 (with bias) + LeakyReLU(0.01), widths
`base_channels * 2^i` without a cap and no normalisation (so the gradient penalty's
per-sample gradients are exact); heads on the last map h: `src` = Conv 3x3 -> 1 (a patch
realism map [N, h, w]) and `cls` = Conv k x k, no padding, k = size // 2^layers -> n_domains
logits [N, n_domains]. Both heads are bias-free as in the reference.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv
from medda_jax.models.wgan import ConvTranspose4x4

_PAD1 = ((1, 1), (1, 1))


def critic_layers(size: int, max_layers: int = 6) -> int:
  """The spec's L = min(max_layers, floor(log2(size))): 6 at 128 and 224 px, 5 at 32 px."""
  return min(max_layers, size.bit_length() - 1)


def tile_domain(x: jax.Array, domain: jax.Array, n_domains: int) -> jax.Array:
  """[N, H, W, C] images and [N] domain indices -> [N, H, W, C + n_domains]."""
  onehot = jax.nn.one_hot(domain, n_domains, dtype=x.dtype)
  return jnp.concatenate(
      [x, jnp.broadcast_to(onehot[:, None, None, :], x.shape[:3] + (n_domains,))], axis=-1)


class ResidualBlock(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda: nn.InstanceNorm(epsilon=1e-5, dtype=self.dtype)
    h = Conv(self.features, (3, 3), padding=_PAD1, use_bias=False, dtype=self.dtype)(x)
    h = nn.relu(norm()(h))
    h = Conv(self.features, (3, 3), padding=_PAD1, use_bias=False, dtype=self.dtype)(h)
    return x + norm()(h)


class StarGenerator(nn.Module):
  n_domains: int = 2
  channels: int = 3
  base_channels: int = 64
  res_blocks: int = 6
  subpixel: bool = True  # how the transposed convolutions run (same map, see ConvTranspose4x4)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, domain):
    """x [N, H, W, channels] in [-1, 1], domain [N] target-domain indices -> [N, H, W, channels]."""
    norm_relu = lambda h: nn.relu(nn.InstanceNorm(epsilon=1e-5, dtype=self.dtype)(h))
    h = tile_domain(x.astype(self.dtype), domain, self.n_domains)
    width = self.base_channels
    h = norm_relu(Conv(width, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                          dtype=self.dtype)(h))
    for _ in range(2):
      width *= 2
      h = norm_relu(Conv(width, (4, 4), (2, 2), padding=_PAD1, use_bias=False,
                            dtype=self.dtype)(h))
    for _ in range(self.res_blocks):
      h = ResidualBlock(width, self.dtype)(h)
    for _ in range(2):
      width //= 2
      h = norm_relu(ConvTranspose4x4(width, self.subpixel, dtype=self.dtype)(h))
    h = Conv(self.channels, (7, 7), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype)(h)
    return jnp.tanh(h.astype(jnp.float32))


class StarDiscriminator(nn.Module):
  size: int = 128
  n_domains: int = 2
  base_channels: int = 64
  layers: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [N, size, size, C] -> (src [N, h, w] patch scores, cls [N, n_domains] logits)."""
    if x.shape[1] != self.size or x.shape[2] != self.size:
      raise ValueError(f"critic built for {self.size}x{self.size} images, got {x.shape[1:3]}")
    kernel = self.size // 2 ** self.layers
    if kernel < 1:
      raise ValueError(f"{self.layers} stride-2 layers leave nothing of a {self.size}-pixel "
                       "image; use critic_layers(size)")
    h = x.astype(self.dtype)
    for i in range(self.layers):
      h = Conv(self.base_channels * 2 ** i, (4, 4), (2, 2), padding=_PAD1, dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.01)
    src = Conv(1, (3, 3), padding=_PAD1, use_bias=False, dtype=self.dtype, name="src")(h)
    cls = Conv(self.n_domains, (kernel, kernel), padding="VALID", use_bias=False,
                  dtype=self.dtype, name="cls")(h)
    # The reference views cls as [N, n_domains]: its map is 1x1 whenever size is a power of
    # two, and 1x1 too at 224 px (a 3x3 map, kernel 3). Any other size is refused here.
    if cls.shape[1:3] != (1, 1):
      raise ValueError(f"classification head leaves a {cls.shape[1:3]} map at {self.size} px")
    return src[..., 0].astype(jnp.float32), cls[:, 0, 0, :].astype(jnp.float32)


class LeNet(nn.Module):
  """CyCADA's digit task network at 32x32: Conv5(20)-Pool-ReLU-Conv5(50)-Dropout2d-Pool-ReLU
  -Dense(500)-ReLU-Dropout-Dense(classes). `train` turns dropout on (rng "dropout")."""
  num_classes: int = 10
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pool = lambda h: nn.max_pool(h, (2, 2), strides=(2, 2))
    h = x.astype(self.dtype)
    h = nn.relu(pool(Conv(20, (5, 5), padding="VALID", dtype=self.dtype)(h)))
    h = Conv(50, (5, 5), padding="VALID", dtype=self.dtype)(h)
    # Dropout2d: whole feature maps (the mask is shared over H and W).
    h = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
    h = nn.relu(pool(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(nn.Dense(500, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_classes, dtype=self.dtype)(h).astype(jnp.float32)
