"""The image transformations of Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021), after
the reference code github.com/MrGiovanni/ModelsGenesis (`pytorch/utils.py`, the same as
`keras/utils.py`): `bezier_curve`, non-linear intensity mapping, local pixel shuffling,
in-painting and out-painting, and `generate_pair`'s order of applying them (`distort`). The
flip of `data_augmentation` is left out: it changes the target as well, so it is not a
distortion to restore.

Every function takes one-channel float32 images in [0, 1], 2-D [H, W] (POPAR's radiographs)
or 3-D [D, H, W] (DiRA's CT sub-volumes), and an explicit `np.random.Generator`, so that a
result is a function of the generator's seed. The per-axis rules of the reference apply to
each axis alike, so they carry over to 2-D unchanged.

The reference's defaults: the probabilities of `distort` (its `config.py`: nonlinear 0.9,
local 0.5, paint 0.9, out-painting 0.8, in-painting 1 - 0.8), 100000 curve points for the
intensity map, 10000 shuffled windows of side up to size // 10, at most 5 in-painted boxes of
side size // 6 to size // 3, 1 + at most 4 kept boxes of side size - [3 size // 7, 4 size // 7]
when out-painting, and the 3-pixel margin of the boxes. Choices made here, not in the
reference: the window count of a 2-D image scales with its pixel count (the reference only
ever sees 64 x 64 x 32 volumes), and on axes too short for the reference's rules (a few
pixels) windows and boxes are kept at least 1 pixel wide and the box margin is narrowed, where
the reference would raise or draw empty boxes. The reference's random numbers (Python's
`random` and numpy's global state) are not reproduced draw for draw, only their distributions.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from medda_jax.errors import DataError

REFERENCE_SHAPE = (64, 64, 32)  # the reference's sub-volume (input_rows, input_cols, input_deps)
REFERENCE_BLOCKS = 10000  # shuffled windows per reference sub-volume
MARGIN = 3  # pixels between a painted box and the image border
CURVE_POINTS = 100000  # points of the intensity curve (the reference's nTimes)

Box = tuple[slice, ...]


def _image(x: np.ndarray) -> np.ndarray:
  """A float32 copy of a 2-D or 3-D image; anything else is a `DataError`."""
  x = np.asarray(x)
  if x.ndim not in (2, 3) or x.size == 0:
    raise DataError(f"Models Genesis transforms take a 2-D [H, W] or 3-D [D, H, W] image, "
                    f"got shape {x.shape}")
  return x.astype(np.float32)  # always a copy: the caller's array is never written


def bezier_curve(points, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """The Bezier curve of control points [[x0, y0], ..., [xk, yk]] at n evenly spaced t:
  (xs, ys), each float64 [n].

  As in the reference, the Bernstein term of point i is comb(k, i) t^(k-i) (1-t)^i, the usual
  one with t -> 1 - t: the same curve, walked from the last control point to the first."""
  points = np.asarray(points, np.float64)
  xs, ys = points.T @ _bernstein_basis(len(points) - 1, n)
  return xs, ys


@functools.lru_cache(maxsize=4)
def _bernstein_basis(k: int, n: int) -> np.ndarray:
  """[k + 1, n], the same for every curve of k + 1 points (kept: 100000 points take 10 ms)."""
  t = np.linspace(0.0, 1.0, n)
  basis = np.stack([math.comb(k, i) * t ** (k - i) * (1 - t) ** i for i in range(k + 1)])
  basis.flags.writeable = False
  return basis


def nonlinear_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The reference's `nonlinear_transformation`: intensities mapped through a random cubic
  Bezier curve from (0, 0) to (1, 1), reversed (bright becomes dark) half the time."""
  x = _image(x)
  r = rng.random(4)
  xs, ys = bezier_curve([[0, 0], [r[0], r[1]], [r[2], r[3]], [1, 1]], CURVE_POINTS)
  # Inner control points in [0, 1) make both coordinates monotone along the curve, which runs
  # from (1, 1) to (0, 0). Sorting xs alone pairs ascending xs with descending ys: a
  # decreasing map; sorting both gives the increasing one.
  if rng.random() < 0.5:
    xs = _sort(xs)
  else:
    xs, ys = _sort(xs), _sort(ys)
  return np.interp(x, xs, ys).astype(np.float32)


def _sort(values: np.ndarray) -> np.ndarray:
  """np.sort(values) for a curve coordinate, which usually runs monotonically from 1 to 0:
  then reversing it gives the same array without the sort's 5 ms at 100000 points."""
  reverse = values[::-1]
  return reverse if np.all(reverse[1:] >= reverse[:-1]) else np.sort(values)


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator,
                        blocks: int | None = None) -> np.ndarray:
  """The reference's `local_pixel_shuffling`: the pixels inside each of `blocks` random
  windows (side per axis uniform in [1, size // 10]) permuted.

  Windows are read from the original image and written into a copy, so a later window over
  an earlier one overwrites it rather than shuffling twice. `blocks` defaults to the
  reference's 10000 for 3-D; for 2-D to 10000 times the image's pixel count over that of the
  reference's 64 x 64 x 32 volume (at least 1), the same density of windows per pixel."""
  x = _image(x)
  if blocks is None:
    blocks = REFERENCE_BLOCKS if x.ndim == 3 else max(
        1, round(REFERENCE_BLOCKS * x.size / math.prod(REFERENCE_SHAPE)))
  shape = np.array(x.shape)
  sides = rng.integers(1, np.maximum(shape // 10, 1) + 1, size=(blocks, x.ndim))
  starts = rng.integers(0, shape - sides + 1)
  out = x.copy()
  for side, start in zip(sides, starts):
    box = tuple(slice(a, a + s) for a, s in zip(start, side))
    out[box] = rng.permutation(x[box].ravel()).reshape(side)
  return out


def _place(rng: np.random.Generator, shape: np.ndarray, side: np.ndarray) -> Box:
  """A box of the given sides at a uniform position at least `MARGIN` pixels from the border
  (the margin narrowed on axes too short for it)."""
  first = np.minimum(MARGIN, shape - side)
  last = np.maximum(first, shape - side - MARGIN)
  start = rng.integers(first, last + 1)
  return tuple(slice(a, a + s) for a, s in zip(start, side))


def _inpaint_boxes(shape: tuple[int, ...], rng: np.random.Generator) -> list[Box]:
  """The reference's in-painting boxes: up to 5, each drawn with probability 0.95, side per
  axis uniform in [size // 6, size // 3] (at least 1)."""
  shape = np.array(shape)
  low = np.maximum(shape // 6, 1)
  high = np.maximum(shape // 3, low)
  boxes = []
  while len(boxes) < 5 and rng.random() < 0.95:
    boxes.append(_place(rng, shape, rng.integers(low, high + 1)))
  return boxes


def _outpaint_boxes(shape: tuple[int, ...], rng: np.random.Generator) -> list[Box]:
  """The reference's out-painting boxes: one, then up to 4 more each drawn with probability
  0.95, side per axis size minus a uniform draw in [3 size // 7, 4 size // 7]."""
  shape = np.array(shape)

  def box() -> Box:
    return _place(rng, shape, shape - rng.integers(3 * shape // 7, 4 * shape // 7 + 1))

  boxes = [box()]
  while len(boxes) < 5 and rng.random() < 0.95:
    boxes.append(box())
  return boxes


def inpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The reference's `image_in_painting`: the `_inpaint_boxes` filled with uniform noise in
  [0, 1), the rest of the image kept."""
  x = _image(x)
  for box in _inpaint_boxes(x.shape, rng):
    x[box] = rng.random(x[box].shape, np.float32)
  return x


def outpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The reference's `image_out_painting`: uniform noise in [0, 1) everywhere but in the
  `_outpaint_boxes`, which keep the original image."""
  x = _image(x)
  boxes = _outpaint_boxes(x.shape, rng)
  out = rng.random(x.shape, np.float32)
  for box in boxes:
    out[box] = x[box]
  return out


def distort(x: np.ndarray, rng: np.random.Generator, *, nonlinear_rate: float = 0.9,
            local_rate: float = 0.5, paint_rate: float = 0.9,
            outpaint_rate: float = 0.8) -> np.ndarray:
  """The input of `generate_pair` (without its flip): local pixel shuffling with probability
  `local_rate`, then the non-linear intensity map with probability `nonlinear_rate`, then
  with probability `paint_rate` out-painting (probability `outpaint_rate`) or in-painting
  (the reference's inpaint_rate = 1 - outpaint_rate). A new float32 array of x's shape; the
  defaults are the reference's."""
  x = _image(x)
  if rng.random() < local_rate:
    x = local_pixel_shuffle(x, rng)
  if rng.random() < nonlinear_rate:
    x = nonlinear_intensity(x, rng)
  if rng.random() < paint_rate:
    x = inpaint(x, rng) if rng.random() < 1.0 - outpaint_rate else outpaint(x, rng)
  return x
