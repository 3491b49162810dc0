"""CycleGAN's ResNet generator and 70x70 PatchGAN critic, NHWC.

Layouts follow the public reference (`junyanz/pytorch-CycleGAN-and-pix2pix`, models/
networks.py) with its defaults: `netG='resnet_9blocks'`, `netD='basic'`, `norm='instance'`,
no dropout. Instance normalisation there is `InstanceNorm2d(affine=False,
track_running_stats=False)`: per image and channel, biased variance over H x W, eps 1e-5, no
parameters and no state, so both networks are pure functions of (params, x). Because that
norm has no shift of its own, every convolution keeps its bias.

Generator (channels -> channels, images in [-1, 1]): ReflectionPad 3 -> Conv 7x7 (F) -> IN
-> ReLU; two Conv 3x3/2 (PyTorch padding 1) to 2F and 4F, each -> IN -> ReLU; `n_blocks`
residual blocks x + [ReflectionPad 1 -> Conv 3x3 -> IN -> ReLU -> ReflectionPad 1 -> Conv
3x3 -> IN]; two ConvTranspose 3x3/2 (padding 1, output_padding 1) to 2F and F, each -> IN
-> ReLU; ReflectionPad 3 -> Conv 7x7 (channels) -> tanh. With 3 channels, F = 64 and 9
blocks it has 11,378,179 parameters (the reference prints 11.378 M).

Critic (netD='basic', no sigmoid: the LSGAN loss takes raw scores): Conv 4x4/2 (F) ->
LeakyReLU 0.2; for n in 1 .. n_layers - 1 Conv 4x4/2 (F * min(2^n, 8)) -> IN -> LeakyReLU;
Conv 4x4/1 (F * min(2^n_layers, 8)) -> IN -> LeakyReLU; Conv 4x4/1 (1), all with PyTorch
padding 1. A 256-px image gives a 30 x 30 map of patch scores; with 3 channels, F = 64 and
3 layers it has 2,764,737 parameters (2.765 M in the reference).

Initialisation is the reference's `init_weights(init_type='normal', init_gain=0.02)`:
every convolution and transposed-convolution weight N(0, 0.02), every bias 0.

Kernels are stored in Flax's HWIO layout. For the transposed convolutions this is
`kernel[ky, kx, out, in] = torch_weight[in, out, ky, kx]`: `nn.ConvTranspose(...,
transpose_kernel=True)` runs lax's transposed convolution as the gradient of a forward
convolution, which is what torch's ConvTranspose2d is, taps and orientation included.
Parameters stay float32; `dtype` is the compute dtype (instance statistics in float32);
outputs are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.models.conv import Conv, conv_transpose
from medda_jax.models.wgan import subpixel_conv_transpose

# The reference's init_weights(init_type="normal", init_gain=0.02).
_WEIGHT_INIT = nn.initializers.normal(stddev=0.02)
_BIAS_INIT = nn.initializers.zeros


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays or `jax.eval_shape` shapes)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """torch.nn.ReflectionPad2d(pad) on NHWC: mirrors H and W without repeating the edge."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
  """torch.nn.InstanceNorm2d(affine=False): per image and channel, (x - mean) / sqrt(var +
  eps) over H and W with the biased variance; computed in float32, returned in x's dtype."""
  h = x.astype(jnp.float32)
  mean = jnp.mean(h, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=(1, 2), keepdims=True)
  return ((h - mean) * jax.lax.rsqrt(var + epsilon)).astype(x.dtype)


def conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1,
         padding: int = 0) -> nn.Conv:
  """A square Conv2d with bias, PyTorch-style zero padding and the reference's init."""
  return Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), kernel_init=_WEIGHT_INIT,
                 bias_init=_BIAS_INIT, dtype=dtype, name=name)


# Sub-pixel form of the transposed conv below: output row 2m + a gathers input rows m + d
# through torch's kernel row ky, {phase a: {offset d: ky}} (columns alike), from
# out[2i - 1 + ky] += x[i] W[ky] (stride 2, padding 1, output_padding 1).
_PHASE_TAPS = {0: {0: 1}, 1: {0: 2, 1: 0}}


class ConvTransposeUp(nn.Module):
  """torch ConvTranspose2d(kernel 3, stride 2, padding 1, output_padding 1, bias): 2H x 2W.

  The kernel is `kernel[ky, kx, out, in] = torch_weight[in, out, ky, kx]` (Flax's
  `ConvTranspose(transpose_kernel=True)` layout). `subpixel=False` runs lax's transposed
  convolution (the gradient of a forward conv: torch's map, taps and orientation included;
  torch's padding p and output_padding q become k - 1 - p = 1 before and k - 1 - p + q = 2
  after). `subpixel=True` (default) computes the same map as one 2x2 convolution to 4 x
  features channels, one group per output phase, then depth-to-space: XLA:CPU runs the
  input-dilated convolutions of the transposed form, and their gradients, several times
  slower (as `models.wgan.ConvTranspose4x4` measured).
  """
  features: int
  subpixel: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", _WEIGHT_INIT, (3, 3, self.features, cin)).astype(self.dtype)
    bias = self.param("bias", _BIAS_INIT, (self.features,)).astype(self.dtype)
    x = x.astype(self.dtype)
    dims = ("NHWC", "HWIO", "NHWC")
    if not self.subpixel:
      y = conv_transpose(x, kernel, (2, 2), ((1, 2), (1, 2)), dimension_numbers=dims,
                         transpose_kernel=True)
      return y + bias
    return subpixel_conv_transpose(x, lambda ky, kx: kernel[ky, kx].T, _PHASE_TAPS, 2,
                                   ((0, 1), (0, 1)), self.features) + bias


def conv_transpose_up(features: int, dtype: Any, name: str,
                      subpixel: bool = True) -> ConvTransposeUp:
  """The generator's up-sampling layer (`ConvTransposeUp`)."""
  return ConvTransposeUp(features, subpixel, dtype, name=name)


class ResnetBlock(nn.Module):
  """x + [ReflectPad 1 -> Conv 3x3 -> IN -> ReLU -> ReflectPad 1 -> Conv 3x3 -> IN]."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = conv(self.features, 3, self.dtype, "conv_0")(reflect_pad(x, 1))
    h = nn.relu(instance_norm(h))
    h = conv(self.features, 3, self.dtype, "conv_1")(reflect_pad(h, 1))
    return x + instance_norm(h)


class ResnetGenerator(nn.Module):
  """The reference's ResnetGenerator (resnet_9blocks with instance norm, no dropout).

  Attributes:
    channels: image channels, in and out.
    features: width of the first layer (ngf); the residual blocks run at 4x this.
    n_blocks: residual blocks (9 for 256-px images in the reference).
    dtype: compute dtype (parameters stay float32).
  """

  channels: int = 1
  features: int = 64
  n_blocks: int = 9
  subpixel: bool = True  # how the transposed convolutions run (same map, see ConvTransposeUp)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [N, H, W, channels] in [-1, 1], H and W multiples of 4 -> float32, same shape."""
    h = x.astype(self.dtype)
    h = conv(self.features, 7, self.dtype, "stem")(reflect_pad(h, 3))
    h = nn.relu(instance_norm(h))
    for i in range(2):
      h = conv(self.features * 2 ** (i + 1), 3, self.dtype, f"down_{i}", stride=2, padding=1)(h)
      h = nn.relu(instance_norm(h))
    for i in range(self.n_blocks):
      h = ResnetBlock(self.features * 4, self.dtype, name=f"block_{i}")(h)
    for i in range(2):
      h = conv_transpose_up(self.features * 2 ** (1 - i), self.dtype, f"up_{i}",
                            self.subpixel)(h)
      h = nn.relu(instance_norm(h))
    h = conv(self.channels, 7, self.dtype, "head")(reflect_pad(h, 3))
    return jnp.tanh(h.astype(jnp.float32))


class NLayerDiscriminator(nn.Module):
  """The reference's PatchGAN critic (netD='basic' is n_layers=3: 70x70 receptive field).

  Attributes:
    features: width of the first layer (ndf); layer n has ndf * min(2^n, 8) channels.
    n_layers: stride-2 convolutions (the first without norm) before the two stride-1 ones.
    dtype: compute dtype (parameters stay float32).
  """

  features: int = 64
  n_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [N, H, W, C] -> float32 patch scores [N, h, w, 1] (30 x 30 at 256 px, 3 layers)."""
    lrelu = lambda h: nn.leaky_relu(h, 0.2)
    h = x.astype(self.dtype)
    h = lrelu(conv(self.features, 4, self.dtype, "conv_0", stride=2, padding=1)(h))
    for n in range(1, self.n_layers):
      width = self.features * min(2 ** n, 8)
      h = conv(width, 4, self.dtype, f"conv_{n}", stride=2, padding=1)(h)
      h = lrelu(instance_norm(h))
    width = self.features * min(2 ** self.n_layers, 8)
    h = conv(width, 4, self.dtype, f"conv_{self.n_layers}", padding=1)(h)
    h = lrelu(instance_norm(h))
    h = conv(1, 4, self.dtype, "head", padding=1)(h)
    return h.astype(jnp.float32)
