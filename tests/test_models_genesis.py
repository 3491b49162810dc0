"""Models Genesis transformations (`medda_jax/data/models_genesis.py`) on 2-D and 3-D images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medda_jax.data import models_genesis as mg
from medda_jax.errors import DataError

SHAPES = [(32, 32), (16, 32, 32)]


class _Fixed:
  """A stand-in generator whose `random` returns the given values in order."""

  def __init__(self, *values: float):
    self.values = list(values)

  def random(self, size=None):
    if size is None:
      return self.values.pop(0)
    return np.array([self.values.pop(0) for _ in range(size)])


def _union(shape, boxes) -> np.ndarray:
  mask = np.zeros(shape, bool)
  for box in boxes:
    mask[box] = True
  return mask


def _check_boxes(shape, boxes, low, high):
  """Each box has side per axis in [low, high] and keeps 3 pixels from the border."""
  for box in boxes:
    for sl, size, lo, hi in zip(box, shape, low, high):
      assert lo <= sl.stop - sl.start <= hi
      assert sl.start >= 3 and sl.stop <= size - 3


def test_bezier_curve_against_bernstein_loop():
  points = [[0.1, 0.3], [0.2, 0.9], [0.7, 0.1], [0.8, 0.6]]
  xs, ys = mg.bezier_curve(points, 7)
  assert xs.shape == ys.shape == (7,)
  for j, t in enumerate(np.linspace(0, 1, 7)):
    # The reference's bernstein_poly(i, n, t) = comb(n, i) t^(n-i) (1-t)^i.
    bx = sum(math.comb(3, i) * t ** (3 - i) * (1 - t) ** i * points[i][0] for i in range(4))
    by = sum(math.comb(3, i) * t ** (3 - i) * (1 - t) ** i * points[i][1] for i in range(4))
    np.testing.assert_allclose([xs[j], ys[j]], [bx, by], atol=1e-12)
  # Walked from the last control point to the first, like the reference.
  np.testing.assert_allclose([xs[0], ys[0]], points[-1], atol=1e-12)
  np.testing.assert_allclose([xs[-1], ys[-1]], points[0], atol=1e-12)


@pytest.mark.parametrize("branch, expected", [(0.9, lambda x: x), (0.1, lambda x: 1 - x)])
def test_nonlinear_identity_curve(branch, expected):
  """Control points on the diagonal make the curve the line y = x: the increasing branch is
  the identity, the reversed branch (the reference's xs alone sorted) maps x to 1 - x."""
  x = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  out = mg.nonlinear_intensity(x, _Fixed(1 / 3, 1 / 3, 2 / 3, 2 / 3, branch))
  np.testing.assert_allclose(out, expected(x), atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 4)])
def test_nonlinear_intensity_is_monotone(shape):
  levels = np.array([0.0, 0.1, 0.35, 0.5, 0.8, 1.0], np.float32)
  x = np.random.default_rng(0).permutation(np.tile(levels, 4)).reshape(shape)  # each 4 times
  directions = set()
  for seed in range(12):
    out = mg.nonlinear_intensity(x, np.random.default_rng(seed))
    assert out.shape == shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    mapped = np.array([out[x == v][0] for v in levels])
    for v, m in zip(levels, mapped):
      assert np.all(out[x == v] == m)  # equal values stay equal
    steps = np.diff(mapped)
    assert np.all(steps >= 0) or np.all(steps <= 0)
    # The curve runs from (0, 0) to (1, 1): 0 and 1 map to themselves or to each other.
    directions.add((round(float(mapped[0]), 4), round(float(mapped[-1]), 4)))
    assert not np.allclose(out, x)
  assert directions == {(0.0, 1.0), (1.0, 0.0)}


@pytest.mark.parametrize("shape", [(20, 30), (20, 20, 30)])
def test_local_pixel_shuffle_one_block(shape):
  x = np.random.default_rng(0).permutation(math.prod(shape)).reshape(shape)
  x = (x / x.size).astype(np.float32)  # distinct values
  changed_any = False
  for seed in range(10):
    out = mg.local_pixel_shuffle(x, np.random.default_rng(seed), blocks=1)
    changed = np.argwhere(out != x)
    if not len(changed):
      continue
    changed_any = True
    lo, hi = changed.min(0), changed.max(0) + 1
    assert np.all(hi - lo <= np.array(shape) // 10)  # inside one window of the allowed side
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    np.testing.assert_array_equal(np.sort(out[box].ravel()), np.sort(x[box].ravel()))
    rest = np.ones(shape, bool)
    rest[box] = False
    np.testing.assert_array_equal(out[rest], x[rest])
  assert changed_any


def test_local_pixel_shuffle_default_blocks():
  """2-D: 10000 windows per 64 x 64 x 32 pixels, 122 for 40 x 40; 3-D: the reference's 10000."""
  x = np.random.default_rng(0).random((40, 40), np.float32)
  np.testing.assert_array_equal(mg.local_pixel_shuffle(x, np.random.default_rng(1)),
                                mg.local_pixel_shuffle(x, np.random.default_rng(1), blocks=122))
  assert not np.array_equal(mg.local_pixel_shuffle(x, np.random.default_rng(1)),
                            mg.local_pixel_shuffle(x, np.random.default_rng(1), blocks=123))
  v = np.random.default_rng(0).random((10, 10, 20), np.float32)
  np.testing.assert_array_equal(mg.local_pixel_shuffle(v, np.random.default_rng(1)),
                                mg.local_pixel_shuffle(v, np.random.default_rng(1), blocks=10000))


@pytest.mark.parametrize("shape", SHAPES)
def test_inpaint(shape):
  x = np.ones(shape, np.float32)  # the noise is in [0, 1): never 1
  counts = []
  for seed in range(8):
    boxes = mg._inpaint_boxes(shape, np.random.default_rng(seed))
    _check_boxes(shape, boxes, [s // 6 for s in shape], [s // 3 for s in shape])
    counts.append(len(boxes))
    out = mg.inpaint(x, np.random.default_rng(seed))
    painted = _union(shape, boxes)
    assert np.all(out[~painted] == 1)  # unchanged outside the boxes
    assert np.all((out[painted] >= 0) & (out[painted] < 1))
  assert max(counts) == 5 and min(counts) >= 1


@pytest.mark.parametrize("shape", SHAPES)
def test_outpaint(shape):
  x = np.random.default_rng(0).random(shape, np.float32)
  low = [s - 4 * s // 7 for s in shape]
  high = [s - 3 * s // 7 for s in shape]
  counts, noise = [], []
  for seed in range(8):
    boxes = mg._outpaint_boxes(shape, np.random.default_rng(seed))
    _check_boxes(shape, boxes, low, high)
    counts.append(len(boxes))
    kept = _union(shape, boxes)
    out = mg.outpaint(x, np.random.default_rng(seed))
    np.testing.assert_array_equal(out[kept], x[kept])
    # Everywhere else noise: ones in, never a one out.
    ones = mg.outpaint(np.ones(shape, np.float32), np.random.default_rng(seed))
    np.testing.assert_array_equal(ones == 1, kept)
    noise.append(ones[~kept])
  assert 1 <= min(counts) and max(counts) == 5
  assert abs(np.concatenate(noise).mean() - 0.5) < 0.05


@pytest.mark.parametrize("shape", SHAPES)
def test_distort_shape_seed_and_input(shape):
  x = np.random.default_rng(0).random(shape)  # float64 in: float32 out
  before = x.copy()
  out = mg.distort(x, np.random.default_rng(1))
  assert out.shape == shape and out.dtype == np.float32
  np.testing.assert_array_equal(x, before)
  np.testing.assert_array_equal(out, mg.distort(x, np.random.default_rng(1)))
  assert not np.array_equal(out, mg.distort(x, np.random.default_rng(2)))
  off = mg.distort(x, np.random.default_rng(1), nonlinear_rate=0, local_rate=0, paint_rate=0,
                   outpaint_rate=0)
  assert off.dtype == np.float32
  np.testing.assert_array_equal(off, x.astype(np.float32))


@pytest.mark.parametrize("outpaint_rate", [0.0, 1.0])
def test_distort_order(outpaint_rate):
  """generate_pair's order written out: gate, shuffle, gate, intensity map, gate, then
  in-painting with probability 1 - outpaint_rate, else out-painting."""
  x = np.random.default_rng(0).random((20, 20), np.float32)
  out = mg.distort(x, np.random.default_rng(3), nonlinear_rate=1, local_rate=1, paint_rate=1,
                   outpaint_rate=outpaint_rate)
  rng = np.random.default_rng(3)
  rng.random()
  want = mg.local_pixel_shuffle(x, rng)
  rng.random()
  want = mg.nonlinear_intensity(want, rng)
  rng.random()
  rng.random()
  want = mg.outpaint(want, rng) if outpaint_rate else mg.inpaint(want, rng)
  np.testing.assert_array_equal(out, want)


def test_tiny_images():
  for shape in [(1, 1), (4, 5), (2, 3, 4)]:
    out = mg.distort(np.full(shape, 0.5), np.random.default_rng(0), nonlinear_rate=1,
                     local_rate=1, paint_rate=1)
    assert out.shape == shape and np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("fn", [mg.nonlinear_intensity, mg.local_pixel_shuffle, mg.inpaint,
                                mg.outpaint, mg.distort])
@pytest.mark.parametrize("shape", [(8,), (2, 4, 4, 4), (0, 4)])
def test_bad_input(fn, shape):
  with pytest.raises(DataError) as info:
    fn(np.zeros(shape, np.float32), np.random.default_rng(0))
  assert "\n" not in str(info.value) and str(shape) in str(info.value)


def test_curve_sort_shortcut_equals_numpy_sort_for_monotone_and_other_curves():
  rng = np.random.default_rng(0)
  controls = [rng.random(4) for _ in range(50)] + [np.array([0.01, 0.5, 0.99, 0.5])]
  for r in controls:
    xs, ys = mg.bezier_curve([[0, 0], [r[0], r[1]], [r[2], r[3]], [1, 1]], 1000)
    for values in (xs, ys):
      np.testing.assert_array_equal(mg._sort(values), np.sort(values))
  bumpy = np.array([1.0, 0.2, 0.6, 0.0])  # not monotone: must really be sorted
  np.testing.assert_array_equal(mg._sort(bumpy), np.sort(bumpy))
