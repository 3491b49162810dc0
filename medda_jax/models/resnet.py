"""Bottleneck ResNet (He et al., 2016) in the torchvision layout, NHWC.

`resnet50()` matches `torchvision.models.resnet50` layer for layer: stem conv 7x7/2 (64, no
bias) -> BN -> ReLU -> max-pool 3x3/2 (pad 1); four stages of (3, 4, 6, 3) bottleneck
blocks with widths 64, 128, 256, 512 and a x4 expansion; global average pool; linear head.
Each bottleneck is Conv1x1 -> BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv1x1(x4) -> BN, plus
the shortcut, then ReLU. As in torchvision ("ResNet v1.5") the stride of a stage's first
block sits on its 3x3 conv, and the first block of every stage has a projection shortcut
Conv1x1(stride) -> BN. With 2 classes and 3 input channels ResNet-50 has 23,512,130
parameters: torchvision's 25,557,032 for 1000 classes, minus its 2,049,000-parameter head,
plus a 4,098-parameter 2-class head.

`width` scales every stage (64 is the standard model; e.g. 16 gives a 16x smaller demo
variant) and `stage_sizes` sets the number of blocks per stage. `groups` and
`width_per_group` make it a ResNeXt (Xie et al., 2017) as torchvision builds one: the 3x3
conv of a bottleneck of base width w has int(w * width_per_group / 64) * groups channels in
`groups` groups (`resnext101_32x8d()`); groups 1, width_per_group 64 is the plain ResNet.
`num_classes=0` returns the pooled features instead of logits (a trunk for other heads).

Input channels. A single-channel (grayscale) input is replicated to 3 channels inside the
model, so the stem kernel always has ImageNet's 3 input channels and torchvision weights
fit; other channel counts are used as they are.

Module names follow torchvision (`conv1`, `bn1`, `layer1/0/conv1`, `layer1/0/downsample/0`
for the shortcut conv and `.../downsample/1` for its BN, `fc`), so a torchvision
`state_dict` maps onto the variables by renaming plus layout transposes;
`load_torchvision_resnet` does this from a user-supplied `.npz` (nothing is downloaded).

BatchNorm follows PyTorch's defaults (momentum 0.1 there, 0.9 here in Flax's convention;
eps 1e-5); running statistics live in the "batch_stats" collection. Initialisation follows
torchvision: convs He-normal with fan-out (untruncated), BN scale 1 and bias 0, head
weight and bias uniform(+-1/sqrt(fan_in)) (torch.nn.Linear's default).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.models.conv import Conv

# torchvision ResNet: nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

EXPANSION = 4


def linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """torch.nn.Linear's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """A Dense layer initialised as torch.nn.Linear(fan_in, features)."""
  return nn.Dense(features, kernel_init=_LINEAR_INIT, bias_init=linear_bias_init(fan_in),
                  dtype=dtype, name=name)


def bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (Flax momentum 0.9, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1,
         padding: int = 0, use_bias: bool = False, groups: int = 1) -> nn.Conv:
  """A square conv with PyTorch-style symmetric padding and torchvision's ResNet init."""
  return Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 feature_group_count=groups, kernel_init=_CONV_INIT, dtype=dtype, name=name)


def gray_to_rgb(x: jax.Array) -> jax.Array:
  """Replicates a single-channel NHWC image to 3 channels; other inputs are returned as is."""
  if x.shape[-1] == 1:
    return jnp.broadcast_to(x, x.shape[:-1] + (3,))
  return x


class Downsample(nn.Module):
  """Projection shortcut Conv1x1(stride) -> BN, named "0" and "1" as torchvision's Sequential."""

  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, 1, self.dtype, "0", stride=self.stride)(x)
    return bn(train, self.dtype, "1")(x)


class Bottleneck(nn.Module):
  """Conv1x1(width) -> Conv3x3(width, stride) -> Conv1x1(4 * width), each with BN; residual."""

  width: int
  stride: int = 1
  dtype: Any = jnp.float32
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x, train: bool):
    out_features = self.width * EXPANSION
    inner = int(self.width * self.width_per_group / 64) * self.groups  # torchvision's rule
    y = conv(inner, 1, self.dtype, "conv1")(x)
    y = nn.relu(bn(train, self.dtype, "bn1")(y))
    y = conv(inner, 3, self.dtype, "conv2", stride=self.stride, padding=1,
             groups=self.groups)(y)
    y = nn.relu(bn(train, self.dtype, "bn2")(y))
    y = conv(out_features, 1, self.dtype, "conv3")(y)
    y = bn(train, self.dtype, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.dtype, name="downsample")(x, train)
    return nn.relu(x + y)


class ResNetStage(nn.Module):
  """`num_blocks` bottlenecks named "0", "1", ...; the first one carries the stride."""

  num_blocks: int
  width: int
  stride: int
  dtype: Any = jnp.float32
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      x = Bottleneck(self.width, self.stride if j == 0 else 1, self.dtype, self.groups,
                     self.width_per_group, name=str(j))(x, train)
    return x


class ResNet(nn.Module):
  """Bottleneck ResNet classifier in the torchvision layout.

  Attributes:
    stage_sizes: bottleneck blocks per stage ((3, 4, 6, 3) for ResNet-50).
    width: base width: stem channels and the first stage's bottleneck width; stage i has
      width * 2**i (outputs x4). 64 is the standard model.
    num_classes: head outputs (logits); 0: no head, the pooled features are returned.
    dtype: compute dtype (parameters stay float32); logits are returned in float32.
    groups, width_per_group: ResNeXt's cardinality and group width (1, 64: ResNet).
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_classes: int = 2
  dtype: Any = jnp.float32
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Logits [N, num_classes] for NHWC images x.

    Args:
      x: [N, H, W, C] images; C = 1 is replicated to 3 channels.
      train: batch statistics (and their running-average update, with
        `mutable=["batch_stats"]`) when True; running averages when False.

    Returns:
      float32 logits [N, num_classes].
    """
    x = gray_to_rgb(x).astype(self.dtype)
    x = conv(self.width, 7, self.dtype, "conv1", stride=2, padding=3)(x)
    x = nn.relu(bn(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(num_blocks, self.width * 2 ** i, 1 if i == 0 else 2, self.dtype,
                      self.groups, self.width_per_group, name=f"layer{i + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if not self.num_classes:
      return x.astype(jnp.float32)
    logits = torch_linear(self.num_classes, x.shape[-1], self.dtype, "fc")(x)
    return logits.astype(jnp.float32)


def resnet50(num_classes: int = 2, **kw) -> ResNet:
  """ResNet-50: stages (3, 4, 6, 3), base width 64 (`width=` gives a scaled-down variant).

  Keyword arguments override the other `ResNet` attributes (`width`, `dtype`, and
  `stage_sizes` for a shallower demo variant).
  """
  kw.setdefault("stage_sizes", (3, 4, 6, 3))
  return ResNet(num_classes=num_classes, **kw)


def resnext101_32x8d(num_classes: int = 2, **kw) -> ResNet:
  """ResNeXt-101 32x8d (torchvision `resnext101_32x8d`): stages (3, 4, 23, 3), 32 groups
  of width 8; with num_classes=0 the 2048-d pooled trunk."""
  kw.setdefault("stage_sizes", (3, 4, 23, 3))
  return ResNet(num_classes=num_classes, groups=32, width_per_group=8, **kw)


# Flax leaf name -> torchvision tensor name, per collection.
_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _to_torch_key(collection: str, path: Sequence[str]) -> str:
  names = _PARAM_NAMES if collection == "params" else _STAT_NAMES
  return ".".join(list(path[:-1]) + [names[path[-1]]])


def _from_torch_layout(array: np.ndarray, ndim: int) -> np.ndarray:
  """Conv weight OIHW -> HWIO, Linear weight (out, in) -> (in, out); vectors unchanged."""
  if ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if ndim == 2:
    return np.transpose(array, (1, 0))
  return array


def load_torchvision_resnet(npz_path: str | os.PathLike, variables: Mapping[str, Any],
                            skip_head: bool = False) -> dict[str, Any]:
  """Loads a torchvision ResNet `state_dict` saved as `.npz` into Flax variables.

  The file holds one array per state_dict entry under its torch name (`conv1.weight`,
  `bn1.running_mean`, `layer1.0.downsample.0.weight`, `fc.bias`, ...), e.g. written with
  `np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})`. Conv weights
  are transposed OIHW -> HWIO and Linear weights (out, in) -> (in, out); BN weight/bias go
  to params scale/bias and running_mean/running_var to batch_stats mean/var;
  `num_batches_tracked` entries are ignored.

  Args:
    npz_path: the `.npz` file (or an open binary file).
    variables: `{"params", "batch_stats"}` of a `ResNet` with the matching architecture
      (e.g. from `model.init`); it defines the expected keys, shapes and dtypes. Only
      the `fc` values are kept (with `skip_head`), so without `skip_head` the shapes from
      `jax.eval_shape(model.init, ...)` suffice.
    skip_head: leave the `fc` layer as it is in `variables` (and ignore any `fc.*` entries
      in the file), e.g. ImageNet weights under a freshly initialised 2-class head.

  Returns:
    New variables `{"params", "batch_stats"}` with the loaded values (in the dtypes of
    `variables`).

  Raises:
    ValueError: keys missing from the file, unexpected keys in it, or shape mismatches,
      all listed in one message.
  """
  with np.load(npz_path) as data:
    state = {k: np.asarray(data[k]) for k in data.files if not k.endswith("num_batches_tracked")}
  if skip_head:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}

  expected: dict[str, tuple[str, tuple[str, ...]]] = {}
  for collection in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(dict(variables.get(collection, {})))[0]
    for path, _ in flat:
      keys = tuple(str(p.key) for p in path)
      if skip_head and keys[0] == "fc":
        continue
      expected[_to_torch_key(collection, keys)] = (collection, keys)

  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  converted: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
  mismatched = []
  for key, (collection, keys) in expected.items():
    if key not in state:
      continue
    leaf = variables[collection]
    for k in keys:
      leaf = leaf[k]
    value = _from_torch_layout(state[key], len(leaf.shape))
    if value.shape != tuple(leaf.shape):
      mismatched.append(f"{key}: file {state[key].shape} -> {value.shape} in Flax layout, "
                        f"model expects {tuple(leaf.shape)}")
      continue
    converted[(collection, keys)] = value.astype(leaf.dtype)

  problems = []
  if missing:
    problems.append("missing keys: " + ", ".join(missing))
  if unexpected:
    problems.append("unexpected keys: " + ", ".join(unexpected))
  if mismatched:
    problems.append("shape mismatches: " + "; ".join(sorted(mismatched)))
  if problems:
    raise ValueError(f"cannot load torchvision ResNet weights from {npz_path}: "
                     + " | ".join(problems))

  def replace(collection):
    def fn(path, leaf):
      keys = tuple(str(p.key) for p in path)
      value = converted.get((collection, keys))
      return leaf if value is None else jnp.asarray(value)
    return jax.tree_util.tree_map_with_path(fn, dict(variables[collection]))

  out = {c: replace(c) for c in ("params", "batch_stats") if c in variables}
  return out
