"""Evaluation metrics, computed per slice so that means and spreads stay explicit."""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-4


def binary_iou_per_slice(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """MetaMedSeg's test IoU: (|P and G| + 1e-4) / (|P or G| + 1e-4) with P = sigmoid > 0.5.

  logits, targets: [N, H, W, 1]; returns [N].
  """
  pred = logits > 0.0  # sigmoid(x) > 0.5
  gt = targets > 0.5
  inter = jnp.sum(pred & gt, axis=(1, 2, 3))
  union = jnp.sum(pred | gt, axis=(1, 2, 3))
  return (inter + EPS) / (union + EPS)


def dice_per_slice(logits: jax.Array, targets: jax.Array) -> jax.Array:
  pred = logits > 0.0
  gt = targets > 0.5
  inter = jnp.sum(pred & gt, axis=(1, 2, 3))
  total = jnp.sum(pred, axis=(1, 2, 3)) + jnp.sum(gt, axis=(1, 2, 3))
  return (2 * inter + EPS) / (total + EPS)
