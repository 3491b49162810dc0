"""Whole-volume metrics (spec gradient_transfer §d, D7): surface Dice, 3-D Dice, AUC, D7."""

from __future__ import annotations

import math

import numpy as np
from absl.testing import absltest, parameterized
from scipy import ndimage

from medda_jax import metrics


def _box(shape, lo, hi):
  m = np.zeros(shape, bool)
  m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return m


def brute_force_surface_dice(pred, gt, spacing, tol):
  """Plain reference: surface voxels (mask minus its erosion) as points in mm, all pairwise
  distances, and the fraction of points of both surfaces within `tol` of the other one.

  Every surface voxel weighs the same, so this equals the surfel version only loosely, and
  best where surfel areas are uniform (large boxes, isotropic spacing).
  """
  def points(m):
    surf = m & ~ndimage.binary_erosion(m, border_value=0)
    return np.argwhere(surf) * np.asarray(spacing, np.float64)

  p, g = points(pred), points(gt)
  d = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
  hits = (d.min(axis=1) <= tol).sum() + (d.min(axis=0) <= tol).sum()
  return hits / (len(p) + len(g))


def mann_whitney_auc(labels, scores):
  """P(score of a positive > score of a negative), ties counting one half, by pair count."""
  pos = [s for l, s in zip(labels, scores) if l == 1]
  neg = [s for l, s in zip(labels, scores) if l == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


class SurfaceDiceTest(parameterized.TestCase):

  def test_hand_computed_2d_shift(self):
    # A: 4x4-pixel square, rows 2..5, cols 2..5; B: A moved down one row. Spacing
    # (s0, s1) = (2, 3) mm: the shift is 2 mm, and s1 >= s0 keeps every non-zero distance
    # equal to s0. Contour points sit on pixel corners (corner row r lies between pixel
    # rows r-1 and r); each point carries a length from the neighbour code:
    #   straight horizontal piece -> s1, straight vertical piece -> s0,
    #   convex corner -> c = 0.5 * sqrt(s0**2 + s1**2).
    # A's contour: top and bottom edges 3 points each (3*s1 each), left and right edges
    # 3 points each (3*s0 each), 4 corners (c each); total 6*s1 + 6*s0 + 4c.
    # Distances of A's points to B's contour:
    #   left/right edges (corner rows 3..5) and bottom corners (row 6): on B's sides, 0;
    #   top edge and top corners (row 2): B's top is one row down, s0;
    #   bottom edge (row 6, inner columns): inside B; nearest B contour is B's bottom
    #     (s0) or a side (>= s1 >= s0), so s0.
    # B is the mirror image. With tolerance < s0 only the zero-distance points count:
    #   sDice = (6*s0 + 2c) / (6*s1 + 6*s0 + 4c); with tolerance >= s0 all points count.
    s0, s1 = 2.0, 3.0
    c = 0.5 * math.sqrt(s0**2 + s1**2)
    a = _box((10, 10), (2, 2), (6, 6))
    b = _box((10, 10), (3, 2), (7, 6))
    expected = (6 * s0 + 2 * c) / (6 * s1 + 6 * s0 + 4 * c)
    self.assertAlmostEqual(metrics.surface_dice(b, a, (s0, s1), tolerance_mm=1.0), expected,
                           places=10)
    self.assertAlmostEqual(metrics.surface_dice(b, a, (s0, s1), tolerance_mm=1.99), expected,
                           places=10)
    # Symmetric in its arguments.
    self.assertAlmostEqual(metrics.surface_dice(a, b, (s0, s1), tolerance_mm=1.0), expected,
                           places=10)
    self.assertEqual(metrics.surface_dice(b, a, (s0, s1), tolerance_mm=2.0), 1.0)
    self.assertEqual(metrics.surface_dice(b, a, (s0, s1), tolerance_mm=2.5), 1.0)

  def test_hand_computed_isotropic_is_one_half(self):
    # The formula above with s0 = s1 = 1: (6 + sqrt(2)) / (12 + 2 sqrt(2)) = 1/2.
    a = _box((10, 10), (2, 2), (6, 6))
    b = _box((10, 10), (3, 2), (7, 6))
    self.assertAlmostEqual(metrics.surface_dice(b, a, (1.0, 1.0), tolerance_mm=0.5), 0.5,
                           places=10)

  @parameterized.parameters(2, 3)
  def test_identical_masks(self, ndim):
    rng = np.random.default_rng(ndim)
    m = ndimage.binary_opening(rng.uniform(size=(12,) * ndim) < 0.6)
    self.assertTrue(m.any())
    self.assertEqual(metrics.surface_dice(m, m, (0.7,) * ndim, tolerance_mm=0.0), 1.0)

  @parameterized.parameters(0, 1, 2)
  def test_spacing_honoured_3d(self, axis):
    # The same one-voxel shift along `axis` is a shift of spacing[axis] mm: it passes at any
    # tolerance >= that spacing and fails below it (whatever the other spacings are, as long
    # as they are not smaller than the shifted one).
    a = _box((12, 12, 12), (3, 3, 3), (8, 8, 8))
    b = np.roll(a, 1, axis=axis)
    for s in (0.5, 1.0, 2.0):
      spacing = [3.0, 3.0, 3.0]
      spacing[axis] = s
      self.assertEqual(metrics.surface_dice(b, a, spacing, tolerance_mm=s), 1.0)
      self.assertEqual(metrics.surface_dice(b, a, spacing, tolerance_mm=1.5 * s), 1.0)
      self.assertLess(metrics.surface_dice(b, a, spacing, tolerance_mm=0.9 * s), 0.9)

  def test_default_tolerance_is_one_mm(self):
    a = _box((12, 12, 12), (3, 3, 3), (8, 8, 8))
    b = np.roll(a, 1, axis=0)
    self.assertEqual(metrics.surface_dice(b, a, (1.0, 1.0, 1.0)), 1.0)
    self.assertLess(metrics.surface_dice(b, a, (1.2, 1.2, 1.2)), 1.0)

  @parameterized.parameters(
      ((1, 0, 0), 0.5), ((1, 0, 0), 1.0), ((0, 2, 0), 1.0), ((0, 2, 0), 2.0),
      ((1, 1, 0), 1.0), ((1, 1, 0), 1.5), ((1, 1, 1), 1.0), ((1, 2, 0), 2.0))
  def test_against_brute_force_on_boxes(self, shift, tol):
    # Large axis-aligned boxes with isotropic spacing: flat faces dominate, every surfel of
    # a face has the same area, and the voxel count of a face matches its area up to the
    # edges, so the two definitions agree to about a percent.
    a = _box((26, 26, 26), (3, 3, 3), (21, 21, 21))
    b = np.roll(a, shift, axis=(0, 1, 2))
    fast = metrics.surface_dice(b, a, (1.0, 1.0, 1.0), tolerance_mm=tol)
    slow = brute_force_surface_dice(b, a, (1.0, 1.0, 1.0), tol)
    self.assertAlmostEqual(fast, slow, delta=0.015)

  def test_monotone_in_tolerance_on_balls(self):
    # On curved surfaces the surfel version (points on voxel corners, area-weighted) and the
    # voxel-centre brute force differ by up to ~0.3 below one voxel of tolerance, so they
    # are compared on boxes only; here just the shape of the curve is checked.
    z, y, x = np.ogrid[:24, :24, :24]
    a = (z - 11.5) ** 2 + (y - 11.5) ** 2 + (x - 11.5) ** 2 < 8.0**2
    b = (z - 12.5) ** 2 + (y - 11.5) ** 2 + (x - 11.0) ** 2 < 8.5**2
    curve = [metrics.surface_dice(b, a, (1.0, 1.0, 1.0), tolerance_mm=t)
             for t in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)]
    self.assertTrue(np.all(np.diff(curve) >= 0), curve)
    self.assertLess(curve[0], curve[2])
    self.assertEqual(curve[-1], 1.0)

  def test_empty_masks(self):
    empty = np.zeros((6, 6, 6), bool)
    full = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    self.assertEqual(metrics.surface_dice(empty, empty, (1, 1, 1)), 1.0)
    self.assertEqual(metrics.surface_dice(full, empty, (1, 1, 1)), 0.0)
    self.assertEqual(metrics.surface_dice(empty, full, (1, 1, 1)), 0.0)

  def test_accepts_integer_masks(self):
    a = _box((8, 8), (2, 2), (6, 6))
    self.assertEqual(metrics.surface_dice(a.astype(np.uint8), a.astype(np.float32), (1, 1)),
                     1.0)

  def test_bad_arguments(self):
    a = np.zeros((4, 4, 4), bool)
    with self.assertRaises(ValueError):
      metrics.surface_dice(a, a[:3], (1, 1, 1))
    with self.assertRaises(ValueError):
      metrics.surface_dice(a, a, (1, 1))


class Dice3DTest(absltest.TestCase):

  def test_by_hand(self):
    # P: 2x2x2 = 8 voxels; G: 2x2x3 = 12 voxels overlapping P in 2x2x1 = 4 voxels.
    p = _box((5, 5, 5), (0, 0, 0), (2, 2, 2))
    g = _box((5, 5, 5), (0, 0, 1), (2, 2, 4))
    self.assertAlmostEqual(metrics.dice_3d(p, g), 2 * 4 / (8 + 12))

  def test_edge_cases(self):
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    self.assertEqual(metrics.dice_3d(empty, empty), 1.0)
    self.assertEqual(metrics.dice_3d(one, empty), 0.0)
    self.assertEqual(metrics.dice_3d(one, one.astype(np.uint8)), 1.0)


class AucTest(absltest.TestCase):

  def test_matches_pairwise_count(self):
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=40) < 0.4).astype(int)
    scores = np.round(rng.normal(size=40) + labels, 1)  # rounding creates ties
    self.assertAlmostEqual(metrics.roc_auc(labels, scores), mann_whitney_auc(labels, scores),
                           places=12)

  def test_single_class_is_nan(self):
    self.assertTrue(math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])))
    self.assertTrue(math.isnan(metrics.roc_auc([0, np.nan, 0], [0.1, 0.2, 0.3])))

  def test_nan_labels_dropped(self):
    labels = np.array([0, 1, np.nan, 1, 0])
    scores = np.array([0.1, 0.9, 100.0, 0.2, 0.3])
    keep = ~np.isnan(labels)
    self.assertAlmostEqual(metrics.roc_auc(labels, scores),
                           mann_whitney_auc(labels[keep], scores[keep]))

  def test_mean_auc_skips_unscorable_labels(self):
    rng = np.random.default_rng(1)
    n = 30
    scores = rng.normal(size=(n, 4))
    labels = np.zeros((n, 4))
    labels[:, 0] = rng.uniform(size=n) < 0.5
    labels[:, 1] = 1.0                       # one class only: skipped
    labels[:, 2] = rng.uniform(size=n) < 0.5
    labels[::3, 2] = np.nan                  # ignored entries masked out for this label
    labels[:, 3] = np.nan                    # nothing known: skipped
    labels[0, 3] = 1.0
    mean, per = metrics.mean_auc(labels, scores)
    keep2 = ~np.isnan(labels[:, 2])
    a0 = mann_whitney_auc(labels[:, 0], scores[:, 0])
    a2 = mann_whitney_auc(labels[keep2, 2], scores[keep2, 2])
    np.testing.assert_allclose(per[[0, 2]], [a0, a2], rtol=1e-12)
    self.assertTrue(np.isnan(per[1]) and np.isnan(per[3]))
    self.assertAlmostEqual(mean, (a0 + a2) / 2, places=12)

  def test_mean_auc_none_scorable(self):
    mean, per = metrics.mean_auc(np.ones((5, 2)), np.zeros((5, 2)))
    self.assertTrue(math.isnan(mean))
    self.assertEqual(per.shape, (2,))


class D7PostprocessTest(absltest.TestCase):

  def _volume(self):
    # [S, H, W] = [6, 10, 10]:
    #   organ: slices 1..3, a 4x4 square each (16 voxels per slice, 48 in all);
    #   second 3-D component: slices 1..2, a 2x2 square far away (8 voxels);
    #   small-slice blob: slice 5, two separate pixels (largest 2-D component = 1 voxel).
    v = np.zeros((6, 10, 10), bool)
    v[1:4, 1:5, 1:5] = True
    v[1:3, 7:9, 7:9] = True
    v[5, 0, 0] = v[5, 9, 9] = True
    return v

  def test_keeps_largest_3d_component(self):
    out = metrics.largest_component_postprocess(self._volume())
    expected = np.zeros((6, 10, 10), bool)
    expected[1:4, 1:5, 1:5] = True
    np.testing.assert_array_equal(out, expected)

  def test_slice_sizes_and_threshold(self):
    v = self._volume()
    # Largest 2-D component per slice: 0, 16 (organ; the 4-voxel blob is smaller), 16, 16,
    # 0, 1 (two separate single pixels).
    np.testing.assert_array_equal(metrics.largest_slice_component_sizes(v),
                                  [0, 16, 16, 16, 0, 1])
    expected = np.zeros_like(v)
    expected[1:4, 1:5, 1:5] = True
    out = metrics.largest_component_postprocess(v, min_slice_component=2)
    np.testing.assert_array_equal(out, expected)
    # 17 voxels is more than any slice holds: everything goes.
    self.assertFalse(metrics.largest_component_postprocess(v, min_slice_component=17).any())

  def test_slice_rule_changes_the_winner(self):
    # A: a 2x2 column through slices 0..4 (20 voxels). B: 3x3 squares on slices 1..2
    # (18 voxels), apart from A. Without the slice rule A is the largest 3-D component.
    # With threshold 5, slices 0, 3, 4 (largest component 4 < 5) are zeroed, while slices
    # 1..2 stay whole (largest component 9), A's 4-voxel pieces on them included; then
    # A keeps 8 voxels and B (18) wins.
    v = np.zeros((5, 8, 8), bool)
    v[:, 0:2, 0:2] = True
    v[1:3, 4:7, 4:7] = True
    a_only = np.zeros_like(v)
    a_only[:, 0:2, 0:2] = True
    np.testing.assert_array_equal(metrics.largest_component_postprocess(v), a_only)
    b_only = np.zeros_like(v)
    b_only[1:3, 4:7, 4:7] = True
    np.testing.assert_array_equal(
        metrics.largest_component_postprocess(v, min_slice_component=5), b_only)
    # Threshold 0 disables the slice rule.
    np.testing.assert_array_equal(metrics.largest_component_postprocess(v, 0), a_only)

  def test_empty(self):
    out = metrics.largest_component_postprocess(np.zeros((3, 4, 4), np.uint8), 5)
    self.assertEqual(out.dtype, bool)
    self.assertFalse(out.any())

  def test_threshold_formula(self):
    no_mask = np.arange(11)            # q55 = 5.5 (linear interpolation)
    with_mask = np.arange(0, 110, 10)  # q10 = 10
    self.assertAlmostEqual(metrics.d7_threshold(no_mask, with_mask), 0.9 * 5.5 + 0.1 * 10)
    with self.assertRaises(ValueError):
      metrics.d7_threshold([], [1, 2])


if __name__ == "__main__":
  absltest.main()
