"""Calgary-Campinas-359 (CC359) skull stripping: six scanner domains of T1 head MRI.

Two published layouts are read.

(a) The preprocessed release used by the domain-shift papers, with a table:

  <root>/meta.csv      columns id, MRI, brain_mask, fold, tomograph_model, tesla_value, x, y, z
  <root>/images/CC0001_philips_15_55_M.nii.gz
  <root>/masks/CC0001_philips_15_55_M_ss.nii.gz

  `MRI` and `brain_mask` are paths relative to root, `fold` is the domain id (0..5, the order of
  `CC359_DOMAINS`) and x, y, z the voxel spacing in mm along the NIfTI array axes.

(b) The original download:

  <root>/Original/CC0001_philips_15_55_M.nii.gz
  <root>/Silver-standard/CC0001_philips_15_55_M_ss.nii.gz
    (or <root>/Silver-standard-machine-learning/Silver-standard/...)

  The domain is parsed from the file stem (`CCxxxx_<vendor>_<tesla>_<age>_<sex>`) and the
  spacing read from the NIfTI header.

Preprocessing (as the reference code): resample to `spacing` mm with cubic splines
(`scipy.ndimage.zoom`, order 3) for image and mask, the mask re-binarised at >= 0.5; then the
intensities are clipped to the volume's 1st-99th percentile and min-max scaled to [0, 1].
Slices are taken along the LAST NIfTI array axis (the reference's choice), so `Volume.image`
is the array transposed to [last, first, second] and `Volume.spacing` is reordered the same
way. `spacing` itself is given in NIfTI array order (x, y, z), like the reference's
`voxel_spacing`; the reference code used (1, 0.95, 0.95), the paper 1 mm isotropic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from medda_jax.data import prepared
from medda_jax.data.msd import case_stem
from medda_jax.data.arraycache import ordered_map
from medda_jax.data.volumes import DomainVolumes, Volume, cached_volumes, read_nifti
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Domain (fold) ids 0..5 of meta.csv, in this order.
CC359_DOMAINS = ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15", "philips_3")
REFERENCE_CODE_SPACING = (1.0, 0.95, 0.95)
_CACHE_VERSION = 1
_META_COLUMNS = ("id", "MRI", "brain_mask", "fold", "x", "y", "z")
_MASK_DIRS = ("Silver-standard", os.path.join("Silver-standard-machine-learning",
                                              "Silver-standard"))
_NAME = re.compile(r"^(CC\d{4})_(siemens|ge|philips)_(15|3)_(\d+)_([MF])(_ss)?$", re.IGNORECASE)

_LAYOUT = """expected one of the two published CC359 layouts:
  (a) preprocessed release:
      <root>/meta.csv  (columns id, MRI, brain_mask, fold, tomograph_model, tesla_value, x, y, z)
      <root>/images/CC0001_philips_15_55_M.nii.gz
      <root>/masks/CC0001_philips_15_55_M_ss.nii.gz
  (b) original download:
      <root>/Original/CC0001_philips_15_55_M.nii.gz
      <root>/Silver-standard/CC0001_philips_15_55_M_ss.nii.gz
      (or <root>/Silver-standard-machine-learning/Silver-standard/...)"""


def parse_cc359_name(stem: str) -> tuple[str, str]:
  """`CC0001_philips_15_55_M` (or a mask's `..._ss`, with or without `.nii.gz`) ->
  (`CC0001`, `philips_15`)."""
  match = _NAME.match(case_stem(stem))
  if match is None:
    raise DataError(f"cannot parse CC359 file name {stem!r}: expected "
                    "CCxxxx_<siemens|ge|philips>_<15|3>_<age>_<M|F>[_ss]")
  case_id, vendor, tesla = match.group(1), match.group(2), match.group(3)
  return case_id.upper(), f"{vendor.lower()}_{tesla}"


@dataclasses.dataclass(frozen=True)
class _Case:
  """A case in a published layout: image and mask NIfTI files."""
  id: str
  domain: str
  image: str
  mask: str
  spacing: tuple[float, float, float] | None  # from meta.csv; None: read the header

  def read(self) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image and mask as stored, and the voxel size (meta.csv's, else the header's)."""
    image, zooms = read_nifti(self.image, squeeze_trailing=True)
    mask, _ = read_nifti(self.mask, squeeze_trailing=True)
    if image.shape != mask.shape:
      raise DataError(f"case {self.id}: image {self.image} has shape {image.shape} but mask "
                      f"{self.mask} has shape {mask.shape}")
    return image, mask, self.spacing if self.spacing is not None else zooms

  def fingerprint(self, root: str) -> tuple:  # file sizes: a re-extracted set misses the cache
    return (self.id, os.path.relpath(self.image, root), os.path.relpath(self.mask, root),
            os.path.getsize(self.image), os.path.getsize(self.mask), self.spacing)


@dataclasses.dataclass(frozen=True)
class _TfdsCase:
  """A case of the dataset the `cc359` TFDS builder prepared (stored as published)."""
  id: str
  domain: str
  source: prepared.PreparedDataset
  index: int

  def read(self) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    spacing = self.source.read(self.index, "spacing")
    return (self.source.read(self.index, "image"), self.source.read(self.index, "mask"),
            tuple(float(s) for s in spacing))

  def fingerprint(self, root: str) -> tuple:
    return (self.id, self.source.fingerprint)


def _is_nifti(name: str) -> bool:
  return name.endswith((".nii.gz", ".nii")) and not name.startswith("._")


def _read_meta(root: str) -> list[_Case]:
  path = os.path.join(root, "meta.csv")
  rows = read_csv_rows(path, _META_COLUMNS, _LAYOUT)
  cases = []
  for line, row in enumerate(rows, start=2):
    if any(not row.get(c) for c in _META_COLUMNS):
      raise DataError(f"{path} line {line}: empty value in column(s) "
                      f"{[c for c in _META_COLUMNS if not row.get(c)]}")
    try:
      fold = int(float(row["fold"]))
      spacing = tuple(float(row[k]) for k in ("x", "y", "z"))
    except (TypeError, ValueError) as e:
      raise DataError(f"{path} line {line}: fold and x, y, z must be numbers ({e})") from e
    if not 0 <= fold < len(CC359_DOMAINS):
      raise DataError(f"{path} line {line}: fold {fold} is not a domain id 0..5 "
                      f"({', '.join(CC359_DOMAINS)})")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
      raise DataError(f"{path} line {line}: spacing x, y, z must be positive, got {spacing}")
    image, mask = (os.path.normpath(os.path.join(root, row[k].strip()))
                   for k in ("MRI", "brain_mask"))
    for kind, p in (("image", image), ("mask", mask)):
      if not os.path.isfile(p):
        raise DataError(f"{kind} file {p} listed in {path} is missing\n{_LAYOUT}")
    cases.append(_Case(row["id"].strip(), CC359_DOMAINS[fold], image, mask, spacing))
  return cases


def _read_original(root: str) -> list[_Case]:
  image_dir = os.path.join(root, "Original")
  mask_dir = next((os.path.join(root, d) for d in _MASK_DIRS
                   if os.path.isdir(os.path.join(root, d))), None)
  if mask_dir is None:
    raise DataError(f"{root} has Original/ but no silver-standard mask folder "
                    f"({' or '.join(_MASK_DIRS)})\n{_LAYOUT}")
  cases = []
  for name in sorted(os.listdir(image_dir)):
    if not _is_nifti(name):
      continue
    stem = case_stem(name)
    case_id, domain = parse_cc359_name(stem)
    ext = name[len(stem):]
    mask = os.path.join(mask_dir, f"{stem}_ss{ext}")
    if not os.path.isfile(mask):
      raise DataError(f"mask file {mask} for image {os.path.join(image_dir, name)} is missing"
                      f"\n{_LAYOUT}")
    cases.append(_Case(case_id, domain, os.path.join(image_dir, name), mask, None))
  return cases


def scale_mri(image: np.ndarray, q_min: float = 1.0, q_max: float = 99.0) -> np.ndarray:
  """Clips to the [q_min, q_max] percentiles of the volume, then min-max scales to [0, 1]."""
  image = np.asarray(image, np.float32)
  # float32 bounds, so that the clipped minimum maps to exactly 0 and the maximum to 1.
  lo, hi = (np.float32(q) for q in np.percentile(image, [q_min, q_max]))
  span = hi - lo
  if not span > 0:
    # A constant volume has nothing to scale; it becomes all zeros instead of NaN.
    return np.zeros_like(image)
  return ((np.clip(image, lo, hi) - lo) / span).astype(np.float32)


def _process(case: _Case | _TfdsCase, spacing: tuple[float, float, float] | None) -> Volume:
  image, mask, source = case.read()
  if spacing is None:
    new_spacing = tuple(float(s) for s in source)
    mask = mask >= 0.5
  else:
    factor = np.asarray(source, np.float64) / np.asarray(spacing, np.float64)
    new_spacing = tuple(float(s) for s in spacing)
    if np.allclose(factor, 1.0):
      mask = mask >= 0.5
    else:
      image = ndimage.zoom(image, factor, order=3)
      mask = ndimage.zoom(mask, factor, order=3) >= 0.5
  image = scale_mri(image)
  # Slices along the last NIfTI axis: [x, y, z] -> [z, x, y].
  return Volume(id=case.id, domain=case.domain,
                image=np.ascontiguousarray(image.transpose(2, 0, 1)),
                mask=np.ascontiguousarray(mask.transpose(2, 0, 1)).astype(np.uint8),
                spacing=(new_spacing[2], new_spacing[0], new_spacing[1]))


def _cache_path(cache_dir: str, root: str, domain: str, cases: Sequence[_Case | _TfdsCase],
                spacing: tuple[float, float, float] | None) -> str:
  key = json.dumps({
      "version": _CACHE_VERSION, "domain": domain, "spacing": spacing,
      "cases": [c.fingerprint(root) for c in cases],
  }, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"cc359_{domain}_{digest}")


def _load_domain(root: str, domain: str, cases: Sequence[_Case | _TfdsCase],
                 spacing: tuple[float, float, float] | None,
                 cache_dir: str | None) -> list[Volume]:
  path = None if cache_dir is None else _cache_path(cache_dir, root, domain, cases, spacing)

  def make():
    log.info("preprocessing CC359 %s: %d volumes", domain, len(cases))
    # Spline filtering and zlib inflation release the GIL for part of the time.
    return ordered_map(lambda c: _process(c, spacing), cases)

  return cached_volumes(path, domain, make)


TFDS_NAME = "cc359"  # the builder in medda_jax.data.builders


def _tfds_cases(data_dir: str, cache_dir: str | None) -> list[_TfdsCase]:
  source = prepared.PreparedDataset(data_dir, TFDS_NAME, "<CC359 root>")
  return [_TfdsCase(case_id, CC359_DOMAINS[domain], source, i)
          for i, (case_id, domain) in enumerate(source.columns("id", "domain",
                                                               cache_dir=cache_dir))]


def cc359_cases(root: str) -> tuple[str, list[_Case]]:
  """(layout name, cases) of either published layout, files checked but not read."""
  if os.path.isfile(os.path.join(root, "meta.csv")):
    return "meta.csv", _read_meta(root)
  if os.path.isdir(os.path.join(root, "Original")):
    return "Original/", _read_original(root)
  raise DataError(f"{root} has neither meta.csv nor an Original/ folder\n{_LAYOUT}")


def load_cc359(root: str | os.PathLike, *,
               spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
               domains: Iterable[str] | None = None,
               max_volumes_per_domain: int | None = None,
               cache_dir: str | os.PathLike | None = None,
               layout: str = "files") -> DomainVolumes:
  """Loads CC359 image / silver-standard mask pairs per scanner domain.

  Args:
    root: folder with `meta.csv` (preprocessed release) or `Original/` (original download);
      with `layout="tfds"` the TFDS data dir where the `cc359` builder prepared either.
    spacing: target voxel size in mm along the NIfTI array axes (x, y, z); None keeps the
      native grid.
    domains: names from `CC359_DOMAINS`; None loads every domain that has volumes.
    max_volumes_per_domain: keep only the first N cases (by case id) of each domain.
    cache_dir: if given, preprocessed volumes are stored there (a folder of .npy files per
      domain and set of options), reused, and read memory-mapped.

  Returns:
    DomainVolumes in `CC359_DOMAINS` order; volumes sorted by case id (`CC0001`, ...), images
    [slices, rows, columns] in [0, 1] with slices along the last NIfTI axis.
  """
  if layout not in prepared.LAYOUTS:
    raise ConfigError(f"layout must be one of {prepared.LAYOUTS}, got {layout!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"TFDS data dir {root} does not exist" if layout == "tfds" else
                    f"CC359 root folder {root} does not exist\n{_LAYOUT}")
  if spacing is not None:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
      raise DataError(f"spacing must be three positive numbers in mm, got {spacing}")
  if max_volumes_per_domain is not None and max_volumes_per_domain < 1:
    raise DataError(f"max_volumes_per_domain must be >= 1, got {max_volumes_per_domain}")
  if domains is not None:
    requested = [domains] if isinstance(domains, str) else list(domains)
    unknown = [d for d in requested if d not in CC359_DOMAINS]
    if unknown:
      raise DataError(f"unknown CC359 domain(s) {unknown}; known: {', '.join(CC359_DOMAINS)}")

  cache_dir = None if cache_dir is None else os.fspath(cache_dir)
  if layout == "tfds":
    cases, layout = _tfds_cases(root, cache_dir), "prepared TFDS"
  else:
    layout, cases = cc359_cases(root)

  by_domain: dict[str, list[_Case]] = {d: [] for d in CC359_DOMAINS}
  for case in cases:
    by_domain[case.domain].append(case)
  if domains is None:
    names = [d for d in CC359_DOMAINS if by_domain[d]]
    if not names:
      raise DataError(f"no CC359 volume found in {root} ({layout} layout)\n{_LAYOUT}")
  else:
    names = [d for d in CC359_DOMAINS if d in requested]
    for d in names:
      if not by_domain[d]:
        raise DataError(f"CC359 domain {d} has no volumes in {root} ({layout} layout)")

  out = {}
  for d in names:
    selected = sorted(by_domain[d], key=lambda c: c.id)[:max_volumes_per_domain]
    out[d] = _load_domain(root, d, selected, spacing, cache_dir)
  grid = "native spacing" if spacing is None else f"resampled to {spacing} mm (x, y, z)"
  description = (f"CC359 from {root} ({layout} layout): "
                 + ", ".join(f"{d} {len(v)}" for d, v in out.items())
                 + f" volumes, {grid}, slices along the last NIfTI axis")
  return DomainVolumes(out, description)
