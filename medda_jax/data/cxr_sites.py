"""Chest X-ray sites with the binary "opacity" label of Valliani et al. (seed 001, §5.2.1).

The paper groups each site's findings into one label, opacity, so that four hospitals
with different label sets share a task. Frontal views only; every image of a site is
kept (the paper splits 80/10/10 itself; `patient_split` keeps each patient in one split).

  nih       ChestX-ray14 (`chestxray.load_chestxray14`, both official lists): opacity = any
            of Atelectasis, Consolidation, Edema, Infiltration, Mass, Nodule, Pneumonia.
  chexpert  CheXpert (`chestxray.load_chexpert`, train + valid, frontal): any of
            Atelectasis, Consolidation, Edema, Lung Lesion, Lung Opacity, Pneumonia = 1;
            uncertain (-1) counts as 0 ("zeros", default) or 1 ("ones").
  mimic     MIMIC-CXR-JPG 2.0.0:
              <root>/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, CheXpert labels
              <root>/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id,
                                                          ViewPosition
              <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg
            frontal = ViewPosition PA or AP; opacity as CheXpert's.
  padchest  PadChest:
              <root>/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]
                  ImageID, ImageDir, PatientID, Projection, Labels ("['pneumonia', ...]")
              <root>/<ImageDir>/<ImageID>
            frontal = Projection PA, AP or AP_horizontal; opacity = any of the 33 findings
            the paper lists (`PADCHEST_OPACITY`).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib

import numpy as np

from medda_jax.data import chestxray
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

SITES = ("nih", "chexpert", "mimic", "padchest")
NIH_OPACITY = ("Atelectasis", "Consolidation", "Edema", "Infiltration", "Mass", "Nodule",
               "Pneumonia")
CHEXPERT_OPACITY = ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Lung Opacity",
                    "Pneumonia")
# Seed §5.2.1, verbatim (PadChest's own lower-case finding names).
PADCHEST_OPACITY = (
    "alveolar pattern", "atelectasis", "atelectasis basal", "atypical pneumonia",
    "bronchiectasis", "calcified densities", "calcified granuloma", "calcified pleural plaques",
    "cavitation", "consolidation", "granuloma", "ground glass pattern", "increased density",
    "infiltrates", "interstitial pattern", "laminar atelectasis", "lobar atelectasis",
    "lung metastasis", "mass", "multiple nodules", "nodule", "pleural plaques", "pneumonia",
    "pseudonodule", "pulmonary edema", "pulmonary mass", "reticulonodular interstitial pattern",
    "round atelectasis", "segmental atelectasis", "soft tissue mass", "total atelectasis",
    "tuberculosis", "tuberculosis sequelae")
FRONTAL = {"mimic": ("PA", "AP"), "padchest": ("PA", "AP", "AP_horizontal")}
_MIMIC_LAYOUT = """expected the MIMIC-CXR-JPG 2.0.0 layout:
  <root>/mimic-cxr-2.0.0-chexpert.csv[.gz]  (subject_id, study_id, the 14 CheXpert labels)
  <root>/mimic-cxr-2.0.0-metadata.csv[.gz]  (dicom_id, subject_id, study_id, ViewPosition)
  <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg"""
_PADCHEST_TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
_PADCHEST_LAYOUT = f"""expected the PadChest layout:
  <root>/{_PADCHEST_TABLE}[.gz]  (ImageID, ImageDir, PatientID, Projection, Labels)
  <root>/<ImageDir>/<ImageID>"""


@dataclasses.dataclass(frozen=True)
class SiteTable:
  """A site's frontal images with the opacity label (0/1) and the patient of each."""
  site: str
  root: pathlib.Path
  paths: tuple[str, ...]
  labels: np.ndarray  # [N] int32
  patient_ids: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, indices) -> "SiteTable":
    idx = np.asarray(indices, np.int64).reshape(-1)
    return dataclasses.replace(self, paths=tuple(self.paths[i] for i in idx),
                               labels=self.labels[idx],
                               patient_ids=tuple(self.patient_ids[i] for i in idx))


def _any_positive(table: chestxray.ImageLabelTable, findings) -> np.ndarray:
  cols = [table.label_names.index(f) for f in findings]
  return (np.nan_to_num(table.labels[:, cols]) == 1).any(axis=1).astype(np.int32)


def _from_tables(site: str, root, tables, findings) -> SiteTable:
  return SiteTable(site, pathlib.Path(root),
                   tuple(p for t in tables for p in t.paths),
                   np.concatenate([_any_positive(t, findings) for t in tables]),
                   tuple(p for t in tables for p in t.patient_ids))


def _table_path(root: pathlib.Path, name: str, layout: str) -> pathlib.Path:
  for candidate in (root / name, root / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  raise DataError(f"neither {root / name} nor {root / name}.gz exists\n{layout}")


def _check_images(root: pathlib.Path, paths, layout: str) -> None:
  missing = [p for p in paths if not (root / p).is_file()]
  if missing:
    raise DataError(f"image file {root / missing[0]} is missing ({len(missing)} of "
                    f"{len(paths)} images missing)\n{layout}")


def load_mimic(root, uncertain: str = "zeros") -> SiteTable:
  root = pathlib.Path(root)
  if uncertain not in ("zeros", "ones"):
    raise DataError(f"uncertain must be 'zeros' or 'ones', got {uncertain!r}")
  labels_csv = _table_path(root, "mimic-cxr-2.0.0-chexpert.csv", _MIMIC_LAYOUT)
  meta_csv = _table_path(root, "mimic-cxr-2.0.0-metadata.csv", _MIMIC_LAYOUT)
  studies = {}
  for line, row in enumerate(read_csv_rows(labels_csv, ("subject_id", "study_id")
                                           + CHEXPERT_OPACITY, _MIMIC_LAYOUT), start=2):
    values = []
    for f in CHEXPERT_OPACITY:
      try:
        values.append(float(row[f]) if row[f] else 0.0)
      except ValueError:
        raise DataError(f"{labels_csv} line {line}: {f} is {row[f]!r}; expected 1.0, 0.0, "
                        "-1.0 or blank") from None
    positive = any(v == 1.0 or (v == -1.0 and uncertain == "ones") for v in values)
    studies[(row["subject_id"], row["study_id"])] = int(positive)
  paths, labels, patients = [], [], []
  for row in read_csv_rows(meta_csv, ("dicom_id", "subject_id", "study_id", "ViewPosition"),
                           _MIMIC_LAYOUT):
    key = (row["subject_id"], row["study_id"])
    if row["ViewPosition"] not in FRONTAL["mimic"] or key not in studies:
      continue
    sid = row["subject_id"]
    paths.append(f"files/p{sid[:2]}/p{sid}/s{row['study_id']}/{row['dicom_id']}.jpg")
    labels.append(studies[key])
    patients.append(sid)
  _check_images(root, paths, _MIMIC_LAYOUT)
  return SiteTable("mimic", root, tuple(paths), np.asarray(labels, np.int32), tuple(patients))


def load_padchest(root) -> SiteTable:
  root = pathlib.Path(root)
  table = _table_path(root, _PADCHEST_TABLE, _PADCHEST_LAYOUT)
  opacity = set(PADCHEST_OPACITY)
  paths, labels, patients = [], [], []
  rows = read_csv_rows(table, ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"),
                       _PADCHEST_LAYOUT)
  for line, row in enumerate(rows, start=2):
    if row["Projection"] not in FRONTAL["padchest"]:
      continue
    raw = row["Labels"]
    try:
      findings = [] if raw in ("", "nan", "[]") else ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      findings = None
    if not isinstance(findings, list):
      raise DataError(f"{table} line {line}: Labels {raw!r} is not a list of findings like "
                      "\"['pneumonia', 'infiltrates']\"")
    paths.append(f"{row['ImageDir']}/{row['ImageID']}")
    labels.append(int(any(str(f).strip().lower() in opacity for f in findings)))
    patients.append(row["PatientID"])
  _check_images(root, paths, _PADCHEST_LAYOUT)
  return SiteTable("padchest", root, tuple(paths), np.asarray(labels, np.int32),
                   tuple(patients))


def load_opacity_site(site: str, root: str | os.PathLike, uncertain: str = "zeros") -> SiteTable:
  """One site's frontal images with the opacity label; `uncertain` applies to CheXpert
  and MIMIC-CXR."""
  if site == "nih":
    tables = [chestxray.load_chestxray14(root, split) for split in chestxray.CHESTXRAY14_SPLITS]
    return _from_tables("nih", root, tables, NIH_OPACITY)
  if site == "chexpert":
    tables = [chestxray.load_chexpert(root, split, uncertain=uncertain, frontal_only=True)
              for split in chestxray.CHEXPERT_SPLITS]
    return _from_tables("chexpert", root, tables, CHEXPERT_OPACITY)
  if site == "mimic":
    return load_mimic(root, uncertain)
  if site == "padchest":
    return load_padchest(root)
  raise DataError(f"unknown chest X-ray site {site!r}; known: {list(SITES)}")


def patient_split(table: SiteTable, fractions=(0.8, 0.1, 0.1), seed: int = 0):
  """Disjoint (train, val, test) tables with every patient in exactly one: patients are
  shuffled (seeded) and filled into the splits in turn until each holds its share of the
  images."""
  patients = sorted(set(table.patient_ids))
  order = np.random.default_rng(seed).permutation(len(patients))
  by_patient: dict[str, list[int]] = {}
  for i, p in enumerate(table.patient_ids):
    by_patient.setdefault(p, []).append(i)
  bounds = np.cumsum(fractions)[:-1] * len(table)
  parts: list[list[int]] = [[] for _ in fractions]
  taken, part = 0, 0
  for k in order:
    while part < len(bounds) and taken >= bounds[part]:
      part += 1
    rows = by_patient[patients[k]]
    parts[part].extend(rows)
    taken += len(rows)
  return tuple(table.subset(sorted(p)) for p in parts)


def read_images(table: SiteTable, size: int) -> np.ndarray:
  """All images of a table as [N, size, size, 1] float32 in [0, 1] (bilinear resize)."""
  return chestxray.read_images(table, np.arange(len(table)), size)


def site_source(table: SiteTable, size: int, channels: int = 1):
  """A site's images as a lazy random-access source (`images.ImageSource`: one file decoded
  and resized per access), to stream through grain instead of `read_images`."""
  from medda_jax.data import images
  paths = tuple(str(table.root / p) for p in table.paths)
  return images.ImageSource(images.ImageTable(table.site, paths, table.labels,
                                              ("no opacity", "opacity"), table.patient_ids),
                            size, channels)
