"""The classical weak-label generators that give the target images their first, noisy
boxes (paper §3.1): circle Hough transform, watershed on the distance transform, and edge
detection + filled contours, all with scikit-image on a "cell channel" in which cells are
bright (haematoxylin density for stained tissue, inverted grey level otherwise). Their
boxes are merged by weighted boxes fusion (each generator one vote).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import color, feature, filters, measure, morphology, segmentation, transform

from medda_jax.methods.sissi import paper

GENERATORS = ("hough", "watershed", "edges")


def cell_channel(image: np.ndarray, kind: str) -> np.ndarray:
  """[H, W] float in [0, 1], cells bright: 'hematoxylin' (rgb2hed's H channel) or 'dark'
  (1 - grey level: dark cells on a light background)."""
  rgb = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
  if kind == "hematoxylin":
    x = color.rgb2hed(rgb)[..., 0]
  else:
    x = 1.0 - color.rgb2gray(rgb)
  x = x - x.min()
  return x / max(x.max(), 1e-8)


def _region_boxes(labels: np.ndarray, min_area: int) -> np.ndarray:
  boxes = [(r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]) for r in measure.regionprops(labels)
           if r.area >= min_area]
  return np.array(boxes, np.float64).reshape(-1, 4)


def hough_boxes(x: np.ndarray, radii: tuple[int, int], threshold: float) -> np.ndarray:
  edges = feature.canny(x, sigma=1.5)
  rs = np.arange(radii[0], radii[1] + 1)
  acc = transform.hough_circle(edges, rs)
  _, cx, cy, r = transform.hough_circle_peaks(acc, rs, threshold=threshold,
                                              min_xdistance=radii[0], min_ydistance=radii[0],
                                              total_num_peaks=400)
  return np.stack([cx - r, cy - r, cx + r, cy + r], 1).astype(np.float64).reshape(-1, 4)


def watershed_boxes(x: np.ndarray, min_distance: int, min_area: int) -> np.ndarray:
  mask = morphology.remove_small_objects(x > filters.threshold_otsu(x), max_size=min_area)
  dist = ndi.distance_transform_edt(mask)
  peaks = feature.peak_local_max(dist, min_distance=min_distance, labels=measure.label(mask))
  markers = np.zeros(x.shape, np.int32)
  markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
  return _region_boxes(segmentation.watershed(-dist, markers, mask=mask), min_area)


def edge_boxes(x: np.ndarray, min_area: int) -> np.ndarray:
  edges = ndi.binary_dilation(feature.canny(x, sigma=2.0))
  filled = ndi.binary_fill_holes(edges) & (x > np.median(x))
  return _region_boxes(measure.label(filled), min_area)


def weak_boxes(image: np.ndarray, channel: str = "hematoxylin", radii=(3, 8),
               generators=GENERATORS, hough_threshold: float = 0.45, min_area: int = 12,
               max_side: int | None = None, min_votes: int = 1) -> np.ndarray:
  """The fused weak boxes of one image; `min_votes` keeps boxes found by at least that many
  generators (1: their union, the paper's noisy labels). Boxes larger than `max_side`
  (clumps) are dropped."""
  boxes, votes = voted_boxes(image, channel, radii, generators, hough_threshold, min_area,
                             max_side)
  return boxes[votes >= min_votes]


def voted_boxes(image: np.ndarray, channel: str = "hematoxylin", radii=(3, 8),
                generators=GENERATORS, hough_threshold: float = 0.45, min_area: int = 12,
                max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The generators' boxes fused by WBF (IoU 0.4) with the number of generators behind each
  (WBF's rescaled score x generators; one generator's own overlapping boxes count apart)."""
  x = cell_channel(image, channel)
  found = []
  for g in generators:
    if g == "hough":
      found.append(hough_boxes(x, radii, hough_threshold))
    elif g == "watershed":
      found.append(watershed_boxes(x, radii[0], min_area))
    else:
      found.append(edge_boxes(x, min_area))
  boxes, scores = paper.weighted_boxes_fusion(found, [np.ones(len(b)) for b in found], 0.4)
  votes = np.rint(scores * len(generators)).astype(int)
  if max_side:
    keep = np.max(boxes[:, 2:] - boxes[:, :2], axis=1) <= max_side
    boxes, votes = boxes[keep], votes[keep]
  return boxes, votes
