"""Segmentation losses on logits. Sums run over every pixel of the whole batch, as in
MetaMedSeg's reference code (not per image), with smoothing s = 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SMOOTH = 1.0


def soft_iou(logits: jax.Array, targets: jax.Array, smooth: float = SMOOTH) -> jax.Array:
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  g = targets.astype(jnp.float32)
  inter = jnp.sum(p * g)
  return (inter + smooth) / (jnp.sum(p) + jnp.sum(g) - inter + smooth)


def bce(logits: jax.Array, targets: jax.Array, pos_weight: str | None = None) -> jax.Array:
  """Mean binary cross-entropy; pos_weight="neg_over_pos" weights positives by #neg/#pos."""
  logits = logits.astype(jnp.float32)
  g = targets.astype(jnp.float32)
  losses = optax.sigmoid_binary_cross_entropy(logits, g)
  if pos_weight == "neg_over_pos":
    pos = jnp.sum(g)
    weight = jnp.where(pos > 0, (g.size - pos) / jnp.maximum(pos, 1.0), 1.0)
    losses = losses * jnp.where(g > 0, weight, 1.0)
  elif pos_weight is not None:
    raise ValueError(f"pos_weight must be None or 'neg_over_pos', got {pos_weight!r}")
  return jnp.mean(losses)


def iou_loss(logits, targets):
  return 1.0 - soft_iou(logits, targets)


def bce_log_dice(logits, targets):
  """MetaMedSeg eq. (4): BCE - log(2 IoU / (IoU + 1)), the log-Dice written through IoU."""
  iou = soft_iou(logits, targets)
  return bce(logits, targets) - jnp.log(2.0 * iou / (iou + 1.0))


def dice_loss(logits, targets, smooth: float = SMOOTH):
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  g = targets.astype(jnp.float32)
  return 1.0 - (2.0 * jnp.sum(p * g) + smooth) / (jnp.sum(p) + jnp.sum(g) + smooth)


def tversky_loss(logits, targets, alpha: float = 0.2, beta: float = 0.8,
                 smooth: float = SMOOTH):
  """alpha weighs false positives, beta false negatives."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  g = targets.astype(jnp.float32)
  tp = jnp.sum(p * g)
  index = (tp + smooth) / (tp + alpha * jnp.sum(p * (1 - g)) + beta * jnp.sum((1 - p) * g) + smooth)
  return 1.0 - index


def focal_tversky_loss(logits, targets, gamma: float = 0.75):
  return tversky_loss(logits, targets) ** gamma


SEGMENTATION_LOSSES = {
    "bce": bce,
    "iou": iou_loss,
    "bce_log_dice": bce_log_dice,
    "dice": dice_loss,
    "tversky": tversky_loss,
    "focal_tversky": focal_tversky_loss,
}
