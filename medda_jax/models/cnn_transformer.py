"""CNN-Transformer hybrid (TransMed-inspired) and the classifier factory, NHWC.

The layout is the one the WGAN-augmentation spec recommends for Alrajhi et al.'s
CNN-Transformer (the paper gives only that each of the 1024 "patches" of a 32 x 32 feature
map is a token). With the default `conv_widths=(64, 128, 256)` and `channels=1024`:

  [Conv3x3(64)-BN-ReLU] x 2 -> MaxPool 2 -> [Conv3x3(128)-BN-ReLU] x 2 -> MaxPool 2
  -> Conv3x3(256)-BN-ReLU -> Conv1x1(1024, with bias)

so a 128 x 128 image gives 32 x 32 x 1024 feature maps. In general every width of
`conv_widths` except the last is a stage of two convs plus a 2 x 2 max-pool, and the last
width is one conv without pooling (the maps are the input size / 2 ** (len - 1)).

Tokens (`token_mode`):
  * "channel" (default): each channel's flattened H x W map is one token, [N, C, H * W]
    (1024 tokens of 1024 values at 128 x 128 input);
  * "spatial": each position is one token of dimension C, [N, H * W, C].
The token length (H * W, or C) and the number of position embeddings therefore depend on
the input size and are fixed at initialisation.

The tokens go through Dense(embed_dim = 256), a learned class token is prepended, and the
shared ViT `Encoder` of `vit.py` adds learned position embeddings and dropout (0.1) and
runs `depth` = 4 pre-LN blocks (8 heads, MLP 512, GELU) and a final LayerNorm; the class
token goes through Dense(num_classes).

Initialisation: convs He-normal with fan-out (torchvision's ResNet), BN scale 1, bias 0;
the token projection and head as torch.nn.Linear defaults; the encoder as torchvision's
ViT. BatchNorm uses PyTorch's defaults (Flax momentum 0.9, eps 1e-5).

`build_classifier(name, num_classes, **overrides)` builds any of the three classifiers of
the spec ("resnet50", "vit_b16", "cnn_transformer").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from medda_jax.models import resnet, vit


class CNNTransformer(nn.Module):
  """CNN encoder -> channel or spatial tokens -> ViT encoder -> class-token head.

  Attributes:
    conv_widths: 3x3 conv widths; all but the last form two-conv stages followed by a
      2 x 2 max-pool, the last is a single conv.
    channels: output channels C of the final 1x1 conv.
    token_mode: "channel" (C tokens of H * W values) or "spatial" (H * W tokens of C
      values).
    embed_dim: token width d after the linear projection.
    depth: encoder blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    dropout: encoder dropout rate.
    num_classes: head outputs (logits).
    dtype: compute dtype (parameters stay float32); logits are returned in float32.
  """

  conv_widths: Sequence[int] = (64, 128, 256)
  channels: int = 1024
  token_mode: str = "channel"
  embed_dim: int = 256
  depth: int = 4
  num_heads: int = 8
  mlp_dim: int = 512
  dropout: float = 0.1
  num_classes: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Logits [N, num_classes] for NHWC images x.

    Args:
      x: [N, H, W, C_in] images (any number of channels; no replication).
      train: batch statistics (update them with `mutable=["batch_stats"]`) and dropout
        (needs a "dropout" rng) when True; running averages and no dropout when False.

    Returns:
      float32 logits [N, num_classes].
    """
    if self.token_mode not in ("channel", "spatial"):
      raise ValueError(f"token_mode must be 'channel' or 'spatial', got {self.token_mode!r}")
    x = x.astype(self.dtype)
    widths = tuple(self.conv_widths)
    for i, width in enumerate(widths):
      repeats = 2 if i < len(widths) - 1 else 1
      for j in range(repeats):
        x = resnet.conv(width, 3, self.dtype, f"conv{i + 1}_{j + 1}", padding=1)(x)
        x = nn.relu(resnet.bn(train, self.dtype, f"bn{i + 1}_{j + 1}")(x))
      if i < len(widths) - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = resnet.conv(self.channels, 1, self.dtype, "conv_out", use_bias=True)(x)
    n, h, w, c = x.shape
    if self.token_mode == "channel":
      tokens = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, c, h * w)
    else:
      tokens = x.reshape(n, h * w, c)
    tokens = resnet.torch_linear(self.embed_dim, tokens.shape[-1], self.dtype,
                                 "token_proj")(tokens)
    tokens = vit.prepend_class_token(self, tokens)
    tokens = vit.Encoder(self.depth, self.num_heads, self.mlp_dim, self.dropout,
                         dtype=self.dtype, name="encoder")(tokens, train)
    logits = resnet.torch_linear(self.num_classes, self.embed_dim, self.dtype,
                                 "head")(tokens[:, 0])
    return logits.astype(jnp.float32)


_BUILDERS = {
    "resnet50": (resnet.resnet50, resnet.ResNet),
    "vit_b16": (vit.vit_b16, vit.VisionTransformer),
    "cnn_transformer": (lambda num_classes, **kw: CNNTransformer(num_classes=num_classes, **kw),
                        CNNTransformer),
}


def build_classifier(name: str, num_classes: int = 2, **overrides) -> nn.Module:
  """One of the spec's classifiers by name, with attribute overrides.

  Args:
    name: "resnet50", "vit_b16" or "cnn_transformer".
    num_classes: head outputs.
    **overrides: attributes of `ResNet`, `VisionTransformer` or `CNNTransformer`
      respectively (e.g. `width=16` or `dtype=jnp.bfloat16`).

  Returns:
    The (unbound) Flax module; call it as `model.apply(variables, x, train=...)`.

  Raises:
    ValueError: unknown name or unknown override.
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(_BUILDERS)}")
  builder, cls = _BUILDERS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for classifier {name!r}; "
                     f"valid: {sorted(fields)}")
  return builder(num_classes, **overrides)
