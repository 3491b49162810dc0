"""Mixed source/target mini-batches (MMTL) as a grain dataset indexed by training step.

Element `s` of `mixed_batches(...)` is the whole batch of step s: its epoch
e = s // steps_per_epoch fixes the number of target samples n_t = schedule(e), and a
per-step generator `np.random.default_rng([seed, s])` draws n_t target and B - n_t source
samples. A sample is (volume uniformly with replacement, then one of its slices, then a
crop), as in the reference code. Random access by step makes a resumed run draw exactly
the batches an uninterrupted run would. Fine-tuning on the target alone (`target_only`)
and pre-training on the source (`source_only`) are the same dataset with a constant
schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from medda_jax.data.volumes import Volume

SCHEDULES = ("code", "paper_linear", "source_only", "target_only")


def target_count(schedule: str, epoch: int, num_epochs: int, batch_size: int) -> int:
  """Target samples in a batch of `batch_size` at `epoch` (0-based).

  code:          min(epoch // 4 + 1, B)          reference code: 1 at epoch 0, +1 every 4
  paper_linear:  int(epoch / num_epochs * B)     the paper's Algorithm 1
  source_only:   0;  target_only: B
  """
  if schedule == "code":
    return min(epoch // 4 + 1, batch_size)
  if schedule == "paper_linear":
    return int(epoch / num_epochs * batch_size)
  if schedule == "source_only":
    return 0
  if schedule == "target_only":
    return batch_size
  raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@dataclasses.dataclass(frozen=True)
class SlicePool:
  """Slices a sampler may draw: for each volume, the indices of its usable slices."""

  volumes: tuple[Volume, ...]
  slices: tuple[np.ndarray, ...]

  @classmethod
  def of(cls, volumes: Sequence[Volume], slice_step: int = 1) -> "SlicePool":
    """Every `slice_step`-th slice of each volume (the paper's 90-slice budget is every
    third slice of one subject)."""
    volumes = tuple(volumes)
    return cls(volumes, tuple(np.arange(0, v.num_slices, slice_step) for v in volumes))

  def __len__(self) -> int:
    return int(sum(len(s) for s in self.slices))


def context_stack(image: np.ndarray, index: int, channels: int) -> np.ndarray:
  """[H, W, channels]: the slice and its neighbours (clamped at the ends), centre in the
  middle channel; channels = 1 is the slice alone."""
  half = channels // 2
  idx = np.clip(np.arange(index - half, index - half + channels), 0, image.shape[0] - 1)
  return np.moveaxis(image[idx], 0, -1)


def random_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator):
  """A size x size crop at a random position; smaller sides are padded with the slice's
  minimum (image) and 0 (mask) first, as the reference code does."""
  h, w = mask.shape
  ph, pw = max(size - h, 0), max(size - w, 0)
  if ph or pw:
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    image = np.pad(image, pads + ((0, 0),), constant_values=image.min())
    mask = np.pad(mask, pads)
    h, w = mask.shape
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  return image[top:top + size, left:left + size], mask[top:top + size, left:left + size]


def draw(pool: SlicePool, n: int, rng: np.random.Generator, crop: int, channels: int):
  images, masks = [], []
  for _ in range(n):
    v = int(rng.integers(len(pool.volumes)))
    vol = pool.volumes[v]
    s = int(pool.slices[v][rng.integers(len(pool.slices[v]))])
    x, y = random_crop(context_stack(vol.image, s, channels), vol.mask[s], crop, rng)
    images.append(x)
    masks.append(y)
  return images, masks


@dataclasses.dataclass(frozen=True)
class MixedBatchConfig:
  batch_size: int
  steps_per_epoch: int
  num_epochs: int
  schedule: str
  crop: int
  channels: int = 1
  seed: int = 0

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs


def mixed_batch(step: int, source: SlicePool | None, target: SlicePool | None,
                cfg: MixedBatchConfig, process_index: int = 0, process_count: int = 1):
  """The batch of one step: dict(images [b, crop, crop, C] float32, masks [b, crop, crop, 1]
  float32, is_target [b] bool) with target samples first. With several processes each
  draws the whole batch's random numbers and keeps its own contiguous share."""
  epoch = step // cfg.steps_per_epoch
  n_target = target_count(cfg.schedule, epoch, cfg.num_epochs, cfg.batch_size)
  if n_target and target is None:
    raise ValueError("the schedule asks for target samples but there is no target pool")
  if n_target < cfg.batch_size and source is None:
    raise ValueError("the schedule asks for source samples but there is no source pool")
  rng = np.random.default_rng([cfg.seed, step])
  images, masks = draw(target, n_target, rng, cfg.crop, cfg.channels) if n_target else ([], [])
  if n_target < cfg.batch_size:
    xs, ys = draw(source, cfg.batch_size - n_target, rng, cfg.crop, cfg.channels)
    images += xs
    masks += ys
  share = cfg.batch_size // process_count
  keep = slice(process_index * share, (process_index + 1) * share)
  return {"images": np.stack(images)[keep].astype(np.float32),
          "masks": np.stack(masks)[keep, ..., None].astype(np.float32),
          "is_target": (np.arange(cfg.batch_size) < n_target)[keep]}


def mixed_batches(source: SlicePool | None, target: SlicePool | None, cfg: MixedBatchConfig,
                  steps_per_call: int = 1, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """grain dataset of chunks: element k stacks the batches of steps
  [k * steps_per_call, (k + 1) * steps_per_call) along a new leading axis."""
  return step_chunks(lambda s: mixed_batch(s, source, target, cfg, process_index,
                                           process_count),
                     cfg.total_steps, cfg.batch_size, steps_per_call, process_count)


def step_chunks(batch_of_step, total_steps: int, batch_size: int, steps_per_call: int,
                process_count: int) -> grain.MapDataset:
  """grain dataset whose element k stacks `batch_of_step(s)` (a dict of arrays; a pure
  function of the step, so a resumed run reads the same batches) for the steps of call k,
  [k * steps_per_call, (k + 1) * steps_per_call), along a new leading axis."""
  if total_steps % steps_per_call:
    raise ValueError(f"steps_per_call={steps_per_call} must divide the {total_steps} steps")
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} is not divisible by {process_count} processes")

  def chunk(k):
    batches = [batch_of_step(s) for s in range(k * steps_per_call, (k + 1) * steps_per_call)]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

  return grain.MapDataset.range(total_steps // steps_per_call).map(chunk)
