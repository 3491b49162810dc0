"""MetaMedSeg tasks: standard and volumetric task definitions, weighted task sampling.

One element of the pipeline is one meta-batch of L tasks, padded to K shots:

  images [L, K, H, W, 1] float32, masks [L, K, H, W, 1] float32,
  valid [L, K] bool (padding slots are zero and False), dataset_index [L] int32
  (index into `source_names`).

Meta-batch `index` is drawn with `np.random.default_rng([seed, index])`, so it depends only on
(seed, index): the pipeline can be read in any order and resumed from an index alone.

Iterating with a checkpointable state (grain 0.2.18):

  ds = meta_batch_dataset(collection, names, seed=0, tasks_per_batch=5, shots=15,
                          task_definition="volumetric", num_batches=100)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
  batch = next(it)
  state = it.get_state()          # e.g. {"next_index": 1}; save it with the checkpoint
  it = iter(ds.to_iter_dataset(...)); it.set_state(state)   # continues with element 1

Pass small `ReadOptions`: grain's default prefetches up to 500 elements on 16 threads, and a
256 x 256 meta-batch of 5 x 15 slices is about 40 MB.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Sequence

import grain
import numpy as np

from medda_jax.data.collection import SliceCollection, SliceDataset

TASK_DEFINITIONS = ("volumetric", "standard")


def standard_task_positions(dataset: SliceDataset, rng: np.random.Generator,
                            shots: int) -> np.ndarray:
  """K positions drawn uniformly with replacement from all slices of `dataset`."""
  if len(dataset) == 0:
    raise ValueError(f"dataset {dataset.name} has no slices")
  return rng.integers(0, len(dataset), size=shots, dtype=np.int64)


def volumetric_task_positions(dataset: SliceDataset, rng: np.random.Generator,
                              shots: int) -> np.ndarray:
  """Every m-th kept slice of one uniformly drawn volume, m = max(1, ceil(n / K)).

  The slices are taken in slice order starting at the first, which gives between
  ceil(n / m) and K of them (all n when n < K).
  """
  volumes = dataset.volumes()
  if volumes.size == 0:
    raise ValueError(f"dataset {dataset.name} has no slices")
  positions = dataset.slices_of_volume(int(volumes[rng.integers(volumes.size)]))
  stride = max(1, math.ceil(positions.size / shots))
  return positions[::stride]


_TASK_FNS = {"volumetric": volumetric_task_positions, "standard": standard_task_positions}


def sample_datasets(rng: np.random.Generator, names: Sequence[str], probabilities,
                    num_tasks: int) -> np.ndarray:
  """Indices into `names` of `num_tasks` datasets drawn with replacement.

  `probabilities` are usually `SliceCollection.group_weights(names)` (1/z per organ group).
  """
  p = np.asarray(probabilities, np.float64)
  if p.shape != (len(names),):
    raise ValueError(f"got {p.shape[0] if p.ndim else 0} probabilities for {len(names)} names")
  return rng.choice(len(names), size=num_tasks, replace=True, p=p).astype(np.int32)


def stack_positions(dataset: SliceDataset, positions,
                    pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Images and masks of `positions`, [n, H, W, 1] float32; zero-padded to `pad_to` rows."""
  positions = np.asarray(positions, np.int64)
  images, masks = dataset.batch(positions)
  if pad_to is None or pad_to == positions.size:
    return images, masks
  if pad_to < positions.size:
    raise ValueError(f"cannot pad {positions.size} slices to {pad_to}")
  pad = ((0, pad_to - positions.size), (0, 0), (0, 0), (0, 0))
  return np.pad(images, pad), np.pad(masks, pad)


def fixed_shots(dataset: SliceDataset, num_shots: int, seed: int) -> np.ndarray:
  """The seeded few-shot selection of fine-tuning slices, as positions into `dataset`.

  Same draw as the reference code's `random.seed(seed); random.sample(train, num_shots)`
  when `train` lists the dataset's slices in the same order.
  """
  if num_shots > len(dataset):
    raise ValueError(f"cannot take {num_shots} shots from dataset {dataset.name} with only "
                     f"{len(dataset)} slices")
  return np.array(random.Random(seed).sample(range(len(dataset)), num_shots), np.int64)


def _check(collection: SliceCollection, source_names: Sequence[str], tasks_per_batch: int,
           shots: int, task_definition: str, process_index: int, process_count: int) -> None:
  if task_definition not in TASK_DEFINITIONS:
    raise ValueError(f"task_definition must be one of {TASK_DEFINITIONS}, got {task_definition!r}")
  if not source_names:
    raise ValueError("source_names is empty")
  missing = [n for n in source_names if n not in collection.datasets]
  if missing:
    raise ValueError(f"source datasets {missing} are not in the collection "
                     f"(it has {collection.names()})")
  empty = [n for n in source_names if len(collection[n]) == 0]
  if empty:
    raise ValueError(f"source datasets {empty} have no slices")
  shapes = {collection[n].image_shape for n in source_names}
  if len(shapes) != 1:
    raise ValueError(f"source datasets have different slice shapes {sorted(shapes)}")
  if tasks_per_batch < 1 or shots < 1:
    raise ValueError(f"tasks_per_batch and shots must be >= 1, got {tasks_per_batch}, {shots}")
  if process_count < 1 or tasks_per_batch % process_count:
    raise ValueError(f"tasks_per_batch={tasks_per_batch} must be divisible by "
                     f"process_count={process_count}: each process loads an equal, contiguous "
                     "slice of the task axis")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")


def meta_batch(collection: SliceCollection, source_names: Sequence[str], index: int, *,
               seed: int, tasks_per_batch: int, shots: int, task_definition: str,
               process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
  """Meta-batch `index`: L tasks of datasets drawn with the 1/z group weights.

  With `process_count > 1` only this process's contiguous slice of the task axis is loaded;
  the draws are those of the whole meta-batch, so the slices concatenate to it.
  """
  _check(collection, source_names, tasks_per_batch, shots, task_definition, process_index,
         process_count)
  rng = np.random.default_rng([seed, index])
  names = list(source_names)
  dataset_index = sample_datasets(rng, names, collection.group_weights(names), tasks_per_batch)
  task_fn = _TASK_FNS[task_definition]
  # All L tasks are drawn on every process so that the random stream is the same everywhere.
  positions = [task_fn(collection[names[i]], rng, shots) for i in dataset_index]

  per_process = tasks_per_batch // process_count
  mine = range(process_index * per_process, (process_index + 1) * per_process)
  h, w = collection[names[0]].image_shape
  images = np.zeros((per_process, shots, h, w, 1), np.float32)
  masks = np.zeros((per_process, shots, h, w, 1), np.float32)
  valid = np.zeros((per_process, shots), bool)
  for slot, t in enumerate(mine):
    n = positions[t].size
    images[slot], masks[slot] = stack_positions(collection[names[dataset_index[t]]],
                                                positions[t], pad_to=shots)
    valid[slot, :n] = True
  return {"images": images, "masks": masks, "valid": valid,
          "dataset_index": dataset_index[mine.start:mine.stop]}


def meta_batch_dataset(collection: SliceCollection, source_names: Sequence[str], *, seed: int,
                       tasks_per_batch: int, shots: int, task_definition: str, num_batches: int,
                       process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """`grain.MapDataset` whose element i is `meta_batch(..., i, ...)` (random access)."""
  _check(collection, source_names, tasks_per_batch, shots, task_definition, process_index,
         process_count)
  # A partial of a module-level function pickles, so grain's worker processes can use it.
  fn = functools.partial(meta_batch, collection, tuple(source_names), seed=seed,
                         tasks_per_batch=tasks_per_batch, shots=shots,
                         task_definition=task_definition, process_index=process_index,
                         process_count=process_count)
  return grain.MapDataset.range(num_batches).map(fn)
