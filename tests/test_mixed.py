"""MMTL's mixed mini-batches: the schedules, the pools, determinism and resumption."""

import grain
import numpy as np
import pytest

from medda_jax.data import mixed
from medda_jax.data.volumes import Volume
from medda_jax.methods.gradient_transfer import SiteSplit, target_budget_pool


def _volume(name, value, slices=6, size=8, domain="d"):
  image = np.full((slices, size, size), value, np.float32)
  image += np.arange(slices, dtype=np.float32)[:, None, None] / 100  # slice index visible
  mask = np.zeros((slices, size, size), np.uint8)
  mask[:, 2:5, 2:5] = 1
  return Volume(name, domain, image, mask, (1.0, 1.0, 1.0))


def test_code_schedule_adds_one_target_sample_every_four_epochs():
  counts = [mixed.target_count("code", e, 60, 16) for e in range(60)]
  assert counts[:4] == [1, 1, 1, 1] and counts[4:8] == [2, 2, 2, 2]
  assert counts[-1] == 15 and max(counts) == 15  # never the whole batch within 60 epochs
  assert mixed.target_count("code", 200, 60, 16) == 16  # capped at B


def test_paper_schedule_is_int_of_the_epoch_fraction():
  counts = [mixed.target_count("paper_linear", e, 60, 16) for e in range(60)]
  assert counts[:4] == [0, 0, 0, 0]  # int(e / 60 * 16) = 0 for e < 3.75
  assert counts[4] == 1 and counts[30] == 8 and counts[59] == 15
  assert all(b >= a for a, b in zip(counts, counts[1:]))


def test_constant_schedules_and_unknown_name():
  assert mixed.target_count("source_only", 7, 10, 8) == 0
  assert mixed.target_count("target_only", 0, 10, 8) == 8
  with pytest.raises(ValueError, match="schedule must be one of"):
    mixed.target_count("linear", 0, 10, 8)


def test_batches_hold_the_scheduled_number_of_target_samples_first():
  source = mixed.SlicePool.of([_volume("s0", 0.0), _volume("s1", 0.0)])
  target = mixed.SlicePool.of([_volume("t0", 10.0)])
  cfg = mixed.MixedBatchConfig(batch_size=4, steps_per_epoch=3, num_epochs=4,
                               schedule="paper_linear", crop=8, seed=1)
  for step in range(cfg.total_steps):
    b = mixed.mixed_batch(step, source, target, cfg)
    n_t = mixed.target_count("paper_linear", step // 3, 4, 4)
    assert b["images"].shape == (4, 8, 8, 1) and b["masks"].shape == (4, 8, 8, 1)
    from_target = b["images"][:, 0, 0, 0] >= 10.0
    np.testing.assert_array_equal(from_target, np.arange(4) < n_t)
    np.testing.assert_array_equal(b["is_target"], np.arange(4) < n_t)


def test_slice_step_restricts_the_pool():
  pool = mixed.SlicePool.of([_volume("a", 0.0, slices=10), _volume("b", 0.0, slices=7)], 3)
  np.testing.assert_array_equal(pool.slices[0], [0, 3, 6, 9])
  np.testing.assert_array_equal(pool.slices[1], [0, 3, 6])
  assert len(pool) == 7
  cfg = mixed.MixedBatchConfig(4, 5, 2, "target_only", crop=8, seed=0)
  seen = {round(float(x) * 100) for s in range(10)
          for x in mixed.mixed_batch(s, None, pool, cfg)["images"][:, 0, 0, 0]}
  assert seen <= {0, 3, 6, 9}


def test_target_pool_is_built_from_the_target_subjects_only():
  """The reference code took the last ids of source + target as its target pool (spec D1);
  here the pool holds exactly the requested number of the target's own training subjects."""
  train = [_volume(f"t{i}", float(i), domain="target") for i in range(5)]
  split = SiteSplit(train=train, test=[])
  for subjects in (1, 2, 4):
    pool = target_budget_pool(split, subjects, 1, seed=3, site="target")
    assert len(pool.volumes) == subjects
    assert all(v.domain == "target" for v in pool.volumes)
  # Seeds draw different subjects (over ten seeds, more than one selection occurs) ...
  draws = {tuple(v.id for v in target_budget_pool(split, 2, 1, s, "t").volumes)
           for s in range(10)}
  assert len(draws) > 1
  # ... and the same seed the same subjects.
  a = target_budget_pool(split, 2, 1, 7, "t")
  b = target_budget_pool(split, 2, 1, 7, "t")
  assert [v.id for v in a.volumes] == [v.id for v in b.volumes]


def test_grain_dataset_is_random_access_and_resumes_exactly():
  source = mixed.SlicePool.of([_volume("s0", 0.0), _volume("s1", 1.0)])
  target = mixed.SlicePool.of([_volume("t0", 10.0)])
  cfg = mixed.MixedBatchConfig(4, 2, 3, "code", crop=8, seed=5)
  ds = mixed.mixed_batches(source, target, cfg, steps_per_call=2)
  assert len(ds) == 3
  np.testing.assert_array_equal(ds[1]["images"][0], mixed.mixed_batch(2, source, target, cfg)["images"])
  np.testing.assert_array_equal(ds[1]["images"][1], mixed.mixed_batch(3, source, target, cfg)["images"])
  opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
  it = iter(ds.to_iter_dataset(opts))
  next(it)
  saved = it.get_state()
  rest = [next(it)["images"] for _ in range(2)]
  it2 = iter(ds.to_iter_dataset(opts))
  it2.set_state(saved)
  for want in rest:
    np.testing.assert_array_equal(next(it2)["images"], want)


def test_processes_split_the_same_batch():
  source = mixed.SlicePool.of([_volume("s0", 0.0), _volume("s1", 1.0)])
  target = mixed.SlicePool.of([_volume("t0", 10.0)])
  cfg = mixed.MixedBatchConfig(4, 2, 8, "code", crop=8, seed=2)
  whole = mixed.mixed_batch(9, source, target, cfg)
  parts = [mixed.mixed_batch(9, source, target, cfg, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["images"] for p in parts]), whole["images"])
  np.testing.assert_array_equal(np.concatenate([p["is_target"] for p in parts]), whole["is_target"])


def test_random_crop_pads_with_the_slice_minimum():
  image = np.arange(12, dtype=np.float32).reshape(3, 4, 1) + 5
  mask = np.ones((3, 4), np.uint8)
  x, y = mixed.random_crop(image, mask, 6, np.random.default_rng(0))
  assert x.shape == (6, 6, 1) and y.shape == (6, 6)
  assert x.min() == 5.0 and (x == 5.0).sum() == 36 - 12 + 1  # padding plus the real minimum
  assert y.sum() == 12


def test_context_stack_clamps_at_the_ends():
  image = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
  np.testing.assert_array_equal(mixed.context_stack(image, 0, 3)[0, 0], [0, 0, 1])
  np.testing.assert_array_equal(mixed.context_stack(image, 3, 3)[0, 0], [2, 3, 3])
  np.testing.assert_array_equal(mixed.context_stack(image, 2, 1)[0, 0], [2])


def test_missing_pool_is_an_error():
  cfg = mixed.MixedBatchConfig(4, 2, 2, "code", crop=8)
  with pytest.raises(ValueError, match="no target pool"):
    mixed.mixed_batch(0, mixed.SlicePool.of([_volume("s", 0.0)]), None, cfg)
  with pytest.raises(ValueError, match="steps_per_call"):
    mixed.mixed_batches(None, mixed.SlicePool.of([_volume("t", 0.0)]),
                        mixed.MixedBatchConfig(4, 3, 1, "target_only", crop=8), steps_per_call=2)
