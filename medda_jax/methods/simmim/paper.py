"""SimMIM (Xie et al., 2022) as used by Ma et al. (DART 2022): random masking of 32x32
patches, a learned mask token at the encoder's patch level, a one-layer prediction head
(1x1 convolution + pixel shuffle back to the input) and an L1 loss on the masked pixels;
then fine-tuning of the whole encoder under a new head with AdamW, warm-up + cosine,
gradient clipping and optional layer-wise learning-rate decay.

Backbones: `vit` (`models/vit.py`, encoder stride = its patch) and `swin`
(`models/swin.py`, stride = patch x 2^(stages - 1)).
"""

from __future__ import annotations

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

BACKBONES = ("vit", "swin")


# --------------------------------------------------------------------------- masking
def random_mask(rng: np.random.Generator, grid: tuple[int, int], ratio: float) -> np.ndarray:
  """SimMIM's MaskGenerator: ceil(ratio x cells) of the mask grid's cells, chosen
  uniformly without replacement, are masked. bool [gh, gw]."""
  cells = grid[0] * grid[1]
  chosen = rng.permutation(cells)[:math.ceil(cells * ratio)]
  mask = np.zeros(cells, bool)
  mask[chosen] = True
  return mask.reshape(grid)


def upsample_mask(mask: np.ndarray, scale: int) -> np.ndarray:
  """A mask over coarse cells repeated `scale` x `scale` times: from the 32-pixel mask grid
  to the encoder's patch grid (pitfall 1 of the spec), or to pixels."""
  return np.repeat(np.repeat(mask, scale, axis=-2), scale, axis=-1)


def batch_masks(seed: int, sample_ids: np.ndarray, image_size: int, mask_patch: int,
                model_patch: int, ratio: float) -> np.ndarray:
  """Masks over the model's patch grid, one per sample, each a function of (seed, sample id)
  alone, so a resumed run redraws the same ones: bool [B, S/p, S/p]."""
  grid = (image_size // mask_patch,) * 2
  return np.stack([upsample_mask(random_mask(np.random.default_rng([seed, int(i)]), grid, ratio),
                                 mask_patch // model_patch) for i in sample_ids])


# --------------------------------------------------------------------------- model
def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch.nn.PixelShuffle(r) in NHWC: channel c * r^2 + i * r + j of cell (h, w) becomes
  pixel (h * r + i, w * r + j) of channel c."""
  return einops.rearrange(x, "n h w (c i j) -> n (h i) (w j) c", i=r, j=r)


class SimMIM(nn.Module):
  """Encoder (called with `mask` and `return_features=True`) + the one-layer head:
  a 1x1 convolution to stride^2 x channels and a pixel shuffle. Returns the reconstruction
  [N, H, W, channels] in float32.

  Attributes:
    encoder: a `VisionTransformer` or `SwinTransformer`.
    stride: the encoder's output stride (the feature map is H/stride x W/stride).
    channels: channels of the image being reconstructed (the input's).
  """

  encoder: nn.Module
  stride: int
  channels: int

  @nn.compact
  def __call__(self, x, mask, train: bool = False):
    z = self.encoder(x, train=train, mask=mask, return_features=True)
    y = nn.Conv(self.stride ** 2 * self.channels, (1, 1), name="decoder")(z)
    return pixel_shuffle(y, self.stride).astype(jnp.float32)


def masked_l1(x: jax.Array, x_rec: jax.Array, pixel_mask: jax.Array) -> jax.Array:
  """SimMIM's loss: sum over masked pixels of |x_rec - x| / (masked pixels x channels)
  (normalised by the masked count, not the image size: pitfall 3)."""
  m = pixel_mask[..., None].astype(jnp.float32)
  return jnp.sum(jnp.abs(x_rec - x) * m) / (jnp.sum(m) + 1e-5) / x.shape[-1]


def pretrain_loss(model: SimMIM, patch: int):
  """The train-chunk loss: batch {"image" [B, S, S, C], "mask" [B, S/p, S/p]}."""

  def fn(params, model_state, batch, rng):
    x = batch["image"]
    rec = model.apply({"params": params}, x, batch["mask"], train=True, rngs={"dropout": rng})
    pixel_mask = jnp.repeat(jnp.repeat(batch["mask"], patch, axis=1), patch, axis=2)
    return masked_l1(x, rec, pixel_mask), (model_state, {})

  return fn


def finetune_loss(net: nn.Module):
  """Multi-label fine-tuning: binary cross-entropy with logits per label, averaged over the
  labelled entries (NaN labels are ignored)."""

  def fn(params, model_state, batch, rng):
    logits = net.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
    labels = batch["label"]
    known = ~jnp.isnan(labels)
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.where(known, labels, 0.0))
    return jnp.sum(jnp.where(known, bce, 0.0)) / jnp.maximum(jnp.sum(known), 1), (model_state, {})

  return fn


# --------------------------------------------------------------------------- optimiser
_NO_DECAY = ("pos_embedding", "class_token", "mask_token", "relative_position_bias_table")


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", k)) for k in path]


def decay_mask(params) -> Any:
  """True where weight decay applies: kernels (weights of linear and convolution layers);
  not biases (Flax's attention biases are 2-D, so by name, not by rank), norms, position
  tables and the class / mask tokens (SimMIM's and timm's skip lists)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (_path_names(path)[-1] == "kernel"
                       and not any(n in _NO_DECAY for n in _path_names(path))), params)


def layer_id(names: list[str], backbone: str, depths: tuple[int, ...]) -> int:
  """BEiT / SimMIM layer-wise decay ids: 0 for the embeddings, 1 + block index for each
  block (Swin's patch merging counts with the last block of its stage), and
  1 + number of blocks for the final norm and the head."""
  total = sum(depths)
  if backbone == "vit":
    for n in names:
      if n.startswith("encoder_layer_"):
        return 1 + int(n.rsplit("_", 1)[1])
    if names[0] in ("conv_proj", "class_token", "mask_token") or "pos_embedding" in names:
      return 0
    return total + 1
  stage = next((int(n.split("_")[1]) for n in names if n.startswith("layers_")), None)
  if stage is not None:
    block = next((int(n.split("_")[1]) for n in names if n.startswith("blocks_")), None)
    before = sum(depths[:stage])
    return 1 + before + (depths[stage] - 1 if block is None else block)
  if names[0] in ("patch_embed", "mask_token"):
    return 0
  return total + 1


def finetune_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int,
                       weight_decay: float, b1: float, b2: float, clip_norm: float,
                       min_lr: float = 0.0, layer_decay: float = 1.0, backbone: str = "vit",
                       depths: tuple[int, ...] = (), params=None) -> optax.GradientTransformation:
  """AdamW with the decay mask, linear warm-up then cosine to `min_lr`, gradient clipping
  by global norm; `layer_decay` < 1 scales each layer's rate by
  layer_decay^(num_layers + 1 - layer id) (`optax.multi_transform` over layer ids)."""
  def adamw(scale: float):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate * scale, warmup_steps, max(total_steps, warmup_steps + 1),
        end_value=min_lr * scale)
    return optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)

  if layer_decay == 1.0:
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw(1.0))
  top = sum(depths) + 1
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: f"layer_{layer_id(_path_names(path), backbone, depths)}", params)
  used = sorted({int(v.split("_")[1]) for v in jax.tree.leaves(labels)})
  return optax.chain(optax.clip_by_global_norm(clip_norm), optax.multi_transform(
      {f"layer_{k}": adamw(layer_decay ** (top - k)) for k in used}, labels))


def pretrain_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int,
                       weight_decay: float, b1: float, b2: float, clip_norm: float,
                       min_lr: float = 0.0) -> optax.GradientTransformation:
  """SimMIM pre-training: AdamW (decay mask as above), warm-up + cosine, clipping 5.0."""
  return finetune_optimizer(learning_rate=learning_rate, total_steps=total_steps,
                            warmup_steps=warmup_steps, weight_decay=weight_decay, b1=b1, b2=b2,
                            clip_norm=clip_norm, min_lr=min_lr)


def scaled_lr(base: float, batch_size: int, per: int) -> float:
  """The linear scaling rule: `base` per `per` images (SimMIM: 1e-4 per 512)."""
  return base * batch_size / per
