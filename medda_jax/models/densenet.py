"""DenseNet (Huang et al., 2017) in the torchvision layout, NHWC, for chest X-ray transfer.

`densenet121()` matches `torchvision.models.densenet121` layer for layer: stem conv 7x7/2
(64) -> BN -> ReLU -> max-pool 3x3/2 (pad 1); dense blocks of (6, 12, 24, 16) layers, each
layer BN-ReLU-Conv1x1(bn_size * growth)-BN-ReLU-Conv3x3(growth) with its output
concatenated to its input; transitions BN-ReLU-Conv1x1(half the channels)-avg-pool 2x2;
final BN-ReLU, global average pool and a linear head. With 1000 classes and 3 input
channels it has torchvision's 7,978,856 parameters. Module names follow torchvision
(`features/denseblock1/denselayer1/conv1`, ...), so converting torchvision weights is a
renaming plus kernel transposes (OIHW -> HWIO).

Heads. The parameter tree is `{"features": backbone, head_name: Dense}`; batch statistics
live under `"features"` only. A model trained with `head_name="source_head"` and one with
`head_name="target_head"` therefore share the backbone subtree, and `MultiHeadDenseNet`
(one backbone, several named heads) holds exactly the union of their trees: pre-train a
`DenseNet(head_name="source_head")`, then train the two-head model from those variables
plus a fresh target head (MMTL), or fine-tune a `DenseNet(head_name="target_head")` from
the backbone alone. `num_classes=0` returns the pooled features without any head.

BatchNorm follows PyTorch's defaults (momentum 0.1 there, 0.9 here in Flax's convention;
eps 1e-5). One known difference: Flax updates the running variance with the biased batch
variance, PyTorch with the unbiased one (a factor n / (n - 1), n = batch * H * W).
Initialisation follows torchvision: convs He-normal (fan-in, untruncated), BN scale 1 and
bias 0, head weights uniform(+-1/sqrt(fan_in)) and bias 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv

# torchvision: nn.init.kaiming_normal_ on conv weights (plain normal, not truncated).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torch.nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_HEAD_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def _conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1,
          padding: int = 0) -> nn.Conv:
  return Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=False,
                 kernel_init=_CONV_INIT, dtype=dtype, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1(bn_size * growth)-BN-ReLU-Conv3x3(growth); returns the new maps only."""

  growth_rate: int
  bn_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(_bn(train, self.dtype, "norm1")(x))
    y = _conv(self.bn_size * self.growth_rate, 1, self.dtype, "conv1")(y)
    y = nn.relu(_bn(train, self.dtype, "norm2")(y))
    return _conv(self.growth_rate, 3, self.dtype, "conv2", padding=1)(y)


class DenseBlock(nn.Module):
  """`num_layers` dense layers, each fed the concatenation of the block input and all
  earlier layers' outputs; returns that concatenation (in + num_layers * growth channels)."""

  num_layers: int
  growth_rate: int
  bn_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_layers):
      new = DenseLayer(self.growth_rate, self.bn_size, self.dtype,
                       name=f"denselayer{j + 1}")(x, train)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-Conv1x1(features)-avg-pool 2x2/2 between dense blocks."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(_bn(train, self.dtype, "norm")(x))
    x = _conv(self.features, 1, self.dtype, "conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetFeatures(nn.Module):
  """The backbone: stem, dense blocks and transitions, final BN-ReLU, global average pool.

  Returns [N, C] pooled features (C = 1024 for DenseNet-121).
  """

  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  init_features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    x = _conv(self.init_features, 7, self.dtype, "conv0", stride=2, padding=3)(x)
    x = nn.relu(_bn(train, self.dtype, "norm0")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    channels = self.init_features
    for i, num_layers in enumerate(self.block_sizes):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.dtype,
                     name=f"denseblock{i + 1}")(x, train)
      channels += num_layers * self.growth_rate
      if i < len(self.block_sizes) - 1:
        channels //= 2  # compression 0.5
        x = Transition(channels, self.dtype, name=f"transition{i + 1}")(x, train)
    x = nn.relu(_bn(train, self.dtype, "norm5")(x))
    return jnp.mean(x, axis=(1, 2))


class DenseNet(nn.Module):
  """DenseNet classifier: `DenseNetFeatures` named "features" + a linear head.

  Attributes:
    block_sizes: layers per dense block ((6, 12, 24, 16) for DenseNet-121).
    growth_rate: channels each dense layer adds.
    bn_size: bottleneck width factor (the 1x1 conv has bn_size * growth_rate channels).
    init_features: channels of the stem convolution.
    num_classes: head outputs (logits); 0 drops the head and returns pooled features.
    head_name: name of the head's parameter subtree (see the module docstring).
    dtype: compute dtype (parameters stay float32); outputs are returned in float32.
  """

  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  init_features: int = 64
  num_classes: int = 14
  head_name: str = "classifier"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, return_features: bool = False):
    """Logits [N, num_classes] for NHWC images x.

    Args:
      x: [N, H, W, C] images.
      train: batch statistics (and their running-average update, with
        `mutable=["batch_stats"]`) when True; running averages when False.
      return_features: also return the pooled features, as `(logits, features)`.

    Returns:
      logits, or `(logits, features)`, or features alone when `num_classes == 0`.
    """
    feats = DenseNetFeatures(tuple(self.block_sizes), self.growth_rate, self.bn_size,
                             self.init_features, self.dtype, name="features")(x, train)
    if self.num_classes == 0:
      return feats.astype(jnp.float32)
    logits = nn.Dense(self.num_classes, kernel_init=_HEAD_INIT, bias_init=nn.initializers.zeros,
                      dtype=self.dtype, name=self.head_name)(feats)
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, feats.astype(jnp.float32)
    return logits


class MultiHeadDenseNet(nn.Module):
  """One DenseNet backbone with several named linear heads (e.g. source and target labels).

  Attributes:
    heads: (name, num_classes) pairs, e.g. (("source_head", 14), ("target_head", 5)).
    block_sizes, growth_rate, bn_size, init_features, dtype: as in `DenseNet`.

  `__call__(x, train)` returns {name: logits [N, num_classes]} for every head; with
  mixed-domain batches the backbone's batch statistics are mixed too (MMTL does this).
  """

  heads: Sequence[tuple[str, int]] = (("source_head", 14), ("target_head", 14))
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  init_features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jax.Array]:
    feats = DenseNetFeatures(tuple(self.block_sizes), self.growth_rate, self.bn_size,
                             self.init_features, self.dtype, name="features")(x, train)
    return {name: nn.Dense(n, kernel_init=_HEAD_INIT, bias_init=nn.initializers.zeros,
                           dtype=self.dtype, name=name)(feats).astype(jnp.float32)
            for name, n in self.heads}


class DenseNetCXR(nn.Module):
  """The chest X-ray classifier of Valliani et al.: DenseNet features -> [Dense(width) -> BN
  -> ReLU -> Dropout] per `hidden` width (1000, 100) -> Dense(num_classes). `train` uses
  batch statistics and dropout (rng "dropout"); the backbone defaults to DenseNet-121."""

  num_classes: int = 2
  hidden: Sequence[int] = (1000, 100)
  dropout: float = 0.5
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  init_features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = DenseNetFeatures(tuple(self.block_sizes), self.growth_rate, self.bn_size,
                         self.init_features, self.dtype, name="features")(x, train)
    for i, width in enumerate(self.hidden):
      h = nn.Dense(width, kernel_init=_HEAD_INIT, dtype=self.dtype, name=f"hidden{i}")(h)
      h = nn.relu(_bn(train, self.dtype, f"hidden{i}_norm")(h))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_classes, kernel_init=_HEAD_INIT, bias_init=nn.initializers.zeros,
                    dtype=self.dtype, name="classifier")(h).astype(jnp.float32)


def densenet121(num_classes: int = 14, **kw) -> DenseNet:
  """DenseNet-121: blocks (6, 12, 24, 16), growth 32, bottleneck 4, stem 64 channels."""
  return DenseNet(block_sizes=(6, 12, 24, 16), growth_rate=32, bn_size=4, init_features=64,
                  num_classes=num_classes, **kw)
