"""StarGAN + CyCADA end to end on its smoke config: the table of internal, external and
adapted AUC with CIs, salvage and domain spread, the translation grids, resumption after
a kill, and config mistakes."""

import json

import numpy as np
import pytest

from conftest import TWO_DEVICES, config_with, kill_after_results, run_train
from medda_jax.config_utils import load_config
from medda_jax.errors import ConfigError
from medda_jax.methods import stargan_da

CONFIG = "configs/stargan.py:smoke"


# stargan_run: tests/conftest.py


def _rank_auc(positive, scores) -> float:
  """Mann-Whitney AUC from tie-averaged ranks, written out."""
  ranks = np.empty(len(scores))
  for value in np.unique(scores):
    tied = scores == value
    ranks[tied] = np.sum(scores < value) + (np.sum(tied) + 1) / 2
  n_pos = positive.sum()
  n_neg = len(positive) - n_pos
  return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _macro_auc(labels, probs) -> float:
  """The mean one-vs-rest AUC over the classes present."""
  return float(np.mean([_rank_auc(labels == k, probs[:, k]) for k in np.unique(labels)]))


def test_smoke_writes_the_pair_table_spread_and_grids(stargan_run):
  workdir, proc = stargan_run
  final = json.loads(proc.stdout)
  config = load_config(CONFIG)
  domains = list(config.data.domains)
  pairs = [f"{s}->{t}" for s in domains for t in domains if s != t]
  results = json.loads((workdir / "results.json").read_text())
  assert list(results["pairs"]) == pairs
  for key, p in results["pairs"].items():
    s, t = key.split("->")
    saved = np.load(workdir / "predictions" / f"{s}_to_{t}.npz")
    labels = saved["labels"]
    indices, _ = stargan_da.test_indices(config, labels, t)
    assert indices.shape == (config.eval.bootstrap, len(labels))  # replicates of N images
    replicates = {}
    for which in ("external", "adapted"):
      v, probs = p[which], saved[which]
      # Recomputed from the saved predictions by a plain loop, not the library's metrics.
      assert v["auc"] == pytest.approx(100 * _macro_auc(labels, probs), abs=1e-9)
      replicates[which] = np.array([_macro_auc(labels[row], probs[row]) for row in indices])
      lo, hi = v["ci"]
      assert [lo, hi] == pytest.approx(100 * np.percentile(replicates[which], [2.5, 97.5]))
      assert lo <= v["auc"] <= hi
      assert final[f"{which}_auc/{key}"] == pytest.approx(v["auc"])
    d = replicates["adapted"] - replicates["external"]
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    assert p["p_value"] == pytest.approx(min(1.0, 2 * (1 + tail) / (len(d) + 1)))
    assert p["gain_ci"] == pytest.approx(100 * np.percentile(d, [2.5, 97.5]))
    ceiling = results["internal"][p["target"]]["auc"]
    if ceiling != p["external"]["auc"]:
      assert p["salvage"] == pytest.approx(
          100 * (p["adapted"]["auc"] - p["external"]["auc"]) / (ceiling - p["external"]["auc"]))
    assert p["gain"] == pytest.approx(p["adapted"]["auc"] - p["external"]["auc"])
  summary = results["summary"]
  assert summary["pairs"] == 6
  assert summary["external"] == pytest.approx(
      sum(p["external"]["auc"] for p in results["pairs"].values()) / 6)
  assert summary["internal"] == pytest.approx(
      sum(v["auc"] for v in results["internal"].values()) / 3)
  assert [row["fraction"] for row in results["spread"]] == list(config.eval.spread_fractions)
  for row in results["spread"]:
    aucs = [row["auc"][d] for d in domains]
    mean = sum(aucs) / 3
    assert row["spread"] == pytest.approx(sum((a - mean) ** 2 for a in aucs) / 3)
  md = (workdir / "results.md").read_text()
  assert "DEMO DATA" in md and "not a reproduction" in md
  assert "percentiles" in md and "paired bootstrap p-value" in md
  assert "Monte-Carlo error of the bootstrap mean" in md
  assert md.count(" → ") >= 6 and "median salvage" in md and "Domain spread" in md
  for key in pairs:
    s, t = key.split("->")
    assert (workdir / f"translations_{s}_to_{t}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  gan_rows = [r for r in records if r["stage"] == "StarGAN mnist_to_mnist_m"]
  assert gan_rows and {"d_gp", "d_cls", "g_rec", "g_sem", "ft_loss", "fs_loss"} <= set(gan_rows[0])


def test_killed_run_resumes_to_the_same_table(stargan_run, tmp_path):
  # Every domain's baseline and two of the reference's pairs, killed after the first pair:
  # the resumed run must equal those pairs of the uninterrupted reference.
  reference, _ = stargan_run
  killed = tmp_path / "killed"
  part = "--config.pairs=('mnist->mnist_m','optdigits->mnist')"
  child = run_train(killed, part, config=CONFIG, background=True, env=TWO_DEVICES)
  kill_after_results(child, killed / "pairs.json", 1)
  assert not (killed / "results.md").exists()
  proc = run_train(killed, part, config=CONFIG, env=TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((killed / "results.json").read_text())
  want = json.loads((reference / "results.json").read_text())
  assert list(got["pairs"]) == ["mnist->mnist_m", "optdigits->mnist"]
  for key in got["pairs"]:
    for which in ("external", "adapted"):
      assert got["pairs"][key][which]["auc"] == pytest.approx(
          want["pairs"][key][which]["auc"], abs=1e-6), key
  # The baselines and the pooled spread do not depend on the pairs run (the summary, a mean
  # over the pairs, does).
  _assert_close(got["internal"], want["internal"], "internal")
  _assert_close(got["spread"], want["spread"], "spread")


def _assert_close(got, want, where):
  """Nested JSON values: numbers equal within 1e-6, everything else exactly."""
  if isinstance(want, dict):
    assert got.keys() == want.keys(), where
    for key in want:
      _assert_close(got[key], want[key], f"{where}/{key}")
  elif isinstance(want, list):
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_close(g, w, f"{where}/{i}")
  else:
    assert got == pytest.approx(want, abs=1e-6), where


# Config mistakes are caught by stargan_da.validate, which the trainer runs before anything
# else; one of them goes through the command line (exit 2, one line, no traceback).
@pytest.mark.parametrize("field, value, message", [
    ("data.kind", "mri", "config.data.kind"),
    ("data.domains", ("mnist", "svhn"), "unknown entries ['svhn']"),
    ("data.domains", ("mnist", "usps"), "config.data.dirs.usps must name"),
    ("pairs", ("mnist->mnist",), "must be 'S->T'"),
    ("stargan.batch_size", 7, "must be even"),
    ("stargan.d_iters", 6, "must be a multiple of n_critic x steps_per_call = 4"),
    ("classifier.name", "resnet", "config.classifier.name"),
])
def test_config_mistakes_are_named(field, value, message):
  with pytest.raises(ConfigError) as e:
    stargan_da.validate(config_with(CONFIG, field, value))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_config_mistake_ends_the_command_with_one_error_line(tmp_path):
  proc = run_train(tmp_path / "bad", "--config.stargan.d_iters=6", config=CONFIG, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "must be a multiple of n_critic" in proc.stderr.strip().splitlines()[-1]
