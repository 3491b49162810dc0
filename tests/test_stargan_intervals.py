"""The StarGAN table's intervals: the percentile bootstrap CI of the AUC (against a plain
loop), the paper's mean ± 1.96·sd/√B beside it under its own name, and the paired
bootstrap p-value of adapted against external."""

from __future__ import annotations

import re

import ml_collections
import numpy as np
import pytest

from medda_jax import metrics
from medda_jax.methods import stargan_da


def _pairwise_auc(labels, scores) -> float:
  """AUC by comparing every positive with every negative (ties count one half)."""
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = 0.0
  for p in pos:
    for q in neg:
      wins += 1.0 if p > q else 0.5 if p == q else 0.0
  return wins / (len(pos) * len(neg))


def _config(bootstrap=200, bootstrap_size=1000):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.eval = ml_collections.ConfigDict({"bootstrap": bootstrap, "bootstrap_size": bootstrap_size})
  return c


def _noisy_test_set(n=200, seed=0, signal=1.0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  scores = labels * signal + rng.normal(size=n)
  return labels, np.stack([-scores, scores], axis=1)  # [N, 2] probabilities' order


def test_percentile_ci_matches_a_plain_loop():
  labels, probs = _noisy_test_set(n=40)
  rng = np.random.default_rng(1)
  idx = np.stack([np.concatenate([rng.integers(0, 40, 38), [0, 1]]) for _ in range(60)])
  paper_idx = idx[:, :30]
  v, reps = stargan_da.auc_with_intervals(labels, probs, idx, paper_idx)
  loop = [_pairwise_auc(labels[row], probs[row, 1]) for row in idx]
  assert reps == pytest.approx(loop, abs=1e-12)
  lo, hi = np.percentile(loop, [2.5, 97.5])
  assert v["ci"] == pytest.approx([100 * lo, 100 * hi], abs=1e-9)
  assert v["auc"] == pytest.approx(100 * _pairwise_auc(labels, probs[:, 1]), abs=1e-9)
  paper = [_pairwise_auc(labels[row], probs[row, 1]) for row in paper_idx]
  half = 1.959964 * np.std(paper, ddof=1) / np.sqrt(len(paper))
  assert v["bootstrap_mean"] == pytest.approx(100 * np.mean(paper), abs=1e-9)
  assert v["mean_interval"] == pytest.approx(
      [100 * (np.mean(paper) - half), 100 * (np.mean(paper) + half)], abs=1e-4)


def test_the_table_reports_the_percentile_ci_not_the_error_of_the_mean():
  """200 test images: the AUC is uncertain by several points, while the paper's
  mean ± 1.96·sd/√B is a tenth of a point wide. The table's CI must be the former."""
  c = _config(bootstrap=1000, bootstrap_size=1000)
  labels, probs = _noisy_test_set(n=200)
  v = stargan_da.evaluate_on(c, labels, probs, "target")
  idx, _ = stargan_da.test_indices(c, labels, "target")
  loop = [_pairwise_auc(labels[row], probs[row, 1]) for row in idx[:200]]
  spread = 100 * (np.percentile(loop, 97.5) - np.percentile(loop, 2.5))
  numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", stargan_da.interval_text(v))]
  auc, lo, hi = numbers
  assert lo < auc < hi
  assert hi - lo > 4.0 and hi - lo == pytest.approx(spread, rel=0.25)
  mlo, mhi = v["mean_interval"]
  assert mhi - mlo < 0.1 * (hi - lo)  # the paper's form is far narrower
  assert "(" in stargan_da.mean_interval_text(v)


def test_paired_pvalue_small_when_one_model_is_clearly_better():
  c = _config(bootstrap=400)
  rng = np.random.default_rng(0)
  labels = np.arange(300) % 2
  good = labels * 3.0 + rng.normal(size=300)
  poor = labels * 0.3 + rng.normal(size=300)
  external, adapted, test = stargan_da.compare_on(
      c, labels, np.stack([-poor, poor], 1), np.stack([-good, good], 1), "t")
  assert adapted["auc"] > external["auc"] + 20
  assert test["p_value"] == pytest.approx(2 / 401)  # better on every paired replicate
  assert test["gain_ci"][0] > 10
  # The other way round is just as significant.
  _, _, reverse = stargan_da.compare_on(
      c, labels, np.stack([-good, good], 1), np.stack([-poor, poor], 1), "t")
  assert reverse["p_value"] == pytest.approx(2 / 401) and reverse["gain_ci"][1] < -10


def test_paired_pvalue_is_one_for_identical_scores():
  c = _config(bootstrap=300)
  labels, probs = _noisy_test_set(n=120)
  external, adapted, test = stargan_da.compare_on(c, labels, probs, probs.copy(), "t")
  assert external == adapted
  assert test["p_value"] == 1.0 and test["gain_ci"] == [0.0, 0.0]


def test_paired_pvalue_counts_the_replicates_by_hand():
  a = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
  b = np.array([0.6, 0.5, 0.8, 0.9, 0.9])  # d = +.1, -.1, +.1, +.1, 0
  # d <= 0: 2 replicates, d >= 0: 4; p = 2 (1 + 2) / 6 = 1.
  assert metrics.paired_bootstrap_pvalue(a, b) == 1.0
  b = a + np.array([0.1, 0.1, 0.1, 0.1, -0.1])  # d <= 0: 1 -> 2 (1 + 1) / 6
  assert metrics.paired_bootstrap_pvalue(a, b) == pytest.approx(4 / 6)
  with pytest.raises(ValueError, match="one length"):
    metrics.paired_bootstrap_pvalue(a, b[:3])
