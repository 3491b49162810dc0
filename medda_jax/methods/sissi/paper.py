"""SISSI's algorithm pieces, on the host in numpy: box IoU and NMS, weighted boxes fusion
(eq. 1), test-time augmentation and its inverse box mapping, the ADELE start criterion,
the synthetic-like image (blur + seamless cloning of the pseudo-labelled cells) and COCO
AP / AR. Boxes are float [n, 4] arrays (x1, y1, x2, y2) in pixels.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from scipy import optimize

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation


# --------------------------------------------------------------------------- boxes
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] intersection over union (COCO's continuous areas, no +1)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
  """Indices kept by greedy non-maximum suppression, highest score first."""
  order = np.argsort(-scores, kind="stable")
  keep = []
  ious = iou_matrix(boxes, boxes)
  suppressed = np.zeros(len(boxes), bool)
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= ious[i] > iou
  return np.array(keep, np.int64)


# --------------------------------------------------------------------------- WBF
def weighted_boxes_fusion(boxes: list[np.ndarray], scores: list[np.ndarray],
                          iou_thr: float = 0.55, skip_thr: float = 0.0):
  """Fuses the boxes of several predictions of one image (eq. 1, as the reference WBF with
  conf_type 'avg'): boxes sorted by score join the cluster whose fused box they overlap
  most (IoU > iou_thr), else start one; a cluster's box is the score-weighted mean of its
  members' coordinates; its score the members' mean score x min(members, models) / models.
  Returns (boxes [k, 4], scores [k]) sorted by score."""
  n_models = len(boxes)
  all_boxes = [(float(s), np.asarray(b, np.float64)) for bs, ss in zip(boxes, scores)
               for b, s in zip(np.asarray(bs).reshape(-1, 4), np.asarray(ss).reshape(-1))
               if s >= skip_thr]
  all_boxes.sort(key=lambda t: -t[0])
  members: list[list[tuple[float, np.ndarray]]] = []
  fused: list[np.ndarray] = []
  for s, b in all_boxes:
    best, best_iou = -1, iou_thr
    if fused:
      ious = iou_matrix(b[None], np.stack(fused))[0]
      j = int(np.argmax(ious))
      if ious[j] > best_iou:
        best = j
    if best < 0:
      members.append([(s, b)])
      fused.append(b.copy())
    else:
      members[best].append((s, b))
      w = np.array([m[0] for m in members[best]])
      fused[best] = (w[:, None] * np.stack([m[1] for m in members[best]])).sum(0) / w.sum()
  if not fused:
    return np.zeros((0, 4)), np.zeros((0,))
  out_scores = np.array([np.mean([m[0] for m in ms]) * min(len(ms), n_models) / n_models
                         for ms in members])
  order = np.argsort(-out_scores, kind="stable")
  return np.stack(fused)[order], out_scores[order]


# --------------------------------------------------------------------------- TTA
def tta_versions(scales, flips) -> list[tuple[float, str]]:
  """The (scale, flip) pairs of test-time augmentation; flip in {'none','h','v','hv'}."""
  return [(float(s), f) for s in scales for f in flips]


def flip_image(image: np.ndarray, flip: str) -> np.ndarray:
  if "h" in flip:
    image = image[:, ::-1]
  if "v" in flip:
    image = image[::-1]
  return np.ascontiguousarray(image)


def unflip_boxes(boxes: np.ndarray, flip: str, width: int, height: int) -> np.ndarray:
  """Boxes predicted on a flipped image, mapped back to the unflipped one."""
  b = np.array(boxes, np.float64).reshape(-1, 4)
  if "h" in flip:
    b[:, [0, 2]] = width - b[:, [2, 0]]
  if "v" in flip:
    b[:, [1, 3]] = height - b[:, [3, 1]]
  return b


def scaled_size(size: int, scale: float, multiple: int) -> int:
  """The side of a scaled TTA input, rounded up to a multiple of the network's stride."""
  return int(np.ceil(round(size * scale) / multiple) * multiple)


# --------------------------------------------------------------------------- ADELE
def adele_curve(x, a, b, c):
  return a * (1 - np.exp(-1 / c * x ** b))


def adele_derivative(x, a, b, c):
  return a * b * (1 / c) * np.exp(-1 / c * x ** b) * x ** (b - 1)


def adele_should_start(ap50: list[float], current_epoch: int, threshold: float = 0.9,
                       horizon: int = 15, min_increment: float = 0.1) -> tuple[bool, dict]:
  """ADELE's `if_update` as SISSI's code uses it on the AP50 curve (predictions vs the
  initial noisy labels, one value per epoch, epoch 1 first): leading points whose
  increments stay < min_increment (0.1 in the code) are dropped (their count shifts the answer); f(x) = a(1 -
  exp(-x^b / c)) is fitted with later points weighted more; the update epoch is 1 + shift
  + the number of epochs 1..horizon whose relative change of |f'| from |f'(1)| is <=
  threshold (changes > 1 count as 0). Returns (current_epoch >= update epoch, details)."""
  y = np.asarray(ap50, np.float64)
  shift = 0
  while shift + 1 < len(y) and y[shift + 1] - y[shift] < min_increment:
    shift += 1
  y = y[shift:]
  info = {"shift": shift, "fit": None, "update_epoch": None}
  if len(y) < 3:
    return False, info
  x = np.arange(1, len(y) + 1, dtype=np.float64)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      (a, b, c), _ = optimize.curve_fit(adele_curve, x, y, sigma=np.geomspace(1, 0.1, len(y)),
                                        absolute_sigma=True, bounds=([0, 0, 0], [1, 1, np.inf]),
                                        maxfev=5000)
  except (RuntimeError, ValueError):
    return False, info
  epochs = np.arange(1, horizon + 1, dtype=np.float64)
  d1 = abs(adele_derivative(1.0, a, b, c))
  if not np.isfinite(d1) or d1 == 0:
    return False, dict(info, fit=[float(a), float(b), float(c)])
  change = np.abs(np.abs(adele_derivative(epochs, a, b, c)) - d1) / d1
  change[change > 1] = 0
  update = int(np.sum(change <= threshold)) + 1 + shift
  info.update(fit=[float(a), float(b), float(c)], update_epoch=update)
  return current_epoch >= update, info


# --------------------------------------------------------------------------- synthetic-like
def synthetic_like(image: np.ndarray, boxes: np.ndarray, blur_kernel: int,
                   blur_sigma: float = 0.0) -> np.ndarray:
  """The image rebuilt from its pseudo-labelled cells: a Gaussian-blurred copy on which each
  box region of the original is seamlessly cloned (Poisson editing, mixed gradients), so
  cells without a pseudo-label fade into the background. `image` uint8 [H, W, 3]. The
  cloned patch carries a one-pixel frame outside its mask (OpenCV needs it), so boxes are
  clipped to stay one pixel inside the image; slivers under 3 pixels are skipped."""
  h, w = image.shape[:2]
  image = np.ascontiguousarray(image)
  out = cv2.GaussianBlur(image, (blur_kernel, blur_kernel), blur_sigma)
  for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
    x1, y1 = max(int(np.floor(x1)), 1), max(int(np.floor(y1)), 1)
    x2, y2 = min(int(np.ceil(x2)), w - 1), min(int(np.ceil(y2)), h - 1)
    if x2 - x1 < 3 or y2 - y1 < 3:
      continue
    patch = np.ascontiguousarray(image[y1 - 1:y2 + 1, x1 - 1:x2 + 1])
    mask = np.zeros(patch.shape[:2], np.uint8)
    mask[1:-1, 1:-1] = 255
    # OpenCV centres the mask's bounding box at `centre` (integer halves, rounded down)
    centre = (x1 + (x2 - x1) // 2, y1 + (y2 - y1) // 2)
    out = cv2.seamlessClone(patch, out, mask, centre, cv2.MIXED_CLONE)
  return out


# --------------------------------------------------------------------------- COCO AP / AR
def _matches(det: np.ndarray, gt: np.ndarray, thr: float) -> np.ndarray:
  """COCO's greedy matching of one image at one IoU threshold: detections in score order
  each take the unmatched ground truth box of highest IoU >= thr. True-positive flags."""
  tp = np.zeros(len(det), bool)
  if len(det) == 0 or len(gt) == 0:
    return tp
  ious = iou_matrix(det, gt)
  taken = np.zeros(len(gt), bool)
  for i in range(len(det)):
    best, best_iou = -1, min(thr, 1 - 1e-10)
    for j in range(len(gt)):
      if not taken[j] and ious[i, j] >= best_iou:
        best, best_iou = j, ious[i, j]
    if best >= 0:
      taken[best] = True
      tp[i] = True
  return tp


def coco_metrics(detections: list[tuple[np.ndarray, np.ndarray]], ground_truth: list[np.ndarray],
                 max_dets: int = 100) -> dict[str, float]:
  """COCO AP (IoU 0.50:0.95), AP50, AP75 and AR@max_dets of one class, area 'all', no
  crowd boxes, in percent. `detections[i]` = (boxes, scores) of image i."""
  n_gt = sum(len(g) for g in ground_truth)
  prec = np.zeros(len(IOU_THRESHOLDS))
  rec = np.zeros(len(IOU_THRESHOLDS))
  for t, thr in enumerate(IOU_THRESHOLDS):
    scores, tps = [], []
    for (boxes, s), gt in zip(detections, ground_truth):
      order = np.argsort(-np.asarray(s), kind="mergesort")[:max_dets]
      scores.append(np.asarray(s)[order])
      tps.append(_matches(np.asarray(boxes).reshape(-1, 4)[order], np.asarray(gt).reshape(-1, 4),
                          thr))
    scores, tps = np.concatenate(scores), np.concatenate(tps)
    if n_gt == 0:
      prec[t], rec[t] = -1, -1
      continue
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(tps[order])
    fp = np.cumsum(~tps[order])
    recall = tp / n_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    rec[t] = recall[-1] if len(recall) else 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
    prec[t] = q.mean()
  if n_gt == 0:
    return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "AR": -1.0}
  return {"AP": float(prec.mean() * 100), "AP50": float(prec[0] * 100),
          "AP75": float(prec[5] * 100), "AR": float(rec.mean() * 100)}
