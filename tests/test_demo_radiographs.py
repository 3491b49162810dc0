"""The embedded radiograph-like demo sets: projections of the real volumes, the natural
corpus, the findings task and its labels, all a function of the seed."""

from __future__ import annotations

import numpy as np
import pytest

from medda_jax.data import demo_brain, demo_radiographs as dr


def test_projections_are_mean_projections_of_the_real_volumes():
  p = dr.projections(32)
  assert p.shape == (2 * 2 * len(dr.ANGLES), 32, 32)
  np.testing.assert_allclose(p.max(axis=(1, 2)), dr.PEAK, rtol=1e-6)
  assert p.min() >= 0.0
  # the straight frontal view of MNI152 (angle 0) is the plain mean over y, head up
  volume = np.asarray(demo_brain._anatomy("mni152")["image"], np.float32)
  plain = dr._square(np.flipud(volume.mean(axis=1).T), 32)
  np.testing.assert_allclose(p[len(dr.ANGLES) // 2], dr.PEAK * plain / plain.max(), atol=1e-5)
  assert not np.allclose(p[0], p[len(dr.ANGLES)])  # frontal and lateral differ


@pytest.mark.parametrize("kind", dr.CORPORA)
def test_corpora_are_a_function_of_the_seed(kind):
  a, b = dr.corpus(kind, 4, 24, seed=0), dr.corpus(kind, 4, 24, seed=0)
  assert a.shape == (4, 24, 24, 1) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, dr.corpus(kind, 4, 24, seed=1))
  assert 0.0 <= a.min() and a.max() <= 1.0
  with pytest.raises(ValueError, match="unknown demo corpus"):
    dr.corpus("imagenet", 1, 8, 0)


def test_findings_are_added_only_where_labelled():
  rng = np.random.default_rng(0)
  base = dr.projections(32)[0]
  none = dr._add_findings(base, np.array([False, False, False]), rng)
  np.testing.assert_allclose(none, base)
  for k in range(3):
    present = np.zeros(3, bool)
    present[k] = True
    added = dr._add_findings(base, present, np.random.default_rng(k)) - base
    assert added.min() >= -1e-6 and added.sum() > 1.0, dr.FINDINGS[k]
  haze = dr._add_findings(base, np.array([False, True, False]), np.random.default_rng(0)) - base
  assert haze[:12].sum() < 1e-3 * haze.sum()  # the haze stays low in the image


def test_findings_task_labels_are_independent_draws():
  images, labels = dr.findings_task(200, 24, seed=0)
  assert images.shape == (200, 24, 24, 1) and labels.shape == (200, len(dr.FINDINGS))
  assert set(np.unique(labels)) == {0.0, 1.0}
  assert np.all(np.abs(labels.mean(axis=0) - 0.4) < 0.12)
  again, same = dr.findings_task(200, 24, seed=0)
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, same)
