"""Medical Segmentation Decathlon (MSD) as 24 binary 2-D slice datasets (MetaMedSeg).

Reads the layout the publisher ships (one folder per task, as extracted from the tarballs):

  <root>/Task02_Heart/dataset.json
  <root>/Task02_Heart/imagesTr/la_003.nii.gz   3-D, or 4-D with the channel last (Task01, Task05)
  <root>/Task02_Heart/labelsTr/la_003.nii.gz   3-D integer label map

The cases are the "training" entries of dataset.json; files whose names start with `._`
(macOS resource forks found in the tarballs) are ignored. Every (structure x MR sequence)
pair becomes one binary dataset (`MSD_DATASETS`). Slices are `volume[:, :, j]` (axial for
MSD); a slice enters a dataset when `count(label == k) >= T`. Preprocessing:

* intensities: `zscore_nonzero` (paper) subtracts the mean and divides by the standard
  deviation of the non-zero voxels of the whole volume (per channel), applied to every
  voxel; `slice_minmax` rescales each resized slice to [0, 1] like the reference code's
  PNG export (without its 8-bit quantisation);
* images are resized to `image_size` x `image_size` with `skimage.transform.resize`
  (order 1, anti-aliasing); each label mask is resized as a float and re-binarised at 0.5;
* `threshold_space="native"` (reference code, default) counts pixels on the native slice;
  `"resized"` (paper) counts them on the resized mask, with T scaled by
  `(image_size / 256) ** 2` so that it means the same area as at the paper's 256 x 256.

The kept slices of a task are stored once per (task, channel) in shared banks; every dataset
points into them with `rows`. With a `cache_dir` the banks are files read memory-mapped
(`data/arraycache.py`), so a run holds only the slices it samples; without one they are in
memory (float32, `image_size**2` per slice and channel).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from skimage.transform import resize

from medda_jax.data import arraycache, prepared
from medda_jax.data.collection import SliceCollection, SliceDataset
from medda_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

THRESHOLD_SPACES = ("native", "resized")
# "modality": CT channels through a Hounsfield window, MR channels by `zscore_nonzero`.
NORMALISATIONS = ("modality", "zscore_nonzero", "slice_minmax")
MODALITIES = ("CT", "MR")
# Abdominal soft-tissue window (level 40 HU, width 400 HU): it spans fat (about -100 HU)
# to contrast-enhanced parenchyma and vessels (about 200 HU), the structures of the CT
# tasks (liver, pancreas, spleen, colon, hepatic vessels); air and bone saturate at its ends.
DEFAULT_CT_WINDOW = (-160.0, 240.0)
# Thresholds are given in pixels of a 256 x 256 slice (paper) when counted after resizing.
_REFERENCE_SIZE = 256
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MsdDataset:
  """One binary dataset cut from an MSD task.

  Attributes:
    name: dataset key (reference-code name, e.g. `prostate_peripheral_T2`).
    task: MSD task folder, e.g. `Task05_Prostate`.
    label: label value k; the mask is `label == k` only.
    channel: image channel (last axis of a 4-D image), None for 3-D tasks.
    group: organ group for 1/z task sampling.
    threshold: T, minimum number of foreground pixels for a slice to be kept.
  """

  name: str
  task: str
  label: int
  channel: int | None
  group: str
  threshold: int


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the loader needs to know about a task folder.

  Attributes:
    name: folder name (also the cache-file prefix), e.g. `Task02_Heart`.
    channels: image channels of a 4-D task; None for 3-D images.
    modalities: "CT" or "MR" per channel (one entry for 3-D images).
    label_values: every foreground value of the label maps that a dataset uses.
  """

  name: str
  channels: int | None
  modalities: tuple[str, ...]
  label_values: tuple[int, ...]

  def modality(self, channel: int | None) -> str:
    return self.modalities[0 if channel is None else channel]


# Number of image channels of the 4-D tasks; every other task has 3-D images.
FOUR_D_TASKS = {"Task01_BrainTumour": 4, "Task05_Prostate": 2}
# Modality per channel of the official tasks (their dataset.json "modality" entries).
_TASK_MODALITIES = {
    "Task01_BrainTumour": ("MR",) * 4, "Task02_Heart": ("MR",), "Task03_Liver": ("CT",),
    "Task04_Hippocampus": ("MR",), "Task05_Prostate": ("MR", "MR"), "Task06_Lung": ("CT",),
    "Task07_Pancreas": ("CT",), "Task08_HepaticVessel": ("CT",), "Task09_Spleen": ("CT",),
    "Task10_Colon": ("CT",),
}

_BRAIN_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
_BRAIN_LABELS = (("edema", 1, 1000), ("ne_tumour", 2, 400), ("e_tumour", 3, 600))


def _table() -> dict[str, MsdDataset]:
  rows = [MsdDataset(f"brain_{structure}_{sequence}", "Task01_BrainTumour", label, c, "brain", t)
          for structure, label, t in _BRAIN_LABELS for c, sequence in enumerate(_BRAIN_CHANNELS)]
  rows += [
      MsdDataset("heart", "Task02_Heart", 1, None, "heart", 700),
      MsdDataset("hippocampus_anterior", "Task04_Hippocampus", 1, None, "hippocampus", 100),
      MsdDataset("hippocampus_posterior", "Task04_Hippocampus", 2, None, "hippocampus", 100),
      # Channel 0 is T2; the ADC channel is not used.
      MsdDataset("prostate_peripheral_T2", "Task05_Prostate", 1, 0, "prostate", 300),
      MsdDataset("prostate_transitional_T2", "Task05_Prostate", 2, 0, "prostate", 600),
      MsdDataset("lung", "Task06_Lung", 1, None, "lung", 1000),
      MsdDataset("pancreas", "Task07_Pancreas", 1, None, "pancreas", 1000),
      MsdDataset("pancreas_cancer", "Task07_Pancreas", 2, None, "pancreas", 1000),
      MsdDataset("vessel", "Task08_HepaticVessel", 1, None, "vessel", 1000),
      MsdDataset("vessel_cancer", "Task08_HepaticVessel", 2, None, "vessel", 1000),
      MsdDataset("spleen", "Task09_Spleen", 1, None, "spleen", 600),
      MsdDataset("colon", "Task10_Colon", 1, None, "colon", 400),
  ]
  return {r.name: r for r in rows}


MSD_DATASETS: dict[str, MsdDataset] = _table()
# Task03 Liver is not among the paper's datasets (spec: "liver is not used"); its datasets
# load only when named. Thresholds as for the other large CT structures (not from the paper).
EXTRA_DATASETS: dict[str, MsdDataset] = {
    "liver": MsdDataset("liver", "Task03_Liver", 1, None, "liver", 1000),
    "liver_tumour": MsdDataset("liver_tumour", "Task03_Liver", 2, None, "liver", 400),
}
KNOWN_DATASETS: dict[str, MsdDataset] = {**MSD_DATASETS, **EXTRA_DATASETS}
# Fine-tuning targets of the paper; colon is also held out of meta-training (reference code).
TARGETS = ("heart", "spleen", "prostate_peripheral_T2", "prostate_transitional_T2")
MSD_TASKS = tuple(sorted({d.task for d in KNOWN_DATASETS.values()}))


def _task_info(task: str) -> TaskInfo:
  return TaskInfo(task, FOUR_D_TASKS.get(task), _TASK_MODALITIES[task],
                  tuple(sorted({d.label for d in KNOWN_DATASETS.values() if d.task == task})))


KNOWN_TASKS: dict[str, TaskInfo] = {t: _task_info(t) for t in MSD_TASKS}

_LAYOUT = """expected the Medical Segmentation Decathlon layout, one folder per task:
  <root>/Task02_Heart/dataset.json
  <root>/Task02_Heart/imagesTr/la_003.nii.gz
  <root>/Task02_Heart/labelsTr/la_003.nii.gz
  (task folders: {tasks})"""


def _layout() -> str:
  return _LAYOUT.format(tasks=", ".join(MSD_TASKS))


def _user_hint(root: str) -> str:
  """Points at config.data.user when `root` is, or holds, a task folder of another name."""
  folders = [root] + [os.path.join(root, d) for d in sorted(os.listdir(root))]
  found = [f for f in folders if os.path.isfile(os.path.join(f, "dataset.json"))]
  if not found:
    return ""
  return (f"\n{found[0]} holds a dataset.json: a Decathlon-layout folder with its own task "
          "name is read as your own dataset, e.g. --config.data.user=\"('mytask=" + found[0]
          + "',)\"")


def effective_threshold(dataset: MsdDataset, image_size: int, threshold_space: str) -> float:
  """Pixel count a slice's mask must reach in the space it is counted in."""
  if threshold_space == "native":
    return float(dataset.threshold)
  return dataset.threshold * (image_size / _REFERENCE_SIZE) ** 2


def case_stem(path: str) -> str:
  """`imagesTr/la_003.nii.gz` -> `la_003`."""
  name = os.path.basename(path)
  for ext in (".nii.gz", ".nii"):
    if name.endswith(ext):
      return name[:-len(ext)]
  return name


@dataclasses.dataclass(frozen=True)
class _Case:
  """A training case in the published layout: two NIfTI files."""
  stem: str
  image: str
  label: str

  def fingerprint(self) -> tuple:  # file sizes: a re-extracted data set misses the cache
    return (self.stem, os.path.getsize(self.image), os.path.getsize(self.label))

  def check(self, task: TaskInfo) -> None:
    _check_shapes(task, self)

  def read_image(self) -> np.ndarray:
    return _read_array(self.image, np.float32)

  def read_label(self) -> np.ndarray:
    label = _read_array(self.label, np.int64)
    # A label map stored as floats is rounded to its integer values.
    return np.rint(label) if np.issubdtype(label.dtype, np.floating) else label


def _read_cases(task_dir: str) -> list[_Case]:
  """Training cases listed in dataset.json, sorted by stem, with their files checked."""
  meta_path = os.path.join(task_dir, "dataset.json")
  if not os.path.isfile(meta_path):
    raise DataError(f"{task_dir} has no dataset.json\n{_layout()}")
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"cannot read {meta_path}: not valid JSON ({e})") from e
  entries = meta.get("training") if isinstance(meta, dict) else None
  if not isinstance(entries, list) or not all(
      isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label"), str)
      for e in entries):
    raise DataError(f"{meta_path} is invalid: expected a \"training\" list of "
                    "{\"image\": \"./imagesTr/<case>.nii.gz\", "
                    "\"label\": \"./labelsTr/<case>.nii.gz\"}")
  cases = []
  for entry in entries:
    if os.path.basename(entry["image"]).startswith("._"):
      continue
    image = os.path.normpath(os.path.join(task_dir, entry["image"]))
    label = os.path.normpath(os.path.join(task_dir, entry["label"]))
    for kind, path in (("image", image), ("label", label)):
      if not os.path.isfile(path):
        raise DataError(f"{kind} file {path} listed in {meta_path} is missing\n{_layout()}")
    cases.append(_Case(case_stem(image), image, label))
  if not cases:
    raise DataError(f"{meta_path} lists no training cases")
  cases.sort(key=lambda c: c.stem)
  return cases


TFDS_NAME = "medical_decathlon"  # the builder in medda_jax.data.builders


def tfds_config(task: str) -> str:
  return task.lower()  # Task02_Heart -> task02_heart


def _tfds_name(task: str) -> str:
  return f"{TFDS_NAME}/{tfds_config(task)}"


def _tfds_cases(data_dir: str, task: str, cache_dir: str | None) -> list["_TfdsCase"]:
  """The cases of a task prepared by the `medical_decathlon` builder, sorted by stem."""
  source = prepared.PreparedDataset(data_dir, _tfds_name(task), "<Decathlon root>")
  cases = [_TfdsCase(stem, task, source, i)
           for i, (stem,) in enumerate(source.columns("case", cache_dir=cache_dir))]
  if not cases:
    raise DataError(f"{source.where} holds no training case")
  return sorted(cases, key=lambda c: c.stem)


@dataclasses.dataclass(frozen=True)
class _TfdsCase:
  """A training case of a prepared TFDS dataset; shapes were checked when it was built.
  The volumes are stored as published, so the slices equal those of the NIfTI files."""
  stem: str
  task: str
  source: prepared.PreparedDataset
  index: int

  def fingerprint(self) -> tuple:
    return (self.stem, self.source.fingerprint)

  def check(self, task: TaskInfo) -> None:
    pass

  def read_image(self) -> np.ndarray:
    image = self.source.read(self.index, "image").astype(np.float32, copy=False)
    # The builder stores 3-D tasks with a channel axis of 1.
    return image if self.task in FOUR_D_TASKS else image[..., 0]

  def read_label(self) -> np.ndarray:
    return self.source.read(self.index, "label").astype(np.int64)


def _header_shape(path: str) -> tuple[int, ...]:
  try:
    return tuple(int(n) for n in nib.load(path).shape)
  except Exception as e:  # nibabel raises many types for broken files
    raise DataError(f"cannot read NIfTI file {path}: {e}") from e


def _read_array(path: str, dtype) -> np.ndarray:
  try:
    img = nib.load(path)
    if np.issubdtype(dtype, np.floating):
      return img.get_fdata(dtype=dtype)
    return np.asanyarray(img.dataobj)
  except Exception as e:  # a truncated gzip fails only when the data is read
    raise DataError(f"cannot read NIfTI file {path}: {e}") from e


def _check_shapes(info: TaskInfo, case: _Case) -> None:
  image_shape, label_shape = _header_shape(case.image), _header_shape(case.label)
  channels, task = info.channels, info.name
  if channels is not None and len(image_shape) != 4:
    raise DataError(f"{case.image}: {task} images must be 4-D (x, y, z, channel), got shape "
                    f"{image_shape}")
  if channels is None and len(image_shape) != 3:
    raise DataError(f"{case.image}: {task} images must be 3-D (x, y, z), got {len(image_shape)}-D "
                    f"shape {image_shape}")
  if len(label_shape) != 3:
    raise DataError(f"{case.label}: labels must be 3-D (x, y, z), got shape {label_shape}")
  if image_shape[:3] != label_shape:
    raise DataError(f"case {case.stem} of {task}: image shape {image_shape} and label shape "
                    f"{label_shape} differ")


@dataclasses.dataclass(frozen=True)
class _Options:
  image_size: int
  threshold_space: str
  normalisation: str
  ct_window: tuple[float, float] | None = None  # set only where a CT channel uses it

  def for_task(self, info: TaskInfo) -> "_Options":
    """The options as they apply to a task: "modality" on an MR-only task is the z-score
    (same cache key as before CT windows existed); the window is kept only for CT."""
    if self.normalisation != "modality":
      return dataclasses.replace(self, ct_window=None)
    if "CT" not in info.modalities:
      return dataclasses.replace(self, normalisation="zscore_nonzero", ct_window=None)
    return self

  def key(self) -> dict:
    key = dataclasses.asdict(self)
    if key["ct_window"] is None:
      del key["ct_window"]
    return key


def ct_window(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
  """Hounsfield units clipped to the window [lo, hi] and scaled to [0, 1]."""
  lo, hi = (np.float32(w) for w in window)
  return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalise_slices(volume: np.ndarray, rows: np.ndarray, modality: str,
                     options: _Options) -> np.ndarray | None:
  """`volume[:, :, rows]` normalised by the per-volume recipe of `modality`, or None when
  the normalisation is per slice (after resizing)."""
  if options.normalisation == "slice_minmax":
    return None
  if options.normalisation == "modality" and modality == "CT":
    return ct_window(volume[:, :, rows], options.ct_window)
  mean, std = _nonzero_stats(volume)  # statistics of the whole volume
  return (volume[:, :, rows] - np.float32(mean)) / np.float32(std)


def _resize_slices(stack: np.ndarray, size: int) -> np.ndarray:
  """[H, W, n] -> [n, size, size] float32, each slice resized on its own.

  The batched call equals per-slice `resize(slice, (size, size))`: the unit zoom along the
  slice axis neither smooths nor interpolates across slices.
  """
  out = resize(stack.astype(np.float32, copy=False), (size, size, stack.shape[2]), order=1,
               anti_aliasing=True, preserve_range=True)
  return np.moveaxis(out, 2, 0).astype(np.float32, copy=False)


def _resized_masks(label: np.ndarray, value: int, slices: np.ndarray, size: int) -> np.ndarray:
  """Binary masks of `label == value` on `slices`, resized as float and cut at 0.5."""
  if slices.size == 0:
    return np.zeros((0, size, size), bool)
  return _resize_slices(label[:, :, slices] == value, size) > 0.5


def _nonzero_stats(volume: np.ndarray) -> tuple[float, float]:
  """Mean and std of the non-zero voxels (0 and 1 when there are none or std is 0)."""
  nonzero = volume[volume != 0]
  if nonzero.size == 0:
    return 0.0, 1.0
  mean = float(nonzero.mean(dtype=np.float64))
  std = float(nonzero.std(dtype=np.float64))
  return mean, (std if std > 0 else 1.0)


def _process_case(info: TaskInfo, case: _Case, datasets: Sequence[MsdDataset],
                  options: _Options) -> dict:
  """Kept slices of every dataset, and the preprocessed slices they need, for one case."""
  size = options.image_size
  label = case.read_label()
  values = list(info.label_values)
  counts = {k: (label == k).sum(axis=(0, 1)) for k in values}

  resized = {}
  kept = {}
  if options.threshold_space == "native":
    for d in datasets:
      kept[d.name] = np.flatnonzero(counts[d.label] >= d.threshold)
  else:
    for k in values:
      present = np.flatnonzero(counts[k] > 0)
      resized[k] = (present, _resized_masks(label, k, present, size))
    for d in datasets:
      present, masks = resized[d.label]
      thr = effective_threshold(d, size, "resized")
      kept[d.name] = present[masks.sum(axis=(1, 2)) >= thr]
  union = np.unique(np.concatenate([kept[d.name] for d in datasets]))

  # The label bank holds every structure of the task on the kept slices.
  labels = np.zeros((union.size, size, size), np.uint8)
  for k in values:
    if options.threshold_space == "native":
      present = union[counts[k][union] > 0]
      masks = _resized_masks(label, k, present, size)
    else:
      present, masks = resized[k]
      sel = np.isin(present, union)
      present, masks = present[sel], masks[sel]
    idx = np.searchsorted(union, present)
    # The resized indicator maps of all values sum to one, so at most one exceeds 0.5.
    labels[idx] = np.where(masks, np.uint8(k), labels[idx])
  del label

  channels = sorted({d.channel for d in datasets}, key=lambda c: -1 if c is None else c)
  by_channel = {}
  if union.size:
    image = case.read_image()
    if info.channels is not None and max(channels) >= image.shape[3]:
      raise DataError(f"{case.image}: needs channel {max(channels)} but the image has "
                      f"{image.shape[3]} channel(s), shape {image.shape}")
    for c in channels:
      rows = np.unique(np.concatenate([kept[d.name] for d in datasets if d.channel == c]))
      volume = image if c is None else image[..., c]
      stack = normalise_slices(volume, rows, info.modality(c), options)
      if stack is not None:
        slices = _resize_slices(stack, size)
      else:
        slices = _resize_slices(volume[:, :, rows], size)
        lo = slices.min(axis=(1, 2), keepdims=True)
        span = slices.max(axis=(1, 2), keepdims=True) - lo
        slices = np.where(span > 0, (slices - lo) / np.where(span > 0, span, 1), 0)
        slices = slices.astype(np.float32)
      by_channel[c] = (rows, slices)
    del image
  else:
    by_channel = {c: (union, np.zeros((0, size, size), np.float32)) for c in channels}
  return {"kept": kept, "union": union, "labels": labels, "images": by_channel}


def _channel_key(c: int | None) -> str:
  return "none" if c is None else str(c)


def _write_task(results: Iterable[dict], datasets: Sequence[MsdDataset],
                writer: arraycache.Writer) -> None:
  """Per-case results -> the flat arrays of one task (the cache format), a case at a time."""
  channels = sorted({d.channel for d in datasets}, key=lambda c: -1 if c is None else c)
  offsets = dict.fromkeys(channels, 0)  # rows of each channel's image bank so far
  shared = True  # every channel keeps the slices of the union: one label bank serves all
  names = []
  for v, r in enumerate(results):
    names.append(r["stem"])
    writer.append("labels", r["labels"])
    for c in channels:
      key = _channel_key(c)
      rows, images = r["images"][c]
      shared = shared and np.array_equal(rows, r["union"])
      writer.append(f"images_{key}", images)
      writer.append(f"labels_{key}", r["labels"][np.searchsorted(r["union"], rows)])
      for d in (d for d in datasets if d.channel == c):
        kept = r["kept"][d.name]
        writer.append(f"rows_{d.name}", offsets[c] + np.searchsorted(rows, kept).astype(np.int64))
        writer.append(f"volume_{d.name}", np.full(kept.size, v, np.int64))
        writer.append(f"slice_{d.name}", kept.astype(np.int64))
      offsets[c] += rows.size
  for key in (["labels_" + _channel_key(c) for c in channels] if shared else ["labels"]):
    writer.drop(key)
  writer.put("labels_shared", np.array(shared))
  writer.put("volume_names", np.array(names, dtype=str))


def _cache_path(cache_dir: str, info: TaskInfo, cases: Sequence[_Case],
                datasets: Sequence[MsdDataset], options: _Options) -> str:
  key = {"version": _CACHE_VERSION, "task": info.name, "options": options.key(),
         "datasets": sorted(d.name for d in datasets),
         "cases": [c.fingerprint() for c in cases]}
  if info.name not in KNOWN_TASKS:  # a user's task: its table comes from its files and config
    key["table"] = [dataclasses.astuple(d) for d in datasets] + [dataclasses.astuple(info)]
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"{info.name}_{digest}")


def _load_task(cases: Sequence[_Case], info: TaskInfo, datasets: Sequence[MsdDataset],
               options: _Options, cache_dir: str | None) -> dict[str, SliceDataset]:
  """The task's datasets; their banks are memory-mapped from the cache folder (made first,
  a few cases at a time, when absent), so a run reads only the slices it samples."""
  options = options.for_task(info)
  path = None if cache_dir is None else _cache_path(cache_dir, info, cases, datasets, options)

  def fill(writer: arraycache.Writer) -> None:
    for case in cases:
      case.check(info)
    log.info("preprocessing %s: %d cases", info.name, len(cases))
    # zlib inflation and numpy release the GIL for part of the time; results keep case order.
    results = arraycache.ordered_map(
        lambda c: {**_process_case(info, c, datasets, options), "stem": c.stem}, cases)
    _write_task(results, datasets, writer)

  arrays = arraycache.build(path, fill)
  volume_names = tuple(str(s) for s in arrays["volume_names"])
  shared = bool(arrays["labels_shared"])
  out = {}
  for d in datasets:
    key = _channel_key(d.channel)
    out[d.name] = SliceDataset(
        name=d.name, group=d.group, images=arrays[f"images_{key}"],
        labels=arrays["labels"] if shared else arrays[f"labels_{key}"],
        label_values=(d.label,), rows=arrays[f"rows_{d.name}"],
        volume=arrays[f"volume_{d.name}"], slice_index=arrays[f"slice_{d.name}"],
        volume_names=volume_names)
  return out


def check_options(image_size, threshold_space: str, normalisation: str,
                  ct_window=DEFAULT_CT_WINDOW) -> _Options:
  """The preprocessing options, checked."""
  if threshold_space not in THRESHOLD_SPACES:
    raise ConfigError(f"threshold_space must be one of {THRESHOLD_SPACES}, got {threshold_space!r}")
  if normalisation not in NORMALISATIONS:
    raise ConfigError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
  window = tuple(ct_window)
  if (len(window) != 2 or not all(isinstance(w, (int, float)) for w in window)
      or not window[0] < window[1]):
    raise ConfigError(f"ct_window must be (low, high) in Hounsfield units with low < high, "
                      f"got {ct_window!r}")
  return _Options(int(image_size), threshold_space, normalisation,
                  tuple(float(w) for w in window))


def load_msd(root: str, datasets: Iterable[str] | None = None, image_size: int = 256,
             threshold_space: str = "native", normalisation: str = "modality",
             cache_dir: str | None = None, layout: str = "files",
             ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
             include: Iterable[str] = ()) -> SliceCollection:
  """Loads MSD datasets (names of `KNOWN_DATASETS`) from the published layout under `root`,
  or from the TFDS datasets the `medical_decathlon` builder prepared there.

  Args:
    root: folder holding the `TaskXX_Name` folders (`layout="files"`), or the TFDS data
      dir holding `medical_decathlon/<taskxx_name>/<version>/` (`layout="tfds"`).
    datasets: names to load; None loads every paper dataset (`MSD_DATASETS`) whose task
      is there, plus the names in `include` (e.g. `liver`).
    image_size: side of the square slices.
    threshold_space: count the inclusion threshold on the "native" or the "resized" mask.
    normalisation: "modality" (CT: `ct_window`, MR: z-score), "zscore_nonzero" (per
      volume, every modality: the paper) or "slice_minmax" (per slice, to [0, 1]).
    cache_dir: if given, preprocessed banks are stored there (a folder of .npy files per
      task and set of options), reused, and read memory-mapped.
    ct_window: Hounsfield window (low, high) of CT channels, scaled to [0, 1].

  Returns:
    A SliceCollection in `KNOWN_DATASETS` order; datasets of one task share their banks.
  """
  options = check_options(image_size, threshold_space, normalisation, ct_window)
  if layout not in prepared.LAYOUTS:
    raise ConfigError(f"layout must be one of {prepared.LAYOUTS}, got {layout!r}")
  root = os.fspath(root)
  tfds_layout = layout == "tfds"
  if not os.path.isdir(root):
    what = "TFDS data dir" if tfds_layout else "MSD root folder"
    raise DataError(f"{what} {root} does not exist" + ("" if tfds_layout else f"\n{_layout()}"))
  def present(task: str) -> bool:
    return (prepared.is_prepared(root, _tfds_name(task)) if tfds_layout
            else os.path.isdir(os.path.join(root, task)))

  if datasets is None:
    names = [n for n, d in MSD_DATASETS.items() if present(d.task)]
    if not names and not include:
      raise DataError(
          f"no prepared {TFDS_NAME} task found in {root}; prepare each task with\n  "
          + prepared.build_command(f"{TFDS_NAME}/<task>", root, "<Decathlon root>")
          + f"\n(tasks: {', '.join(map(tfds_config, MSD_TASKS))})"
          if tfds_layout else f"no MSD task folder found in {root}\n{_layout()}{_user_hint(root)}")
    datasets = names + list(include)
  requested = [datasets] if isinstance(datasets, str) else list(datasets)
  unknown = [n for n in requested if n not in KNOWN_DATASETS]
  if unknown:
    raise DataError(f"unknown MSD dataset(s) {unknown}; known: {', '.join(KNOWN_DATASETS)}")
  names = [n for n in KNOWN_DATASETS if n in requested]
  for n in names:
    task = KNOWN_DATASETS[n].task
    if not present(task):
      raise DataError(
          f"dataset {n} needs {task}, not prepared in {root}; prepare it with\n  "
          + prepared.build_command(_tfds_name(task), root, "<Decathlon root>") if tfds_layout
          else f"dataset {n} needs the task folder {os.path.join(root, task)}, which does "
          f"not exist\n{_layout()}")

  loaded: dict[str, SliceDataset] = {}
  tasks = list(dict.fromkeys(KNOWN_DATASETS[n].task for n in names))
  for task in tasks:
    cases = (_tfds_cases(root, task, cache_dir) if tfds_layout
             else _read_cases(os.path.join(root, task)))
    loaded.update(_load_task(cases, KNOWN_TASKS[task], [KNOWN_DATASETS[n] for n in names
                                                        if KNOWN_DATASETS[n].task == task],
                             options, cache_dir))
  origin = f"the TFDS datasets in {root}" if tfds_layout else root
  description = (f"Medical Segmentation Decathlon from {origin} ({', '.join(tasks)}): "
                 f"{len(names)} datasets, {image_size}x{image_size} slices, "
                 f"threshold_space={threshold_space}, normalisation={normalisation}")
  return SliceCollection({n: loaded[n] for n in names}, description)
