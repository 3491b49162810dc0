"""Vision Transformer (Dosovitskiy et al., 2021) in the torchvision layout, NHWC.

`vit_b16()` matches `torchvision.models.vit_b_16`: a 16x16/16 conv patch embedding to width
768 (`conv_proj`), a learned class token prepended to the 14 x 14 = 196 patch tokens,
learned position embeddings over the 197 tokens, dropout 0.1, 12 pre-LN encoder blocks,
a final LayerNorm and a linear head on the class token. Each block is
x + Dropout(MHSA(LN(x))) followed by x + MLP(LN(x)), with LayerNorm eps 1e-6,
12-head self-attention with biases on the q, k, v and output projections, and an MLP
Linear(3072) -> GELU (exact, not tanh) -> Dropout -> Linear(768) -> Dropout. With 2 classes
it has 85,800,194 parameters: torchvision's 86,567,656 for 1000 classes, minus its
769,000-parameter head, plus a 1,538-parameter 2-class head.

Input. Images whose spatial size differs from `image_size` (224 by default) are resized to
it inside the model with `jax.image.resize` (bilinear; antialiased when shrinking), so the
128 x 128 ultrasound images become 196 tokens; `image_size=None` keeps the input size (it
must then be a multiple of `patch_size`, and the position-embedding length follows it). A
single-channel input is replicated to 3 channels.

`EncoderBlock` and `Encoder` (position embeddings + dropout + blocks + final LN) are
shared with the CNN-Transformer hybrid in `cnn_transformer.py`. Module names follow
torchvision (`conv_proj`, `class_token`, `encoder/pos_embedding`,
`encoder/encoder_layer_0/{ln_1,self_attention,ln_2,mlp}`, `encoder/ln`; the head is
`head`, torchvision's `heads.head`). torch's fused in_proj of the attention corresponds to
Flax's separate `query`/`key`/`value` kernels of shape (width, heads, head_dim).

Initialisation follows torchvision: patch conv normal(std sqrt(1 / fan_in)) (torch
truncates at +-2 absolute, which at these scales truncates nothing) and bias 0; class
token 0; position embeddings normal(0.02); attention q/k/v Xavier-uniform over the fused
(3 * width, width) matrix with zero biases, output projection uniform(+-1/sqrt(width)) with
zero bias; MLP Linears Xavier-uniform with biases normal(1e-6); LayerNorm scale 1, bias 0;
head weight and bias 0. `train=True` enables dropout and needs a "dropout" rng.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medda_jax.models.conv import Conv
from medda_jax.models.dense import Dense
from medda_jax.models.resnet import gray_to_rgb

# torchvision conv_proj: trunc_normal_(std=sqrt(1 / fan_in)) with bounds +-2 (absolute).
_PATCH_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_POS_INIT = nn.initializers.normal(stddev=0.02)
# torch.nn.MultiheadAttention: xavier_uniform_ on the fused (3E, E) in_proj weight, i.e.
# variance 2 / (E + 3E) = 0.5 / fan_avg of each (E, E) block; out_proj is a torch Linear.
_QKV_INIT = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
_OUT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision MLPBlock: xavier_uniform_ weights, normal(std=1e-6) biases.
_MLP_INIT = nn.initializers.xavier_uniform()
_MLP_BIAS_INIT = nn.initializers.normal(stddev=1e-6)


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class MlpBlock(nn.Module):
  """Linear(mlp_dim) -> GELU -> Dropout -> Linear(width) -> Dropout."""

  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = x.shape[-1]
    y = Dense(self.mlp_dim, kernel_init=_MLP_INIT, bias_init=_MLP_BIAS_INIT,
              dtype=self.dtype, name="linear_1")(x)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = Dense(width, kernel_init=_MLP_INIT, bias_init=_MLP_BIAS_INIT, dtype=self.dtype,
              name="linear_2")(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + Dropout(MHSA(LN(x))), then x + MLP(LN(x)).

  Attributes:
    num_heads: attention heads (the token width must be divisible by it).
    mlp_dim: hidden width of the MLP.
    dropout: dropout rate after attention and inside the MLP.
    attention_dropout: dropout rate on the attention weights (torchvision: 0).
    dtype: compute dtype.
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = layer_norm(self.dtype, "ln_1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attention_dropout,
        kernel_init=_QKV_INIT, out_kernel_init=_OUT_INIT, bias_init=nn.initializers.zeros,
        out_bias_init=nn.initializers.zeros, name="self_attention")(y, y, deterministic=not train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = layer_norm(self.dtype, "ln_2")(x)
    return x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)


class Encoder(nn.Module):
  """Learned position embeddings + dropout + `depth` `EncoderBlock`s + final LayerNorm.

  Takes [N, L, D] tokens (class token included) and returns [N, L, D]; the
  `pos_embedding` parameter has shape (1, L, D), so L is fixed at initialisation.
  """

  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pos = self.param("pos_embedding", _POS_INIT, (1,) + x.shape[1:], jnp.float32)
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                       self.dtype, name=f"encoder_layer_{i}")(x, train)
    return layer_norm(self.dtype, "ln")(x)


def prepend_class_token(module: nn.Module, tokens: jax.Array) -> jax.Array:
  """Prepends `module`'s learned (zero-initialised) "class_token" [1, 1, D] to [N, L, D]."""
  cls = module.param("class_token", nn.initializers.zeros, (1, 1, tokens.shape[-1]),
                     jnp.float32)
  cls = jnp.broadcast_to(cls.astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
  return jnp.concatenate([cls, tokens], axis=1)


def prepare_images(x, image_size: int | None, patch_size: int):
  """NHWC images as a patch-embedding model takes them (ViT, Swin): one channel replicated to
  three, resized (bilinear) to `image_size` x `image_size` when it differs (None: kept); the
  side must be a multiple of `patch_size`."""
  x = gray_to_rgb(x)
  n, h, w, c = x.shape
  if image_size is not None and (h, w) != (image_size, image_size):
    x = jax.image.resize(x.astype(jnp.float32), (n, image_size, image_size, c), "bilinear")
    h = w = image_size
  if h % patch_size or w % patch_size:
    raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {patch_size}")
  return x


def replace_masked_tokens(module: nn.Module, tokens, mask, init):
  """SimMIM: the patch tokens [N, gh, gw, D] where `mask` [N, gh, gw] is set (bool or 0/1)
  become `module`'s learned "mask_token" (1, 1, D), drawn from `init`; the parameter exists
  only in a model called with a mask."""
  if mask.shape != tokens.shape[:3]:
    raise ValueError(f"mask shape {mask.shape} is not the patch grid {tokens.shape[:3]}")
  token = module.param("mask_token", init, (1, 1, tokens.shape[-1]), jnp.float32)
  weight = mask.astype(tokens.dtype)[..., None]
  return tokens * (1 - weight) + token.astype(tokens.dtype) * weight


class VisionTransformer(nn.Module):
  """ViT classifier in the torchvision layout.

  Attributes:
    image_size: side the input is resized to (bilinear) before patching; None keeps the
      input size.
    patch_size: side of the square patches (conv kernel and stride).
    width: token width (hidden dim).
    depth: number of encoder blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    dropout: dropout rate (after the position embeddings, attention and MLP layers).
    attention_dropout: dropout on the attention weights.
    num_classes: head outputs (logits).
    dtype: compute dtype (parameters stay float32); logits are returned in float32.
  """

  image_size: int | None = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.1
  attention_dropout: float = 0.0
  num_classes: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
    """Logits [N, num_classes] for NHWC images x (or the patch-token feature map).

    Args:
      x: [N, H, W, C] images; C = 1 is replicated to 3 channels, and H x W is resized to
        `image_size` x `image_size` when it differs.
      train: enables dropout (needs a "dropout" rng).
      mask: None, or [N, H/patch, W/patch] (bool or 0/1) over the patch grid: masked patch
        tokens are replaced by a learned `mask_token` (SimMIM's VisionTransformerForSimMIM;
        the parameter exists only in a model called with a mask).
      return_features: return the final LayerNorm's patch tokens as a float32 map
        [N, H/patch, W/patch, width] (no class token, no head parameters).

    Returns:
      float32 logits [N, num_classes], or the feature map.
    """
    x = prepare_images(x, self.image_size, self.patch_size).astype(self.dtype)
    x = Conv(self.width, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding="VALID",
                kernel_init=_PATCH_INIT, dtype=self.dtype, name="conv_proj")(x)
    n, gh, gw, _ = x.shape
    if mask is not None:
      x = replace_masked_tokens(self, x, mask, nn.initializers.truncated_normal(0.02))
    x = x.reshape(n, -1, self.width)
    x = prepend_class_token(self, x)
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                self.dtype, name="encoder")(x, train)
    if return_features:
      return x[:, 1:].reshape(n, gh, gw, self.width).astype(jnp.float32)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      bias_init=nn.initializers.zeros, dtype=self.dtype, name="head")(x[:, 0])
    return logits.astype(jnp.float32)


def vit_b16(num_classes: int = 2, **kw) -> VisionTransformer:
  """ViT-B/16: patch 16, width 768, depth 12, 12 heads, MLP 3072, dropout 0.1, 224 x 224.

  Keyword arguments override any other `VisionTransformer` attribute.
  """
  cfg = dict(image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
             dropout=0.1)
  cfg.update(kw)
  return VisionTransformer(num_classes=num_classes, **cfg)
