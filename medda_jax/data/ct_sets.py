"""LUNA16, LiTS and BraTS in the layouts their publishers ship (3-D self-supervised
pre-training and its targets, e.g. DiRA's stepwise pre-training).

Everything is streamed: a loader returns a table of file paths and metadata (the CSVs of
LUNA16 as small per-series arrays), and a `read_*` function reads one case when asked, so a
data set is never held in memory as a whole.

Axis order: every reader returns arrays in (z, y, x) order, the order numpy gives a
MetaImage, i.e. the file's voxel axes reversed (for NIfTI, `read_nifti`'s stored (i, j, k)
order transposed to (k, j, i)); spacing and origin are in the same order. No reorientation
is done: the axes are the file's voxel axes, whatever its direction cosines or affine say.

LUNA16 (Setio et al. 2017), as extracted from the challenge's zip files:

  <root>/subset0/<seriesuid>.mhd + <seriesuid>.raw ... <root>/subset9/...
  <root>/annotations.csv     seriesuid,coordX,coordY,coordZ,diameter_mm
  <root>/candidates_V2.csv   seriesuid,coordX,coordY,coordZ,class (or candidates.csv; V2 is
                             read when both are there)

  Coordinates are world millimetres in (x, y, z); the scans have identity direction
  matrices, so voxel = (world - origin) / spacing per axis (`world_to_voxel`). The CSVs are
  optional (pre-training needs only the scans).

LiTS (Bilic et al. 2023), the challenge's training release:

  <root>/volume-0.nii, <root>/segmentation-0.nii, ... volume-130.nii
  or <root>/Training Batch 1/volume-0.nii ... <root>/Training Batch 2/volume-130.nii
  (any folder directly under root is searched, so the segmentations may also sit in a
  folder of their own; `.nii.gz` accepted). Labels 0 background, 1 liver, 2 tumour.

BraTS 2018-2021 training data, one folder per case:

  <root>/<case>/<case>_flair.nii.gz, _t1, _t1ce, _t2, _seg  (.nii accepted)

  Case folders may sit directly under root or up to two levels below it, e.g.
  `MICCAI_BraTS2020_TrainingData/<case>/` or `HGG/<case>/`, `LGG/<case>/` (2018, 2019).
  Labels 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from medda_jax.data.metaimage import read_metaimage
from medda_jax.data.volumes import read_nifti
from medda_jax.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# LUNA16

_SUBSET = re.compile(r"^subset(\d+)$")
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
CANDIDATE_FILES = ("candidates_V2.csv", "candidates.csv")


@dataclasses.dataclass(frozen=True)
class Luna16Scan:
  """One CT scan: `path` is its `.mhd` header, `subset` the index of its subset folder."""

  seriesuid: str
  path: str
  subset: int


@dataclasses.dataclass(frozen=True)
class Luna16:
  """The LUNA16 scans found under root and their CSV rows, by series.

  Attributes:
    root: the LUNA16 folder.
    scans: seriesuid -> scan, ordered by subset, then seriesuid.
    annotations: seriesuid -> [N, 4] float64 rows (coordX, coordY, coordZ, diameter_mm);
      series without a nodule are absent.
    candidates: seriesuid -> [N, 4] float64 rows (coordX, coordY, coordZ, class).
    annotations_file, candidates_file: the CSVs read (None: not in root).
    dropped_annotations, dropped_candidates: CSV rows naming a series that is not in the
      subsets read (absent from disk, or in a subset left out by `subsets`).
  """

  root: str
  scans: dict[str, Luna16Scan]
  annotations: dict[str, np.ndarray]
  candidates: dict[str, np.ndarray]
  annotations_file: str | None = None
  candidates_file: str | None = None
  dropped_annotations: int = 0
  dropped_candidates: int = 0

  def series(self) -> list[str]:
    return list(self.scans)

  def nodules(self, seriesuid: str) -> tuple[np.ndarray, np.ndarray]:
    """(centres [N, 3] world (x, y, z) mm, diameters [N] mm) of the series' nodules."""
    if self.annotations_file is None:
      raise DataError(f"LUNA16 folder {self.root} has no annotations.csv")
    rows = self.annotations.get(seriesuid, np.zeros((0, 4)))
    return rows[:, :3], rows[:, 3]

  def candidate_list(self, seriesuid: str) -> tuple[np.ndarray, np.ndarray]:
    """(centres [N, 3] world (x, y, z) mm, classes [N] int64: 1 nodule) of the series."""
    if self.candidates_file is None:
      raise DataError(f"LUNA16 folder {self.root} has no {' or '.join(CANDIDATE_FILES)}")
    rows = self.candidates.get(seriesuid, np.zeros((0, 4)))
    return rows[:, :3], rows[:, 3].astype(np.int64)


def _read_series_table(path: str, columns: Sequence[str],
                       keep: set[str]) -> tuple[dict[str, np.ndarray], int]:
  """Rows of a LUNA16 CSV grouped by seriesuid as float64 arrays of the columns after the
  first, streamed row by row (candidates_V2.csv has 750k rows); rows of series not in
  `keep` are counted and dropped."""
  grouped: dict[str, list[list[float]]] = {}
  dropped = 0
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      head = [c.strip() for c in next(reader, [])]
      for c in columns:
        if c not in head:
          raise DataError(f"{path} lacks column {c!r} (columns: {', '.join(head) or 'none'})")
      index = [head.index(c) for c in columns]
      for number, row in enumerate(reader, start=2):
        if not row or not any(v.strip() for v in row):
          continue
        if len(row) < len(head):
          raise DataError(f"{path} line {number}: {len(row)} values, the header has "
                          f"{len(head)}")
        uid = row[index[0]].strip()
        if uid not in keep:
          dropped += 1
          continue
        try:
          values = [float(row[i]) for i in index[1:]]
        except ValueError:
          raise DataError(f"{path} line {number}: a value of {', '.join(columns[1:])} is not "
                          "a number") from None
        grouped.setdefault(uid, []).append(values)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read {path}: {e}") from e
  return {uid: np.array(rows, np.float64) for uid, rows in grouped.items()}, dropped


def load_luna16(root, subsets: Sequence[int] | None = None) -> Luna16:
  """The LUNA16 scans in `root/subset*/` (only the subset indices in `subsets` when given)
  and the rows of annotations.csv and candidates(_V2).csv naming them."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"LUNA16 folder {root} does not exist")
  found: dict[int, str] = {}
  for name in os.listdir(root):
    m = _SUBSET.match(name)
    if m and os.path.isdir(os.path.join(root, name)):
      found[int(m.group(1))] = os.path.join(root, name)
  if subsets is not None:
    wanted = sorted({int(s) for s in subsets})
    missing = [s for s in wanted if s not in found]
    if missing:
      raise DataError(f"LUNA16 folder {root} has no subset folder(s) "
                      f"{', '.join(f'subset{s}' for s in missing)}")
    found = {s: found[s] for s in wanted}
  scans: dict[str, Luna16Scan] = {}
  for subset in sorted(found):
    for name in sorted(os.listdir(found[subset])):
      if not name.endswith(".mhd") or name.startswith("._"):
        continue
      uid = name[:-len(".mhd")]
      if uid in scans:
        raise DataError(f"series {uid} is in both subset{scans[uid].subset} and "
                        f"subset{subset} of {root}")
      scans[uid] = Luna16Scan(uid, os.path.join(found[subset], name), subset)
  if not scans:
    raise DataError(f"LUNA16 folder {root} has no subset*/ folder with .mhd files")
  keep = set(scans)
  annotations, candidates, dropped_a, dropped_c = {}, {}, 0, 0
  annotations_file = os.path.join(root, "annotations.csv")
  if os.path.isfile(annotations_file):
    annotations, dropped_a = _read_series_table(annotations_file, ANNOTATION_COLUMNS, keep)
  else:
    annotations_file = None
  candidates_file = next((os.path.join(root, n) for n in CANDIDATE_FILES
                          if os.path.isfile(os.path.join(root, n))), None)
  if candidates_file is not None:
    candidates, dropped_c = _read_series_table(candidates_file, CANDIDATE_COLUMNS, keep)
  return Luna16(root, scans, annotations, candidates, annotations_file, candidates_file,
                dropped_a, dropped_c)


def read_scan(luna: Luna16, seriesuid: str
              ) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
  """(volume [Z, Y, X] float32 in Hounsfield units, spacing (z, y, x) mm, origin (z, y, x)
  mm) of one scan. A scan whose direction matrix is not the identity is a DataError:
  `world_to_voxel` would place its candidates wrongly."""
  scan = luna.scans.get(seriesuid)
  if scan is None:
    raise DataError(f"series {seriesuid} is not among the {len(luna.scans)} scans read from "
                    f"{luna.root}")
  image = read_metaimage(scan.path)
  if image.array.ndim != 3:
    raise DataError(f"{scan.path}: expected a 3-D scan, got shape {image.array.shape}")
  if not np.allclose(image.direction, np.eye(3), atol=1e-6):
    raise DataError(f"{scan.path}: TransformMatrix is not the identity, which LUNA16 "
                    "coordinates assume")
  return image.array.astype(np.float32), image.spacing, image.origin


def world_to_voxel(coords_xyz, origin, spacing) -> np.ndarray:
  """World coordinates (x, y, z) mm, [3] or [N, 3], as voxel coordinates (z, y, x) of a scan
  with `origin` and `spacing` given in (z, y, x) (as `read_scan` returns them):
  (world - origin) / spacing per axis, valid for identity direction matrices. Integer
  values are voxel centres; `np.rint` gives the index of the voxel holding the point."""
  coords = np.asarray(coords_xyz, np.float64)
  if coords.shape[-1] != 3:
    raise ValueError(f"coordinates must be (x, y, z), got shape {coords.shape}")
  return (coords[..., ::-1] - np.asarray(origin, np.float64)) / np.asarray(spacing, np.float64)


def candidate_crop(volume: np.ndarray, spacing, origin, coord_xyz,
                   size: int | Sequence[int]) -> np.ndarray:
  """A [size, size, size] crop of `volume` ([Z, Y, X]) centred on the voxel holding the
  world point `coord_xyz` (x, y, z mm): voxels start - size // 2 .. start + size - size // 2
  - 1 per axis. Where the crop crosses the border it is filled with the volume's minimum
  (air in a CT scan). `size` may also be (z, y, x) sizes."""
  sizes = np.broadcast_to(np.asarray(size, np.int64), (3,))
  if np.any(sizes < 1):
    raise ValueError(f"crop size must be positive, got {size}")
  centre = np.rint(world_to_voxel(coord_xyz, origin, spacing)).astype(np.int64)
  start = centre - sizes // 2
  out = np.full(tuple(sizes), volume.min(), volume.dtype)
  lo = np.maximum(start, 0)
  hi = np.minimum(start + sizes, volume.shape)
  if np.all(hi > lo):
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    out[dst] = volume[src]
  return out


# ---------------------------------------------------------------------------------------------
# NIfTI helpers


def read_nifti_zyx(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
  """`read_nifti`'s (i, j, k) array and voxel size reversed to (k, j, i) = (z, y, x)."""
  data, zooms = read_nifti(path, squeeze_trailing=True)
  return (np.ascontiguousarray(data.transpose(2, 1, 0)),
          (float(zooms[2]), float(zooms[1]), float(zooms[0])))


def _labels(path: str, allowed: tuple[int, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
  data, spacing = read_nifti_zyx(path)
  ok = np.zeros(data.shape, bool)
  for value in allowed:  # a pass per value: cheaper than np.unique on a whole CT volume
    ok |= data == value
  if not ok.all():
    bad = np.unique(data[~ok])
    shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if bad.size > 5 else "")
    raise DataError(f"{path}: label values {shown} outside {{{', '.join(map(str, allowed))}}}")
  return data.astype(np.uint8), spacing


def _nifti_stem(name: str) -> str | None:
  for ext in (".nii.gz", ".nii"):
    if name.endswith(ext):
      return name[:-len(ext)]
  return None


# ---------------------------------------------------------------------------------------------
# LiTS

_LITS_FILE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")
LITS_LABELS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class LitsCase:
  """One LiTS training case: its CT volume and segmentation files."""

  id: int
  volume: str
  segmentation: str


def load_lits(root) -> list[LitsCase]:
  """The LiTS training cases in root or in the folders directly under it, sorted by id."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"LiTS folder {root} does not exist")
  folders = [root] + sorted(os.path.join(root, d) for d in os.listdir(root)
                            if os.path.isdir(os.path.join(root, d)))
  files: dict[str, dict[int, str]] = {"volume": {}, "segmentation": {}}
  for folder in folders:
    for name in sorted(os.listdir(folder)):
      m = _LITS_FILE.match(name)
      if not m:
        continue
      kind, case = m.group(1), int(m.group(2))
      path = os.path.join(folder, name)
      if case in files[kind]:
        raise DataError(f"LiTS {kind} {case} is there twice: {files[kind][case]} and {path}")
      files[kind][case] = path
  if not files["volume"]:
    raise DataError(f"LiTS folder {root} has no volume-<i>.nii(.gz) file, neither in it nor "
                    "in a folder under it (e.g. 'Training Batch 1/')")
  cases = []
  for case in sorted(files["volume"]):
    volume = files["volume"][case]
    segmentation = files["segmentation"].get(case)
    if segmentation is None:
      raise DataError(f"LiTS volume {volume} has no segmentation-{case}.nii(.gz) in {root} "
                      "or a folder under it")
    cases.append(LitsCase(case, volume, segmentation))
  orphans = sorted(set(files["segmentation"]) - set(files["volume"]))
  if orphans:
    raise DataError(f"LiTS segmentation {files['segmentation'][orphans[0]]} has no "
                    f"volume-{orphans[0]}.nii(.gz)")
  return cases


def read_lits_case(case: LitsCase
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
  """(volume [Z, Y, X] float32 HU, labels [Z, Y, X] uint8 (0 background, 1 liver,
  2 tumour), spacing (z, y, x) mm) of one case."""
  volume, spacing = read_nifti_zyx(case.volume)
  labels, _ = _labels(case.segmentation, LITS_LABELS)
  if labels.shape != volume.shape:
    raise DataError(f"LiTS case {case.id}: volume shape {volume.shape} and segmentation "
                    f"shape {labels.shape} (z, y, x) differ")
  return volume, labels, spacing


# ---------------------------------------------------------------------------------------------
# BraTS

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_LABELS = (0, 1, 2, 4)
# Evaluation regions: label values each one covers.
BRATS_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


@dataclasses.dataclass(frozen=True)
class BratsCase:
  """One BraTS training case.

  Attributes:
    id: the case folder's name, e.g. `BraTS20_Training_001`.
    folder: the case folder.
    group: the folders between root and the case folder (e.g. `HGG`,
      `MICCAI_BraTS2020_TrainingData`), '' when the case is directly under root.
    images: one file per modality, in `modalities` order.
    modalities: the modalities `images` hold.
    segmentation: the `_seg` file.
  """

  id: str
  folder: str
  group: str
  images: tuple[str, ...]
  modalities: tuple[str, ...]
  segmentation: str


def _case_file(folder: str, case: str, suffix: str) -> str | None:
  for ext in (".nii.gz", ".nii"):
    path = os.path.join(folder, f"{case}_{suffix}{ext}")
    if os.path.isfile(path):
      return path
  return None


def _is_brats_case(folder: str) -> bool:
  """A folder holding a `<folder name>_<something>.nii(.gz)` file."""
  name = os.path.basename(folder)
  for f in os.listdir(folder):
    stem = _nifti_stem(f)
    if stem is not None and stem.startswith(name + "_") and not f.startswith("._"):
      return True
  return False


def load_brats(root, modalities: Sequence[str] = BRATS_MODALITIES) -> list[BratsCase]:
  """The BraTS case folders under root (at most three levels down), sorted by case id."""
  root = os.fspath(root)
  modalities = tuple(modalities)
  if (not modalities or len(set(modalities)) != len(modalities)
      or any(m not in BRATS_MODALITIES for m in modalities)):
    raise ConfigError(f"modalities must be distinct names of {BRATS_MODALITIES}, got "
                      f"{modalities}")
  if not os.path.isdir(root):
    raise DataError(f"BraTS folder {root} does not exist")
  folders, level = [], [root]
  for _ in range(3):
    below = []
    for parent in level:
      for d in sorted(os.listdir(parent)):
        path = os.path.join(parent, d)
        if os.path.isdir(path) and not d.startswith("."):
          (folders if _is_brats_case(path) else below).append(path)
    level = below
  cases = []
  for folder in folders:
    case = os.path.basename(folder)
    files = []
    for suffix in modalities + ("seg",):
      path = _case_file(folder, case, suffix)
      if path is None:
        raise DataError(f"BraTS case {case} lacks {case}_{suffix}.nii.gz (or .nii) in {folder}")
      files.append(path)
    group = os.path.relpath(os.path.dirname(folder), root)
    cases.append(BratsCase(case, folder, "" if group == "." else group, tuple(files[:-1]),
                           modalities, files[-1]))
  if not cases:
    raise DataError(f"BraTS folder {root} has no case folder <case>/<case>_flair.nii.gz, "
                    "directly or up to two folders below it")
  ids = [c.id for c in cases]
  duplicate = next((i for i in ids if ids.count(i) > 1), None)
  if duplicate is not None:
    raise DataError(f"BraTS case {duplicate} is in more than one folder under {root}")
  return sorted(cases, key=lambda c: c.id)


def read_brats_case(case: BratsCase
                    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
  """(image [Z, Y, X, M] float32 with the modalities in `case.modalities` order, labels
  [Z, Y, X] uint8 in {0, 1, 2, 4}, spacing (z, y, x) mm of the first modality)."""
  channels, spacing = [], None
  for path in case.images:
    data, zooms = read_nifti_zyx(path)
    if channels and data.shape != channels[0].shape:
      raise DataError(f"BraTS case {case.id}: {path} has shape {data.shape} (z, y, x), "
                      f"{case.images[0]} {channels[0].shape}")
    channels.append(data)
    spacing = spacing or zooms
  labels, _ = _labels(case.segmentation, BRATS_LABELS)
  if labels.shape != channels[0].shape:
    raise DataError(f"BraTS case {case.id}: {case.segmentation} has shape {labels.shape} "
                    f"(z, y, x), the images {channels[0].shape}")
  return np.stack(channels, axis=-1), labels, spacing


def brats_regions(labels: np.ndarray) -> dict[str, np.ndarray]:
  """The BraTS evaluation regions as boolean masks: "WT" whole tumour (labels 1, 2, 4),
  "TC" tumour core (1, 4), "ET" enhancing tumour (4)."""
  labels = np.asarray(labels)
  return {name: np.isin(labels, values) for name, values in BRATS_REGIONS.items()}
