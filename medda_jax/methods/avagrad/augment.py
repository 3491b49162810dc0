"""nnU-Net-like 2-D training samples as a grain pipeline: a random slice and patch of the
source site, then nnU-Net's default 2-D augmentations in NumPy / SciPy.

Every sample draws from its own generator `np.random.default_rng([seed, tag, index])`
(index = global sample number, step * batch + position), so a resumed run, any number of
worker threads and any process count draw exactly the samples of an uninterrupted run.

Augmentations and their probabilities (nnU-Net's `default_2D_augmentation_params` and
`get_moreDA_augmentation`), applied in this order:
  rotation (p 0.2, +-180 deg) and scaling (p 0.2, x0.7-1.4), one resampling, zero fill;
  Gaussian noise (p 0.1, variance 0-0.1); Gaussian blur (p 0.2, sigma 0.5-1);
  brightness x0.75-1.25 (p 0.15); contrast x0.75-1.25 about the mean (p 0.15);
  low resolution (p 0.25, zoom 0.5-1 down with nearest, back up with cubic);
  inverted gamma (p 0.1) and gamma (p 0.3), 0.7-1.5, keeping mean and std;
  mirroring of each axis (p 0.5).
nnU-Net's elastic deformation is off in 2-D by default and is not implemented.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from scipy import ndimage

from medda_jax.data import mixed


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  enabled: bool = True
  p_rotation: float = 0.2
  rotation_deg: float = 180.0
  p_scale: float = 0.2
  scale: tuple[float, float] = (0.7, 1.4)
  p_noise: float = 0.1
  noise_variance: tuple[float, float] = (0.0, 0.1)
  p_blur: float = 0.2
  blur_sigma: tuple[float, float] = (0.5, 1.0)
  p_brightness: float = 0.15
  brightness: tuple[float, float] = (0.75, 1.25)
  p_contrast: float = 0.15
  contrast: tuple[float, float] = (0.75, 1.25)
  p_low_resolution: float = 0.25
  low_resolution: tuple[float, float] = (0.5, 1.0)
  p_gamma_inverted: float = 0.1
  p_gamma: float = 0.3
  gamma: tuple[float, float] = (0.7, 1.5)
  p_mirror: float = 0.5

  @classmethod
  def of(cls, section) -> "AugmentSettings":
    """From a config section with the same field names."""
    kw = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kw.items()})


def _gamma(x: np.ndarray, gamma: float, invert: bool) -> np.ndarray:
  """batchgenerators' augment_gamma with retain_stats."""
  if invert:
    x = -x
  mean, std = x.mean(), x.std()
  low, span = x.min(), x.max() - x.min()
  x = np.power((x - low) / (span + 1e-7), gamma) * span + low
  x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
  return -x if invert else x


def _draw_gamma(rng, low_high) -> float:
  low, high = low_high
  return rng.uniform(low, 1.0) if rng.random() < 0.5 and low < 1 else rng.uniform(max(low, 1), high)


def augment(image: np.ndarray, mask: np.ndarray, s: AugmentSettings,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """One sample: image [H, W] float32, mask [H, W] integer labels."""
  image = image.astype(np.float32)
  h, w = mask.shape
  rotate = rng.random() < s.p_rotation
  scale = rng.random() < s.p_scale
  if rotate or scale:
    angle = math.radians(rng.uniform(-s.rotation_deg, s.rotation_deg)) if rotate else 0.0
    zoom = rng.uniform(*s.scale) if scale else 1.0
    # output pixel o samples input centre + R(angle) (o - centre) / zoom
    c, si = math.cos(angle), math.sin(angle)
    matrix = np.array([[c, -si], [si, c]]) / zoom
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ centre
    image = ndimage.affine_transform(image, matrix, offset, order=3, mode="constant", cval=0.0)
    mask = ndimage.affine_transform(mask, matrix, offset, order=0, mode="constant", cval=0)
  if rng.random() < s.p_noise:
    image = image + rng.normal(0.0, math.sqrt(rng.uniform(*s.noise_variance)), image.shape)
  if rng.random() < s.p_blur:
    image = ndimage.gaussian_filter(image, rng.uniform(*s.blur_sigma))
  if rng.random() < s.p_brightness:
    image = image * rng.uniform(*s.brightness)
  if rng.random() < s.p_contrast:
    mean, low, high = image.mean(), image.min(), image.max()
    image = np.clip((image - mean) * rng.uniform(*s.contrast) + mean, low, high)
  if rng.random() < s.p_low_resolution:
    factor = rng.uniform(*s.low_resolution)
    small = ndimage.zoom(image, factor, order=0)
    image = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=3)[:h, :w]
  if rng.random() < s.p_gamma_inverted:
    image = _gamma(image, _draw_gamma(rng, s.gamma), invert=True)
  if rng.random() < s.p_gamma:
    image = _gamma(image, _draw_gamma(rng, s.gamma), invert=False)
  for axis in (0, 1):
    if rng.random() < s.p_mirror:
      image, mask = np.flip(image, axis), np.flip(mask, axis)
  return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask)


class DrawSample(grain.transforms.Map):
  """Global sample index -> a random slice of a random source volume, a random patch of it
  (padded with the slice minimum where the slice is smaller)."""

  def __init__(self, pool: mixed.SlicePool, patch: int, seed: int):
    self.pool, self.patch, self.seed = pool, patch, seed

  def map(self, index):
    rng = np.random.default_rng([self.seed, 0, int(index)])
    v = int(rng.integers(len(self.pool.volumes)))
    volume = self.pool.volumes[v]
    s = int(self.pool.slices[v][rng.integers(len(self.pool.slices[v]))])
    image, mask = mixed.random_crop(np.asarray(volume.image[s])[..., None],
                                    np.asarray(volume.mask[s]), self.patch, rng)
    return {"index": int(index), "images": image[..., 0].astype(np.float32),
            "masks": mask.astype(np.int32)}


class NnUNetAugment(grain.transforms.Map):
  """The augmentations of one sample, from the generator of (seed, index)."""

  def __init__(self, settings: AugmentSettings, seed: int):
    self.settings, self.seed = settings, seed

  def map(self, element):
    image, mask = element["images"], element["masks"]
    if self.settings.enabled:
      rng = np.random.default_rng([self.seed, 1, element["index"]])
      image, mask = augment(image, mask, self.settings, rng)
    return {"images": image[..., None].astype(np.float32), "masks": mask.astype(np.int32)}


def training_batches(pool: mixed.SlicePool, *, patch: int, batch_size: int, total_steps: int,
                     steps_per_call: int, settings: AugmentSettings, seed: int,
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Element k: the batches of steps [k * steps_per_call, (k + 1) * steps_per_call),
  images [steps_per_call, b, patch, patch, 1] float32 and masks [steps_per_call, b, patch,
  patch] int32, b = this process's share of `batch_size`."""
  if total_steps % steps_per_call:
    raise ValueError(f"steps_per_call={steps_per_call} must divide the {total_steps} steps")
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} is not divisible by {process_count} processes")
  share = batch_size // process_count

  def global_index(i):  # this process's i-th sample -> its number in the global stream
    return (i // share) * batch_size + process_index * share + i % share

  return (grain.MapDataset.range(total_steps * share).map(global_index)
          .map(DrawSample(pool, patch, seed)).map(NnUNetAugment(settings, seed))
          .batch(share).batch(steps_per_call))
