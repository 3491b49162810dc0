"""Domain-adaptation metrics against plain references: AUC by counting pairs, the
bootstrap replicate by replicate, salvage and domain spread on hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medda_jax import metrics


def plain_auc(labels, scores) -> float:
  """P(positive scores above negative) + half the ties, by counting every pair."""
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_counts_pairs_with_ties_as_halves(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 60)
  scores = rng.integers(0, 6, 60).astype(float)  # heavy ties
  assert metrics.rank_auc(labels, scores) == pytest.approx(plain_auc(labels, scores))
  assert metrics.rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
  assert np.isnan(metrics.rank_auc(np.ones(5), np.arange(5.0)))


def test_rank_auc_rows_are_scored_independently():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, (4, 30))
  scores = rng.normal(size=(4, 30))
  np.testing.assert_allclose(metrics.rank_auc(labels, scores),
                             [plain_auc(labels[i], scores[i]) for i in range(4)])


def test_multiclass_auc_is_the_macro_one_vs_rest_mean():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 4, 80)
  logits = rng.normal(size=(80, 4)) + 1.5 * np.eye(4)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  plain = np.mean([plain_auc(labels == k, probs[:, k]) for k in range(4)])
  assert metrics.multiclass_auc(labels, probs) == pytest.approx(plain)
  assert metrics.multiclass_auc(labels, probs) == pytest.approx(
      roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  # Two classes: the binary AUC of column 1 (the chest X-ray case).
  two = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
  y2 = labels % 2
  assert metrics.multiclass_auc(y2, two) == pytest.approx(plain_auc(y2, two[:, 1]))


def test_bootstrap_replicates_are_the_plain_auc_of_each_draw():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 3, 50)
  scores = rng.normal(size=(50, 3)) + np.eye(3)[labels]
  idx = metrics.bootstrap_indices(labels, replicates=40, sample_size=30, rng=7)
  assert idx.shape == (40, 30)
  result = metrics.bootstrap_auc(labels, scores, indices=idx)
  plain = np.array([np.mean([plain_auc(labels[i] == k, scores[i, k]) for k in range(3)])
                    for i in idx])
  np.testing.assert_allclose(result.replicates, plain)
  assert result.point == pytest.approx(
      np.mean([plain_auc(labels == k, scores[:, k]) for k in range(3)]))
  assert result.mean == pytest.approx(plain.mean())
  assert result.sd == pytest.approx(plain.std(ddof=1))
  np.testing.assert_allclose(result.percentile_ci, np.percentile(plain, [2.5, 97.5]))
  half = 1.959964 * plain.std(ddof=1) / np.sqrt(40)
  np.testing.assert_allclose(result.mean_ci, (plain.mean() - half, plain.mean() + half),
                             rtol=1e-6)
  # The same seed draws the same replicates.
  again = metrics.bootstrap_auc(labels, scores, replicates=40, sample_size=30, rng=7)
  np.testing.assert_allclose(again.replicates, plain)


def test_bootstrap_redraws_replicates_with_a_single_class():
  labels = np.array([1] + [0] * 19)  # one positive in 20
  scores = np.linspace(0, 1, 20)
  idx = metrics.bootstrap_indices(labels, replicates=300, sample_size=10, rng=0)
  assert all(labels[row].min() == 0 and labels[row].max() == 1 for row in idx)
  result = metrics.bootstrap_auc(labels, scores, replicates=300, sample_size=10, rng=0)
  assert np.isfinite(result.replicates).all()
  with pytest.raises(ValueError, match="single class"):
    metrics.bootstrap_auc(np.zeros(10), scores[:10])


def test_salvage_relative_change_and_loss_on_the_papers_averages():
  assert metrics.salvage(99.87, 91.85, 94.66) == pytest.approx(2.81 / 8.02)  # 35.0 %
  assert metrics.salvage(78.07, 71.43, 71.43 + 1.64) == pytest.approx(1.64 / 6.64)  # 24.7 %
  assert metrics.relative_change(91.85, 94.66) == pytest.approx(2.81 / 91.85)  # 3.06 %
  assert metrics.relative_loss(78.07, 71.43) == pytest.approx(6.64 / 78.07)  # 8.51 %
  assert np.isnan(metrics.salvage(90.0, 90.0, 91.0))
  np.testing.assert_allclose(metrics.salvage([100.0, 80.0], [90.0, 70.0], [95.0, 60.0]),
                             [0.5, -1.0])


def test_domain_spread_is_the_variance_of_percent_aucs():
  # 100 x AUC = 90, 80, 70: mean 80, squared deviations 100, 0, 100.
  assert metrics.domain_spread([0.9, 0.8, 0.7]) == pytest.approx(200 / 3)
  assert metrics.domain_spread([0.9, 0.8, 0.7], ddof=1) == pytest.approx(100.0)
  assert metrics.domain_spread({"a": 0.5, "b": 0.5}) == 0.0
  with pytest.raises(ValueError, match="fractions"):
    metrics.domain_spread([90.0, 80.0])


def test_pair_summary_averages_as_the_paper():
  internal = {"a": 1.0, "b": 0.9}
  external = {("a", "b"): 0.7, ("b", "a"): 0.8}
  adapted = {("a", "b"): 0.8, ("b", "a"): 0.8}
  s = metrics.pair_summary(internal, external, adapted)
  assert s.mean_external == pytest.approx(0.75) and s.mean_adapted == pytest.approx(0.8)
  assert s.mean_relative_change == pytest.approx((0.1 / 0.7 + 0.0) / 2)
  # average salvage from the averages: (0.8 - 0.75) / (0.95 - 0.75); median of 0.5 and 0.
  assert s.average_salvage == pytest.approx(0.25)
  assert s.median_salvage == pytest.approx(0.25)
