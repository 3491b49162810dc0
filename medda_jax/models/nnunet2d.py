"""A fixed 2-D nnU-Net-style U-Net (nnU-Net's Generic_UNet in its 2-D configuration).

nnU-Net plans depth and patch size per dataset; this network fixes them instead (`stages`
resolutions, `base` features doubling per stage to `cap`). As in nnU-Net:
  * a stage is 2 x [conv3x3 -> instance norm (affine, eps 1e-5) -> LeakyReLU(0.01)]; the
    first conv of every stage but the first has stride 2 (strided-conv down-sampling);
  * the decoder up-samples with a 2x2 stride-2 transposed conv (no bias) to the skip's
    width, concatenates the skip and applies a stage of two convs;
  * deep supervision: every decoder level has a 1x1 segmentation conv (no bias); the loss
    weights the outputs 1, 1/2, 1/4, ... from the finest, with the lowest-resolution one
    dropped (weight 0: its head is not built) and the rest normalised to sum 1;
  * He-normal initialisation (negative slope 0.01), zero biases.
Module names follow the paper's Fig. 2 groups: `context_*` (encoder convs), `transpose_*`,
`localization_*` (decoder convs) and `segmentation_*` (output convs).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.models.conv import Conv, ConvTranspose

NEGATIVE_SLOPE = 0.01
LAYER_GROUPS = ("context", "transpose", "localization", "segmentation")
he_normal = nn.initializers.variance_scaling(2.0 / (1.0 + NEGATIVE_SLOPE**2), "fan_in",
                                             "normal")


def stage_features(stages: int, base: int = 32, cap: int = 512) -> list[int]:
  return [min(base * 2**i, cap) for i in range(stages)]


def deep_supervision_weights(outputs: int) -> np.ndarray:
  """nnU-Net's weights of the decoder outputs (finest first): 1/2^k, the lowest-resolution
  output set to 0 (when there is more than one), normalised to sum 1."""
  w = np.array([1.0 / 2**k for k in range(outputs)])
  if outputs > 1:
    w[-1] = 0.0
  return w / w.sum()


def output_weights(built: int) -> np.ndarray:
  """The weights of the `built` heads: nnU-Net's weights for one more output (the dropped
  lowest one, weight 0), so they already sum to 1."""
  return deep_supervision_weights(built + 1)[:built]


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-sample, per-channel normalisation over H and W, statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=(1, 2), keepdims=True)
  var = x32.var(axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class ConvNormAct(nn.Module):
  """conv3x3 (optionally strided) -> InstanceNorm(affine) -> LeakyReLU(0.01)."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, (3, 3), strides=self.stride, padding=1, kernel_init=he_normal,
                dtype=self.dtype, name="conv")(x)
    scale = self.param("norm_scale", nn.initializers.ones, (self.features,))
    bias = self.param("norm_bias", nn.initializers.zeros, (self.features,))
    x = instance_norm(x) * scale.astype(x.dtype) + bias.astype(x.dtype)
    return nn.leaky_relu(x, NEGATIVE_SLOPE)


class NnUNet2D(nn.Module):
  """Returns the deep-supervision logits, finest first: [N, H/2^k, W/2^k, classes] for
  k = 0 .. stages - 3 (the output at the lowest decoder level is dropped); the first is
  the prediction. H and W must be divisible by 2^(stages - 1)."""

  num_classes: int = 2
  stages: int = 7
  base: int = 32
  cap: int = 512
  deep_supervision: bool = True
  dtype: Any = jnp.float32

  @property
  def num_outputs(self) -> int:
    """Outputs the loss weights (decoder levels less the dropped lowest one)."""
    return max(self.stages - 2, 1) if self.deep_supervision else 1

  @nn.compact
  def __call__(self, x):
    feats = stage_features(self.stages, self.base, self.cap)
    x = x.astype(self.dtype)
    skips = []
    for s, f in enumerate(feats):
      x = ConvNormAct(f, 1 if s == 0 else 2, self.dtype, name=f"context_{s}_0")(x)
      x = ConvNormAct(f, 1, self.dtype, name=f"context_{s}_1")(x)
      skips.append(x)
    outputs = []
    for level in reversed(range(self.stages - 1)):  # decoder level = skip index, deepest first
      x = ConvTranspose(feats[level], (2, 2), (2, 2), use_bias=False, kernel_init=he_normal,
                           dtype=self.dtype, name=f"transpose_{level}")(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = ConvNormAct(feats[level], 1, self.dtype, name=f"localization_{level}_0")(x)
      x = ConvNormAct(feats[level], 1, self.dtype, name=f"localization_{level}_1")(x)
      if level < self.num_outputs:
        outputs.append(Conv(self.num_classes, (1, 1), use_bias=False, kernel_init=he_normal,
                               dtype=self.dtype, name=f"segmentation_{level}")(x))
    return [o.astype(jnp.float32) for o in reversed(outputs)]


def layer_group(name: str) -> str:
  """Fig. 2's group of a top-level module name (`context_3_1` -> `context`)."""
  group = name.split("_", 1)[0]
  if group not in LAYER_GROUPS:
    raise ValueError(f"{name!r} is not a layer of NnUNet2D")
  return group


def downsample_labels(labels: jax.Array, outputs: int) -> list[jax.Array]:
  """[N, H, W] integer labels at every output's resolution (nearest: every 2^k-th pixel,
  as nnU-Net's down-sampling of the targets with order 0)."""
  return [labels[:, ::2**k, ::2**k] for k in range(outputs)]


def soft_dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1e-5) -> jax.Array:
  """nnU-Net's batch soft Dice over the foreground classes: softmax probabilities, tp, fp
  and fn summed over the batch and the pixels, 1 - mean_c (2 tp + s) / (2 tp + fp + fn + s)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  axes = tuple(range(probs.ndim - 1))
  tp = jnp.sum(probs * onehot, axis=axes)
  fp = jnp.sum(probs * (1 - onehot), axis=axes)
  fn = jnp.sum((1 - probs) * onehot, axis=axes)
  dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
  return 1.0 - dice[1:].mean()


def dice_ce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """nnU-Net's DC_and_CE_loss (weights 1 and 1)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return ce.mean() + soft_dice_loss(logits, labels)


def deep_supervision_loss(outputs: list[jax.Array], labels: jax.Array) -> jax.Array:
  """Sum over the outputs of weight_k * (Dice + CE) against the labels at their scale."""
  weights = output_weights(len(outputs))
  targets = downsample_labels(labels, len(outputs))
  return sum(float(w) * dice_ce_loss(o, t) for w, o, t in zip(weights, outputs, targets))
