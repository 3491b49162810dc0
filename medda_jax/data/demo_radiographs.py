"""Embedded demo data for self-supervised pre-training and transfer: radiograph-like
projections of real brain volumes, and natural photographs. No download needed.

- In-domain corpus (unlabelled): mean-intensity projections of the real MNI152 2009 T1
  template (shipped inside nilearn) and of Colin27 (`assets/`, see DEMO_BRAIN_CARD.md), seen
  from frontal and lateral directions at several angles, each sample a synthetic variation
  (affine jitter, gamma, blur, noise).
- Natural corpus (the "ImageNet" stand-in, unlabelled): random crops of the photographs
  bundled with scikit-image (`skimage.data`), in grey levels.
- Labelled target task: projections as above with synthetic multi-label "findings"
  inserted (`FINDINGS`: a small bright nodule, a basal haze, a thin line like a device),
  each present with probability 0.4, on its own.

The anatomy is real; the variations and all labels are synthetic. Results on these sets
are demo results, never a reproduction of a paper's numbers.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy import ndimage
from skimage import color as sk_color
from skimage import data as sk_data
from skimage import transform as sk_transform

from medda_jax.data import demo_brain

DESCRIPTION = ("DEMO DATA: radiograph-like projections of two real brain MR volumes (MNI152, "
               "Colin27) with synthetic variations and synthetic findings; natural corpus: "
               "scikit-image's photographs")
FINDINGS = ("nodule", "basal_haze", "line")
CORPORA = ("in_domain", "natural")
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "moon", "page", "rocket", "text")
ANGLES = np.linspace(-30.0, 30.0, 7)  # degrees about the vertical axis, per direction
PEAK = 0.65  # brightest projection value: headroom so that findings are not clipped away


def _square(image: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads to a square, then resizes (antialiased) to size x size."""
  h, w = image.shape
  side = max(h, w)
  out = np.zeros((side, side), np.float32)
  out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
  return sk_transform.resize(out, (size, size), anti_aliasing=True).astype(np.float32)


@functools.lru_cache(maxsize=4)
def projections(size: int) -> np.ndarray:
  """Mean-intensity projections of both volumes, frontal (along anterior-posterior) and
  lateral (along left-right), at `ANGLES` about the vertical axis, each scaled to [0, PEAK]:
  float32 [2 x 2 x len(ANGLES), size, size], head up."""
  out = []
  for anatomy in demo_brain.ANATOMIES:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      volume = np.asarray(demo_brain._anatomy(anatomy)["image"], np.float32)  # (x, y, z)
    for axis in (1, 0):  # frontal: along y; lateral: along x
      for angle in ANGLES:
        turned = ndimage.rotate(volume, angle, axes=(0, 1), reshape=False, order=1)
        image = np.flipud(turned.mean(axis=axis).T)  # rows: superior at the top
        image = _square(image, size)
        out.append(PEAK * image / max(float(image.max()), 1e-6))
  return np.stack(out)


def _vary(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A synthetic acquisition of one projection: affine jitter (scale, rotation, shift),
  gamma, blur and noise; [S, S] in [0, 1]."""
  size = base.shape[0]
  scale = rng.uniform(0.85, 1.15)
  angle = np.deg2rad(rng.uniform(-10, 10))
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
  centre = np.array([size / 2, size / 2])
  offset = centre - rot @ centre + rng.uniform(-0.08, 0.08, 2) * size
  image = ndimage.affine_transform(base, rot, offset=offset, order=1, mode="constant")
  image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
  image = ndimage.gaussian_filter(image, rng.uniform(0.0, 0.8))
  image = image + rng.normal(0, 0.02, image.shape)
  return np.clip(image, 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
  out = []
  for name in PHOTOS:
    image = getattr(sk_data, name)()
    if image.ndim == 3:
      image = sk_color.rgb2gray(image[..., :3])
    image = np.asarray(image, np.float32)
    out.append(image / max(float(image.max()), 1e-6))
  return tuple(out)


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
  photo = _photos()[rng.integers(len(PHOTOS))]
  h, w = photo.shape
  side = int(min(h, w) * rng.uniform(0.3, 1.0))
  top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
  crop = sk_transform.resize(photo[top:top + side, left:left + side], (size, size),
                             anti_aliasing=True).astype(np.float32)
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def corpus(kind: str, n: int, size: int, seed: int) -> np.ndarray:
  """An unlabelled corpus (`CORPORA`): float32 [n, size, size, 1] in [0, 1]."""
  if kind not in CORPORA:
    raise ValueError(f"unknown demo corpus {kind!r}; known: {CORPORA}")
  rng = np.random.default_rng([seed, CORPORA.index(kind)])
  if kind == "natural":
    return np.stack([_photo_crop(rng, size) for _ in range(n)])[..., None]
  bases = projections(size)
  return np.stack([_vary(bases[rng.integers(len(bases))], rng) for _ in range(n)])[..., None]


def _add_findings(image: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  size = image.shape[0]
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  inside = np.argwhere(image > 0.25)
  out = image.copy()
  if present[0]:  # nodule: a small bright blob inside the anatomy
    cy, cx = inside[rng.integers(len(inside))] if len(inside) else (size / 2, size / 2)
    sigma = size * rng.uniform(0.05, 0.08)
    out += rng.uniform(0.35, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
  if present[1]:  # basal haze: brightness rising towards the bottom of one side
    side = (xx < size / 2) if rng.random() < 0.5 else (xx >= size / 2)
    ramp = np.clip((yy - 0.55 * size) / (0.45 * size), 0, 1)
    out += rng.uniform(0.2, 0.3) * ndimage.gaussian_filter(ramp * side, size / 32)
  if present[2]:  # line: a thin bright segment, like a catheter
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    length = rng.uniform(0.3, 0.6) * size
    t = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    d = np.abs(-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle))
    out += rng.uniform(0.4, 0.55) * ((d < 1.0 + size / 32) & (np.abs(t) < length / 2))
  return np.clip(out, 0, 1).astype(np.float32)


def findings_task(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The labelled target task: images float32 [n, size, size, 1] in [0, 1] and labels
  float32 [n, len(FINDINGS)] (1 present, 0 absent)."""
  rng = np.random.default_rng([seed, 99])
  bases = projections(size)
  labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
  images = np.stack([_add_findings(_vary(bases[rng.integers(len(bases))], rng), labels[i] > 0,
                                   rng) for i in range(n)])
  return images[..., None], labels
