"""SIFA's networks (Chen et al., TMI 2020) and SynthMix's Mixup Inspector, NHWC.

Layouts are those of the public TensorFlow reference (`cchen-cc/SIFA`, model.py and
layers.py) at its defaults (ngf 32, ndf 64, encoder width 16, `skip` on, `keep_rate` 1.0
at training). Its two convolution helpers differ: `general_conv2d` has no bias,
`general_conv2d_ga`, `dilate_conv2d` and the transposed convolutions have one (zeros). All
weights are truncated normal (TF `truncated_normal_initializer`: N(0, std) cut at +-2 std,
no rescaling), std 0.01 in the encoder, in the `general_conv2d` residual blocks and in the
segmenter, 0.02 elsewhere. Every pad is zero ("CONSTANT"); "SAME" is TF's (and Flax's)
padding, the extra pixel of an odd total at the bottom/right.

Instance norm is TF contrib's `instance_norm`: per image and channel over H x W, biased
variance, eps 1e-6, a learnable scale (ones) and offset (zeros) per channel (`InstanceNorm`).
Batch norm is TF contrib's `batch_norm(decay=0.9, scale=True, center=True)`: Flax's
`nn.BatchNorm(momentum=0.9, epsilon=1e-3)`, running statistics in the "batch_stats"
collection (the running variance there averages the biased batch variance; TF's fused
kernel averages the unbiased one, a factor n/(n-1) for n = B*H*W values per channel).

Generator G_{S->T} (`g_A`, F = 32): zero pad 3 -> Conv 7x7 VALID (F) -> IN -> ReLU; Conv
3x3/2 SAME to 2F and 4F, each -> IN -> ReLU; `n_blocks` `GeneratorResBlock`s
ReLU(x + [pad 1 -> Conv 3x3 -> IN -> ReLU -> pad 1 -> Conv 3x3 -> IN]) (convs with bias);
two `ConvTransposeSame` (3x3/2, 2F then F) -> IN -> ReLU; Conv 7x7 SAME (1) -> tanh(x +
out). 2,849,537 parameters at F = 32, 9 blocks.

Encoder E (`e_B`, F = 16; BN + ReLU after every conv): Conv 7x7 SAME (F); ResBlock(F);
maxpool 2; ResBlock(F -> 2F); maxpool 2; ResBlock(2F -> 4F), ResBlock(4F); maxpool 2;
ResBlock(4F -> 8F), ResBlock(8F); ResBlock(8F -> 16F), 3 x ResBlock(16F); ResBlock(16F ->
32F), ResBlock(32F) =: f_ll; 2 x DrnBlock(32F); Conv 3x3 SAME (32F) twice =: f. ResBlock(a
-> b) is ReLU(pad_channels(x) + [pad 1 -> Conv 3x3 -> BN -> ReLU -> pad 1 -> Conv 3x3 ->
BN]) with `general_conv2d` convs (no bias), the shortcut zero-padded by (b - a) / 2 channels
on each side; DrnBlock has pad 2 -> 3x3 convs of dilation 2 (with bias) instead. f and f_ll
are [B, H/8, W/8, 32F]: 32 x 32 x 512 for a 256-px image. 27,519,472 parameters at F = 16
(plus 16,096 running statistics in "batch_stats").

Decoder U (`de_B`, F = 32; with E it is G_{T->S}): Conv 3x3 SAME (4F, no bias) -> IN ->
ReLU; `n_blocks` ResBlock(4F) with IN and, after each of the two convs and before its
norm, dropout (the reference's `build_resnet_block` default `keep_rate=0.75`, which
`build_decoder` never overrides: active at training and at test time alike); then one
`ConvTransposeSame` -> IN -> ReLU per factor 2 from f's size to x_in's (three for E's
/8: 2F, 2F, F; all but the last 2F, the last F); Conv 7x7 SAME (1, no bias) -> tanh(x_in +
out). 1,902,848 parameters at F = 32, 4 blocks, /8.

Segmenter C / C_ll (`s_B`, `s_B_ll`): Conv 1x1 (num_classes, no bias) then a bilinear
resize to the requested size; 2,560 parameters on 512 channels with 5 classes. (The
reference also applies dropout with its keep_rate to these logits; that is 1.0 at training.)

PatchDiscriminator (D_T `d_B`, D_P, D_P_ll, and D_S `d_A` with 2 output channels: [main,
auxiliary]): zero pad 2 -> Conv 4x4/2 VALID (F) -> LReLU 0.2; pad 2 -> Conv 4x4/2 (2F) ->
IN -> LReLU; pad 2 -> Conv 4x4/2 (4F) -> IN -> LReLU; pad 2 -> Conv 4x4/1 (8F) -> IN ->
LReLU; pad 2 -> Conv 4x4/1 (out_channels). No biases. A 256-px image gives 35 x 35 patch
scores. 2,763,520 parameters on 1 input channel, 2,767,616 on 5 (D_P) and 2,771,712 with
2 outputs (D_S) at F = 64.

MixupInspector (SynthMix; the paper gives only "PatchGAN extended to an encoder-decoder with
a k x k domain map and a 4x4 conv + global-average-pool branch", so this layout is ours, in
the style of the PyTorch PatchGAN): log2(H/4) Conv 4x4/2 (symmetric pad 1) down to 4 x 4,
widths min(F 2^i, max_features), the first -> LReLU 0.2, the rest -> IN -> LReLU 0.2;
log2(k/4) ConvTranspose 4x4/2 (PyTorch padding 1, 2x) of widths max(4F / 2^i, F / 2) (256,
128, 64, 32, ... at F = 64) -> IN -> ReLU; Conv 3x3 SAME (1) -> the [B, k, k] map of
logits. Global branch on the 4 x 4 bottleneck: Conv 4x4 SAME (1) -> mean over the cells ->
[B] logits. Convolutions with bias, weights N(0, 0.02), biases 0; its instance norm is
PyTorch's (no parameters, eps 1e-5, `cyclegan.instance_norm`). 13,252,034 parameters at
256 px, k = 8 (11,156,930 at k = 4, 13,905,858 at k = 32), F = 64, max_features 512.

Parameters are float32; `dtype` is the compute dtype (norm statistics in float32); every
module returns float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv, ConvTranspose, conv_transpose
from medda_jax.models.cyclegan import count_params, instance_norm as torch_instance_norm
from medda_jax.models.wgan import subpixel_conv_transpose

__all__ = ["Decoder", "DrnBlock", "Encoder", "Generator", "GeneratorResBlock",
           "InstanceNorm", "ConvTransposeSame", "MixupInspector", "PatchDiscriminator",
           "ResBlock", "Segmenter", "count_params", "pad_channels", "zero_pad"]

STD_GA = 0.02   # general_conv2d_ga, the transposed convs, the discriminators, U's c1 and c6
STD_RES = 0.01  # the encoder, the general_conv2d residual blocks, the segmenter
_ZEROS = nn.initializers.zeros


def _tn(std: float):
  """TF truncated_normal_initializer(stddev=std): N(0, std) redrawn outside +-2 std."""
  return nn.initializers.truncated_normal(std)


def zero_pad(x: jax.Array, pad: int) -> jax.Array:
  """tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "CONSTANT")."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def pad_channels(x: jax.Array, features: int) -> jax.Array:
  """The reference's ResBlock shortcut from a to b = `features` channels: zeros,
  (b - a) // 2 on each side of the channel axis."""
  extra = features - x.shape[-1]
  if extra < 0 or extra % 2:
    raise ValueError(f"cannot pad {x.shape[-1]} channels evenly to {features}")
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra // 2)))


def _conv(features: int, kernel: int, std: float, bias: bool, dtype: Any, name: str,
          stride: int = 1, padding: Any = "VALID", dilation: int = 1) -> nn.Conv:
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 kernel_dilation=(dilation, dilation), use_bias=bias, kernel_init=_tn(std),
                 bias_init=_ZEROS, dtype=dtype, name=name)


class InstanceNorm(nn.Module):
  """TF contrib `instance_norm`: per image and channel, (x - mean) / sqrt(var + eps) over H
  and W (biased variance) times `scale` plus `bias`, both per channel (ones / zeros).
  Statistics in float32; returns `dtype`."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", _ZEROS, (c,))
    h = x.astype(jnp.float32)
    mean = jnp.mean(h, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=(1, 2), keepdims=True)
    y = (h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """TF contrib batch_norm(decay=0.9, scale=True, center=True), eps 1e-3."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                      use_fast_variance=False, dtype=dtype, name=name)


# Sub-pixel form of TF's conv2d_transpose (3x3, stride 2, SAME): output row 2m + a gathers
# input rows m - 1 + d (d = the row in a 2x2 window over the input padded by 1 at the top)
# through kernel row ky, {phase a: {d: ky}}: out[2m] = x[m] W[0] + x[m - 1] W[2],
# out[2m + 1] = x[m] W[1] (columns alike).
_SAME3_PHASE_TAPS = {0: {0: 2, 1: 0}, 1: {1: 1}}


class ConvTransposeSame(nn.Module):
  """TF `conv2d_transpose(kernel 3, stride 2, padding "SAME")` with bias: 2H x 2W.

  TF's op is the input gradient of conv2d(stride 2, SAME) on the 2H x 2W output, whose pad
  total is 1 (all at the bottom/right), so out[2i + k] += x[i] W[k] for k = 0, 1, 2 (the
  index 2H dropped). The kernel is TF's layout, `kernel[ky, kx, out, in]`. With
  `subpixel=False` this is `lax.conv_transpose(..., "SAME", transpose_kernel=True)`
  (= Flax `nn.ConvTranspose(padding="SAME", transpose_kernel=True)`); `subpixel=True`
  (default) computes the same map as one 2x2 convolution to 4 x features channels and a
  depth-to-space, which XLA:CPU differentiates several times faster.
  """
  features: int
  std: float = STD_GA
  subpixel: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", _tn(self.std), (3, 3, self.features, cin)).astype(self.dtype)
    bias = self.param("bias", _ZEROS, (self.features,)).astype(self.dtype)
    x = x.astype(self.dtype)
    if not self.subpixel:
      y = conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                         transpose_kernel=True)
    else:
      y = subpixel_conv_transpose(x, lambda ky, kx: kernel[ky, kx].T, _SAME3_PHASE_TAPS, 2,
                                  ((1, 0), (1, 0)), self.features)
    return y + bias


class GeneratorResBlock(nn.Module):
  """`build_resnet_block_ins` (zero pads): ReLU(x + [pad 1 -> Conv 3x3 (bias) -> IN -> ReLU
  -> pad 1 -> Conv 3x3 (bias) -> IN])."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _conv(self.features, 3, STD_GA, True, self.dtype, "c1")(zero_pad(x, 1))
    h = nn.relu(InstanceNorm(dtype=self.dtype, name="c1_norm")(h))
    h = _conv(self.features, 3, STD_GA, True, self.dtype, "c2")(zero_pad(h, 1))
    h = InstanceNorm(dtype=self.dtype, name="c2_norm")(h)
    return nn.relu(x.astype(self.dtype) + h)


class ResBlock(nn.Module):
  """`build_resnet_block` / `build_resnet_block_ds` (zero pads, `general_conv2d`: no bias,
  std 0.01): ReLU(pad_channels(x) + [pad 1 -> Conv 3x3 -> [dropout] -> norm -> ReLU -> pad
  1 -> Conv 3x3 -> [dropout] -> norm]). `norm` is "batch" (BN, `train` picks batch or
  running statistics) or "instance" (`InstanceNorm`); dropout runs when `dropout_rate` > 0
  and not `deterministic` (rng collection "dropout")."""
  features: int
  norm: str = "batch"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, deterministic: bool = True):
    def norm(h, name):
      if self.norm == "batch":
        return _batch_norm(train, self.dtype, name)(h)
      if self.norm == "instance":
        return InstanceNorm(dtype=self.dtype, name=name)(h)
      raise ValueError(f"norm must be 'batch' or 'instance', got {self.norm!r}")

    drop = nn.Dropout(self.dropout_rate, deterministic=deterministic)
    h = _conv(self.features, 3, STD_RES, False, self.dtype, "c1")(zero_pad(x, 1))
    h = nn.relu(norm(drop(h), "c1_norm"))
    h = _conv(self.features, 3, STD_RES, False, self.dtype, "c2")(zero_pad(h, 1))
    h = norm(drop(h), "c2_norm")
    return nn.relu(pad_channels(x.astype(self.dtype), self.features) + h)


class DrnBlock(nn.Module):
  """`build_drn_block`: ReLU(x + [pad 2 -> Conv 3x3 dilation 2 VALID (bias) -> BN -> ReLU ->
  pad 2 -> Conv 3x3 dilation 2 VALID (bias) -> BN]) (`dilate_conv2d`, std 0.01)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = _conv(self.features, 3, STD_RES, True, self.dtype, "c1", dilation=2)(zero_pad(x, 2))
    h = nn.relu(_batch_norm(train, self.dtype, "c1_norm")(h))
    h = _conv(self.features, 3, STD_RES, True, self.dtype, "c2", dilation=2)(zero_pad(h, 2))
    h = _batch_norm(train, self.dtype, "c2_norm")(h)
    return nn.relu(x.astype(self.dtype) + h)


class Generator(nn.Module):
  """G_{S->T} (`build_generator_resnet_9blocks`, skip on). `features` is ngf; the residual
  blocks run at 4x it. `subpixel`: how the transposed convolutions run (same map)."""
  features: int = 32
  n_blocks: int = 9
  dtype: Any = jnp.float32
  subpixel: bool = True

  @nn.compact
  def __call__(self, x):
    """x [B, H, W, 1] in [-1, 1], H and W multiples of 4 -> float32 tanh(x + out)."""
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f"Generator needs H and W multiples of 4, got {x.shape[1:3]}")
    f, dt = self.features, self.dtype
    h = _conv(f, 7, STD_GA, True, dt, "c1")(zero_pad(x.astype(dt), 3))
    h = nn.relu(InstanceNorm(dtype=dt, name="c1_norm")(h))
    h = _conv(2 * f, 3, STD_GA, True, dt, "c2", stride=2, padding="SAME")(h)
    h = nn.relu(InstanceNorm(dtype=dt, name="c2_norm")(h))
    h = _conv(4 * f, 3, STD_GA, True, dt, "c3", stride=2, padding="SAME")(h)
    h = nn.relu(InstanceNorm(dtype=dt, name="c3_norm")(h))
    for i in range(self.n_blocks):
      h = GeneratorResBlock(4 * f, dt, name=f"r{i + 1}")(h)
    for name, width in (("c4", 2 * f), ("c5", f)):
      h = ConvTransposeSame(width, STD_GA, self.subpixel, dt, name=name)(h)
      h = nn.relu(InstanceNorm(dtype=dt, name=f"{name}_norm")(h))
    out = _conv(1, 7, STD_GA, True, dt, "c6", padding="SAME")(h)
    return jnp.tanh(x.astype(jnp.float32) + out.astype(jnp.float32))


class Encoder(nn.Module):
  """E (`build_encoder`, keep_rate 1: no dropout). `features` is fb (16); `train` selects
  BN's batch statistics (and updates the running ones: apply with
  mutable=["batch_stats"]) or the running statistics."""
  features: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """x [B, H, W, C] -> (f, f_ll), both float32 [B, ceil(H/8), ceil(W/8), 32 features]."""
    fb, dt = self.features, self.dtype

    def conv_bn(h, width, kernel, name):
      h = _conv(width, kernel, STD_RES, False, dt, name, padding="SAME")(h)
      return nn.relu(_batch_norm(train, dt, f"{name}_norm")(h))

    def rb(h, width, name):
      return ResBlock(width, "batch", 0.0, dt, name=name)(h, train=train)

    def pool(h):
      return nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")

    h = conv_bn(x.astype(dt), fb, 7, "c1")
    h = pool(rb(h, fb, "r1"))
    h = pool(rb(h, 2 * fb, "r2"))
    h = rb(h, 4 * fb, "r3")
    h = pool(rb(h, 4 * fb, "r4"))
    h = rb(h, 8 * fb, "r5")
    h = rb(h, 8 * fb, "r6")
    h = rb(h, 16 * fb, "r7")
    for name in ("r8", "r9", "r10"):
      h = rb(h, 16 * fb, name)
    h = rb(h, 32 * fb, "r11")
    f_ll = rb(h, 32 * fb, "r12")
    h = DrnBlock(32 * fb, dt, name="d1")(f_ll, train=train)
    h = DrnBlock(32 * fb, dt, name="d2")(h, train=train)
    h = conv_bn(h, 32 * fb, 3, "c2")
    f = conv_bn(h, 32 * fb, 3, "c3")
    return f.astype(jnp.float32), f_ll.astype(jnp.float32)


def _upsampling_stages(small: tuple[int, int], large: tuple[int, int]) -> int:
  """How many factor-2 steps lead from spatial size `small` to `large` (both axes alike)."""
  ratios = {large[0] / small[0], large[1] / small[1]}
  ratio = ratios.pop() if len(ratios) == 1 else 0.0
  stages = int(round(math.log2(ratio))) if ratio >= 1 else -1
  if stages < 0 or small[0] * 2 ** stages != large[0] or small[1] * 2 ** stages != large[1]:
    raise ValueError(f"Decoder: x_in's size {large} is not f's {small} times one power of 2")
  return stages


class Decoder(nn.Module):
  """U (`build_decoder`, skip on). `features` is ngf (32). `dropout_rate` is the reference's
  1 - keep_rate (0.25) of the residual blocks' convs; it needs the "dropout" rng unless
  `deterministic`. `subpixel`: how the transposed convolutions run (same map)."""
  features: int = 32
  n_blocks: int = 4
  dropout_rate: float = 0.25
  dtype: Any = jnp.float32
  subpixel: bool = True

  @nn.compact
  def __call__(self, f, x_in, deterministic: bool = False):
    """f [B, h, w, C] (E's output), x_in [B, h 2^n, w 2^n, 1] (E's input) -> float32
    tanh(x_in + out), x_in's shape."""
    stages = _upsampling_stages(f.shape[1:3], x_in.shape[1:3])
    ngf, dt = self.features, self.dtype
    h = _conv(4 * ngf, 3, STD_GA, False, dt, "c1", padding="SAME")(f.astype(dt))
    h = nn.relu(InstanceNorm(dtype=dt, name="c1_norm")(h))
    for i in range(self.n_blocks):
      h = ResBlock(4 * ngf, "instance", self.dropout_rate, dt, name=f"r{i + 1}")(
          h, deterministic=deterministic)
    for i in range(stages):
      width = ngf if i == stages - 1 else 2 * ngf
      h = ConvTransposeSame(width, STD_GA, self.subpixel, dt, name=f"up{i + 1}")(h)
      h = nn.relu(InstanceNorm(dtype=dt, name=f"up{i + 1}_norm")(h))
    out = _conv(1, 7, STD_GA, False, dt, "c6", padding="SAME")(h)
    return jnp.tanh(x_in.astype(jnp.float32) + out.astype(jnp.float32))


class Segmenter(nn.Module):
  """C / C_ll (`build_segmenter`): Conv 1x1 (no bias, std 0.01) then a bilinear resize.

  The resize is `jax.image.resize(..., "bilinear")` with half-pixel centres (and no
  antialiasing). This deliberately differs from the reference's TF1
  `tf.image.resize_images`, whose legacy bilinear kernel (align_corners=False,
  half_pixel_centers=False) samples at out_index * in_size / out_size, shifting the map by
  half an input cell towards the top-left. The reference's dropout on these logits is
  omitted (its keep_rate is 1.0 at training)."""
  num_classes: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f, size: tuple[int, int]):
    """f [B, h, w, C], size (H, W) -> float32 logits [B, H, W, num_classes]."""
    h = _conv(self.num_classes, 1, STD_RES, False, self.dtype, "c8")(f.astype(self.dtype))
    h = h.astype(jnp.float32)
    return jax.image.resize(h, (h.shape[0], int(size[0]), int(size[1]), self.num_classes),
                            "bilinear", antialias=False)


class PatchDiscriminator(nn.Module):
  """`discriminator` / `discriminator_aux` (D_T, D_P, D_P_ll; D_S with out_channels=2,
  channel 0 the main head, channel 1 the auxiliary one). No biases, std 0.02."""
  features: int = 64
  out_channels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [B, H, W, C] -> float32 [B, h, w, out_channels] (35 x 35 for 256 px)."""
    ndf, dt = self.features, self.dtype
    lrelu = lambda h: nn.leaky_relu(h, 0.2)
    h = x.astype(dt)
    h = lrelu(_conv(ndf, 4, STD_GA, False, dt, "c1", stride=2)(zero_pad(h, 2)))
    for name, width, stride in (("c2", 2 * ndf, 2), ("c3", 4 * ndf, 2), ("c4", 8 * ndf, 1)):
      h = _conv(width, 4, STD_GA, False, dt, name, stride=stride)(zero_pad(h, 2))
      h = lrelu(InstanceNorm(dtype=dt, name=f"{name}_norm")(h))
    h = _conv(self.out_channels, 4, STD_GA, False, dt, "c5")(zero_pad(h, 2))
    return h.astype(jnp.float32)


def _log2_exact(n: int) -> int | None:
  return n.bit_length() - 1 if n > 0 and n & (n - 1) == 0 else None


class MixupInspector(nn.Module):
  """SynthMix's Mixup Inspector: a k x k map of domain logits (1 = target appearance) and one
  global logit per image. Images must be square with a power-of-2 side >= 8; k a power of
  2 with 4 <= k <= side (else ValueError)."""
  k: int = 8
  features: int = 64
  max_features: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [B, H, H, C] -> (map_logits [B, k, k], global_logits [B]), float32."""
    size, k = x.shape[1], self.k
    n_down = _log2_exact(size) if x.shape[2] == size else None
    if n_down is None or size < 8:
      raise ValueError(f"MixupInspector needs square images with a power-of-2 side >= 8, "
                       f"got {x.shape[1]} x {x.shape[2]}")
    n_up = _log2_exact(k)
    if n_up is None or not 4 <= k <= size:
      raise ValueError(f"MixupInspector k must be a power of 2 with 4 <= k <= {size} (the "
                       f"image side), got {k}")
    n_down, n_up = n_down - 2, n_up - 2
    dt = self.dtype
    init = dict(kernel_init=nn.initializers.normal(STD_GA), bias_init=_ZEROS, dtype=dt)
    lrelu = lambda h: nn.leaky_relu(h, 0.2)
    h = x.astype(dt)
    for i in range(n_down):
      width = min(self.features * 2 ** i, self.max_features)
      h = Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"down{i}",
                  **init)(h)
      h = lrelu(h if i == 0 else torch_instance_norm(h))
    bottleneck = h
    for i in range(n_up):
      width = max(4 * self.features // 2 ** i, self.features // 2, 1)
      h = ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME",
                           transpose_kernel=True, name=f"up{i}", **init)(h)
      h = nn.relu(torch_instance_norm(h))
    cells = Conv(1, (3, 3), padding="SAME", name="map_head", **init)(h)
    glob = Conv(1, (4, 4), padding="SAME", name="global_head", **init)(bottleneck)
    glob = jnp.mean(glob.astype(jnp.float32), axis=(1, 2, 3))
    return cells[..., 0].astype(jnp.float32), glob
