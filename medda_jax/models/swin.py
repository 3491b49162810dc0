"""Swin Transformer (Liu et al., 2021) in timm's layout, NHWC.

`swin_b()` matches timm's `swin_base_patch4_window7_224` (the official Swin-B): a 4x4/4 conv
patch embedding to width 128 followed by a LayerNorm (`patch_embed/{proj,norm}`), no absolute
position embedding, dropout, then four stages (`layers_0` .. `layers_3`) of (2, 2, 18, 2)
blocks with widths 128, 256, 512, 1024 and (4, 8, 16, 32) heads, a final LayerNorm (`norm`),
global average pooling over the tokens and a linear head (`head`). With 1000 classes it has
87,768,224 parameters, as timm's.

Each block (`layers_i/blocks_j`) is x + DropPath(W-MSA(LN(x))) followed by
x + DropPath(MLP(LN(x))): `norm1`; `attn`, self-attention inside non-overlapping 7 x 7
windows with a fused `qkv` projection (with bias), scale head_dim^-0.5, a learned
`relative_position_bias_table` of shape ((2w - 1)^2, heads) indexed by the relative offset of
the two tokens inside the window (the index is a NumPy constant, not a parameter), and an
output `proj`; `norm2`; `mlp` = `fc1` (4x) -> GELU (exact) -> dropout -> `fc2` -> dropout.
Odd blocks (j = 1, 3, ...) shift the windows by w // 2 (a cyclic `jnp.roll` of the token grid
and back) and mask attention between tokens the roll brought together (-100 on the logits,
as timm). When a stage's token grid is no larger than the window, the window is the grid
side and nothing shifts (timm's rule), so Swin-B's last stage at 224 (7 x 7 tokens) attends
globally. Stages 0 .. S-2 end with patch merging (`layers_i/downsample`): the 2 x 2
neighbours concatenated in timm's order (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
x[1::2, 1::2]) -> LayerNorm(4C) (`norm`) -> Linear(4C, 2C) without bias (`reduction`). This
is the layout of the official code, SimMIM and timm < 0.9 (timm 0.9 moved each merging to
the start of the next stage, `layers_{i+1}/downsample`). Stochastic depth rises linearly over
the blocks from 0 to `drop_path_rate`; LayerNorm eps is 1e-5 (torch's default).

Input. Images whose spatial size differs from `image_size` (224 by default) are resized to
it inside the model with `jax.image.resize` (bilinear; antialiased when shrinking), as
`vit.py` does; `image_size=None` keeps the input size. A single-channel input is replicated to
3 channels. Every stage's token grid must be divisible by its window (or be no larger than
it), and must be even where it is merged.

Masked image modelling (SimMIM). `mask` ([N, H/patch, W/patch], 1 / True = masked, at the
patch grid of the possibly resized image) replaces the masked tokens right after the patch
embedding's LayerNorm by a learned `mask_token` (1, 1, embed_dim), as SimMIM's
`SwinTransformerForSimMIM`; the parameter exists only in models called with a mask.
`return_features=True` returns the final LayerNorm's token grid [N, H/32, W/32, 8 * embed_dim]
(Swin-B) instead of logits, and the model then has no `head`.

Fine-tuning at another window size. `interpolate_relative_position_bias` resizes a
relative-position table bicubically as torch's `F.interpolate(mode="bicubic",
align_corners=False)` does in SimMIM's and timm's checkpoint loaders;
`resize_relative_position_tables` applies it to every table of a params tree.

Initialisation follows timm (`init_weights_vit_timm`): Linear weights trunc_normal(std 0.02)
with zero biases, relative-position tables and the mask token trunc_normal(std 0.02) (timm
truncates at +-2 absolute, which at std 0.02 truncates nothing, so these are plain normals
here), LayerNorm scale 1 and bias 0; the patch conv keeps torch.nn.Conv2d's default, weight
and bias uniform(+-1/sqrt(fan_in)). `train=True` enables dropout and stochastic depth and
needs a "dropout" rng.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.models.conv import Conv
from medda_jax.models.dense import Dense
from medda_jax.models.resnet import linear_bias_init
from medda_jax.models.vit import prepare_images, replace_masked_tokens

# timm trunc_normal_(std=.02): its bounds +-2 are absolute (100 std), so a plain normal.
_TRUNC_NORMAL = nn.initializers.normal(stddev=0.02)
# torch.nn.Conv2d's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_PATCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# timm's shifted-window mask value (not -inf: a fully masked row cannot occur, but -100
# keeps bfloat16 logits finite).
_MASK_VALUE = -100.0


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  """A Linear initialised as timm's Swin: weight normal(0.02), bias 0 (`models/dense.py`:
  its kernel gradient as one 2-D product, 3-4x faster on the CPU at Swin's first stages)."""
  return Dense(features, use_bias=use_bias, kernel_init=_TRUNC_NORMAL,
                  bias_init=nn.initializers.zeros, dtype=dtype, name=name)


def window_partition(x, window_size: int):
  """[N, H, W, C] -> [N * nW, window_size, window_size, C], windows in row-major order."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // window_size, window_size, w // window_size, window_size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows, window_size: int, h: int, w: int):
  """The inverse of `window_partition`: [N * nW, ws, ws, C] -> [N, H, W, C]."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window_size, w // window_size, window_size, window_size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: int) -> np.ndarray:
  """[w*w, w*w] index into the ((2w - 1)^2, heads) table: token pairs of a window (row-major)
  at the same relative offset (dy, dx) share an entry, (dy + w - 1) * (2w - 1) + dx + w - 1."""
  w = window_size
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (w - 1)  # 2, w*w, w*w
  return rel[0] * (2 * w - 1) + rel[1]


def shifted_window_mask(h: int, w: int, window_size: int, shift_size: int) -> np.ndarray:
  """[nW, ws*ws, ws*ws] additive mask of the shifted windows of an h x w grid (timm).

  After the cyclic roll by -shift, the last window row/column holds tokens from opposite
  edges of the image; each token is labelled by its region (3 x 3 of them) and attention
  between different regions gets -100.
  """
  img = np.zeros((1, h, w, 1), np.float32)
  slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
  for k, (hs, ws) in enumerate((hs, ws) for hs in slices for ws in slices):
    img[:, hs, ws, :] = k
  labels = window_partition(img, window_size).reshape(-1, window_size * window_size)
  diff = labels[:, None, :] - labels[:, :, None]
  return np.where(diff != 0, _MASK_VALUE, 0.0).astype(np.float32)


def window_and_shift(h: int, w: int, window_size: int, shift_size: int) -> tuple[int, int]:
  """timm's rule: a grid no larger than the window is one window, unshifted."""
  if min(h, w) <= window_size:
    window_size, shift_size = min(h, w), 0
  if h % window_size or w % window_size:
    raise ValueError(f"window size {window_size} does not divide the {h}x{w} token grid; "
                     "choose image_size, patch_size and window_size so that every stage's "
                     "grid is a multiple of the window (e.g. 224 / 4 / 7)")
  return window_size, shift_size


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows, with a relative position bias.

  Takes [N * nW, ws*ws, C] window tokens and an optional [nW, ws*ws, ws*ws] additive mask.
  """

  num_heads: int
  window_size: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    b, n, c = x.shape
    head_dim = c // self.num_heads
    qkv = dense(3 * c, self.dtype, "qkv")(x)
    # timm's layout of the fused projection: (3, heads, head_dim) along the features.
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * head_dim ** -0.5, qkv[1], qkv[2]
    attn = q @ k.swapaxes(-2, -1)  # b, heads, n, n
    table = self.param("relative_position_bias_table", _TRUNC_NORMAL,
                       ((2 * self.window_size - 1) ** 2, self.num_heads), jnp.float32)
    index = relative_position_index(self.window_size).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    attn = attn + bias.astype(attn.dtype)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b // nw, nw, self.num_heads, n, n) + mask[None, :, None].astype(
          attn.dtype)
      attn = attn.reshape(b, self.num_heads, n, n)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(self.dtype)
    x = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    x = dense(c, self.dtype, "proj")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Mlp(nn.Module):
  """`fc1` -> GELU (exact) -> Dropout -> `fc2` -> Dropout (timm's Mlp)."""

  hidden_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = x.shape[-1]
    y = dense(self.hidden_dim, self.dtype, "fc1")(x)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = dense(width, self.dtype, "fc2")(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


def drop_path(rate: float, x, train: bool):
  """Stochastic depth: the whole residual branch of a sample is dropped with probability
  `rate` and kept ones are scaled by 1 / (1 - rate) (timm's DropPath), i.e. dropout with one
  draw per sample."""
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train)(x)


class SwinTransformerBlock(nn.Module):
  """x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x))), on an [N, H, W, C] grid.

  `shift_size` > 0 makes it a shifted-window block; `window_and_shift` may shrink the window
  to the grid (and drop the shift) as timm does.
  """

  num_heads: int
  window_size: int = 7
  shift_size: int = 0
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, h, w, c = x.shape
    ws, shift = window_and_shift(h, w, self.window_size, self.shift_size)
    y = layer_norm(self.dtype, "norm1")(x)
    mask = None
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = jnp.asarray(shifted_window_mask(h, w, ws, shift))
    y = window_partition(y, ws).reshape(-1, ws * ws, c)
    y = WindowAttention(self.num_heads, ws, self.dropout, self.dtype, name="attn")(y, mask, train)
    y = window_reverse(y.reshape(-1, ws, ws, c), ws, h, w)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + drop_path(self.drop_path, y, train)
    y = layer_norm(self.dtype, "norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), self.dropout, self.dtype, name="mlp")(y, train)
    return x + drop_path(self.drop_path, y, train)


class PatchMerging(nn.Module):
  """[N, H, W, C] -> [N, H/2, W/2, 2C]: 2 x 2 neighbours concatenated -> LN -> Linear."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f"patch merging needs an even token grid, got {h}x{w}")
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = layer_norm(self.dtype, "norm")(x)
    return dense(2 * c, self.dtype, "reduction", use_bias=False)(x)


class BasicLayer(nn.Module):
  """One stage: `blocks_0` .. `blocks_{depth-1}` (odd ones shifted), then an optional
  patch merging `downsample` (timm's BasicLayer)."""

  depth: int
  num_heads: int
  window_size: int = 7
  mlp_ratio: float = 4.0
  drop_path: tuple[float, ...] = ()
  dropout: float = 0.0
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.depth):
      x = SwinTransformerBlock(
          self.num_heads, self.window_size, 0 if j % 2 == 0 else self.window_size // 2,
          self.mlp_ratio, self.drop_path[j] if self.drop_path else 0.0, self.dropout,
          self.dtype, name=f"blocks_{j}")(x, train)
    if self.downsample:
      x = PatchMerging(self.dtype, name="downsample")(x)
    return x


class PatchEmbed(nn.Module):
  """Conv patch x patch / patch (`proj`) -> LayerNorm (`norm`): [N, H/p, W/p, embed_dim]."""

  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", kernel_init=_PATCH_INIT,
             bias_init=linear_bias_init(p * p * x.shape[-1]), dtype=self.dtype, name="proj")(x)
    return layer_norm(self.dtype, "norm")(x)


class SwinTransformer(nn.Module):
  """Swin Transformer classifier / feature extractor in timm's layout.

  Attributes:
    image_size: side the input is resized to (bilinear) before patching; None keeps the
      input size.
    patch_size: side of the square patches (conv kernel and stride).
    embed_dim: token width of the first stage (doubled by every patch merging).
    depths: blocks per stage.
    num_heads: attention heads per stage.
    window_size: side of the attention windows.
    mlp_ratio: MLP hidden width over the token width.
    drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
    dropout: dropout after the patch embedding, the attention projection and in the MLP.
    num_classes: head outputs (logits).
    dtype: compute dtype (parameters stay float32); outputs are returned in float32.
  """

  image_size: int | None = 224
  patch_size: int = 4
  embed_dim: int = 128
  depths: tuple[int, ...] = (2, 2, 18, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_size: int = 7
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.1
  dropout: float = 0.0
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, return_features: bool = False):
    """Logits [N, num_classes], or the final feature grid, for NHWC images x.

    Args:
      x: [N, H, W, C] images; C = 1 is replicated to 3 channels, and H x W is resized to
        `image_size` x `image_size` when it differs.
      train: enables dropout and stochastic depth (needs a "dropout" rng).
      mask: None, or [N, H/patch, W/patch] (bool or 0/1) at the patch grid of the (resized)
        image; masked tokens are replaced by the learned `mask_token` (SimMIM).
      return_features: return the final LayerNorm's output instead of logits (no `head`).

    Returns:
      float32 logits [N, num_classes], or with `return_features` float32 features
      [N, H / (patch * 2^(S-1)), W / (patch * 2^(S-1)), embed_dim * 2^(S-1)].
    """
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
    x = prepare_images(x, self.image_size, self.patch_size)
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype,
                   name="patch_embed")(x.astype(self.dtype))
    if mask is not None:
      x = replace_masked_tokens(self, x, mask, _TRUNC_NORMAL)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    start = 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      x = BasicLayer(depth, heads, self.window_size, self.mlp_ratio,
                     tuple(rates[start:start + depth]), self.dropout,
                     downsample=i < len(self.depths) - 1, dtype=self.dtype,
                     name=f"layers_{i}")(x, train)
      start += depth
    x = layer_norm(self.dtype, "norm")(x)
    if return_features:
      return x.astype(jnp.float32)
    logits = dense(self.num_classes, self.dtype, "head")(x.mean(axis=(1, 2)))
    return logits.astype(jnp.float32)


def swin_b(num_classes: int = 1000, **kw) -> SwinTransformer:
  """Swin-B (timm `swin_base_patch4_window7_224`): patch 4, width 128, depths (2, 2, 18, 2),
  heads (4, 8, 16, 32), window 7, 224 x 224, stochastic depth 0.1 (timm's default; the
  official Swin-B recipe trains with 0.5).

  Keyword arguments override any other `SwinTransformer` attribute.
  """
  cfg = dict(image_size=224, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2),
             num_heads=(4, 8, 16, 32), window_size=7)
  cfg.update(kw)
  return SwinTransformer(num_classes=num_classes, **cfg)


def swin_tiny_test(**kw) -> SwinTransformer:
  """A tiny Swin for tests: 32 x 32 input, patch 4, width 16, depths (2, 2), heads (1, 2),
  window 4. Stage 0 (8 x 8 tokens, four windows) has a plain and a shifted block; stage 1
  (4 x 4 tokens) is one unshifted window; features are [N, 4, 4, 32].
  """
  cfg = dict(image_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
             window_size=4, num_classes=10)
  cfg.update(kw)
  return SwinTransformer(**cfg)


def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] 1-D resize matrix of torch's bicubic, align_corners=False: Keys' kernel with
  A = -0.75, half-pixel source coordinates (not clamped) and border taps clamped."""
  a = -0.75
  near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
  far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    src = (i + 0.5) * in_size / out_size - 0.5
    x0 = int(np.floor(src))
    t = src - x0
    for tap, weight in zip(range(x0 - 1, x0 + 3), (far(t + 1), near(t), near(1 - t),
                                                    far(2 - t))):
      m[i, min(max(tap, 0), in_size - 1)] += weight
  return m


def interpolate_relative_position_bias(table, old_window: int, new_window: int):
  """Resizes a ((2 old_window - 1)^2, heads) relative-position table to new_window.

  The table, seen as a (2w - 1) x (2w - 1) image per head, is resized bicubically as
  SimMIM's and timm's checkpoint loaders do with torch's `F.interpolate(mode="bicubic",
  align_corners=False)`; the same window returns `table` itself.
  """
  old, new = 2 * old_window - 1, 2 * new_window - 1
  if table.ndim != 2 or table.shape[0] != old * old:
    raise ValueError(f"table of shape {table.shape} is not ((2 * {old_window} - 1)^2, heads)")
  if old_window == new_window:
    return table
  m = jnp.asarray(_bicubic_matrix(old, new), jnp.float32)
  grid = jnp.asarray(table, jnp.float32).reshape(old, old, -1)
  out = jnp.einsum("yi,xj,ijh->yxh", m, m, grid, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(new * new, -1).astype(table.dtype)


def resize_relative_position_tables(params, new_window: int):
  """`params` with every `relative_position_bias_table` whose size differs from new_window's
  resized by `interpolate_relative_position_bias` (other leaves are returned as they are).

  A stage whose token grid is no larger than the window uses the grid side as its window
  (timm's rule); such tables need that side rather than new_window.
  """
  size = (2 * new_window - 1) ** 2

  def resize(path, leaf):
    key = path[-1]
    if getattr(key, "key", None) != "relative_position_bias_table" or leaf.shape[0] == size:
      return leaf
    old_window = (int(round(np.sqrt(leaf.shape[0]))) + 1) // 2
    return interpolate_relative_position_bias(leaf, old_window, new_window)

  return jax.tree_util.tree_map_with_path(resize, params)
