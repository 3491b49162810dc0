"""The chest X-ray classifiers' training augmentation: "real-time affine data augmentation,
including random flips, rotations, and translations" (paper §5.3.1), in NumPy inside the
grain pipeline that feeds the classifier trainer.

The paper gives no magnitudes; the defaults (`configs/stargan.py` classifier.augment) are a
choice: a horizontal flip with probability 0.5, a rotation uniform in ±10° and a
translation uniform in ±10 % of the side along each axis, one bilinear resampling about
the image centre, the uncovered corners filled black (-1 on the [-1, 1] scale).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

BLACK = -1.0  # 0 before the mean / std 0.5 normalisation


@dataclasses.dataclass(frozen=True)
class AffineAugment:
  """Random flip, rotation and translation of every image of a batch.

  `__call__(images, rng)` is the `Schedule.augment` hook: `rng` is the batch's generator
  (a function of the run seed and the batch number), from which every image gets its own
  child generator (`rng.spawn`), so an image's transform depends on (seed, batch, position)
  only and a resumed run redraws it exactly.
  """
  flip_prob: float = 0.5
  rotation_deg: float = 10.0
  translate_frac: float = 0.1
  fill: float = BLACK

  @classmethod
  def of(cls, settings) -> "AffineAugment | None":
    """From `config.classifier.augment`; None when it is disabled."""
    if not settings.enabled:
      return None
    return cls(float(settings.flip_prob), float(settings.rotation_deg),
               float(settings.translate_frac))

  def draw(self, rng: np.random.Generator, height: int, width: int):
    """(flip, angle in radians, row shift, column shift in pixels) of one image."""
    flip = bool(rng.random() < self.flip_prob)
    angle = math.radians(rng.uniform(-self.rotation_deg, self.rotation_deg))
    dy = rng.uniform(-self.translate_frac, self.translate_frac) * height
    dx = rng.uniform(-self.translate_frac, self.translate_frac) * width
    return flip, angle, dy, dx

  def apply(self, image: np.ndarray, flip: bool, angle: float, dy: float,
            dx: float) -> np.ndarray:
    """One [H, W, C] image flipped left-right, then rotated by `angle` about its centre and
    shifted by (dy, dx): output pixel p reads input R⁻¹(p − c − t) + c, with c the centre,
    t = (dy, dx) and R⁻¹ = [[cos, sin], [−sin, cos]] on (row, column)."""
    if flip:
      image = image[:, ::-1]
    h, w = image.shape[:2]
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    cos, sin = math.cos(angle), math.sin(angle)
    inverse = np.array([[cos, sin], [-sin, cos]])
    offset = centre - inverse @ (centre + np.array([dy, dx]))
    matrix = np.eye(3)
    matrix[:2, :2] = inverse
    out = ndimage.affine_transform(np.asarray(image, np.float32), matrix,
                                   offset=(offset[0], offset[1], 0.0), order=1,
                                   mode="grid-constant", cval=self.fill)
    return out.astype(image.dtype, copy=False)

  def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[..., H, W, C] images (any leading batch axes) -> the same shape, augmented."""
    flat = np.asarray(images).reshape((-1,) + images.shape[-3:])
    h, w = flat.shape[1:3]
    out = np.stack([self.apply(image, *self.draw(child, h, w))
                    for image, child in zip(flat, rng.spawn(len(flat)))])
    return out.reshape(images.shape)
