"""Task definitions, weighted task sampling and the grain meta-batch pipeline."""

from __future__ import annotations

import math
import random

import grain
import numpy as np
import pytest

from medda_jax.data import tasks
from medda_jax.data.collection import SliceCollection, SliceDataset

H = W = 4


def _dataset(name: str, group: str, slices_per_volume, code: int, seed: int = 0,
             shuffle: bool = False) -> SliceDataset:
  """Every image is constant and equal to `code * 1000 + bank row`, so a batch names its slices.

  Slice indices are spread out (2 j + 3) so that positions, rows and slice indices differ.
  """
  rng = np.random.default_rng(seed)
  volume = np.concatenate([np.full(n, v) for v, n in enumerate(slices_per_volume)])
  slice_index = np.concatenate([2 * np.arange(n) + 3 for n in slices_per_volume])
  m = volume.size
  images = np.broadcast_to((code * 1000 + np.arange(m, dtype=np.float32))[:, None, None],
                           (m, H, W)).copy()
  labels = rng.integers(0, 3, size=(m, H, W)).astype(np.uint8)
  rows = np.arange(m)
  if shuffle:
    order = rng.permutation(m)
    rows, volume, slice_index = rows[order], volume[order], slice_index[order]
  return SliceDataset(name=name, group=group, images=images, labels=labels, label_values=(1,),
                      rows=rows, volume=volume, slice_index=slice_index,
                      volume_names=tuple(f"{name}_{v:03d}" for v in range(len(slices_per_volume))))


def _row(image: np.ndarray) -> tuple[int, int]:
  value = int(image.flat[0])
  return value // 1000, value % 1000


GROUPS = {"brain": 12, "hippocampus": 2, "heart": 1}


@pytest.fixture
def coll() -> SliceCollection:
  datasets, code = {}, 1
  for group, z in GROUPS.items():
    for i in range(z):
      name = f"{group}_{i}"
      sizes = [5 + (3 * code + v) % 30 for v in range(2 + code % 3)]
      datasets[name] = _dataset(name, group, sizes, code, seed=code)
      code += 1
  return SliceCollection(datasets)


def test_volumetric_stride_example():
  # One volume with 40 kept slices, stored in shuffled order.
  ds = _dataset("v", "g", [40], 1, shuffle=True)
  pos = tasks.volumetric_task_positions(ds, np.random.default_rng(0), 15)
  expected = (2 * np.arange(40) + 3)[0::3]
  assert pos.size == 14 and expected.size == 14
  np.testing.assert_array_equal(ds.slice_index[pos], expected)


@pytest.mark.parametrize("n,count,stride", [(9, 9, 1), (15, 15, 1), (16, 8, 2), (45, 15, 3),
                                            (46, 12, 4), (1, 1, 1)])
def test_volumetric_sizes(n, count, stride):
  ds = _dataset("v", "g", [n], 1)
  pos = tasks.volumetric_task_positions(ds, np.random.default_rng(1), 15)
  assert pos.size == count
  np.testing.assert_array_equal(ds.slice_index[pos], (2 * np.arange(n) + 3)[::stride])


def test_volumetric_draws_volumes_uniformly():
  # Volumes of very different sizes: the draw is over volumes, not slices.
  ds = _dataset("v", "g", [3, 40, 7, 1], 1)
  rng = np.random.default_rng(2)
  draws = 8000
  seen = np.zeros(4)
  for _ in range(draws):
    pos = tasks.volumetric_task_positions(ds, rng, 15)
    vols = np.unique(ds.volume[pos])
    assert vols.size == 1
    seen[vols[0]] += 1
  tol = 4 * math.sqrt(0.25 * 0.75 / draws)
  np.testing.assert_allclose(seen / draws, 0.25, atol=tol)


def test_standard_tasks_with_replacement():
  ds = _dataset("s", "g", [3, 2], 1)
  rng = np.random.default_rng(3)
  pos = tasks.standard_task_positions(ds, rng, 15)
  assert pos.shape == (15,) and pos.min() >= 0 and pos.max() < len(ds)
  assert np.unique(pos).size < 15  # 15 draws from 5 slices must repeat
  many = np.concatenate([tasks.standard_task_positions(ds, rng, 15) for _ in range(2000)])
  tol = 4 * math.sqrt(0.2 * 0.8 / many.size)
  np.testing.assert_allclose(np.bincount(many, minlength=5) / many.size, 0.2, atol=tol)


def test_dataset_sampling_frequencies(coll):
  names = coll.names()
  p = coll.group_weights(names)
  draws = 20000
  idx = tasks.sample_datasets(np.random.default_rng(4), names, p, draws)
  assert idx.shape == (draws,) and idx.dtype == np.int32
  freq = np.bincount(idx, minlength=len(names)) / draws
  # 1/z per member of a group of z: the three groups weigh the same.
  expected = np.array([1 / (len(GROUPS) * GROUPS[n.rsplit("_", 1)[0]]) for n in names])
  tol = 4 * np.sqrt(expected * (1 - expected) / draws)
  assert np.all(np.abs(freq - expected) <= tol), (freq, expected)
  group_freq = {g: freq[[n.startswith(g) for n in names]].sum() for g in GROUPS}
  for g in GROUPS:
    assert abs(group_freq[g] - 1 / 3) < 0.02


@pytest.mark.parametrize("definition", ["volumetric", "standard"])
def test_meta_batch_contents(coll, definition):
  names = coll.names()
  code_of = {n: i + 1 for i, n in enumerate(names)}
  batch = tasks.meta_batch(coll, names, 7, seed=11, tasks_per_batch=6, shots=5,
                           task_definition=definition)
  assert batch["images"].shape == batch["masks"].shape == (6, 5, H, W, 1)
  assert batch["images"].dtype == batch["masks"].dtype == np.float32
  assert batch["valid"].shape == (6, 5) and batch["valid"].dtype == bool
  assert batch["dataset_index"].shape == (6,) and batch["dataset_index"].dtype == np.int32
  for t in range(6):
    ds = coll[names[batch["dataset_index"][t]]]
    n = batch["valid"][t].sum()
    assert np.all(batch["valid"][t, :n]) and not np.any(batch["valid"][t, n:])
    assert np.all(batch["images"][t, n:] == 0) and np.all(batch["masks"][t, n:] == 0)
    rows = []
    for k in range(n):
      code, row = _row(batch["images"][t, k])
      assert code == code_of[ds.name]
      rows.append(row)
      np.testing.assert_array_equal(batch["masks"][t, k, ..., 0], ds.labels[row] == 1)
    pos = np.searchsorted(ds.rows, rows)
    if definition == "standard":
      assert n == 5
    else:
      # One volume, every m-th slice from the first.
      assert np.unique(ds.volume[pos]).size == 1
      all_slices = np.sort(ds.slice_index[ds.volume == ds.volume[pos[0]]])
      m = max(1, math.ceil(all_slices.size / 5))
      np.testing.assert_array_equal(ds.slice_index[pos], all_slices[::m])


def _equal(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_determinism_and_seed(coll):
  kw = dict(seed=5, tasks_per_batch=4, shots=6, task_definition="volumetric")
  a = tasks.meta_batch(coll, coll.names(), 3, **kw)
  b = tasks.meta_batch(coll, coll.names(), 3, **kw)
  assert _equal(a, b)
  c = tasks.meta_batch(coll, coll.names(), 3, **{**kw, "seed": 6})
  assert not _equal(a, c)
  d = tasks.meta_batch(coll, coll.names(), 4, **kw)
  assert not _equal(a, d)


def test_elements_do_not_depend_on_access_order(coll):
  kw = dict(seed=1, tasks_per_batch=3, shots=4, task_definition="standard", num_batches=8)
  forward = [tasks.meta_batch_dataset(coll, coll.names(), **kw)[i] for i in range(8)]
  ds = tasks.meta_batch_dataset(coll, coll.names(), **kw)
  backward = [ds[i] for i in reversed(range(8))][::-1]
  for i in range(8):
    assert _equal(forward[i], backward[i])
  fresh = tasks.meta_batch_dataset(coll, coll.names(), **kw)[5]
  assert _equal(fresh, forward[5])
  assert _equal(fresh, tasks.meta_batch(coll, coll.names(), 5, seed=1, tasks_per_batch=3,
                                        shots=4, task_definition="standard"))
  assert len(ds) == 8


@pytest.mark.parametrize("count", [2, 4])
def test_process_sharding_concatenates_to_full_batch(coll, count):
  kw = dict(seed=3, tasks_per_batch=8, shots=5, task_definition="volumetric", num_batches=3)
  full = tasks.meta_batch_dataset(coll, coll.names(), **kw)
  parts = [tasks.meta_batch_dataset(coll, coll.names(), process_index=p, process_count=count,
                                    **kw) for p in range(count)]
  for i in range(3):
    shards = [p[i] for p in parts]
    assert shards[0]["images"].shape[0] == 8 // count
    joined = {k: np.concatenate([s[k] for s in shards]) for k in full[i]}
    assert _equal(joined, full[i])


def test_process_count_must_divide_tasks(coll):
  with pytest.raises(ValueError, match="tasks_per_batch=5 must be divisible by process_count=2"):
    tasks.meta_batch_dataset(coll, coll.names(), seed=0, tasks_per_batch=5, shots=3,
                             task_definition="standard", num_batches=2, process_count=2)


def test_bad_arguments(coll):
  with pytest.raises(ValueError, match="task_definition"):
    tasks.meta_batch(coll, coll.names(), 0, seed=0, tasks_per_batch=2, shots=3,
                     task_definition="random")
  with pytest.raises(ValueError, match="not in the collection"):
    tasks.meta_batch(coll, ["heart_0", "lung"], 0, seed=0, tasks_per_batch=2, shots=3,
                     task_definition="standard")


def test_grain_iterator_state_round_trip(coll):
  ds = tasks.meta_batch_dataset(coll, coll.names(), seed=2, tasks_per_batch=2, shots=3,
                                task_definition="volumetric", num_batches=6)
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
  it = iter(ds.to_iter_dataset(options))
  seen = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(2)]

  restored = iter(ds.to_iter_dataset(options))
  restored.set_state(state)
  for expected in after:
    assert _equal(next(restored), expected)
  for i, batch in enumerate(seen + after):
    assert _equal(batch, ds[i])


def test_fixed_shots_match_random_sample():
  ds = _dataset("t", "g", [10, 12, 8], 1)
  for seed in (1, 6, 25, 55, 1100):
    random.seed(seed)
    expected = random.sample(list(range(len(ds))), 15)
    shots = tasks.fixed_shots(ds, 15, seed)
    np.testing.assert_array_equal(shots, expected)
    assert np.unique(shots).size == 15
  assert not np.array_equal(tasks.fixed_shots(ds, 15, 1), tasks.fixed_shots(ds, 15, 6))
  with pytest.raises(ValueError, match="cannot take 31 shots"):
    tasks.fixed_shots(ds, 31, 0)


def test_stack_positions_pads_with_zeros():
  ds = _dataset("t", "g", [6], 2)
  images, masks = tasks.stack_positions(ds, [4, 1], pad_to=5)
  assert images.shape == masks.shape == (5, H, W, 1)
  assert [_row(images[i]) for i in range(2)] == [(2, 4), (2, 1)]
  assert np.all(images[2:] == 0) and np.all(masks[2:] == 0)
  np.testing.assert_array_equal(masks[0, ..., 0], ds.labels[4] == 1)
