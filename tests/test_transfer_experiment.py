"""Gradient transfer's Experiment at the smallest shapes: which pre-training run OCTL
continues, multi-source pools, prostate-style budgets and the validation split."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from medda_jax.config_utils import load_config
from medda_jax.data.volumes import Volume
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.supervised import TrainState
from medda_jax.errors import ConfigError
from medda_jax.methods import gradient_transfer as gt


def smoke_config(cache_dir, **changes):
  c = load_config("configs/transfer.py:smoke")
  c.data.cache_dir = str(cache_dir)
  for key, value in changes.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def save_source_run(exp, directory, seed: int):
  """A finished pre-training run of `seed` as the loop leaves it: params and optimizer
  moments that differ from seed to seed."""
  init = exp.init_variables(seed)
  state = TrainState.create(init["params"], exp.optimizer("adam", "pretrain"),
                            init["batch_stats"], jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  state = state.replace(opt_state=jax.tree.map(
      lambda x: np.asarray(rng.normal(size=np.shape(x)), np.asarray(x).dtype)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, state.opt_state))
  ckpt = Checkpointer(directory)
  try:
    ckpt.save(8, state, {"calls": 8, "curve": []})
  finally:
    ckpt.close()
  return jax.device_get(state.opt_state)


def test_octl_continues_the_moments_of_its_own_seeds_pretraining(tmp_path, demo_cache):
  # Two pairs share the source site and each of two seeds has its own source model. In
  # the driver's order pair 1 loads seeds 0 and 1, then pair 2 takes seed 0's model from
  # the cache: OCTL must continue seed 0's optimizer state, not the one read last.
  src = "site_a_clean"
  saved = tmp_path / "earlier_run"
  pairs = ((src, "site_f_inverted"), (src, "site_b_gamma_dark"))
  exp = gt.Experiment(smoke_config(demo_cache, **{"data.pairs": pairs, "init_from": str(saved),
                                                  "pretrain_per_seed": True}), tmp_path / "r")
  moments = {seed: save_source_run(exp, saved / "checkpoints" / f"pretrain_adam_{src}_seed"
                                   f"{seed}", seed) for seed in (0, 1)}
  models = {seed: exp.pretrain("adam", src, seed) for seed in (0, 1)}
  assert exp.pretrain("adam", src, 0) is models[0]  # pair 2, seed 0: the cached model
  for seed in (0, 1):
    continued = exp.source_opt_state("adam", src, seed, models[seed])
    got, want = jax.tree.leaves(jax.device_get(continued)), jax.tree.leaves(moments[seed])
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  exp.writer.close()


# ---------------------------------------------------------------- no training, no compile
def volume(idx: int, slices: int = 6, organ=(2, 4), seed: int = 0) -> Volume:
  rng = np.random.default_rng([seed, idx])
  mask = np.zeros((slices, 8, 8), np.uint8)
  mask[organ[0]:organ[1] + 1, 2:6, 2:6] = 1
  return Volume(id=f"v{idx}", domain="d", image=rng.normal(size=(slices, 8, 8)).astype(
      np.float32), mask=mask, spacing=(3.0, 1.0, 1.0))


def test_validation_subjects_come_from_training_and_leave_the_test_subjects_alone():
  vols = [volume(i) for i in range(10)]
  plain = gt.split_site(vols, 3, 0, "s")
  with_val = gt.split_site(vols, 3, 0, "s", val_subjects=2)
  assert [v.id for v in with_val.test] == [v.id for v in plain.test]
  assert len(with_val.val) == 2 and len(with_val.train) == 5
  ids = [v.id for v in with_val.train + with_val.val + with_val.test]
  assert sorted(ids) == sorted(v.id for v in vols)  # a partition
  assert {v.id for v in with_val.val} <= {v.id for v in plain.train}
  with pytest.raises(ConfigError, match="val_subjects=7 leave none for training"):
    gt.split_site(vols, 3, 0, "s", val_subjects=7)


def test_a_pooled_source_holds_every_member_sites_subjects():
  a = gt.split_site([volume(i, seed=1) for i in range(4)], 1, 0, "a", 1)
  b = gt.split_site([volume(i, seed=2) for i in range(5)], 1, 0, "b", 1)
  pool = gt.experiment.pooled_split([a, b])
  for part in ("train", "test", "val"):
    assert list(map(id, getattr(pool, part))) == list(map(id, getattr(a, part) + getattr(b, part)))
  assert gt.experiment.pool_sites("RUNMC+BMC+HK") == ("RUNMC", "BMC", "HK")


def test_slice_budget_draws_that_many_distinct_slices_per_seed():
  split = gt.SiteSplit([volume(i) for i in range(4)], [])
  pools = {seed: gt.target_budget_pool(split, 2, 1, seed, "t", slices=5) for seed in (0, 1)}
  for seed, pool in pools.items():
    assert len(pool) == 5
    everything = gt.target_budget_pool(split, 2, 1, seed, "t")  # the same two subjects
    allowed = {(v.id, int(s)) for v, ss in zip(everything.volumes, everything.slices)
               for s in ss}
    drawn = [(v.id, int(s)) for v, ss in zip(pool.volumes, pool.slices) for s in ss]
    assert len(set(drawn)) == 5 and set(drawn) <= allowed
  again = gt.target_budget_pool(split, 2, 1, 0, "t", slices=5)
  assert [s.tolist() for s in again.slices] == [s.tolist() for s in pools[0].slices]
  with pytest.raises(ConfigError, match="asks for 13 target slices"):
    gt.target_budget_pool(split, 2, 1, 0, "t", slices=13)


def test_prediction_sees_the_slice_and_its_clamped_neighbours():
  # A stand-in network whose logit is (previous - next slice) at each pixel: the
  # prediction must equal that computed by hand with the ends clamped.
  fake = types.SimpleNamespace(
      channels=3, _predict=lambda v, x: x[..., 0:1] - x[..., 2:3], _predict_twin=None)
  image = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
  vol = Volume(id="v", domain="d", image=image, mask=np.zeros_like(image, np.uint8),
               spacing=(1.0, 1.0, 1.0))
  got = gt.Experiment.predict_volume(fake, None, vol, twin=False)
  want = np.zeros(image.shape, bool)
  for s in range(5):
    prev, nxt = image[max(s - 1, 0)], image[min(s + 1, 4)]
    want[s] = (prev - nxt) > 0
  np.testing.assert_array_equal(got, want)


def test_largest_component_postprocessing_scores_dice_with_and_without_it():
  gt_mask = np.zeros((4, 10, 10), bool)
  gt_mask[1:3, 2:6, 2:6] = True
  pred = gt_mask.copy()
  pred[0, 8:10, 8:10] = True  # a false-positive island, not connected to the organ
  vol = Volume(id="v", domain="d", image=np.zeros((4, 10, 10), np.float32),
               mask=gt_mask.astype(np.uint8), spacing=(1.0, 1.0, 1.0))
  cfg = load_config("configs/transfer.py:prostate_smoke")
  cfg.eval.postprocess = "largest_component"
  fake = types.SimpleNamespace(c=cfg, predict_volume=lambda v, volume, twin: pred)
  scores = gt.Experiment.evaluate(fake, None, [vol])
  inter = np.logical_and(pred, gt_mask).sum()
  raw = 2 * inter / (pred.sum() + gt_mask.sum())
  assert scores["dice"] == pytest.approx(100.0)  # the island is gone
  assert scores["dice_raw"] == pytest.approx(100 * raw) and raw < 1


def test_d7_zeroes_small_slices_by_a_threshold_learned_on_validation():
  organ = np.zeros((4, 8, 8), bool)
  organ[1:3, 2:6, 2:6] = True  # 16 voxels on slices 1 and 2
  val_pred = organ.copy()
  val_pred[0, 0:2, 0:3] = True  # a 6-voxel false positive on an organ-free slice
  test_pred = organ.copy()
  test_pred[3, 3:5, 3] = True  # 2 voxels touching the organ in 3-D: one component with it
  val, test = (Volume(id=name, domain="d", image=np.zeros((4, 8, 8), np.float32),
                      mask=organ.astype(np.uint8), spacing=(1.0, 1.0, 1.0))
               for name in ("val", "test"))
  cfg = load_config("configs/transfer.py:prostate_smoke")
  fake = types.SimpleNamespace(
      c=cfg, splits={"t": gt.SiteSplit([], [], [val])},
      predict_volume=lambda v, volume, twin: val_pred if volume.id == "val" else test_pred)
  fake.slice_threshold = lambda *a: gt.Experiment.slice_threshold(fake, *a)
  # Organ-free validation slices predict 6 and 0 voxels, organ slices 16 and 16:
  # 0.9 * (55th percentile of [0, 6] = 3.3) + 0.1 * (10th percentile of [16, 16]) = 4.57.
  assert gt.Experiment.slice_threshold(fake, None, "t") == pytest.approx(0.9 * 3.3 + 1.6)
  assert cfg.eval.postprocess == "d7"
  d7 = gt.Experiment.evaluate(fake, None, [test], False, "t")
  cfg.eval.postprocess = "largest_component"
  lcc = gt.Experiment.evaluate(fake, None, [test], False, "t")
  assert d7["dice"] == pytest.approx(100.0)  # the 2-voxel slice is zeroed
  assert lcc["dice"] == pytest.approx(100 * 2 * 32 / (34 + 32))  # connected: kept
  assert d7["dice_raw"] == lcc["dice_raw"] == pytest.approx(lcc["dice"])
