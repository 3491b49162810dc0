"""Multi-class segmentation metrics (spec synthmix_sifa §d): Dice, medpy-compatible ASSD,
per-class scores, their summary over volumes and the t-test over volumes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from medda_jax import metrics

NAN = float("nan")


def _box(shape, lo, hi):
  m = np.zeros(shape, bool)
  m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return m


def _voxel(shape, index):
  m = np.zeros(shape, bool)
  m[index] = True
  return m


def brute_force_assd(pred, gt):
  """The plain way: a voxel of a 3-D mask is on its surface when one of its 6 face
  neighbours lies outside the array or outside the mask; every directed distance is the
  minimum of all pairwise Euclidean distances between surface voxel coordinates."""
  def surface_points(mask):
    points = []
    for i, j, k in itertools.product(*(range(n) for n in mask.shape)):
      if not mask[i, j, k]:
        continue
      for di, dj, dk in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        a, b, c = i + di, j + dj, k + dk
        inside = 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and 0 <= c < mask.shape[2]
        if not inside or not mask[a, b, c]:
          points.append((i, j, k))
          break
    return points

  def directed_mean(p, q):
    return sum(min(math.dist(x, y) for y in q) for x in p) / len(p)

  sp, sg = surface_points(pred), surface_points(gt)
  return 0.5 * (directed_mean(sp, sg) + directed_mean(sg, sp))


def test_cubes_offset_by_two_voxels():
  # A: 3x3x3 cube at rows 1..3 (axis 0), B: the same cube at rows 3..5; columns 1..3 in
  # both other axes. Eroding a 3x3x3 cube with the 6-neighbour cross leaves its centre
  # only, so each surface has 26 voxels. Distances of A's surface to B's surface:
  #   row 3 (9 voxels): row 3 is B's bottom face, all of it B surface -> 0;
  #   row 2 (8 voxels, the centre is not surface): B's voxel one row down -> 1;
  #   row 1 (9 voxels): B's row 3 -> 2.
  # asd(A, B) = (9*0 + 8*1 + 9*2) / 26 = 26 / 26 = 1; by symmetry asd(B, A) = 1, ASSD = 1.
  shape = (8, 5, 5)
  a = _box(shape, (1, 1, 1), (4, 4, 4))
  b = _box(shape, (3, 1, 1), (6, 4, 4))
  assert metrics.assd(a, b) == pytest.approx(1.0)
  assert metrics.assd(b, a) == pytest.approx(1.0)
  assert brute_force_assd(a, b) == pytest.approx(1.0)
  # Overlap: row 3, 9 voxels; Dice = 2 * 9 / (27 + 27) = 1/3.
  assert metrics.dice_binary(a, b) == pytest.approx(1 / 3)


def test_square_against_itself_2d():
  square = _box((7, 9), (2, 3), (6, 8))
  assert metrics.assd(square, square) == 0.0
  assert metrics.dice_binary(square, square) == 1.0


def test_single_voxels_k_apart():
  shape = (6, 12, 5)
  for k in (1, 2, 7):
    assert metrics.assd(_voxel(shape, (2, 3, 1)), _voxel(shape, (2, 3 + k, 1))) == k
  # Not along an axis: (0, 0, 0) and (0, 3, 4) are 5 apart.
  assert metrics.assd(_voxel(shape, (0, 0, 0)), _voxel(shape, (0, 3, 4))) == pytest.approx(5)


def test_average_of_directed_means_not_pooled_mean():
  # P: one voxel at the centre of the 3x3x3 cube G. G's surface lacks its centre, so P's
  # single surface voxel is 1 from G's surface (a face neighbour): asd(P, G) = 1. G's 26
  # surface voxels to P: 6 face centres at 1, 12 edge middles at sqrt(2), 8 corners at
  # sqrt(3). ASSD = (1 + (6 + 12 sqrt2 + 8 sqrt3) / 26) / 2; the pooled mean over all 27
  # distances would be (1 + 6 + 12 sqrt2 + 8 sqrt3) / 27.
  g = _box((5, 5, 5), (1, 1, 1), (4, 4, 4))
  p = _voxel((5, 5, 5), (2, 2, 2))
  directed_g = (6 + 12 * math.sqrt(2) + 8 * math.sqrt(3)) / 26
  expected = 0.5 * (1 + directed_g)
  assert metrics.assd(p, g) == pytest.approx(expected)
  assert metrics.assd(p, g) != pytest.approx((1 + 26 * directed_g) / 27)


def test_mask_touching_the_array_border():
  # Voxels outside the array count as background (border_value=0): a mask filling a whole
  # 1x3x3 array is all surface; against itself, 0; against a voxel of it, the mean of the
  # 9 in-plane distances to the centre over the mask and 0 for the voxel.
  full = np.ones((1, 3, 3), bool)
  centre = _voxel((1, 3, 3), (0, 1, 1))
  assert metrics.assd(full, full) == 0.0
  to_centre = (4 * 1 + 4 * math.sqrt(2)) / 9
  assert metrics.assd(full, centre) == pytest.approx(0.5 * to_centre)


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  shape = (5, 6, 4)
  pred = rng.random(shape) < 0.45
  gt = rng.random(shape) < 0.3
  gt[2, 3, 1] = pred[0, 0, 0] = True  # never empty
  assert metrics.assd(pred, gt) == pytest.approx(brute_force_assd(pred, gt), rel=1e-12)
  # Background padding changes nothing (the masks no longer touch the array's border).
  padded = metrics.assd(np.pad(pred, (2, 3)), np.pad(gt, (2, 3)))
  assert padded == pytest.approx(metrics.assd(pred, gt), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_random_masks_match_medpy(seed):
  binary = pytest.importorskip("medpy.metric.binary")
  rng = np.random.default_rng(100 + seed)
  for shape in ((9, 8, 7), (11, 13)):
    pred = rng.random(shape) < 0.4
    gt = rng.random(shape) < 0.25
    pred.flat[0] = gt.flat[-1] = True
    # The medpy that SIFA used (<= 0.4) defined assd as the average of the two directed
    # `asd`s; medpy >= 0.5 pools the distances instead. `asd` is the same in both.
    directed = 0.5 * (binary.asd(pred, gt) + binary.asd(gt, pred))
    assert metrics.assd(pred, gt) == pytest.approx(directed, rel=1e-12)
    assert metrics.dice_binary(pred, gt) == pytest.approx(binary.dc(pred, gt), rel=1e-12)


def test_empty_masks():
  empty = np.zeros((4, 4, 4), bool)
  some = _box((4, 4, 4), (1, 1, 1), (3, 3, 3))
  # medpy raises for an empty mask; we record NaN.
  assert math.isnan(metrics.assd(empty, some))
  assert math.isnan(metrics.assd(some, empty))
  assert math.isnan(metrics.assd(empty, empty))
  assert metrics.dice_binary(empty, some) == 0.0
  assert metrics.dice_binary(some, empty) == 0.0
  assert math.isnan(metrics.dice_binary(empty, empty))


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match="same shape"):
    metrics.assd(np.ones((3, 3), bool), np.ones((3, 4), bool))
  with pytest.raises(ValueError, match="same shape"):
    metrics.dice_binary(np.ones((3, 3), bool), np.ones((3, 4), bool))


def test_per_class_scores():
  shape = (8, 5, 5)
  gt = np.zeros(shape, np.int32)
  pred = np.zeros(shape, np.int32)
  gt[1:4, 1:4, 1:4] = 1
  pred[3:6, 1:4, 1:4] = 1   # class 1: the two offset cubes
  gt[6, 0, 0] = pred[6, 0, 0] = 2  # class 2: one identical voxel
  gt[7, 4, 4] = 4  # class 4: missed entirely
  scores = metrics.per_class_scores(pred, gt, (1, 2, 3, 4))
  assert list(scores) == [1, 2, 3, 4]
  assert scores[1] == {"dice": pytest.approx(1 / 3), "assd": pytest.approx(1.0)}
  assert scores[2] == {"dice": 1.0, "assd": 0.0}
  assert math.isnan(scores[3]["dice"]) and math.isnan(scores[3]["assd"])  # absent in both
  assert scores[4]["dice"] == 0.0 and math.isnan(scores[4]["assd"])  # empty prediction


def test_ttest_by_hand():
  # a = [1, 3], b = [4, 8]: means 2 and 6, sample variances 2 and 8, pooled variance
  # ((2-1)*2 + (2-1)*8) / (2 + 2 - 2) = 5, standard error sqrt(5 * (1/2 + 1/2)) = sqrt(5),
  # t = (2 - 6) / sqrt(5). With 2 degrees of freedom the t CDF is closed-form,
  # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - |t| / sqrt(2 + t^2).
  t = -4 / math.sqrt(5)
  p = 1 - abs(t) / math.sqrt(2 + t * t)
  result = metrics.ttest_volumes([1.0, 3.0], [4.0, 8.0])
  assert result["t"] == pytest.approx(t, rel=1e-12)
  assert result["p"] == pytest.approx(p, rel=1e-9)
  # NaNs are dropped first.
  assert metrics.ttest_volumes([1.0, NAN, 3.0], [NAN, 4.0, 8.0]) == result


def test_ttest_too_few_values():
  for a, b in (([1.0], [2.0, 3.0]), ([1.0, NAN], [2.0, 3.0]), ([], [2.0, 3.0]),
               ([1.0, 2.0], [NAN, NAN, 3.0])):
    result = metrics.ttest_volumes(a, b)
    assert set(result) == {"t", "p"}
    assert math.isnan(result["t"]) and math.isnan(result["p"])


def test_summarise_volumes():
  per_volume = [
      {1: {"dice": 0.8, "assd": 2.0}, 2: {"dice": 0.5, "assd": 4.0}},
      {1: {"dice": 0.6, "assd": 1.0}, 2: {"dice": 0.0, "assd": NAN}},  # empty prediction
      {1: {"dice": 0.7, "assd": 3.0}, 2: {"dice": 0.7, "assd": 6.0}},
  ]
  names = {2: "LAC", 1: "MYO"}
  summary = metrics.summarise_volumes(per_volume, names)
  assert list(summary) == ["LAC", "MYO", "mean"]
  myo, lac, mean = summary["MYO"], summary["LAC"], summary["mean"]
  assert myo["dice_mean"] == pytest.approx(0.7)
  assert myo["dice_std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0) / 3))  # ddof 0
  assert myo["assd_mean"] == pytest.approx(2.0)
  assert myo["assd_std"] == pytest.approx(math.sqrt(2 / 3))
  assert (myo["assd_empty"], myo["dice_empty"], myo["n"]) == (0, 0, 3)
  assert lac["dice_mean"] == pytest.approx(0.4)  # the empty prediction's 0 counts
  assert lac["assd_mean"] == pytest.approx(5.0)  # its NaN ASSD does not
  assert lac["assd_std"] == pytest.approx(1.0)
  assert lac["assd_empty"] == 1
  assert mean["dice_mean"] == pytest.approx((0.7 + 0.4) / 2)
  assert mean["assd_mean"] == pytest.approx((2.0 + 5.0) / 2)
  assert (mean["assd_empty"], mean["dice_empty"], mean["n"]) == (1, 0, 3)


def test_summarise_volumes_all_nan_class_and_errors():
  per_volume = [{1: {"dice": 0.5, "assd": 1.0}, 4: {"dice": NAN, "assd": NAN}}] * 2
  summary = metrics.summarise_volumes(per_volume, {1: "MYO", 4: "AA"})
  assert summary["AA"]["dice_empty"] == 2 and summary["AA"]["assd_empty"] == 2
  assert math.isnan(summary["AA"]["assd_mean"]) and math.isnan(summary["AA"]["assd_std"])
  assert math.isnan(summary["mean"]["assd_mean"])  # a NaN class mean is not hidden
  with pytest.raises(ValueError, match="class 3"):
    metrics.summarise_volumes(per_volume, {3: "LVC"})
  with pytest.raises(ValueError, match="at least one volume"):
    metrics.summarise_volumes([], {1: "MYO"})
