"""M&Ms (Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Segmentation) in its published
layout, one domain per vendor.

  <root>/Training/Labeled/<code>/<code>_sa.nii.gz      short-axis cine, 4-D (x, y, z, t)
  <root>/Training/Labeled/<code>/<code>_sa_gt.nii.gz   labels at the ED and ES frames
  <root>/<dataset information>.csv                     External code, Vendor, ED, ES, ...

The dataset information CSV (the challenge's `211230_M&Ms_Dataset_information_diagnosis_
opendataset.csv`, or any CSV under the root with the columns `External code`, `Vendor`,
`ED` and `ES`) gives each subject's vendor (A Siemens, B Philips, C GE, D Canon) and the
0-based end-diastolic and end-systolic frame indices. Each labelled subject gives two 3-D
volumes, `<code>_ED` and `<code>_ES`: slices along z, labels 1 LV, 2 MYO, 3 RV (the
challenge's README), intensities scaled per volume as the CC359 sites are (1st-99th
percentile to [0, 1]).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
from typing import Iterable

import nibabel as nib
import numpy as np

from medda_jax.data.volumes import DomainVolumes, Volume, cached_volumes
from medda_jax.errors import DataError

VENDORS = ("A", "B", "C", "D")
LABELS = {1: "LV", 2: "MYO", 3: "RV"}
_COLUMNS = ("External code", "Vendor", "ED", "ES")
_LAYOUT = ("expected <root>/Training/Labeled/<code>/<code>_sa.nii.gz and <code>_sa_gt.nii.gz "
           "and the dataset information CSV (columns External code, Vendor, ED, ES) under "
           "<root>")


def _header(path: pathlib.Path) -> list[str]:
  with open(path, newline="", encoding="utf-8-sig") as f:
    return [h.strip() for h in next(csv.reader(f), [])]


def find_information_csv(root: pathlib.Path) -> pathlib.Path:
  """The first CSV in the root (or one folder below) with the information columns."""
  for path in sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv")):
    if set(_COLUMNS) <= set(_header(path)):
      return path
  raise DataError(f"no dataset information CSV (columns {', '.join(_COLUMNS)}) in {root}; "
                  + _LAYOUT)


def read_information(path: pathlib.Path) -> dict[str, dict]:
  """{code: {vendor, ed, es}} from the dataset information CSV."""
  out = {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    for line, row in enumerate(csv.DictReader(f), start=2):
      row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
      try:
        out[row["External code"]] = {"vendor": row["Vendor"], "ed": int(row["ED"]),
                                     "es": int(row["ES"])}
      except ValueError:
        raise DataError(f"{path} line {line}: ED and ES must be frame numbers, got "
                        f"{row['ED']!r}, {row['ES']!r}") from None
  return out


def _scale(image: np.ndarray) -> np.ndarray:
  low, high = np.percentile(image, [1.0, 99.0])
  return ((np.clip(image, low, high) - low) / max(high - low, 1e-8)).astype(np.float32)


def _subject_volumes(folder: pathlib.Path, code: str, info: dict) -> list[Volume]:
  image_path, label_path = folder / f"{code}_sa.nii.gz", folder / f"{code}_sa_gt.nii.gz"
  for p in (image_path, label_path):
    if not p.exists():
      raise DataError(f"{p} is missing; " + _LAYOUT)
  try:
    image_nii, label_nii = nib.load(image_path), nib.load(label_path)
  except Exception as e:  # nibabel raises many types for broken files
    raise DataError(f"cannot read {folder}: {str(e).splitlines()[0]}") from e
  if image_nii.shape != label_nii.shape:
    raise DataError(f"{label_path} has shape {label_nii.shape} but {image_path.name} has "
                    f"{image_nii.shape}; the labels must be on the image's grid")
  if len(image_nii.shape) != 4:
    raise DataError(f"{image_path} has shape {image_nii.shape}; expected a 4-D cine "
                    "(x, y, z, t)")
  frames = image_nii.shape[3]
  zooms = tuple(float(z) for z in image_nii.header.get_zooms()[:3])
  out = []
  for phase in ("ed", "es"):
    t = info[phase]
    if not 0 <= t < frames:
      raise DataError(f"{code}: {phase.upper()} frame {t} (dataset information CSV) is outside "
                      f"the {frames} frames of {image_path.name}")
    image = np.asarray(image_nii.dataobj[..., t], np.float32)
    label = np.rint(np.asarray(label_nii.dataobj[..., t])).astype(np.uint8)
    if label.max() > max(LABELS):
      raise DataError(f"{label_path} frame {t} has label {label.max()}; expected 0-3 "
                      "(1 LV, 2 MYO, 3 RV)")
    out.append(Volume(id=f"{code}_{phase.upper()}", domain=info["vendor"],
                      image=_scale(np.moveaxis(image, 2, 0)), mask=np.moveaxis(label, 2, 0),
                      spacing=(zooms[2], zooms[0], zooms[1])))
  return out


def load_mnms(root: str | os.PathLike, *, vendors: Iterable[str] | None = None,
              cache_dir: str | os.PathLike | None = None) -> DomainVolumes:
  """The labelled training subjects of M&Ms, one domain per vendor (A-D, those present)."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"M&Ms root folder {root} does not exist; " + _LAYOUT)
  info = read_information(find_information_csv(root))
  labeled = root / "Training" / "Labeled"
  if not labeled.is_dir():
    raise DataError(f"{labeled} does not exist; " + _LAYOUT)
  wanted = VENDORS if vendors is None else tuple(vendors)
  by_vendor: dict[str, list[str]] = {}
  for folder in sorted(p for p in labeled.iterdir() if p.is_dir()):
    code = folder.name
    if code not in info:
      raise DataError(f"subject {code} ({folder}) is not in the dataset information CSV")
    if info[code]["vendor"] in wanted:
      by_vendor.setdefault(info[code]["vendor"], []).append(code)
  if not by_vendor:
    raise DataError(f"no labelled subject of vendor(s) {', '.join(wanted)} in {labeled}")
  domains = {}
  for vendor in sorted(by_vendor):
    codes = by_vendor[vendor]
    path = None
    if cache_dir is not None:
      key = json.dumps({"root": str(root.resolve()), "codes": codes,
                        "info": [info[c] for c in codes],
                        "sizes": [(labeled / c / f"{c}_sa.nii.gz").stat().st_size for c in codes]})
      path = os.path.join(os.fspath(cache_dir),
                          f"mnms_{vendor}_{hashlib.sha256(key.encode()).hexdigest()[:16]}")

    def make(codes=codes):
      for code in codes:
        yield from _subject_volumes(labeled / code, code, info[code])

    domains[vendor] = cached_volumes(path, vendor, make)
  description = (f"M&Ms from {root}: " + ", ".join(f"vendor {v} {len(vols)} volumes"
                                                   for v, vols in domains.items())
                 + " (ED and ES frames)")
  return DomainVolumes(domains, description)
