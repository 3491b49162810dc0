"""Evaluation metrics.

Per-slice segmentation metrics in JAX (means and spreads stay explicit), and host-side
NumPy metrics that score whole 3-D volumes after prediction (surface Dice, 3-D Dice, the
prostate post-processing) or multi-label classifiers (ROC-AUC).
"""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

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


# ----------------------------------------------------------------------------------------
# Whole-volume and classification metrics (NumPy, host side, after prediction).
# ----------------------------------------------------------------------------------------

# The `surface-distance` package still reaches its SciPy functions through the deprecated
# `scipy.ndimage.filters` / `scipy.ndimage.morphology` namespaces; the calls are correct,
# so only those warnings are silenced around it.
_SCIPY_NAMESPACE_WARNING = r".*scipy\.ndimage\.(filters|morphology)"


def _as_bool(x) -> np.ndarray:
  x = np.asarray(x)
  return x if x.dtype == bool else x != 0


def _check_masks(pred: np.ndarray, gt: np.ndarray) -> None:
  if pred.shape != gt.shape:
    raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")


def surface_dice(pred, gt, spacing_mm, tolerance_mm: float = 1.0) -> float:
  """Surface Dice at tolerance (Nikolov et al.) of two 2-D or 3-D binary masks.

  `sDice = (area of S_G within tolerance of S_P + area of S_P within tolerance of S_G)
  / (area of S_G + area of S_P)`, with surfaces made of surfels whose areas (contour
  lengths in 2-D) come from DeepMind's `surface_distance` neighbour-code tables. Surfels
  sit on voxel corners, so a one-voxel shift along an axis with spacing s is a distance
  of s mm.

  Edge cases, decided here because the package gives NaN for two empty masks and, on
  NumPy >= 2, fails for one empty mask (it uses the removed alias `np.Inf`): both masks
  empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0.

  Args:
    pred: predicted mask, [S, H, W] or [H, W]; nonzero is foreground.
    gt: ground-truth mask of the same shape.
    spacing_mm: voxel size in mm per axis (len == pred.ndim), e.g. `Volume.spacing`.
    tolerance_mm: a surfel counts as matched when its distance to the other surface is
      <= this many mm.

  Returns:
    Surface Dice in [0, 1].
  """
  pred, gt = _as_bool(pred), _as_bool(gt)
  _check_masks(pred, gt)
  spacing = tuple(float(s) for s in spacing_mm)
  if pred.ndim not in (2, 3) or len(spacing) != pred.ndim:
    raise ValueError(f"masks must be 2-D or 3-D with one spacing per axis, got shape "
                     f"{pred.shape} and spacing {spacing}")
  has_pred, has_gt = bool(pred.any()), bool(gt.any())
  if not (has_pred or has_gt):
    return 1.0
  if has_pred != has_gt:
    return 0.0
  import surface_distance  # Imported here: only volume evaluation needs it.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_SCIPY_NAMESPACE_WARNING,
                            category=DeprecationWarning)
    dists = surface_distance.compute_surface_distances(gt, pred, spacing)
  return float(surface_distance.compute_surface_dice_at_tolerance(dists, tolerance_mm))


def dice_3d(pred, gt) -> float:
  """Volume Dice `2|P and G| / (|P| + |G|)` of two binary masks; both empty -> 1.0."""
  pred, gt = _as_bool(pred), _as_bool(gt)
  _check_masks(pred, gt)
  total = int(pred.sum()) + int(gt.sum())
  if total == 0:
    return 1.0
  return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def roc_auc(labels, scores) -> float:
  """ROC-AUC of one binary label (`sklearn.metrics.roc_auc_score`).

  Args:
    labels: [N] in {0, 1}; NaN entries (unknown / ignored) are dropped with their scores.
    scores: [N] real-valued scores, higher meaning positive.

  Returns:
    The AUC, or NaN when the kept labels hold a single class (AUC is undefined).
  """
  labels = np.asarray(labels, np.float64).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must match")
  keep = ~np.isnan(labels)
  labels, scores = labels[keep], scores[keep]
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0, 1 or NaN")
  if np.unique(labels).size < 2:
    return float("nan")
  from sklearn.metrics import roc_auc_score  # Imported here: slow, and host-only.
  return float(roc_auc_score(labels.astype(np.int64), scores))


def mean_auc(labels, scores) -> tuple[float, np.ndarray]:
  """Mean ROC-AUC over K binary labels (multi-label classification, e.g. chest X-ray).

  Each label is scored on its own samples: NaN entries of that column are masked out, and
  a label left with a single class is skipped (NaN in the per-label array, not in the
  mean).

  Args:
    labels: [N, K] in {0, 1} or NaN.
    scores: [N, K] scores (logits or probabilities; AUC only uses their order).

  Returns:
    (mean over the scored labels, or NaN when none can be scored; per-label AUCs [K]).
  """
  labels = np.asarray(labels, np.float64)
  scores = np.asarray(scores, np.float64)
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be [N, K]")
  per_label = np.array([roc_auc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])
  valid = ~np.isnan(per_label)
  mean = float(per_label[valid].mean()) if valid.any() else float("nan")
  return mean, per_label


def _largest_component_size(mask2d: np.ndarray) -> int:
  lab, n = ndimage.label(mask2d)
  return int(np.bincount(lab.ravel())[1:].max()) if n else 0


def largest_slice_component_sizes(mask3d) -> np.ndarray:
  """[S] voxel count of the largest 2-D connected component of each slice (0 if empty)."""
  mask3d = _as_bool(mask3d)
  return np.array([_largest_component_size(s) for s in mask3d], np.int64)


def largest_component_postprocess(mask3d, min_slice_component: float = 0) -> np.ndarray:
  """Prostate test post-processing of the gradient-transfer reference (spec D7).

  1. Per slice (axis 0, the axis the 2-D network predicts along): if the slice's largest
     2-D connected component has fewer than `min_slice_component` voxels, the slice's
     whole prediction is zeroed (small blobs are mostly false positives outside the
     organ's z-range).
  2. Only the largest 3-D connected component of what remains is kept (ties: the one
     met first in scan order).

  Connectivity is `scipy.ndimage.label`'s default, face neighbours (4 in 2-D, 6 in 3-D).

  Args:
    mask3d: [S, H, W] binary prediction.
    min_slice_component: size threshold in voxels, e.g. from `d7_threshold`; 0 turns
      step 1 off.

  Returns:
    [S, H, W] bool mask; all False when the input is empty.
  """
  mask = _as_bool(mask3d).copy()
  if mask.ndim != 3:
    raise ValueError(f"mask3d must be [S, H, W], got {mask.shape}")
  if min_slice_component > 0:
    small = largest_slice_component_sizes(mask) < min_slice_component
    mask[small] = False
  lab, n = ndimage.label(mask)
  if n == 0:
    return mask
  sizes = np.bincount(lab.ravel())
  sizes[0] = 0
  return lab == int(np.argmax(sizes))


def d7_threshold(no_mask_sizes, mask_sizes) -> float:
  """D7 slice threshold `0.9 * q55(no_mask_sizes) + 0.1 * q10(mask_sizes)`.

  Args:
    no_mask_sizes: largest predicted 2-D component size on validation slices whose
      ground truth is empty (0 where nothing is predicted), e.g. from
      `largest_slice_component_sizes(pred)[~gt.any(axis=(1, 2))]`.
    mask_sizes: the same on validation slices whose ground truth is not empty.

  Returns:
    Threshold in voxels for `largest_component_postprocess`. Quantiles use NumPy's
    default linear interpolation.
  """
  no_mask_sizes = np.asarray(no_mask_sizes, np.float64).ravel()
  mask_sizes = np.asarray(mask_sizes, np.float64).ravel()
  if no_mask_sizes.size == 0 or mask_sizes.size == 0:
    raise ValueError("d7_threshold needs at least one slice with and one without a mask")
  return float(0.9 * np.quantile(no_mask_sizes, 0.55) + 0.1 * np.quantile(mask_sizes, 0.10))


# ----------------------------------------------------------------------------------------
# Domain-adaptation evaluation (stargan_cycada spec §d): rank AUC, bootstrap intervals,
# salvage, relative change / loss and domain spread. NumPy, host side.
# ----------------------------------------------------------------------------------------

def _scalar_or_array(x):
  """A 0-d result as a Python float, anything else as an ndarray."""
  x = np.asarray(x, np.float64)
  return float(x) if x.ndim == 0 else x


def _check_binary_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.dtype == bool:
    return labels
  if not np.issubdtype(labels.dtype, np.number):
    raise ValueError(f"labels must be numeric or bool, got dtype {labels.dtype}")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("binary labels must all be 0 or 1 (NaN is not allowed; drop unknown "
                     "labels first, or use roc_auc)")
  return labels != 0


def _check_scores(scores) -> np.ndarray:
  scores = np.asarray(scores, np.float64)
  if np.isnan(scores).any():
    raise ValueError("scores must not contain NaN")
  return scores


def _auc_from_sorted(values, positive) -> np.ndarray:
  """Mann–Whitney AUC along the last axis of values already sorted ascending.

  Tied values share the average of their ranks, so a positive tied with a negative counts
  one half. All arithmetic before the final division is exact int64.

  Args:
    values: [..., n] sorted along the last axis (any dtype with `!=`).
    positive: [..., n] bool, the labels in the same (sorted) order.

  Returns:
    [...] AUC in [0, 1]; NaN where a row holds a single class (or n == 0).
  """
  n = values.shape[-1]
  pos = np.arange(n, dtype=np.int64)
  boundary = values[..., 1:] != values[..., :-1]
  is_start = np.ones(values.shape, bool)
  is_start[..., 1:] = boundary
  is_end = np.ones(values.shape, bool)
  is_end[..., :-1] = boundary
  # 0-based first and last sorted position of each element's tie group.
  start = np.maximum.accumulate(np.where(is_start, pos, 0), axis=-1)
  end = np.minimum.accumulate(np.where(is_end, pos, n - 1)[..., ::-1], axis=-1)[..., ::-1]
  n_pos = positive.sum(axis=-1, dtype=np.int64)
  n_neg = n - n_pos
  # Rank sum of positives R = sum((start + end) / 2 + 1); U = R - n_pos (n_pos + 1) / 2.
  two_u = np.where(positive, start + end, 0).sum(axis=-1) - n_pos * (n_pos - 1)
  denom = 2 * n_pos * n_neg
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, two_u / np.maximum(denom, 1), np.nan)


def rank_auc(labels, scores):
  """Binary ROC-AUC as the Mann–Whitney statistic, ties counted one half; vectorised.

  AUC = P(score of a random positive > score of a random negative) + 0.5 P(equal), i.e.
  (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg) with R_pos the sum of the positives'
  tie-averaged ranks; equals `sklearn.metrics.roc_auc_score`. Leading batch dimensions are
  scored independently, e.g. bootstrap replicates gathered with an index matrix:
  `rank_auc(labels[idx], scores[idx])` with `idx` [B, n] gives [B].

  Args:
    labels: [N] or [..., N] in {0, 1} (bool or numbers; NaN is not allowed), broadcast
      against `scores`.
    scores: [..., N] real scores, higher meaning positive; NaN is not allowed.

  Returns:
    The AUC, a float for a single row, otherwise an array of the batch shape [...]; NaN
    where a row holds a single class (AUC undefined).
  """
  labels = _check_binary_labels(labels)
  scores = _check_scores(scores)
  if scores.ndim == 0 or labels.ndim == 0 or labels.shape[-1] != scores.shape[-1]:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must share their "
                     "last (sample) axis")
  try:
    shape = np.broadcast_shapes(labels.shape, scores.shape)
  except ValueError:
    raise ValueError(f"labels {labels.shape} do not broadcast against scores "
                     f"{scores.shape}") from None
  scores = np.broadcast_to(scores, shape)
  labels = np.broadcast_to(labels, shape)
  order = np.argsort(scores, axis=-1)
  auc = _auc_from_sorted(np.take_along_axis(scores, order, axis=-1),
                         np.take_along_axis(labels, order, axis=-1))
  return _scalar_or_array(auc)


def _check_class_labels(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.dtype == bool or not np.issubdtype(labels.dtype, np.number):
    raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
  if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
    raise ValueError("class labels must be integers (NaN is not allowed)")
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"class labels must lie in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  return labels


def ovr_auc(labels, probs) -> np.ndarray:
  """One-vs-rest AUC of every class: column k scores "class k" against all the others.

  Args:
    labels: [..., N] integer classes in [0, K), broadcast against `probs[..., 0]`.
    probs: [..., N, K] per-class scores (probabilities, or logits: AUC uses only the
      order within each column).

  Returns:
    [..., K] per-class AUCs (`rank_auc(labels == k, probs[..., k])`); NaN for a class that
    is absent from a row's labels, or that is the only class present.
  """
  probs = _check_scores(probs)
  if probs.ndim < 2:
    raise ValueError(f"probs must be [..., N, K], got shape {probs.shape}")
  labels = _check_class_labels(labels, probs.shape[-1])
  return np.stack([np.asarray(rank_auc(labels == k, probs[..., k]))
                   for k in range(probs.shape[-1])], axis=-1)


def _nanmean_last(x: np.ndarray) -> np.ndarray:
  """Mean over the last axis ignoring NaN; NaN (without a warning) where all are NaN."""
  valid = ~np.isnan(x)
  count = valid.sum(axis=-1)
  total = np.where(valid, x, 0.0).sum(axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def multiclass_auc(labels, probs):
  """Macro one-vs-rest AUC (digits, 10 classes); for K == 2 the binary AUC of column 1.

  The seed does not define a multi-class AUC; the spec (§d) takes the unweighted mean of
  the one-vs-rest AUCs (`sklearn.metrics.roc_auc_score(..., multi_class="ovr",
  average="macro")`). Classes absent from a row's labels are skipped (left out of the
  mean), so the mean is over the classes present; scikit-learn instead refuses such
  inputs. K == 2 (chest X-ray opacity, softmax over 2 logits) returns
  `rank_auc(labels, probs[..., 1])`, as scikit-learn does for binary labels; the OvR
  mean would equal it only when the two columns are complementary probabilities.

  Args:
    labels: [..., N] integer classes in [0, K), broadcast against `probs[..., 0]`.
    probs: [..., N, K] per-class scores (probabilities or logits).

  Returns:
    The macro AUC, a float for a single row, otherwise [...]; NaN where fewer than two
    classes are present.
  """
  probs = _check_scores(probs)
  if probs.ndim < 2 or probs.shape[-1] < 2:
    raise ValueError(f"probs must be [..., N, K] with K >= 2, got shape {probs.shape}")
  if probs.shape[-1] == 2:
    labels = _check_class_labels(labels, 2)
    return rank_auc(labels == 1, probs[..., 1])
  return _scalar_or_array(_nanmean_last(ovr_auc(labels, probs)))


@dataclasses.dataclass(frozen=True)
class BootstrapAUC:
  """Bootstrap summary of an AUC (values on the AUC's own scale, [0, 1]).

  Attributes:
    point: AUC on the full test set.
    mean: mean of the B replicate AUCs.
    sd: standard deviation of the replicate AUCs (ddof = 1).
    percentile_ci: (low, high) percentiles 100·alpha/2 and 100·(1 − alpha/2) of the
      replicates (NumPy's default linear interpolation).
    mean_ci: mean ± z·sd/√B with z = Φ⁻¹(1 − alpha/2) (1.95996 for alpha = 0.05): the
      interval of the mean of the replicates, the only form consistent with the seed's
      very narrow intervals (spec §d); it is not a confidence interval of the AUC itself.
    replicates: [B] replicate AUCs (in draw order).
    n_replicates: B.
    sample_size: n, samples per replicate.
    n_test: N, size of the full test set.
    alpha: two-sided level of both intervals.
  """
  point: float
  mean: float
  sd: float
  percentile_ci: tuple[float, float]
  mean_ci: tuple[float, float]
  replicates: np.ndarray = dataclasses.field(repr=False, compare=False)
  n_replicates: int
  sample_size: int
  n_test: int
  alpha: float


def _as_generator(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  return np.random.default_rng(rng)


def bootstrap_indices(labels, replicates: int = 1000, sample_size: int | None = 1000,
                      rng: np.random.Generator | int | None = 0,
                      max_rounds: int = 10_000) -> np.ndarray:
  """Bootstrap index matrix in which every replicate holds every class of the test set.

  Draws `replicates` rows of `sample_size` indices into `labels`, uniformly with
  replacement, then redraws (whole) rows that miss a class present in `labels`, until none
  does. For binary labels this is the spec's "redraw replicates that contain a single
  class"; for K classes it keeps the macro AUC of every replicate over the same classes
  as the full-test-set value. Draw order: first one `rng.integers(0, N, (B, n))`, then,
  per round, one `rng.integers(0, N, (n_bad, n))` for the bad rows in row order.

  Args:
    labels: [N] class labels (0/1 or integer classes); only equality is used.
    replicates: B.
    sample_size: n; None uses N (the classic bootstrap). The seed uses 1000.
    rng: a `np.random.Generator`, or a seed for `np.random.default_rng`. The default 0
      makes repeated calls on one test set draw the same replicates, which pairs the
      comparison of models evaluated on it.
    max_rounds: redraw rounds before giving up with a ValueError.

  Returns:
    [B, n] int64 indices.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels must be a non-empty [N] array, got shape {labels.shape}")
  n_test = labels.size
  n = n_test if sample_size is None else int(sample_size)
  if replicates < 1 or n < 1:
    raise ValueError(f"replicates ({replicates}) and sample_size ({n}) must be >= 1")
  classes = np.unique(labels)
  if classes.size < 2:
    raise ValueError("the test set holds a single class; its AUC is undefined")
  if n < classes.size:
    raise ValueError(f"sample_size {n} cannot hold all {classes.size} classes")
  rng = _as_generator(rng)
  idx = rng.integers(0, n_test, size=(replicates, n), dtype=np.int64)

  def missing_a_class(rows: np.ndarray) -> np.ndarray:
    drawn = labels[rows]
    return ~np.all([np.any(drawn == c, axis=-1) for c in classes], axis=0)

  bad = np.flatnonzero(missing_a_class(idx))
  rounds = 0
  while bad.size:
    rounds += 1
    if rounds > max_rounds:
      raise ValueError(f"{bad.size} replicates still miss a class after {max_rounds} redraw "
                       f"rounds; the rarest class is too rare for sample_size {n}")
    idx[bad] = rng.integers(0, n_test, size=(bad.size, n), dtype=np.int64)
    bad = bad[missing_a_class(idx[bad])]
  return idx


def _sorted_key_auc(positive: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """[B] binary AUCs of the replicates `idx` [B, n], sorting integer keys, not floats.

  Each test sample gets key 2·u + y, u the dense rank of its score in the full test set
  (ties share u): sorting keys orders replicates by score, and `key >> 1` recovers the
  tie groups exactly.
  """
  _, u = np.unique(scores, return_inverse=True)
  dtype = np.int32 if 2 * scores.size < np.iinfo(np.int32).max else np.int64
  key = (2 * u.ravel() + positive).astype(dtype)
  sorted_keys = np.sort(key[idx], axis=-1)
  return _auc_from_sorted(sorted_keys >> 1, (sorted_keys & 1).astype(bool))


def bootstrap_auc(labels, scores, replicates: int = 1000, sample_size: int | None = 1000,
                  rng: np.random.Generator | int | None = 0, alpha: float = 0.05,
                  indices=None) -> BootstrapAUC:
  """Bootstrap of a binary or macro one-vs-rest AUC on a test set (seed §5.3.1, §5.4).

  The replicate index matrix comes from `bootstrap_indices` (every replicate holds every
  class; see there) unless `indices` is given; then the replicates are exactly
  `[rank_auc(labels[i], scores[i]) for i in indices]` (binary) or the same with
  `multiclass_auc`. 1000 replicates × 1000 samples × 10 classes take about 0.2 s.

  Args:
    labels: [N] test labels: 0/1 for binary `scores` [N], integer classes for `scores`
      [N, K]. With K == 2 the binary AUC of column 1 is used (see `multiclass_auc`).
    scores: [N] binary scores or [N, K] per-class scores.
    replicates: B (spec: 1000).
    sample_size: n (spec: 1000); None uses N.
    rng: `np.random.Generator` or seed for the draws (ignored with `indices`).
    alpha: two-sided level of the intervals (0.05 → 95 %).
    indices: optional [B, n] index matrix to use instead of drawing one (then
      `replicates`, `sample_size` and `rng` are ignored); it is not checked for classes.

  Returns:
    A `BootstrapAUC`.
  """
  scores = _check_scores(scores)
  labels = np.asarray(labels)
  if labels.ndim != 1 or scores.ndim not in (1, 2) or scores.shape[0] != labels.size:
    raise ValueError(f"labels must be [N] and scores [N] or [N, K], got {labels.shape} and "
                     f"{scores.shape}")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
  if scores.ndim == 2 and scores.shape[1] == 2:
    labels = _check_class_labels(labels, 2) == 1
    scores = scores[:, 1]
  if scores.ndim == 1:
    positive = _check_binary_labels(labels)
    point = rank_auc(positive, scores)
    columns = [(positive, scores)]
  else:
    labels = _check_class_labels(labels, scores.shape[1])
    point = multiclass_auc(labels, scores)
    present = np.unique(labels)
    columns = [(labels == k, scores[:, k]) for k in present]
  if np.isnan(point):
    raise ValueError("the test set holds a single class; its AUC is undefined")
  if indices is None:
    indices = bootstrap_indices(labels, replicates, sample_size, rng)
  else:
    indices = np.asarray(indices)
    if (indices.ndim != 2 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer)
        or indices.min() < -labels.size or indices.max() >= labels.size):
      raise ValueError(f"indices must be a non-empty [B, n] integer array into the {labels.size} "
                       f"test samples, got shape {indices.shape}, dtype {indices.dtype}")
  per_column = np.stack([_sorted_key_auc(pos, col, indices) for pos, col in columns], axis=-1)
  reps = _nanmean_last(per_column)
  b = reps.size
  mean = float(reps.mean())
  sd = float(reps.std(ddof=1)) if b > 1 else 0.0
  low, high = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
  half = z * sd / np.sqrt(b)
  return BootstrapAUC(point=float(point), mean=mean, sd=sd,
                      percentile_ci=(float(low), float(high)),
                      mean_ci=(mean - half, mean + half), replicates=reps,
                      n_replicates=b, sample_size=int(indices.shape[1]),
                      n_test=int(labels.size), alpha=float(alpha))


def paired_bootstrap_pvalue(replicates_a, replicates_b) -> float:
  """Two-sided p-value of "model b scores the same as model a" from paired replicates.

  `replicates_a[i]` and `replicates_b[i]` must be the two models' AUCs on the same
  resampled test indices (e.g. `bootstrap_auc(..., indices=idx).replicates` for both), so
  the test-set noise they share cancels in d_i = b_i − a_i. With B replicates,
  p = min(1, 2 · (1 + min(#{d_i ≤ 0}, #{d_i ≥ 0})) / (B + 1)): the percentile-bootstrap
  test of d = 0, with the +1 that keeps a finite B from claiming p = 0. Identical models
  (every d_i = 0) give p = 1; b better on every replicate gives 2 / (B + 1).
  """
  a = np.asarray(replicates_a, np.float64).reshape(-1)
  b = np.asarray(replicates_b, np.float64).reshape(-1)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"paired replicates must be two non-empty arrays of one length, got "
                     f"{a.size} and {b.size}")
  d = b - a
  tail = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
  return float(min(1.0, 2.0 * (1 + tail) / (d.size + 1)))


def salvage(internal_target, external, adapted):
  """Share of the AUC lost to the shift that adaptation recovers (spec §d).

  `(adapted - external) / (internal_target - external)`: 0 = no gain, 1 = the target's own
  classifier (the ceiling) is reached; negative when adaptation hurts. Example (seed's
  digit averages): (94.66 - 91.85) / (99.87 - 91.85) = 0.350.

  Args:
    internal_target: Internal(T), AUC of the classifier trained on T, on T's test set.
    external: External(S→T), the source classifier on T's test set.
    adapted: Adapted(S→T), the adapted source classifier on T's test set.
    All three in the same unit ([0, 1] or %), broadcast against each other.

  Returns:
    Float or array; NaN where internal_target == external.
  """
  internal_target, external, adapted = (np.asarray(x, np.float64)
                                        for x in (internal_target, external, adapted))
  denom = internal_target - external
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(denom != 0, (adapted - external) / np.where(denom != 0, denom, 1), np.nan)
  return _scalar_or_array(out)


def relative_change(external, adapted):
  """Relative AUC change from adaptation, `(adapted - external) / external` (spec §d).

  Array-friendly; NaN where external == 0. Example: 2.81 / 91.85 = 0.0306.
  """
  external, adapted = np.asarray(external, np.float64), np.asarray(adapted, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(external != 0, (adapted - external) / np.where(external != 0, external, 1),
                   np.nan)
  return _scalar_or_array(out)


def relative_loss(internal, external):
  """Relative AUC loss from the shift, `(internal - external) / internal` (spec §d).

  Array-friendly; NaN where internal == 0. Example (seed's CXR averages):
  (78.07 - 71.43) / 78.07 = 0.0851.
  """
  internal, external = np.asarray(internal, np.float64), np.asarray(external, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(internal != 0, (internal - external) / np.where(internal != 0, internal, 1),
                   np.nan)
  return _scalar_or_array(out)


def domain_spread(aucs, ddof: int = 0):
  """Domain spread (seed §2.3, Fig. 4): variance over domains of 100·AUC.

  The seed does not state the variance's normalisation; the default ddof = 0 divides by
  the number of domains D (population variance, `np.var`'s default), ddof = 1 by D − 1.

  Args:
    aucs: per-domain AUCs in [0, 1]: [D], [..., D] (spread over the last axis), or a
      mapping domain -> AUC.
    ddof: delta degrees of freedom of the variance.

  Returns:
    Float, or [...] for batched input; in %² (AUC in percent, squared).
  """
  if isinstance(aucs, Mapping):
    aucs = list(aucs.values())
  aucs = np.asarray(aucs, np.float64)
  if aucs.ndim == 0 or aucs.shape[-1] <= ddof:
    raise ValueError(f"domain_spread needs more than ddof={ddof} domains on the last axis, "
                     f"got shape {aucs.shape}")
  if np.isnan(aucs).any() or (aucs < 0).any() or (aucs > 1).any():
    raise ValueError("AUCs must lie in [0, 1] (pass fractions, not percentages; no NaN)")
  return _scalar_or_array(np.var(100.0 * aucs, axis=-1, ddof=ddof))


@dataclasses.dataclass(frozen=True)
class PairSummary:
  """Averages of an internal / external / adapted evaluation over ordered pairs (spec §d).

  Values keep the unit of the inputs ([0, 1] or %), ratios are fractions.

  Attributes:
    mean_internal: mean Internal(d) over all domains given.
    mean_internal_target: mean Internal(T) over the pairs' targets (equal to
      `mean_internal` when every ordered pair is present).
    mean_external: mean External(S→T) over the pairs.
    mean_adapted: mean Adapted(S→T) over the pairs.
    mean_abs_gain: mean_adapted − mean_external.
    mean_relative_change: mean of the per-pair relative changes (the seed's 3.04 % /
      2.42 % read as this).
    relative_loss: relative_loss(mean_internal, mean_external) (the seed's CXR 8.51 %).
    average_salvage: salvage(mean_internal_target, mean_external, mean_adapted).
    median_salvage: median of the per-pair salvages, leaving out pairs where it is
      undefined (NaN when all are).
    pairs: the ordered pairs (S, T), sorted.
    pair_salvage: [P] per-pair salvage, in the order of `pairs`.
    pair_relative_change: [P] per-pair relative change, in the order of `pairs`.
  """
  mean_internal: float
  mean_internal_target: float
  mean_external: float
  mean_adapted: float
  mean_abs_gain: float
  mean_relative_change: float
  relative_loss: float
  average_salvage: float
  median_salvage: float
  pairs: tuple
  pair_salvage: np.ndarray = dataclasses.field(repr=False, compare=False)
  pair_relative_change: np.ndarray = dataclasses.field(repr=False, compare=False)


def pair_summary(internal: Mapping, external: Mapping, adapted: Mapping) -> PairSummary:
  """Summary of a per-pair domain-adaptation evaluation, as the seed's averages.

  Args:
    internal: domain -> Internal(d), the AUC of the classifier trained on d on d's test.
    external: (S, T) -> External(S→T), the source classifier on T's test (S != T).
    adapted: (S, T) -> Adapted(S→T), with exactly the keys of `external`.
    All in one unit ([0, 1] or %).

  Returns:
    A `PairSummary`. Example (seed's digit averages 99.87 / 91.85 / 94.66): average
    salvage (94.66 − 91.85) / (99.87 − 91.85) = 0.35.
  """
  if not internal or not external:
    raise ValueError("internal and external must not be empty")
  if set(external) != set(adapted):
    raise ValueError(f"external and adapted must have the same pairs; only in external: "
                     f"{sorted(set(external) - set(adapted), key=repr)}, only in adapted: "
                     f"{sorted(set(adapted) - set(external), key=repr)}")
  pairs = tuple(sorted(external, key=repr))
  for pair in pairs:
    if not (isinstance(pair, tuple) and len(pair) == 2) or pair[0] == pair[1]:
      raise ValueError(f"pair keys must be (source, target) with source != target, got {pair!r}")
    if pair[1] not in internal:
      raise ValueError(f"no internal AUC for target {pair[1]!r} of pair {pair!r}")
  ceiling = np.array([internal[t] for _, t in pairs], np.float64)
  ext = np.array([external[p] for p in pairs], np.float64)
  ada = np.array([adapted[p] for p in pairs], np.float64)
  mean_internal = float(np.mean(np.array(list(internal.values()), np.float64)))
  pair_salvage = np.atleast_1d(salvage(ceiling, ext, ada))
  pair_change = np.atleast_1d(relative_change(ext, ada))
  defined = pair_salvage[~np.isnan(pair_salvage)]
  return PairSummary(
      mean_internal=mean_internal,
      mean_internal_target=float(ceiling.mean()),
      mean_external=float(ext.mean()),
      mean_adapted=float(ada.mean()),
      mean_abs_gain=float(ada.mean() - ext.mean()),
      mean_relative_change=float(pair_change.mean()),
      relative_loss=float(relative_loss(mean_internal, ext.mean())),
      average_salvage=float(salvage(ceiling.mean(), ext.mean(), ada.mean())),
      median_salvage=float(np.median(defined)) if defined.size else float("nan"),
      pairs=pairs, pair_salvage=pair_salvage, pair_relative_change=pair_change)


# ----------------------------------------------------------------------------------------
# Multi-class volume segmentation (synthmix_sifa spec §d): Dice and medpy-compatible ASSD
# per foreground class and volume, their summary over test volumes, and the t-test of
# two methods over volumes. NumPy / SciPy, host side.
# ----------------------------------------------------------------------------------------

def _surface(mask: np.ndarray) -> np.ndarray:
  """Surface voxels: the mask minus its erosion by the face-neighbour (cross) structuring
  element, voxels outside the array counting as background (`border_value=0`)."""
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1,
                                       border_value=0)


def assd(pred, gt) -> float:
  """Average symmetric surface distance as SIFA's `medpy.metric.binary.assd`, no spacing.

  `surface(A) = A XOR erode(A)` with the face-neighbour structuring element
  (`generate_binary_structure(ndim, 1)`: 6-connectivity in 3-D, 4 in 2-D) and border value
  0; `asd(A, B)` = mean over the voxels of surface(A) of the Euclidean distance to the
  nearest voxel of surface(B) (`distance_transform_edt(~surface(B))`);
  `ASSD = (asd(P, G) + asd(G, P)) / 2`, the average of the two directed means (not the
  mean over the pooled distances). No voxel spacing, so the unit is voxels.

  That is the definition of the medpy releases SIFA's evaluation ran with (<= 0.4); medpy
  0.5 changed `assd` to the pooled mean (the directed `asd` is unchanged), which differs
  when the two surfaces have different sizes.

  Edge case: medpy raises a RuntimeError when either mask is empty; here that case returns
  NaN, which `summarise_volumes` leaves out of the means and counts as `assd_empty`.

  Args:
    pred, gt: binary masks of one shape, 2-D or 3-D (any number of axes >= 1 works);
      nonzero is foreground.

  Returns:
    ASSD in voxels (0 for identical masks), or NaN when either mask is empty.
  """
  pred, gt = _as_bool(pred), _as_bool(gt)
  _check_masks(pred, gt)
  if pred.ndim == 0:
    raise ValueError("masks must have at least one axis")
  if not (pred.any() and gt.any()):
    return float("nan")
  # Exact on the joint bounding box: every voxel outside it is background, as the erosion's
  # border value, and both surfaces (all the distance transforms' zeros) lie inside it.
  box = ndimage.find_objects((pred | gt).astype(np.int8))[0]
  pred, gt = pred[box], gt[box]
  surf_p, surf_g = _surface(pred), _surface(gt)
  to_g = ndimage.distance_transform_edt(~surf_g)[surf_p].mean()
  to_p = ndimage.distance_transform_edt(~surf_p)[surf_g].mean()
  return float(0.5 * (to_g + to_p))


def dice_binary(pred, gt) -> float:
  """Dice `2|P and G| / (|P| + |G|)` of two binary masks; NaN when both are empty.

  Unlike `dice_3d` (1.0) and `medpy.metric.binary.dc` (1.0 in medpy 0.5), two empty masks give NaN
  here: a class absent from both prediction and ground truth says nothing about the
  method, and `summarise_volumes` leaves it out of the means (counted as `dice_empty`). An
  empty prediction of a present class scores 0.
  """
  pred, gt = _as_bool(pred), _as_bool(gt)
  _check_masks(pred, gt)
  total = int(pred.sum()) + int(gt.sum())
  if total == 0:
    return float("nan")
  return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def per_class_scores(pred_labels, gt_labels, class_ids) -> dict[int, dict]:
  """Dice and ASSD of every foreground class of one volume (or slice).

  Args:
    pred_labels: integer label map, e.g. [D, H, W] argmax predictions restacked to 3-D.
    gt_labels: ground-truth label map of the same shape.
    class_ids: the foreground classes to score, e.g. `(1, 2, 3, 4)`.

  Returns:
    {class id: {"dice": dice_binary(pred == c, gt == c), "assd": assd(pred == c, gt == c)}},
    in the order of `class_ids`; NaNs as those functions define them.
  """
  pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
  _check_masks(pred_labels, gt_labels)
  out = {}
  for c in class_ids:
    p, g = pred_labels == c, gt_labels == c
    out[int(c)] = {"dice": dice_binary(p, g), "assd": assd(p, g)}
  return out


def _drop_nan(values) -> np.ndarray:
  values = np.asarray(values, np.float64).ravel()
  return values[~np.isnan(values)]


def ttest_volumes(a, b) -> dict:
  """Two-sided two-sample t-test over per-volume values (the seed's "two-tailed t-test").

  `scipy.stats.ttest_ind` with its default pooled variance (equal_var=True); NaN values
  (e.g. ASSDs of empty predictions) are dropped first.

  Args:
    a, b: per-volume values of one class and metric for two methods.

  Returns:
    {"t": statistic, "p": two-sided p-value}; both NaN when a side has fewer than 2 values
    left (or both sides are constant and equal, as SciPy gives).
  """
  a, b = _drop_nan(a), _drop_nan(b)
  if a.size < 2 or b.size < 2:
    return {"t": float("nan"), "p": float("nan")}
  from scipy import stats  # Imported here: only this function needs it.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # constant samples -> NaN, as documented
    result = stats.ttest_ind(a, b)
  return {"t": float(result.statistic), "p": float(result.pvalue)}


def _mean_std(values: np.ndarray) -> tuple[float, float]:
  if values.size == 0:
    return float("nan"), float("nan")
  return float(values.mean()), float(values.std())


def summarise_volumes(per_volume: list[Mapping[int, Mapping]],
                      class_names: Mapping[int, str]) -> dict:
  """Mean (± std) over test volumes per class, and the class average (spec §d).

  Args:
    per_volume: one `per_class_scores` result per test volume.
    class_names: class id -> row name, in the order of the rows wanted (e.g. MM-WHS's
      `{4: "AA", 2: "LAC", 3: "LVC", 1: "MYO"}` for the paper's table order). Every volume
      must hold every class listed.

  Returns:
    {name: {"dice_mean", "dice_std", "dice_empty", "assd_mean", "assd_std", "assd_empty",
    "n"}} for every class, plus the row "mean": {"dice_mean", "assd_mean", "dice_empty",
    "assd_empty", "n"}. Means and stds (NumPy's, ddof=0, as the reference evaluation)
    are over the volumes whose value is not NaN; `assd_empty` counts the volumes with a NaN
    ASSD (an empty prediction or ground truth), `dice_empty` those with a NaN Dice (class
    absent from both), `n` the volumes. The "mean" row averages the per-class means (a
    NaN class mean makes it NaN) and sums the counts. Values keep their units: Dice as a
    fraction (x100 for the tables' %), ASSD in voxels.
  """
  if not per_volume:
    raise ValueError("summarise_volumes needs at least one volume")
  if not class_names:
    raise ValueError("summarise_volumes needs at least one class")
  if "mean" in class_names.values():
    raise ValueError("'mean' is the class-average row; it cannot name a class")
  rows = {}
  for c, name in class_names.items():
    missing = [i for i, v in enumerate(per_volume) if c not in v]
    if missing:
      raise ValueError(f"class {c} ({name}) is missing from volume(s) {missing}")
    row = {"n": len(per_volume)}
    for metric in ("dice", "assd"):
      values = np.array([float(v[c][metric]) for v in per_volume], np.float64)
      kept = _drop_nan(values)
      row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(kept)
      row[f"{metric}_empty"] = int(values.size - kept.size)
    rows[name] = row
  rows["mean"] = {
      "dice_mean": float(np.mean([r["dice_mean"] for r in rows.values()])),
      "assd_mean": float(np.mean([r["assd_mean"] for r in rows.values()])),
      "dice_empty": sum(r["dice_empty"] for r in rows.values()),
      "assd_empty": sum(r["assd_empty"] for r in rows.values()),
      "n": len(per_volume),
  }
  return rows
