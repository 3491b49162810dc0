"""Synthetic scanner styles and synthetic subjects for volumes of real anatomy.

Everything here is a seeded numpy function of a `np.random.Generator`, so a demo
set built from the same seed is the same on every machine.

* `apply_style(volume, style, rng)` re-renders a skull-stripped T1 volume as if it
  came from another scanner / sequence: an intensity remapping curve (e.g. a
  T2-like inversion of the tissue contrast), gamma, a smooth multiplicative bias
  field, resolution loss (blur, downsample, upsample) and Rician or Gaussian noise.
* `random_subject(volumes_and_labels, rng)` warps images and label maps of one
  anatomy with the same smooth random deformation (Gaussian-smoothed
  displacement field plus a small affine): linear interpolation for images,
  nearest neighbour for label maps, so label values are never invented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import interpolate, ndimage


@dataclasses.dataclass(frozen=True)
class Style:
  """Parameters of one synthetic scanner style.

  Intensities are first divided by the 99th percentile of the nonzero voxels, so
  that white matter of a T1 volume sits near 1, grey matter near 0.7 and CSF below
  0.5; `curve` is defined on that scale.

  Attributes:
    curve: (x, y) control points of a piecewise-linear intensity map, or None for
      the identity. May be non-monotone (a T2-like inversion).
    curve_jitter: std of a per-volume perturbation of the curve's y values.
    gamma: range of the per-volume gamma exponent (drawn uniformly).
    bias: amplitude of the log bias field; the field is exp(bias * f), |f| <= 1.
    bias_grid: control points per axis of the smooth bias field (lower = smoother).
    resolution: per-axis downsampling factor of the acquisition (1 = none).
    noise: noise std relative to the white-matter level.
    rician: Rician (magnitude MR) noise if True, additive Gaussian otherwise.
  """

  curve: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  curve_jitter: float = 0.0
  gamma: tuple[float, float] = (1.0, 1.0)
  bias: float = 0.0
  bias_grid: int = 4
  resolution: tuple[float, float, float] = (1.0, 1.0, 1.0)
  noise: float = 0.0
  rician: bool = True


# A T1 scale: background 0, CSF ~0.3-0.5, GM ~0.7, WM ~0.95. The T2-like curve makes
# CSF brightest, grey matter brighter than white matter and keeps background dark.
_T2_CURVE = ((0.0, 0.12, 0.45, 0.6, 0.72, 0.85, 1.0, 1.5),
             (0.0, 0.45, 1.0, 0.75, 0.55, 0.4, 0.3, 0.28))

STYLES: dict[str, Style] = {
  # Clean T1-weighted: the real contrast with mild scanner variation.
  "t1w": Style(gamma=(0.85, 1.15), bias=0.15, noise=0.02),
  # T2-like contrast from a non-monotone remapping of the T1 tissue intensities.
  "t2w_like": Style(curve=_T2_CURVE, curve_jitter=0.04, gamma=(0.9, 1.1), bias=0.2,
                    noise=0.03),
  # A low-field / clinical protocol: T1 contrast, 2x in-plane and 3x through-plane
  # resolution loss, strong bias and noise.
  "lowres_noisy": Style(gamma=(0.8, 1.2), bias=0.3, resolution=(2.0, 2.0, 3.0), noise=0.08),
}


def _axis_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
  """[n_out, n_in] matrix that resamples one axis with corners aligned (linear or cubic)."""
  x_out = np.linspace(0.0, n_in - 1.0, n_out)
  eye = np.eye(n_in)
  if order == 3 and n_in >= 4:
    return interpolate.CubicSpline(np.arange(n_in), eye)(x_out)
  return np.stack([np.interp(x_out, np.arange(n_in), col) for col in eye], axis=1)


def _resize(x: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
  """Resample x onto `shape` with corners aligned, one axis at a time (separable, fast)."""
  out = np.asarray(x, dtype=np.float32)
  for axis, n_out in enumerate(shape):
    if out.shape[axis] == n_out:
      continue
    m = _axis_matrix(out.shape[axis], n_out, order).astype(np.float32)
    out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
  return np.ascontiguousarray(out)


def bias_field(shape: Sequence[int], rng: np.random.Generator, amplitude: float,
               grid: int = 4) -> np.ndarray:
  """A smooth positive multiplicative field exp(amplitude * f), max |f| = 1."""
  coarse = rng.normal(size=(grid,) * len(shape))
  f = _resize(coarse, shape, order=3)
  f /= max(float(np.abs(f).max()), 1e-8)
  return np.exp(amplitude * f).astype(np.float32)


def degrade_resolution(x: np.ndarray, factors: Sequence[float]) -> np.ndarray:
  """Blur, downsample by `factors` and upsample back to x's shape (linear)."""
  factors = np.asarray(factors, dtype=np.float64)
  if np.all(factors <= 1.0):
    return x
  # Gaussian PSF matched to the coarser sampling (skimage's (factor - 1) / 2 rule).
  blurred = ndimage.gaussian_filter(x, sigma=np.maximum(factors - 1.0, 0.0) / 2.0)
  coarse_shape = [max(2, int(round(n / f))) for n, f in zip(x.shape, factors)]
  return _resize(_resize(blurred, coarse_shape, order=1), x.shape, order=1)


def apply_style(volume: np.ndarray, style: str | Style, rng: np.random.Generator) -> np.ndarray:
  """Render a skull-stripped T1 volume (background 0) in `style`; float32, same shape."""
  if isinstance(style, str):
    if style not in STYLES:
      raise KeyError(f"unknown style {style!r}; known: {sorted(STYLES)}")
    style = STYLES[style]
  x = np.asarray(volume, dtype=np.float32)
  fg = x[x > 0]
  if fg.size == 0:
    raise ValueError("apply_style needs a volume with some positive voxels")
  x = np.maximum(x, 0.0) / np.percentile(fg, 99)
  if style.curve is not None:
    xs, ys = (np.asarray(c, dtype=np.float64) for c in style.curve)
    # Jitter all but the background point so the background stays at 0.
    ys = ys + np.concatenate([[0.0], rng.normal(0.0, style.curve_jitter, ys.size - 1)])
    x = np.interp(x, xs, np.maximum(ys, 0.0)).astype(np.float32)
  gamma = rng.uniform(*style.gamma)
  x = np.power(x, gamma, dtype=np.float32)
  if style.bias > 0:
    x = x * bias_field(x.shape, rng, style.bias, style.bias_grid)
  x = degrade_resolution(x, style.resolution)
  if style.noise > 0:
    n1 = style.noise * rng.standard_normal(x.shape, dtype=np.float32)
    if style.rician:
      n2 = style.noise * rng.standard_normal(x.shape, dtype=np.float32)
      x = np.sqrt((x + n1) ** 2 + n2 ** 2)
    else:
      x = x + n1
  return x.astype(np.float32)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
  """Rodrigues rotation matrix about a unit axis."""
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_warp(shape: Sequence[int], rng: np.random.Generator, max_displacement_mm: float = 4.0,
                voxel_mm: float = 2.0, smoothing_mm: float = 8.0, max_rotation_deg: float = 5.0,
                max_scale: float = 0.05) -> np.ndarray:
  """Source coordinates [3, *shape] of a random smooth deformation of a 3-D grid.

  The output voxel p samples the input at c + R S (p - c) + d(p): c the grid
  centre, R a rotation by at most `max_rotation_deg` about a random axis, S a
  per-axis scale in [1 - max_scale, 1 + max_scale], and d a Gaussian-smoothed
  random field whose largest vector has length `max_displacement_mm`.
  """
  shape = tuple(int(n) for n in shape)
  if len(shape) != 3:
    raise ValueError(f"random_warp works on 3-D grids, got shape {shape}")
  axis = rng.normal(size=3)
  axis /= np.linalg.norm(axis)
  angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
  scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=3)
  a = _rotation(axis, angle) @ np.diag(scale)
  centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
  grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32)
  coords = (a.astype(np.float32) @ grid + centre[:, None].astype(np.float32)).reshape((3,) + shape)
  if max_displacement_mm > 0:
    # Smooth at half resolution: the field is low-pass anyway and this is 8x cheaper.
    half = tuple(max(2, (n + 1) // 2) for n in shape)
    sigma = smoothing_mm / voxel_mm / 2.0
    d = np.stack([ndimage.gaussian_filter(rng.normal(size=half), sigma, mode="wrap")
                  for _ in range(3)])
    d *= (max_displacement_mm / voxel_mm) / max(np.sqrt((d ** 2).sum(0)).max(), 1e-8)
    coords += np.stack([_resize(c, shape, order=1) for c in d]).astype(np.float32)
  return coords


def random_subject(volumes_and_labels: Sequence[np.ndarray], rng: np.random.Generator,
                   max_displacement_mm: float = 4.0, voxel_mm: float = 2.0,
                   smoothing_mm: float = 8.0, max_rotation_deg: float = 5.0,
                   max_scale: float = 0.05) -> list[np.ndarray]:
  """Warp same-grid volumes of one anatomy into a new synthetic subject.

  Floating-point arrays are images (linear interpolation); integer or boolean
  arrays are label maps (nearest neighbour, so their values are preserved).
  Everything outside the input grid reads as 0. With max_displacement_mm=0,
  max_rotation_deg=0 and max_scale=0 the warp is the identity.
  """
  arrays = [np.asarray(v) for v in volumes_and_labels]
  if not arrays:
    return []
  shape = arrays[0].shape
  for v in arrays:
    if v.shape != shape:
      raise ValueError(f"all volumes must share one grid; got {v.shape} and {shape}")
  coords = random_warp(shape, rng, max_displacement_mm, voxel_mm, smoothing_mm,
                       max_rotation_deg, max_scale)
  out = []
  for v in arrays:
    if np.issubdtype(v.dtype, np.floating):
      out.append(ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0))
    else:
      src = v.astype(np.uint8) if v.dtype == bool else v
      w = ndimage.map_coordinates(src, coords, order=0, mode="constant", cval=0)
      out.append(w.astype(v.dtype))
  return out
