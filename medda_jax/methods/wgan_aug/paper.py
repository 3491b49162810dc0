"""The paper's method of class-wise WGAN augmentation (Alrajhi et al.): the WGAN losses, the
mixing of real and synthetic images at a ratio, and the domain gap it is measured by.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from medda_jax import losses
from medda_jax.data.images import ImageSet
from medda_jax.errors import ConfigError
from medda_jax.models.wgan import Critic, Generator


# --------------------------------------------------------------------------- WGAN
def wgan_losses(generator: Generator, critic: Critic, latent_dim: int, batch_size: int,
                loss: str, gp_weight: float) -> tuple[Callable, Callable]:
  """The critic and generator losses in the GAN engine's contract.

  Critic: E[f(G(z))] - E[f(x)] (+ gp_weight * GP for "wgan_gp"). Real and fake pass the
  critic as one batch, so spectral norm runs one power iteration per critic update.
  Generator: -E[f(G(z))], the critic's statistics frozen. The generator runs in training
  mode in both (its BatchNorm uses batch statistics and updates its running averages, as
  PyTorch does while it makes fakes for the critic).
  """

  def generate(params, model_state, rng):
    z = jax.random.normal(rng, (batch_size, latent_dim))
    return generator.apply({"params": params["g"], **model_state["g"]}, z, train=True,
                           mutable=["batch_stats"])

  def critic_loss(params, model_state, batch, rng):
    z_rng, gp_rng = jax.random.split(rng)
    fake, g_state = generate(params, model_state, z_rng)
    fake = jax.lax.stop_gradient(fake)
    real = batch["image"]
    scores, d_state = critic.apply({"params": params["d"], **model_state["d"]},
                                   jnp.concatenate([real, fake]), update_stats=True,
                                   mutable=["batch_stats"])
    real_scores, fake_scores = scores[: real.shape[0]], scores[real.shape[0]:]
    value = losses.wgan_critic_loss(real_scores, fake_scores)
    metrics = {"wasserstein": -value}
    if loss == "wgan_gp":
      score_fn = lambda x: critic.apply({"params": params["d"], **d_state}, x,
                                        update_stats=False)
      gp = losses.gradient_penalty(score_fn, real, fake, gp_rng)
      value = value + gp_weight * gp
      metrics["gp"] = gp
    return value, ({"g": g_state, "d": d_state}, metrics)

  def generator_loss(params, model_state, batch, rng):
    del batch  # an unconditional WGAN's generator sees no real image
    fake, g_state = generate(params, model_state, rng)
    scores = critic.apply({"params": params["d"], **model_state["d"]}, fake, update_stats=False)
    return losses.wgan_generator_loss(scores), ({"g": g_state, "d": model_state["d"]}, {})

  return critic_loss, generator_loss


# --------------------------------------------------------------------------- synthetic sets
def synthetic_pool(samples: dict[int, np.ndarray], real: ImageSet, flip_synth: bool,
                   flip_real: bool) -> dict[int, np.ndarray]:
  """Per class: the WGAN samples, their horizontal flips and flips of the real training
  images, as the switches say (the paper counts flipped copies as synthetic)."""
  pool = {}
  for k, images in samples.items():
    parts = [images] + ([images[:, :, ::-1]] if flip_synth else [])
    if flip_real:
      parts.append(real.images[real.labels == k][:, :, ::-1])
    pool[k] = np.concatenate(parts)
  return pool


def class_counts(total: int, real: ImageSet, split: str) -> dict[int, int]:
  """Synthetic images per class: proportional to the real class shares, or equal."""
  classes = sorted(real.counts())
  if split == "equal":
    shares = {k: 1 / len(classes) for k in classes}
  else:
    counts = real.counts()
    shares = {k: counts[k] / sum(counts.values()) for k in classes}
  out = {k: int(math.floor(total * shares[k])) for k in classes}
  for k in sorted(classes, key=lambda k: -(total * shares[k] - out[k]))[: total - sum(out.values())]:
    out[k] += 1
  return out


def mixed_training_set(real: ImageSet, pool: dict[int, np.ndarray], total: int, split: str,
                       seed: int) -> ImageSet:
  """The real images plus `total` synthetic ones drawn from the pool without replacement."""
  rng = np.random.default_rng(seed)
  images, labels = [real.images], [real.labels]
  for k, n in class_counts(total, real, split).items():
    if n > len(pool[k]):
      raise ConfigError(f"{total} synthetic images need {n} of class {k} but the pool has "
                        f"{len(pool[k])}; raise config.synthetic.samples_per_class")
    images.append(pool[k][rng.choice(len(pool[k]), n, replace=False)])
    labels.append(np.full(n, k, np.int32))
  return ImageSet(np.concatenate(images).astype(np.float32), np.concatenate(labels))


def mirrored(data: ImageSet) -> ImageSet:
  """The set followed by its horizontal flips, same labels: the paper doubles its mixed
  training set this way, so Table 6's "Real (780) + Synthetic (1580)" = 780 real + 400
  WGAN images + flips of all 1180 (the flips count as synthetic)."""
  return ImageSet(np.concatenate([data.images, data.images[:, :, ::-1]]),
                  np.concatenate([data.labels, data.labels]))


# --------------------------------------------------------------------------- the measure
def domain_gap(acc_in: float, acc_out: float) -> float:
  """Percentage points lost out of domain (the paper's Table 5)."""
  return acc_in - acc_out
