"""DiRA's transfer targets as cubes: crop pipelines from the published 3-D data sets (and
from a manifest of your own volumes) to train / val / test splits, streamed one volume at a
time and written crop by crop to `.npy` memmaps (`materialise`).

The paper's targets (Guo et al., DART 2022):
  NCC  LUNA16 lung-nodule false-positive reduction, classification (AUC): cubes centred on
       the candidates of candidates(_V2).csv, every nodule (class 1) of a scan and as many
       non-nodule candidates drawn at random from the same scan.
  LCS  LiTS liver segmentation (IoU): mask = liver including tumour (labels > 0).
  BMS  BraTS brain-tumour segmentation (IoU): FLAIR, mask = whole tumour (labels 1, 2, 4).

Splits. LUNA16 by subset: train = subset0-5, val = subset6-7, test = subset8-9. LiTS, BraTS
and manifests: cases sorted by id (a manifest's by image path), the first 70% train, the next
10% val, the last 20% test, each split at least one case (so at least 3 cases); a
manifest's `split` column (train / val / test) overrides.

Segmentation crops: `crops_per_volume` cubes per volume visited, volumes visited in a seeded
order (a fresh order every pass, cycling until `count`); even crops (0, 2, ...) centred, up
to size // 4 voxels off, on a random foreground voxel when the volume has one, odd crops (and
even ones of a volume without foreground) at a random corner. Cubes crossing the border are
padded with the normalised volume's minimum (masks with 0). Label = mask.sum() >= MIN_VOXELS.

Every generator yields (cube float32 [S, S, S] in [0, 1], mask uint8 [S, S, S], label int)
at most `count` times and is deterministic in (seed, split). Arguments are checked when the
function is called; the data are read only once iteration starts.

Manifest CSV (paths relative to the CSV's folder):
  image,mask[,split]    segmentation, mask > 0 is the foreground
  image,label[,split]   classification, the whole volume centre-cropped / padded to S^3,
                        one cube per row (rows in a seeded order)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from medda_jax.data import ct_sets
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.dira.volumes import INTENSITIES, cut, normalise, read_volume

SPLITS = ("train", "val", "test")
PAPER_TARGETS = {"ncc": "classification", "lcs": "segmentation", "bms": "segmentation"}
LUNA16_SUBSETS = {"train": (0, 1, 2, 3, 4, 5), "val": (6, 7), "test": (8, 9)}
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
MIN_VOXELS = 20

Crop = tuple[np.ndarray, np.ndarray, int]


@dataclasses.dataclass
class Split:
  """images float32 [N, S, S, S, 1] in [0, 1]; masks uint8 [N, S, S, S, 1] (zeros for a
  classification target); labels float32 [N] (1 where the crop holds >= min_voxels of the
  mask for segmentation targets; the class for classification)."""

  images: np.ndarray
  masks: np.ndarray
  labels: np.ndarray


def label_subset(split: Split, fraction: float, seed: int, stratify: bool) -> Split:
  """A seeded share of a training split (round(fraction * N) crops, at least 2), in the
  split's order: with `stratify` (classification) that share of each class, at least one
  crop of each. The same subset for every initialisation of a (fraction, seed)."""
  n = len(split.labels)
  if fraction >= 1.0:
    return split
  rng = np.random.default_rng([seed, 211, int(round(fraction * 1000))])
  labels = np.asarray(split.labels)
  groups = [np.flatnonzero(labels == v) for v in np.unique(labels)] if stratify else [np.arange(n)]
  rows = [g[np.sort(rng.permutation(len(g))[:max(1, int(round(fraction * len(g))))])]
          for g in groups]
  chosen = np.sort(np.concatenate(rows))
  if len(chosen) < 2:
    chosen = np.sort(rng.permutation(n)[:2])
  return Split(Rows(split.images, chosen), Rows(split.masks, chosen),
               np.asarray(split.labels)[chosen])


class Rows:
  """The rows `index` of an array, read when indexed (a memory map stays on disk)."""

  def __init__(self, array, index: np.ndarray):
    self.array, self.index = array, np.asarray(index)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, rows):
    return np.asarray(self.array[self.index[rows]])


# ---------------------------------------------------------------------------------------------
# arguments and splits


def _check(split: str, size: int, count: int, seed: int, crops_per_volume: int = 1) -> int:
  """The index of `split` in SPLITS, after checking the arguments."""
  if split not in SPLITS:
    raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  for field, value in (("size", size), ("count", count), ("crops_per_volume", crops_per_volume)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f"{field} must be a positive integer, got {value!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
  return SPLITS.index(split)


def split_bounds(n: int, what: str) -> dict[str, tuple[int, int]]:
  """[start, stop) of each split over `n` cases sorted by id: 70 / 10 / 20%, each >= 1."""
  if n < 3:
    raise DataError(f"{what} has {n} case{'s' if n != 1 else ''}; a train / val / test split "
                    "needs at least 3")
  a = int(np.floor(SPLIT_FRACTIONS[0] * n + 0.5))
  b = int(np.floor((SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) * n + 0.5))
  a = min(max(a, 1), n - 2)
  b = min(max(b, a + 1), n - 1)
  return {"train": (0, a), "val": (a, b), "test": (b, n)}


def _split_cases(cases: Sequence, split: str, what: str) -> list:
  start, stop = split_bounds(len(cases), what)[split]
  return list(cases[start:stop])


# ---------------------------------------------------------------------------------------------
# cropping


def crop_corners(shape, foreground: np.ndarray | None, size: int, crops: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
  """The corners of the `crops` cubes cut from one volume of `shape` ([Z, Y, X]):
  even ones around a random voxel of `foreground` (flat indices; None or empty: none),
  odd ones (and all of them without foreground) at a random corner."""
  corners = []
  for j in range(crops):
    if j % 2 == 0 and foreground is not None and foreground.size:
      centre = np.array(np.unravel_index(int(foreground[rng.integers(foreground.size)]), shape))
      jitter = rng.integers(-(size // 4), size // 4 + 1, 3)
      corners.append(centre + jitter - size // 2)
    else:
      corners.append(np.array([int(rng.integers(0, max(n - size, 0) + 1)) for n in shape]))
  return corners


def _segmentation_crops(cases: Sequence, read: Callable, split_index: int, size: int,
                        count: int, seed: int, crops_per_volume: int) -> Iterator[Crop]:
  """Crops from volumes visited in a seeded order (a new one each pass) until `count`;
  `read(case)` -> (normalised volume [Z, Y, X] float32, mask [Z, Y, X] bool)."""
  produced, visit = 0, 0
  while produced < count:
    passes, k = divmod(visit, len(cases))
    order = np.random.default_rng([seed, 83, split_index, passes]).permutation(len(cases))
    volume, mask = read(cases[int(order[k])])
    rng = np.random.default_rng([seed, 89, split_index, visit])
    foreground = np.flatnonzero(mask)
    fill = float(volume.min()) if volume.size else 0.0
    for corner in crop_corners(volume.shape, foreground, size, crops_per_volume, rng):
      if produced == count:
        break
      cube = cut(volume, corner, size, fill).astype(np.float32)
      m = cut(mask, corner, size, False).astype(np.uint8)
      yield cube, m, int(m.sum() >= MIN_VOXELS)
      produced += 1
    del volume, mask, foreground
    visit += 1


# ---------------------------------------------------------------------------------------------
# the paper's targets


def luna16_ncc(root, split: str, size: int, count: int, seed: int) -> Iterator[Crop]:
  """NCC cubes of the LUNA16 scans in the split's subsets, scan by scan (subset, then
  seriesuid): every nodule candidate (class 1) and as many non-nodule candidates drawn at
  random from the same scan (fewer if the scan has fewer), in candidate-file order; scans
  without a nodule candidate give none and are not read. Cube = normalise(candidate_crop)."""
  split_index = _check(split, size, count, seed)
  return _luna16_ncc(root, split, split_index, size, count, seed)


def _luna16_ncc(root, split, split_index, size, count, seed) -> Iterator[Crop]:
  luna = ct_sets.load_luna16(root)
  wanted = LUNA16_SUBSETS[split]
  uids = [uid for uid, scan in luna.scans.items() if scan.subset in wanted]
  if not uids:
    raise DataError(f"LUNA16 folder {luna.root} has no scan in subset{wanted[0]}-"
                    f"{wanted[-1]} (the {split} split)")
  produced = 0
  for position, uid in enumerate(uids):
    if produced == count:
      return
    centres, classes = luna.candidate_list(uid)
    positives = np.flatnonzero(classes == 1)
    if positives.size == 0:
      continue
    negatives = np.flatnonzero(classes != 1)
    rng = np.random.default_rng([seed, 71, split_index, position])
    drawn = rng.choice(negatives, min(positives.size, negatives.size), replace=False)
    chosen = np.sort(np.concatenate([positives, drawn]))
    volume, spacing, origin = ct_sets.read_scan(luna, uid)
    for i in chosen:
      if produced == count:
        return
      cube = normalise(ct_sets.candidate_crop(volume, spacing, origin, centres[i], size), "ct")
      yield cube, np.zeros((size,) * 3, np.uint8), int(classes[i])
      produced += 1
    del volume


def lits_lcs(root, split: str, size: int, count: int, seed: int,
             crops_per_volume: int = 8) -> Iterator[Crop]:
  """LCS cubes of the LiTS cases of the split: CT normalised, mask = liver incl. tumour."""
  split_index = _check(split, size, count, seed, crops_per_volume)

  def read(case):
    volume, labels, _ = ct_sets.read_lits_case(case)
    return normalise(volume, "ct"), labels > 0

  def crops():
    cases = _split_cases(ct_sets.load_lits(root), split, f"LiTS folder {os.fspath(root)}")
    yield from _segmentation_crops(cases, read, split_index, size, count, seed,
                                   crops_per_volume)
  return crops()


def brats_bms(root, split: str, size: int, count: int, seed: int,
              crops_per_volume: int = 8) -> Iterator[Crop]:
  """BMS cubes of the BraTS cases of the split: FLAIR, MR-normalised, mask = whole tumour.
  Only the FLAIR file and the segmentation of a case are read."""
  split_index = _check(split, size, count, seed, crops_per_volume)

  def read(case):
    image, labels, _ = ct_sets.read_brats_case(case)
    flair = image[..., case.modalities.index("flair")]
    return normalise(flair, "mr"), ct_sets.brats_regions(labels)["WT"]

  def crops():
    cases = _split_cases(ct_sets.load_brats(root, modalities=("flair",)), split,
                         f"BraTS folder {os.fspath(root)}")
    yield from _segmentation_crops(cases, read, split_index, size, count, seed,
                                   crops_per_volume)
  return crops()


# ---------------------------------------------------------------------------------------------
# your manifest


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  line: int
  image: str
  mask: str | None
  label: int | None
  split: str | None


def _read_header(path: str) -> list[str]:
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return [c.strip() for c in next(csv.reader(f), [])]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read manifest {path}: {e}") from e


def _kind(path: str, head: list[str]) -> str:
  columns = ", ".join(head) or "none"
  if "image" not in head:
    raise DataError(f"manifest {path} lacks column 'image' (columns: {columns})")
  if "mask" in head:
    return "segmentation"
  if "label" in head:
    return "classification"
  raise DataError(f"manifest {path} lacks column 'mask' (segmentation) or 'label' "
                  f"(classification) (columns: {columns})")


def manifest_target(path) -> str:
  """"segmentation" if the manifest CSV has a `mask` column, else "classification" if it has
  a `label` column (both: segmentation); it must have an `image` column."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"manifest {path} does not exist")
  return _kind(path, _read_header(path))


def read_manifest(path) -> tuple[str, list[ManifestRow]]:
  """(kind, rows sorted by image path) with absolute paths; every listed file must exist."""
  path = os.fspath(path)
  kind = manifest_target(path)
  folder = os.path.dirname(os.path.abspath(path))
  rows = []
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      head = [c.strip() for c in next(reader)]
      has_split = "split" in head
      for number, values in enumerate(reader, start=2):
        if not values or not any(v.strip() for v in values):
          continue
        if len(values) < len(head):
          raise DataError(f"manifest {path} line {number}: {len(values)} values, the header "
                          f"has {len(head)}")
        row = dict(zip(head, (v.strip() for v in values)))
        files = {}
        for column in ("image", "mask") if kind == "segmentation" else ("image",):
          if not row[column]:
            raise DataError(f"manifest {path} line {number}: empty {column!r}")
          files[column] = os.path.join(folder, row[column])
          if not os.path.isfile(files[column]):
            raise DataError(f"manifest {path} line {number}: {column} file {files[column]} "
                            "is missing")
        label = None
        if kind == "classification":
          try:
            label = float(row["label"])
          except ValueError:
            label = None
          if label is None or label != int(label):
            raise DataError(f"manifest {path} line {number}: label {row['label']!r} is not "
                            "an integer")
          label = int(label)
        split = row["split"] if has_split else None
        if has_split and split not in SPLITS:
          raise DataError(f"manifest {path} line {number}: split {split!r} is not one of "
                          f"{', '.join(SPLITS)}")
        rows.append(ManifestRow(number, files["image"], files.get("mask"), label, split))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read manifest {path}: {e}") from e
  return kind, sorted(rows, key=lambda r: (r.image, r.line))


def manifest_split(path, split: str) -> tuple[str, list[ManifestRow]]:
  """(kind, the rows of `split`): by the `split` column when there is one, else 70/10/20."""
  kind, rows = read_manifest(path)
  if rows and rows[0].split is not None:
    chosen = [r for r in rows if r.split == split]
    if not chosen:
      raise DataError(f"manifest {os.fspath(path)} has no row with split {split!r}")
    return kind, chosen
  return kind, _split_cases(rows, split, f"manifest {os.fspath(path)}")


def _read_pair(row: ManifestRow, intensity: str) -> tuple[np.ndarray, np.ndarray]:
  volume = read_volume(row.image)
  mask = read_volume(row.mask) > 0
  if mask.shape != volume.shape:
    raise DataError(f"{row.mask}: mask shape {mask.shape} (z, y, x) differs from image "
                    f"{row.image} {volume.shape}")
  return normalise(volume, intensity), mask


def manifest_crops(path, split: str, size: int, count: int, seed: int, intensity: str,
                   crops_per_volume: int = 8) -> Iterator[Crop]:
  """Cubes of a manifest's split: segmentation as for LiTS / BraTS (mask > 0 foreground);
  classification one cube per row, the whole volume centre-cropped / padded to size^3,
  rows in a seeded order, mask zeros. `intensity`: "ct" or "mr" normalisation."""
  split_index = _check(split, size, count, seed, crops_per_volume)
  if intensity not in INTENSITIES:
    raise ConfigError(f"intensity must be one of {', '.join(INTENSITIES)}, got {intensity!r}")

  def crops():
    kind, rows = manifest_split(path, split)
    if kind == "segmentation":
      yield from _segmentation_crops(rows, lambda r: _read_pair(r, intensity), split_index,
                                     size, count, seed, crops_per_volume)
      return
    order = np.random.default_rng([seed, 97, split_index]).permutation(len(rows))
    for k in order[:count]:
      row = rows[int(k)]
      volume = normalise(read_volume(row.image), intensity)
      corner = (np.asarray(volume.shape) - size) // 2
      cube = cut(volume, corner, size, float(volume.min()) if volume.size else 0.0)
      yield cube.astype(np.float32), np.zeros((size,) * 3, np.uint8), row.label
      del volume
  return crops()


# ---------------------------------------------------------------------------------------------
# on disk


def _paths(directory: str, name: str, split: str) -> dict[str, str]:
  stem = os.path.join(directory, f"{name}_{split}")
  return {"images": f"{stem}_images.npy", "masks": f"{stem}_masks.npy",
          "labels": f"{stem}_labels.npy", "done": f"{stem}.done"}


def _read_back(paths: dict[str, str], produced: int) -> Split:
  arrays = {k: np.load(paths[k], mmap_mode="r")[:produced] for k in ("images", "masks", "labels")}
  return Split(**arrays)


def materialise(directory, name: str, split: str, count: int, size: int,
                crops: Iterator[Crop]) -> Split:
  """Writes up to `count` crops to directory/<name>_<split>_{images,masks,labels}.npy one by
  one (memmaps), then <name>_<split>.done (JSON: count produced, count asked, size), and
  returns them as read-only memmaps with a channel axis. When the marker is there and was
  written for the same count and size, `crops` is not touched and the files are read back."""
  if split not in SPLITS:
    raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  for field, value in (("size", size), ("count", count)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f"{field} must be a positive integer, got {value!r}")
  directory = os.fspath(directory)
  paths = _paths(directory, name, split)
  if os.path.isfile(paths["done"]):
    try:
      with open(paths["done"], encoding="utf-8") as f:
        marker = json.load(f)
      produced = int(marker["count"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{paths['done']} is not a marker this code wrote ({e}); delete it") from e
    if marker.get("requested", count) == count and marker.get("size", size) == size:
      return _read_back(paths, produced)
  if os.path.exists(paths["done"]):
    os.remove(paths["done"])
  os.makedirs(directory, exist_ok=True)
  shape = (size,) * 3
  # written beside the final names and moved there at the end: a Split read back earlier
  # keeps its (old) files, and an interrupted run leaves no half-written array in place
  partial = {k: paths[k] + ".partial" for k in ("images", "masks", "labels")}
  images = np.lib.format.open_memmap(partial["images"], "w+", np.float32, (count, *shape, 1))
  masks = np.lib.format.open_memmap(partial["masks"], "w+", np.uint8, (count, *shape, 1))
  labels = np.lib.format.open_memmap(partial["labels"], "w+", np.float32, (count,))
  produced = 0
  for cube, mask, label in crops:
    if produced == count:
      break
    if np.shape(cube) != shape or np.shape(mask) != shape:
      raise DataError(f"{name} {split}: crop {produced} has shape {np.shape(cube)} / mask "
                      f"{np.shape(mask)}, expected {shape}")
    images[produced, ..., 0] = cube
    masks[produced, ..., 0] = mask
    labels[produced] = label
    produced += 1
  for array in (images, masks, labels):
    array.flush()
  del images, masks, labels
  if produced == 0:
    for key in partial:
      os.remove(partial[key])
    raise DataError(f"target {name}: the {split} split gave no crop")
  for key in partial:
    os.replace(partial[key], paths[key])
  temporary = paths["done"] + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump({"count": produced, "requested": count, "size": size}, f)
  os.replace(temporary, paths["done"])
  return _read_back(paths, produced)
