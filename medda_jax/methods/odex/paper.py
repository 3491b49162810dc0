"""ODEx (González et al., DART 2022) and its baselines, as the paper defines them.

* Feature statistics: the input of the first normalisation layer, averaged over space to one
  vector per image (`features`); per training stage its mean and covariance (1/N), streamed
  over batches in float64 (`StreamingGaussian`).
* Mahalanobis distance `sqrt((z - mu)^T Sigma^-1 (z - mu))` with `Sigma + eps I`
  (eps = rel_eps * trace / d) so that a few samples still give an invertible matrix.
* The pool (`Pool`): every model keeps the history of (mu, Sigma) of the stages it was
  trained on; its score of an image is the sum of the distances to its history. A new stage
  goes to the model with the lowest mean normalised score, or, when even that is above the
  threshold, to a copy of it (expansion). Test images are routed per image to the model
  with the lowest summed distance.
* Baselines: EWC's penalty `lambda/2 sum F (theta - theta*)^2` with a diagonal empirical
  Fisher, LwF's distillation on the old model's outputs.
* BWT and FWT of the matrix R[i][j] (Dice on stage j's test set after training stage i).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax import losses


# --------------------------------------------------------------------------- features
def features(norm1_input: jax.Array) -> jax.Array:
  """[B, D, H, W, C] first-norm inputs -> [B, C] channel means (the low-resolution z)."""
  return norm1_input.astype(jnp.float32).mean(axis=(1, 2, 3))


class StreamingGaussian:
  """Mean and covariance (1/N, np.cov(bias=True)) of vectors seen in batches, float64."""

  def __init__(self, dim: int):
    self.n = 0
    self.total = np.zeros(dim, np.float64)
    self.outer = np.zeros((dim, dim), np.float64)
    self.shift = None  # first batch's mean: sums of shifted vectors lose less precision

  def update(self, z) -> None:
    z = np.asarray(z, np.float64).reshape(-1, self.total.shape[0])
    if self.shift is None:
      self.shift = z.mean(axis=0)
    z = z - self.shift
    self.n += len(z)
    self.total += z.sum(axis=0)
    self.outer += z.T @ z

  @property
  def mean(self) -> np.ndarray:
    return self.shift + self.total / self.n

  @property
  def cov(self) -> np.ndarray:
    m = self.total / self.n
    return self.outer / self.n - np.outer(m, m)


@dataclasses.dataclass
class Gaussian:
  mean: np.ndarray
  cov: np.ndarray
  rel_eps: float = 1e-6

  def precision(self) -> np.ndarray:
    """(Sigma + eps I)^-1 through its Cholesky factor, eps = rel_eps * trace / d."""
    d = len(self.mean)
    reg = self.cov + self.rel_eps * max(np.trace(self.cov) / d, 1e-12) * np.eye(d)
    inv_l = np.linalg.inv(np.linalg.cholesky(reg))
    return inv_l.T @ inv_l

  def distance(self, z) -> np.ndarray:
    """Mahalanobis distance of each row of z [n, d]."""
    diff = np.asarray(z, np.float64) - self.mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, self.precision(), diff), 0.0))


def summed_distance(history, z) -> np.ndarray:
  """A model's score of each row of z: the sum of its history's Mahalanobis distances."""
  return np.sum([g.distance(z) for g in history], axis=0)


# --------------------------------------------------------------------------- the pool
@dataclasses.dataclass
class Member:
  """One model of the pool: its stage history and the in-distribution distances of its
  last training stage (which normalise its scores)."""

  history: list[Gaussian]
  d_in: np.ndarray
  stages: list[int]  # the stages it was trained on

  def normalise(self, d) -> np.ndarray:
    """(d - min d_in) / (2 max d_in - min d_in): the paper's scale between the minimum and
    the doubled maximum in-distribution distance."""
    lo, hi = float(np.min(self.d_in)), float(np.max(self.d_in))
    return (np.asarray(d) - lo) / max(2.0 * hi - lo, 1e-12)

  def threshold(self) -> float:
    """xi = 2 x the mean normalised in-distribution distance."""
    return 2.0 * float(np.mean(self.normalise(self.d_in)))


@dataclasses.dataclass(frozen=True)
class Selection:
  model: int  # the closest model
  score: float  # its mean normalised score of the new stage
  threshold: float
  expand: bool
  scores: tuple[float, ...]  # every model's mean normalised score
  raw: tuple[float, ...]  # every model's mean raw summed distance (logged: pitfall 3)


def select(members: list[Member], stage_features: list[np.ndarray],
           threshold: float | None = None) -> Selection:
  """`stage_features[m]`: the new stage's training features under model m. The closest
  model by mean normalised summed distance; expand when that score is >= the threshold
  (None: the closest model's own xi)."""
  raw = [float(np.mean(summed_distance(m.history, z))) for m, z in zip(members, stage_features)]
  scores = [float(np.mean(m.normalise(summed_distance(m.history, z))))
            for m, z in zip(members, stage_features)]
  best = int(np.argmin(scores))
  xi = members[best].threshold() if threshold is None else float(threshold)
  return Selection(best, scores[best], xi, scores[best] >= xi, tuple(scores), tuple(raw))


def route(members: list[Member], image_features: list[np.ndarray],
          per_stage: bool = True) -> np.ndarray:
  """Per image the model with the smallest summed distance over its history;
  `image_features[m]`: [n, d] features of the images under model m. `per_stage` divides
  each sum by the history's length: an expanded model carries its parent's history as well,
  so its plain sum is the larger for every image and plain sums send everything to the
  oldest model."""
  scores = [summed_distance(m.history, z) / (len(m.history) if per_stage else 1)
            for m, z in zip(members, image_features)]
  return np.argmin(np.stack(scores), axis=0)


# --------------------------------------------------------------------------- losses
def segmentation_loss(logits, masks):
  """Dice + BCE with equal weights (nnU-Net's loss for one foreground class)."""
  return losses.dice_loss(logits, masks) + losses.bce(logits, masks)


def ewc_penalty(params, anchor, fisher, lam):
  """lambda / 2 sum_k F_k (theta_k - theta*_k)^2."""
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, fisher)
  return 0.5 * lam * sum(jax.tree.leaves(terms))


def lwf_distillation(student_logits, teacher_logits, temperature: float):
  """Binary cross-entropy of the student's tempered probability against the old model's
  (LwF's knowledge distillation for a sigmoid output)."""
  soft = jax.nn.sigmoid(teacher_logits / temperature)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(student_logits / temperature, soft))


def fisher_diagonal(per_sample_grads) -> dict:
  """Empirical diagonal Fisher: the mean over samples of the squared per-sample gradients
  (every leaf has a leading sample axis)."""
  return jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), per_sample_grads)


# --------------------------------------------------------------------------- metrics
def bwt(r: np.ndarray) -> float:
  """mean over i < N of R[N][i] - R[i][i] (0 is ideal, negative = forgetting)."""
  r = np.asarray(r, np.float64)
  n = len(r)
  return float(np.mean([r[n - 1, i] - r[i, i] for i in range(n - 1)])) if n > 1 else 0.0


def fwt(r: np.ndarray) -> float:
  """mean over i > 1 of R[i][i] - R[1][i]: the gain on stage i from training on it, against
  the model after the first stage."""
  r = np.asarray(r, np.float64)
  n = len(r)
  return float(np.mean([r[i, i] - r[0, i] for i in range(1, n)])) if n > 1 else 0.0
