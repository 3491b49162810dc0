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


# Adversarial losses. Scores are the critic's raw outputs (no sigmoid); every loss is the
# quantity its side minimises.

def class_weighted_cross_entropy(logits: jax.Array, onehot: jax.Array,
                                 clip: float = 0.005) -> jax.Array:
  """SIFA's weighted cross-entropy: class c weighted 1 - (its share of the batch's pixels),
  mean over pixels of -sum_c w_c y_c log clip(softmax_c, clip, 1)."""
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  y = onehot.astype(jnp.float32)
  axes = tuple(range(y.ndim - 1))
  weights = 1.0 - jnp.sum(y, axis=axes) / jnp.sum(y)
  return jnp.mean(jnp.sum(-weights * y * jnp.log(jnp.clip(p, clip, 1.0)), axis=-1))


def softmax_dice_loss(logits: jax.Array, onehot: jax.Array, eps: float = 1e-7) -> jax.Array:
  """SIFA's Dice loss: 1 - mean_c 2 sum(p_c y_c) / (sum p_c^2 + sum y_c + eps) over the
  whole batch, background included."""
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  y = onehot.astype(jnp.float32)
  axes = tuple(range(y.ndim - 1))
  dice = 2.0 * jnp.sum(p * y, axis=axes) / (jnp.sum(p * p, axis=axes) + jnp.sum(y, axis=axes)
                                            + eps)
  return 1.0 - jnp.mean(dice)


def wgan_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """Negative Wasserstein estimate: E[f(fake)] - E[f(real)] (Arjovsky et al., 2017)."""
  return jnp.mean(fake_scores.astype(jnp.float32)) - jnp.mean(real_scores.astype(jnp.float32))


def wgan_generator_loss(fake_scores: jax.Array) -> jax.Array:
  """-E[f(G(z))]. (The sign matters: some papers print it without the minus.)"""
  return -jnp.mean(fake_scores.astype(jnp.float32))


def interpolate(real: jax.Array, fake: jax.Array, rng: jax.Array) -> jax.Array:
  """x_hat = eps * real + (1 - eps) * fake with one eps ~ U[0, 1] per sample."""
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  return eps * real + (1.0 - eps) * fake


def gradient_penalty(critic_fn, real: jax.Array, fake: jax.Array, rng: jax.Array,
                     target: float = 1.0) -> jax.Array:
  """WGAN-GP (Gulrajani et al., 2017): E[(||grad_x f(x_hat)||_2 - target)^2] at random
  interpolates of real and fake samples.

  `critic_fn(x) -> scores [batch]`. The per-sample gradients come from one jax.grad of
  the summed scores, which is exact because a WGAN-GP critic treats samples independently
  (no batch normalisation). The 1e-12 keeps the norm's gradient finite at zero.
  """
  x_hat = interpolate(real, jax.lax.stop_gradient(fake), rng)
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x).astype(jnp.float32)))(x_hat)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.astype(jnp.float32)).reshape(real.shape[0], -1),
                           axis=1) + 1e-12)
  return jnp.mean(jnp.square(norms - target))


def least_squares_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """LSGAN (Mao et al., 2017) with targets 1 (real) and 0 (fake), halved as CycleGAN does."""
  return 0.5 * (jnp.mean(jnp.square(real_scores.astype(jnp.float32) - 1.0))
                + jnp.mean(jnp.square(fake_scores.astype(jnp.float32))))


def least_squares_generator_loss(fake_scores: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(fake_scores.astype(jnp.float32) - 1.0))


def nonsaturating_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """Goodfellow et al. (2014): binary cross-entropy on logits, real = 1, fake = 0."""
  return (jnp.mean(jax.nn.softplus(-real_scores.astype(jnp.float32)))
          + jnp.mean(jax.nn.softplus(fake_scores.astype(jnp.float32))))


def nonsaturating_generator_loss(fake_scores: jax.Array) -> jax.Array:
  """-E[log sigmoid(D(G(z)))], the non-saturating generator objective."""
  return jnp.mean(jax.nn.softplus(-fake_scores.astype(jnp.float32)))
