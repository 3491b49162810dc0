"""Evaluation metrics.

Per-slice segmentation metrics in JAX (means and spreads stay explicit), and host-side
NumPy metrics that score whole 3-D volumes after prediction (surface Dice, 3-D Dice, the
prostate post-processing) or multi-label classifiers (ROC-AUC).
"""

from __future__ import annotations

import warnings

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
