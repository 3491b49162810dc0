"""AlexNet in the torchvision layout (`torchvision.models.alexnet`), NHWC.

features: Conv 11x11/4 pad 2 (64) -> ReLU -> MaxPool 3/2 -> Conv 5x5 pad 2 (192) -> ReLU ->
MaxPool 3/2 -> Conv 3x3 pad 1 (384) -> ReLU -> Conv 3x3 pad 1 (256) -> ReLU -> Conv 3x3 pad
1 (256) -> ReLU -> MaxPool 3/2; adaptive average pool to 6 x 6; flatten in torch's (C, H, W)
order; classifier: Dropout -> Dense 4096 -> ReLU -> Dropout -> Dense 4096 -> ReLU -> Dense
num_classes. With 1000 classes it has torchvision's 61,100,840 parameters.

Layer names against torchvision's state_dict: conv1..conv5 are `features.{0,3,6,8,10}`,
fc6, fc7, fc8 are `classifier.{1,4,6}` (conv weights OIHW -> HWIO, linear (out, in) -> (in,
out)); the flatten order makes fc6's rows line up with torch's.

A single-channel input is replicated to 3 channels (so the first kernel has ImageNet's
shape). Inputs need at least 63 px per side: at 62 px the last max-pool gets a 2 x 2 map
and leaves nothing (torchvision fails there too). From 63 to 127 px the last map is 1 x 1,
2 x 2 or 3 x 3 and the adaptive pool spreads it over 6 x 6 bins as torch does.

Initialisation is PyTorch's default (torchvision's AlexNet sets none): for conv and linear
layers alike, weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Parameters stay
float32; `dtype` is the compute dtype; logits are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.models.conv import Conv
from medda_jax.models.resnet import gray_to_rgb, linear_bias_init, torch_linear

MIN_SIZE = 63  # smallest input side the last max-pool leaves a map for (feature_size 1)
POOLED_SIZE = 6  # the adaptive pool's output side

# torch's default kaiming_uniform_(a=sqrt(5)) for conv weights: U(-1/sqrt(fan_in), ...).
_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def feature_size(size: int) -> int:
  """Side of the map the last max-pool leaves from a `size`-px input side (0: none)."""
  size = (size + 2 * 2 - 11) // 4 + 1  # conv1, stride 4
  for _ in range(3):  # the three 3/2 max-pools (the padded convs between keep the size)
    size = (size - 3) // 2 + 1 if size >= 3 else 0
  return max(size, 0)


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
  """[out, size] averaging weights of torch's adaptive average pooling along one axis:
  bin i covers [floor(i * size / out), ceil((i + 1) * size / out))."""
  matrix = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -(-((i + 1) * size) // out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, out: int = POOLED_SIZE) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d((out, out)) on NHWC, for any H, W >= 1."""
  rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], out))
  cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], out))
  y = jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def _conv(features: int, kernel: int, in_features: int, dtype: Any, name: str,
          stride: int = 1, padding: int = 0) -> nn.Conv:
  """A square Conv2d with bias and PyTorch's default initialisation."""
  return Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), kernel_init=_CONV_INIT,
                 bias_init=linear_bias_init(kernel * kernel * in_features), dtype=dtype,
                 name=name)


class AlexNet(nn.Module):
  """torchvision's AlexNet classifier.

  Attributes:
    num_classes: head outputs (logits).
    dropout: drop rate of the two classifier dropouts (rng "dropout" when training).
    fc_features: width of the two hidden dense layers (4096 in torchvision; smaller for
      quick demos).
    dtype: compute dtype (parameters stay float32).
  """

  num_classes: int = 2
  dropout: float = 0.5
  fc_features: int = 4096
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x [N, H, W, C] (C = 1 is replicated to 3), H, W >= 63 -> float32 logits [N, classes]."""
    if feature_size(min(x.shape[1:3])) < 1:
      raise ValueError(f"AlexNet needs images of at least {MIN_SIZE}x{MIN_SIZE} px, got "
                       f"{x.shape[1]}x{x.shape[2]}: its last max-pool would get an empty map")
    pool = lambda h: nn.max_pool(h, (3, 3), strides=(2, 2))
    h = gray_to_rgb(x).astype(self.dtype)
    h = pool(nn.relu(_conv(64, 11, h.shape[-1], self.dtype, "conv1", stride=4, padding=2)(h)))
    h = pool(nn.relu(_conv(192, 5, 64, self.dtype, "conv2", padding=2)(h)))
    h = nn.relu(_conv(384, 3, 192, self.dtype, "conv3", padding=1)(h))
    h = nn.relu(_conv(256, 3, 384, self.dtype, "conv4", padding=1)(h))
    h = pool(nn.relu(_conv(256, 3, 256, self.dtype, "conv5", padding=1)(h)))
    h = adaptive_avg_pool(h)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch.flatten of NCHW
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.relu(torch_linear(self.fc_features, h.shape[-1], self.dtype, "fc6")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.relu(torch_linear(self.fc_features, self.fc_features, self.dtype, "fc7")(h))
    logits = torch_linear(self.num_classes, self.fc_features, self.dtype, "fc8")(h)
    return logits.astype(jnp.float32)
