"""Stepwise incremental pre-training of a United model (Guo, Islam, Gotway, Liang; DART 2022):
discriminative, restorative and adversarial learning added one stage at a time.

Each sample x (a one-channel sub-volume in [0, 1]) is distorted by a pretext transform T
with a pseudo-label y (for Rotation and Jigsaw the transform that makes the pseudo-label is
also the restorative distortion T, spec section b). The United model (`models/united3d.py`)
has an encoder D, a head and a decoder R; the adversary A judges (distorted, candidate)
pairs. With B samples per batch and V voxels per sample:

  L_d   = (1/B) sum_n CE(head(D(T(x_n))), y_n)                      eq. (1), batch mean
  L_r   = (1/B) sum_n sum_v (x_n - R(D(T(x_n))))_v^2                 eq. (2)
  L_A   = (1/B) sum_n BCE(A(T(x_n), x_n), 1) + BCE(A(T(x_n), fake_n), 0) = -eq. (3)
  L_adv = (1/B) sum_n -log sigmoid(A(T(x_n), fake_n))              non-saturating
  L     = lambda_d L_d + lambda_r L_r + lambda_a L_adv                eq. (4), generator side

Stages (`STAGES`), each its own run, each initialised from the previous one's checkpoint by
`graft_stage`:
  D          encoder + head, L_d.
  DR         "(D)+R": encoder + head from D, a fresh decoder; lambda_d L_d + lambda_r L_r.
  DRA        "((D)+R)+A": encoder, head, decoder from DR, a fresh adversary; per iteration
             first A descends L_A on the real pair and the detached fake pair, then
             D, head and R descend L with A's new parameters held fixed
             (`critic_loss`, `generator_loss` on the engine's GAN step, engine/gan.py).
The paper's end-to-end baseline "D+R+A" is the DRA stage started from scratch (no graft).

Normalisation of eq. (1): the paper sums over samples; here the cross-entropy is averaged
over the batch, so that a learning rate does not depend on the batch size; eq. (2) and (3)
are expectations, i.e. batch means already. L_r keeps the paper's sum over voxels, so it is
V times a mean squared error and, at equal weights, outweighs L_d on large volumes: the
weights are configuration (`stage_loss_weights`).

Batches are dicts: "image" float32 [B, D, H, W, 1] (T(x)), "label" int32 [B] (or [B, heads]
for a multi-head United), "target" float32 [B, D, H, W, 1] (x).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.data import models_genesis
from medda_jax.engine.graft import graft
from medda_jax.errors import ConfigError, DataError

STAGES = ("D", "DR", "DRA")
TASKS = ("rotation", "jigsaw", "rubik", "deep_clustering", "transvw")
# a Deep Clustering label before the current clustering is looked up (and a TransVW label
# where none is given: the figures' pretext inputs)
UNASSIGNED = -1

# ---------------------------------------------------------------------------------- rotation
# (axes of np.rot90, quarter turns): identity, then 90/180/270 degrees about axis 0 (the
# H-W plane turns), axis 1 (D-W) and axis 2 (D-H). Label = index.
ROTATIONS: tuple[tuple[tuple[int, int], int], ...] = (((1, 2), 0),) + tuple(
    (axes, k) for axes in ((1, 2), (0, 2), (0, 1)) for k in (1, 2, 3))


def _volume(x, what: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 3:
    raise DataError(f"{what} takes a one-channel cube [D, H, W], got shape {x.shape}")
  return x


def _cube(x, what: str) -> np.ndarray:
  """Rotations about every axis keep the shape only when D = H = W: anything else is a
  `DataError` (a 90-degree turn would swap two sides)."""
  x = _volume(x, what)
  if len(set(x.shape)) != 1:
    raise DataError(f"{what} needs equal sides on all axes, got shape {x.shape}")
  return x


def _label(label, count: int, what: str) -> int:
  label = int(label)
  if not 0 <= label < count:
    raise DataError(f"{what} label {label} is outside [0, {count})")
  return label


def rotate(x, label: int) -> np.ndarray:
  """x [S, S, S] turned by `ROTATIONS[label]` (a new float32 array)."""
  axes, k = ROTATIONS[_label(label, len(ROTATIONS), "rotate")]
  return np.ascontiguousarray(np.rot90(_cube(x, "rotate"), k, axes))


def unrotate(x, label: int) -> np.ndarray:
  """The inverse of `rotate(., label)`."""
  axes, k = ROTATIONS[_label(label, len(ROTATIONS), "unrotate")]
  return np.ascontiguousarray(np.rot90(_cube(x, "unrotate"), -k, axes))


# ---------------------------------------------------------------------------------- jigsaw
def permutation_table(count: int = 100, cubes: int = 8, seed: int = 0) -> np.ndarray:
  """`count` permutations of `cubes` elements, far apart in Hamming distance: int32
  [count, cubes], a function of (count, cubes, seed) alone.

  Greedy selection after Noroozi & Favaro (ECCV 2016, Algorithm 1): the first row is a
  permutation drawn with `seed`; each further row is the candidate, among all cubes!
  permutations, with the largest minimum Hamming distance to the rows chosen so far. Their
  Algorithm 1 ranks candidates by the average distance instead; here the average only breaks
  ties of the minimum (remaining ties: the first candidate in lexicographic order), so that
  no two pseudo-classes are near-duplicates. The table must be saved with the run (spec
  pitfall 2)."""
  if not 2 <= cubes <= 9:
    raise ConfigError(f"permutation_table: cubes must be in [2, 9] (all cubes! permutations "
                      f"are enumerated), got {cubes}")
  total = math.factorial(cubes)
  if not 1 <= count <= total:
    raise ConfigError(f"permutation_table: count must be in [1, {total}], got {count}")
  every = np.array(list(itertools.permutations(range(cubes))), np.int8)
  rng = np.random.default_rng(seed)
  chosen = [int(rng.integers(total))]
  min_dist = np.full(total, cubes + 1, np.int64)
  sum_dist = np.zeros(total, np.int64)
  for _ in range(count - 1):
    d = np.count_nonzero(every != every[chosen[-1]], axis=1)
    min_dist = np.minimum(min_dist, d)
    sum_dist += d
    # min first, the sum (< cubes * count + 1) as the tie-breaker; chosen rows have min 0
    key = min_dist * (cubes * count + 1) + sum_dist
    key[chosen] = -1
    chosen.append(int(np.argmax(key)))
  return every[chosen].astype(np.int32)


def _sub_cubes(x) -> tuple[np.ndarray, tuple[int, int, int]]:
  """x [D, H, W] (even sides) -> its 2x2x2 sub-cubes [8, D/2, H/2, W/2], index 4 i + 2 j + l
  for the half i along D, j along H, l along W."""
  x = _volume(x, "jigsaw")
  if any(s % 2 for s in x.shape):
    raise DataError(f"jigsaw needs even sides to cut 2x2x2 sub-cubes, got shape {x.shape}")
  d, h, w = (s // 2 for s in x.shape)
  parts = x.reshape(2, d, 2, h, 2, w).transpose(0, 2, 4, 1, 3, 5).reshape(8, d, h, w)
  return parts, (d, h, w)


def _join(parts: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
  d, h, w = size
  return np.ascontiguousarray(
      parts.reshape(2, 2, 2, d, h, w).transpose(0, 3, 1, 4, 2, 5).reshape(2 * d, 2 * h, 2 * w))


def _perm(table, label: int) -> np.ndarray:
  table = np.asarray(table)
  if table.ndim != 2 or table.shape[1] != 8:
    raise DataError(f"jigsaw needs a permutation table [P, 8], got shape {table.shape}")
  return table[_label(label, len(table), "jigsaw")]


def jigsaw(x, table, label: int) -> np.ndarray:
  """x's 2x2x2 sub-cubes rearranged by `table[label]`: position p of the result holds
  sub-cube table[label][p] of x (positions and sub-cubes indexed 4 i + 2 j + l)."""
  parts, size = _sub_cubes(x)
  return _join(parts[_perm(table, label)], size)


def unjigsaw(x, table, label: int) -> np.ndarray:
  """The inverse of `jigsaw(., table, label)`."""
  parts, size = _sub_cubes(x)
  return _join(parts[np.argsort(_perm(table, label))], size)


# ---------------------------------------------------------------------------------- rubik
# Rubik's Cube (Zhuang et al., MICCAI 2019): the 2x2x2 sub-cubes are permuted as in Jigsaw
# and each is then turned, predicted by one head for the arrangement (a row of the
# permutation table) and one head per position for its turn. The turns here: none, or
# 180 degrees about one of the three axes (axes of np.rot90 with k = 2, its own inverse).
CUBE_TURNS: tuple[tuple[int, int] | None, ...] = (None, (1, 2), (0, 2), (0, 1))


def _turned(parts: np.ndarray, turns) -> np.ndarray:
  turns = np.asarray(turns)
  if turns.shape != (8,) or turns.min() < 0 or turns.max() >= len(CUBE_TURNS):
    raise DataError(f"rubik needs 8 turn labels in [0, {len(CUBE_TURNS)}), got {turns}")
  return np.stack([p if t == 0 else np.rot90(p, 2, CUBE_TURNS[t])
                   for p, t in zip(parts, turns)])


def rubik(x, table, order: int, turns) -> np.ndarray:
  """x's sub-cubes arranged as `jigsaw(x, table, order)`, then the sub-cube at position p
  turned by CUBE_TURNS[turns[p]]."""
  parts, size = _sub_cubes(x)
  return _join(_turned(parts[_perm(table, order)], turns), size)


def unrubik(x, table, order: int, turns) -> np.ndarray:
  """The inverse of `rubik(., table, order, turns)`."""
  parts, size = _sub_cubes(x)
  return _join(_turned(parts, turns)[np.argsort(_perm(table, order))], size)


# ---------------------------------------------------------------------------------- deep clustering
# Deep Clustering (Caron et al., ECCV 2018) as DiRA uses it: a cube's pseudo-label is its
# cluster among the k-means clusters of the encoder's pooled features of a fixed pool of
# cubes, clustered again every epoch; the restorative distortion is Models Genesis's
# (spec section b). The stage runs do the clustering (`pretrain.Reclustering`).
def cluster_labels(features, k: int, seed: int) -> np.ndarray:
  """k-means (scikit-learn, k-means++ seeding, one start) of the L2-normalised rows of
  `features` [N, F]: the cluster of each row, int32 [N]."""
  from sklearn.cluster import KMeans

  x = np.asarray(features, np.float64)
  if x.ndim != 2 or not 1 <= k <= len(x):
    raise ConfigError(f"cluster_labels: k={k} clusters of features shaped {x.shape}")
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return KMeans(k, n_init=1, random_state=seed).fit_predict(x).astype(np.int32)


def classes(task: str, permutations: int, clusters: int = 100,
            words: int = 200) -> int | tuple[int, ...]:
  """The head's classes: 10 rotations, the table's rows, (rows, then 4 turns for each of
  the 8 positions) for Rubik's Cube, the clusters of Deep Clustering, or TransVW's visual
  words (`visual_words.py`)."""
  if task == "deep_clustering":
    return clusters
  if task == "transvw":
    return words
  if task == "rotation":
    return len(ROTATIONS)
  if task == "jigsaw":
    return permutations
  if task == "rubik":
    return (permutations,) + (len(CUBE_TURNS),) * 8
  raise ConfigError(f"task must be one of {TASKS}, got {task!r}")


# ---------------------------------------------------------------------------------- samples
def genesis_pair(x, rng: np.random.Generator, **distort_kwargs) -> tuple[np.ndarray, np.ndarray]:
  """(Models Genesis distortion of x, x), both float32 [D, H, W]: the restorative pair of
  Deep Clustering and TransVW (spec section b); keyword arguments go to
  `models_genesis.distort`."""
  x = _volume(x, "genesis_pair")
  return models_genesis.distort(x, rng, **distort_kwargs), x


def make_sample(x, task: str, rng: np.random.Generator,
                table: np.ndarray | None = None, label: int | None = None) -> dict[str, Any]:
  """One pretext sample of cube x [D, H, W] in [0, 1]: dict(image = T(x), label = y,
  target = x), image and target float32 [D, H, W, 1] (a channel axis added, ready to stack
  into NDHWC batches), label int32 drawn uniformly from the task's classes: a scalar, or
  for "rubik" [9] (the table row, then the turn of each of the 8 positions); for
  "deep_clustering" UNASSIGNED, the stage run looks the sample's cluster up; for "transvw"
  `label`, the cube's visual word (UNASSIGNED when not given). Both restore from the Models
  Genesis distortion T(x).

  For every task the transform that makes the pseudo-label is the restorative distortion T
  as well (spec section b): the decoder restores the unrotated cube ("rotation", labels
  `ROTATIONS`) or the original arrangement ("jigsaw", labels the rows of `table`; "rubik",
  the rows and `CUBE_TURNS`)."""
  x = _volume(x, "make_sample")
  if task in ("jigsaw", "rubik") and table is None:
    raise ConfigError(f"make_sample: the {task} task needs a permutation table")
  if task == "rotation":
    label = np.int32(rng.integers(len(ROTATIONS)))
    image = rotate(x, int(label))
  elif task == "jigsaw":
    label = np.int32(rng.integers(len(table)))
    image = jigsaw(x, table, int(label))
  elif task in ("deep_clustering", "transvw"):
    given = label if task == "transvw" and label is not None else UNASSIGNED
    label = np.int32(given)
    image = models_genesis.distort(x, rng)
  elif task == "rubik":
    order = int(rng.integers(len(table)))
    turns = rng.integers(len(CUBE_TURNS), size=8)
    label = np.array([order, *turns], np.int32)
    image = rubik(x, table, order, turns)
  else:
    raise ConfigError(f"make_sample: task must be one of {TASKS}, got {task!r}")
  return {"image": image[..., None], "label": label, "target": x[..., None].copy()}


def make_batch(cubes, task: str, seed: int, sample_ids, table: np.ndarray | None = None,
               labels=None) -> dict[str, np.ndarray]:
  """`make_sample` of each cube stacked, sample i drawn with the generator of (seed,
  sample_ids[i]) alone, so a resumed run redraws the same pseudo-labels; `labels`: TransVW's
  visual words of the cubes."""
  labels = [None] * len(cubes) if labels is None else [int(v) for v in labels]
  samples = [make_sample(c, task, np.random.default_rng([seed, int(i)]), table, label)
             for c, i, label in zip(cubes, sample_ids, labels)]
  return {k: np.stack([s[k] for s in samples]) for k in ("image", "label", "target")}


# ---------------------------------------------------------------------------------- losses
def discriminative_loss(logits, labels) -> jax.Array:
  """Eq. (1) averaged over the batch: mean_n CE(logits_n, labels_n). For a multi-head
  model (`logits` a tuple, `labels` [B, heads]) the sum of the heads' batch means."""
  if isinstance(logits, (tuple, list)):
    labels = jnp.asarray(labels)
    return sum(discriminative_loss(l, labels[:, i]) for i, l in enumerate(logits))
  return optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)).mean()


def restorative_loss(restored, target) -> jax.Array:
  """Eq. (2): the sum of squared voxel differences per sample, averaged over the batch."""
  diff = jnp.asarray(restored, jnp.float32) - jnp.asarray(target, jnp.float32)
  return jnp.square(diff).reshape(diff.shape[0], -1).sum(axis=1).mean()


def adversary_loss(real_logits, fake_logits) -> jax.Array:
  """-eq. (3) as binary cross-entropy with logits: the real pair (T(x), x) labelled 1, the
  fake pair (T(x), R(D(T(x)))) labelled 0, each averaged over the batch. The adversary
  minimises it (= maximises L_a)."""
  real = optax.sigmoid_binary_cross_entropy(jnp.asarray(real_logits, jnp.float32), 1.0)
  fake = optax.sigmoid_binary_cross_entropy(jnp.asarray(fake_logits, jnp.float32), 0.0)
  return real.mean() + fake.mean()


def generator_adversarial_loss(fake_logits) -> jax.Array:
  """The non-saturating generator term: mean_n -log A(T(x_n), R(D(T(x_n))))."""
  return jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)).mean()


# ---------------------------------------------------------------------------------- stages
@dataclasses.dataclass(frozen=True)
class LossWeights:
  """lambda_d, lambda_r, lambda_a of eq. (4); 0 switches a term off."""

  d: float = 1.0
  r: float = 1.0
  a: float = 1e-3


def _stage(stage: str) -> str:
  if stage not in STAGES:
    raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
  return stage


def stage_loss_weights(stage: str, d: float = 1.0, r: float = 1.0,
                       a: float = 1e-3) -> LossWeights:
  """The weights a stage trains with: the terms of components it lacks set to 0 (D: only
  lambda_d; DR: lambda_d and lambda_r). The defaults are not in the paper: lambda_d =
  lambda_r = 1 and a small lambda_a = 1e-3 (spec recommendation; a large one destabilises
  the adversarial stage, spec pitfall 1)."""
  _stage(stage)
  return LossWeights(d=d, r=r if stage != "D" else 0.0, a=a if stage == "DRA" else 0.0)


def stage_restores(stage: str) -> bool:
  """Whether the stage's United model has the decoder (`United(restore=...)`)."""
  return _stage(stage) != "D"


def graft_stage(previous_params, fresh_params, where: str = "the previous stage's checkpoint"):
  """The next stage's initialisation: every top-level part (encoder, head, decoder) present
  in both trees copied from `previous_params`, the parts only `fresh_params` has (the
  decoder at DR) kept as initialised; parts only the previous stage has are dropped.

  A shared part must have the same parameters of the same shapes in both trees; otherwise
  a one-line `DataError` names the first one that differs (another `features`, `levels` or
  class count). Returns the new parameters (nested dicts of arrays)."""
  previous = flax.core.unfreeze(previous_params)
  fresh = flax.core.unfreeze(fresh_params)
  shared = sorted(set(previous) & set(fresh))
  if not shared:
    raise DataError(f"{where} shares no part with the model: it has {sorted(previous)}, "
                    f"the model {sorted(fresh)}")
  for part in shared:
    old = set(flax.traverse_util.flatten_dict(previous[part], sep="/"))
    new = set(flax.traverse_util.flatten_dict(fresh[part], sep="/"))
    if old != new:
      path = sorted(old ^ new)[0]
      side = "the model" if path in new else where
      raise DataError(f"{where} does not fit the model: only {side} has parameter "
                      f"{part}/{path}")
  params, _ = graft(fresh, {p: previous[p] for p in shared}, where=where)
  return params


def _generator_terms(params, batch, model, weights: LossWeights):
  """Weighted L_d (+ L_r when the model restores) and the restoration."""
  logits, restored = model.apply({"params": params}, batch["image"], train=True)
  l_d = discriminative_loss(logits, batch["label"])
  metrics = {"disc_loss": l_d}
  loss = weights.d * l_d
  if restored is not None:
    l_r = restorative_loss(restored, batch["target"])
    metrics["rest_loss"] = l_r
    loss = loss + weights.r * l_r
  return loss, restored, metrics


def stage_loss(params, batch, model, stage: str, weights: LossWeights):
  """Loss of the non-adversarial stages: (lambda_d L_d [+ lambda_r L_r], metrics). The DRA
  stage trains with `critic_loss` and `generator_loss` on the engine's GAN step."""
  if _stage(stage) == "DRA":
    raise ConfigError("stage_loss covers the D and DR stages; DRA uses critic_loss and "
                      "generator_loss")
  if stage_restores(stage) != bool(model.restore):
    raise ConfigError(f"stage {stage} needs United(restore={stage_restores(stage)})")
  loss, _, metrics = _generator_terms(params, batch, model, weights)
  return loss, {**metrics, "loss": loss}


def stage_loss_fn(model, stage: str, weights: LossWeights) -> Callable:
  """`stage_loss` in the engine's train-chunk contract
  `(params, model_state, batch, rng) -> (loss, (model_state, metrics))`."""
  _stage(stage)

  def fn(params, model_state, batch, rng):
    del rng
    loss, metrics = stage_loss(params, batch, model, stage, weights)
    return loss, (model_state, metrics)

  return fn


# ---------------------------------------------------------------------------------- DRA
# The adversarial stage runs on the engine's GAN step (`engine/gan.py`): params {"g": the
# United model (encoder, head, decoder), "d": the adversary}, the adversary's update first,
# then the generator's against the adversary's new parameters (spec section c).
def critic_loss(model, adversary) -> Callable:
  """The adversary's loss L_A on (T(x), x) as real and (T(x), R(D(T(x)))) as fake, the fake
  made by the generator's current parameters and detached (the engine differentiates this
  loss with respect to params["d"] only)."""
  if not model.restore:
    raise ConfigError("the adversarial stage needs United(restore=True)")

  def fn(params, model_state, batch, rng):
    del rng
    _, fake = model.apply({"params": params["g"]}, batch["image"], train=True)
    fake = jax.lax.stop_gradient(fake)
    real_logits = adversary.apply({"params": params["d"]}, batch["image"], batch["target"])
    fake_logits = adversary.apply({"params": params["d"]}, batch["image"], fake)
    accuracy = 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0))
    loss = adversary_loss(real_logits, fake_logits)
    return loss, (model_state, {"adv_loss": loss, "adv_accuracy": accuracy})

  return fn


def generator_loss(model, adversary, weights: LossWeights) -> Callable:
  """Encoder, head and decoder on lambda_d L_d + lambda_r L_r + lambda_a L_adv, L_adv the
  non-saturating -log A(T(x), R(D(T(x)))) (differentiated with respect to params["g"])."""
  if not model.restore:
    raise ConfigError("the adversarial stage needs United(restore=True)")

  def fn(params, model_state, batch, rng):
    del rng
    loss, restored, metrics = _generator_terms(params["g"], batch, model, weights)
    fake_logits = adversary.apply({"params": params["d"]}, batch["image"], restored)
    l_adv = generator_adversarial_loss(fake_logits)
    loss = loss + weights.a * l_adv
    return loss, (model_state, {**metrics, "gen_adv_loss": l_adv, "gen_loss": loss})

  return fn
