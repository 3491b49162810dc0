"""CBIS-DDSM (the curated DDSM on TCIA) as a benign/malignant mammogram domain.

A public source of screen-film mammograms with biopsy-backed pathology, read from the
layout its publisher ships, so that no conversion step stands between a download and a run:

  <root>/mass_case_description_train_set.csv   one row per abnormality (ROI)
  <root>/mass_case_description_test_set.csv    (file names matched ignoring case and '-'
  <root>/calc_case_description_train_set.csv    for '_'; at least one CSV must exist)
  <root>/calc_case_description_test_set.csv
  <root>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study uid>/<series uid>/1-1.dcm

Columns read: patient_id, left or right breast, image view, abnormality id, pathology
(MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK) and image file path. An image is the first
component of `image file path` (`Mass-Training_P_00001_LEFT_CC`); its label is 1
("malignant") when ANY abnormality row of that image is MALIGNANT, else 0 ("benign", which
includes BENIGN_WITHOUT_CALLBACK). The deeper components of the CSV path seldom match the
downloaded folder names, so the file is found from the first component:

  1. the path the CSV writes, when it exists as is;
  2. else the DICOM below <images>/<first component>/ (<images> = <root>/CBIS-DDSM, or <root>
     itself when it has no such folder, e.g. when <root> is that folder, with the CSVs in it
     or beside it); of several .dcm files (ROI crops and masks mixed in) the one with the
     most pixels (Rows x Columns from the header) is the mammogram;
  3. else a PNG/JPEG export below that folder, or <root>/<first component>.png|.jpg.
An image found nowhere is an error, not a silently smaller data set.

The published CSVs list 3,568 abnormalities on 3,103 full mammograms (2,458 train, 645
test; 465 with more than one abnormality) of 1,566 patients (TCIA); a patient's
calcification and mass images are separate files. CBIS-DDSM holds no normal mammograms:
"benign" is benign findings, not healthy breasts. Mammograms are tall, so `image_source`
pads each to a square (black background) before resizing instead of stretching it.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
from PIL import Image

from medda_jax.data import images
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import ConfigError, DataError

CLASS_NAMES = ("benign", "malignant")
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
CSV_NAMES = {  # canonical name -> CBIS-DDSM's own split
    "mass_case_description_train_set.csv": "train",
    "mass_case_description_test_set.csv": "test",
    "calc_case_description_train_set.csv": "train",
    "calc_case_description_test_set.csv": "test",
}
SPLITS = ("all", "train", "test")
COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology",
           "image file path")
IMAGE_FOLDER = "CBIS-DDSM"
_EXPORT_SUFFIXES = (".png", ".jpg", ".jpeg")
_LAYOUT = ("expected the CBIS-DDSM layout: <root>/{mass,calc}_case_description_{train,test}"
           "_set.csv and <root>/CBIS-DDSM/<first component of image file path>/**/*.dcm")


def _canonical(file_name: str) -> str:
  return re.sub(r"[- ]", "_", file_name.lower())


def _find_csvs(root: pathlib.Path, split: str) -> list[pathlib.Path]:
  """The case CSVs of `split` in `root` (or in its parent when `root` is the image folder),
  in the canonical order."""
  folders = [root] + ([root.parent] if root.name.lower() == IMAGE_FOLDER.lower() else [])
  for folder in folders:
    found = {_canonical(p.name): p for p in sorted(folder.iterdir()) if p.is_file()}
    if any(name in found for name in CSV_NAMES):
      return [found[name] for name, s in CSV_NAMES.items()
              if name in found and split in ("all", s)]
  return []


def _image_folder(root: pathlib.Path) -> pathlib.Path:
  """<root>/CBIS-DDSM (any case) when it exists, else <root> itself."""
  nested = [p for p in sorted(root.iterdir())
            if p.is_dir() and p.name.lower() == IMAGE_FOLDER.lower()]
  return nested[0] if nested else root


def _pixel_count(path: pathlib.Path) -> int:
  """Width x height from the file's header, without decoding the pixels."""
  if path.suffix.lower() != ".dcm":
    try:
      with Image.open(path) as f:
        return f.width * f.height
    except Exception as e:  # PIL raises many kinds for a damaged file
      raise DataError(f"cannot read image file {path}: {e}") from e
  try:
    import pydicom
  except ImportError:
    raise DataError(f"{path} is a DICOM file; reading it needs pydicom "
                    "(pip install pydicom)") from None
  try:
    header = pydicom.dcmread(path, stop_before_pixels=True)
  except Exception as e:  # pydicom raises many kinds for a damaged file
    raise DataError(f"cannot read the DICOM header of {path}: {e}") from e
  return int(getattr(header, "Rows", 0) or 0) * int(getattr(header, "Columns", 0) or 0)


def _largest(files: list[pathlib.Path]) -> pathlib.Path:
  if len(files) == 1:
    return files[0]
  return max(files, key=lambda p: (_pixel_count(p), p.stat().st_size))


def _resolve(image_id: str, image_folder: pathlib.Path, root: pathlib.Path,
             named: pathlib.Path) -> pathlib.Path | None:
  """The full mammogram `image_id` (the first component of `image file path`) names, or
  None; `named` is the path the CSV writes, taken when it exists as is."""
  if named.is_file():
    return named
  folder = image_folder / image_id
  if folder.is_dir():
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for suffixes in ((".dcm",), _EXPORT_SUFFIXES):  # ROI crops and masks may be mixed in
      candidates = [p for p in files if p.suffix.lower() in suffixes]
      if candidates:
        return _largest(candidates)
  for suffix in _EXPORT_SUFFIXES:
    if (root / f"{image_id}{suffix}").is_file():
      return root / f"{image_id}{suffix}"
  return None


def load_cbis_ddsm(root: str | os.PathLike, name: str = "cbis_ddsm",
                   split: str = "all") -> images.ImageTable:
  """CBIS-DDSM's full mammograms with the image-level "any malignant" label and patient ids.
  `split` "train" or "test" is CBIS-DDSM's own split (by CSV); "all" is both, for a caller
  that splits by patient itself (`images.split_indices`)."""
  if split not in SPLITS:
    raise ConfigError(f"CBIS-DDSM split must be one of {list(SPLITS)}, got {split!r}")
  root = pathlib.Path(os.path.expanduser(str(root)))
  if not root.is_dir():
    raise DataError(f"CBIS-DDSM root {root} is not a folder; {_LAYOUT}")
  csvs = _find_csvs(root, split)
  if not csvs:
    wanted = [n for n, s in CSV_NAMES.items() if split in ("all", s)]
    raise DataError(f"CBIS-DDSM root {root} holds none of {wanted}; {_LAYOUT}")
  image_folder = _image_folder(root)
  order: list[str] = []
  malignant: dict[str, bool] = {}
  patient: dict[str, str] = {}
  where: dict[str, tuple[pathlib.Path, int, str]] = {}  # image -> (CSV, line, path written)
  for csv_path in csvs:
    for line, row in enumerate(read_csv_rows(csv_path, COLUMNS, _LAYOUT), start=2):
      written = row["image file path"].replace("\\", "/").strip("/")
      image_id = written.split("/")[0]
      if not image_id:
        raise DataError(f"{csv_path} line {line}: image file path is empty; expected a path "
                        "like Mass-Training_P_00001_LEFT_CC/<uid>/<uid>/000000.dcm")
      pathology = row["pathology"].upper()
      if pathology not in PATHOLOGIES:
        raise DataError(f"{csv_path} line {line}: pathology is {row['pathology']!r}; expected "
                        f"one of {list(PATHOLOGIES)}")
      if image_id not in malignant:
        order.append(image_id)
        malignant[image_id] = False
        patient[image_id] = row["patient_id"]
        where[image_id] = (csv_path, line, written)
      malignant[image_id] |= pathology == "MALIGNANT"
  if not order:
    raise DataError(f"CBIS-DDSM CSVs {[str(p) for p in csvs]} list no abnormality")
  paths = []
  for image_id in order:
    csv_path, line, written = where[image_id]
    found = _resolve(image_id, image_folder, root, image_folder / written)
    if found is None:
      raise DataError(
          f"image {image_id} ({csv_path} line {line}) is not found: looked for a .dcm, .png "
          f"or .jpg below {image_folder / image_id} and for "
          f"{root / image_id}.png|.jpg|.jpeg")
    paths.append(str(found.absolute()))
  labels = np.asarray([int(malignant[i]) for i in order], np.int32)
  return images.ImageTable(name, tuple(paths), labels, CLASS_NAMES,
                           tuple(patient[i] for i in order))


def image_source(table: images.ImageTable, size: int, channels: int = 1) -> images.ImageSource:
  """The mammograms as a lazy source, each padded to a square (black) before resizing."""
  return images.ImageSource(table, size, channels, pad_square=True)


def describe(table: images.ImageTable) -> str:
  """One line of counts: images, patients and images per class."""
  counts = table.counts()
  n_patients = len(set(table.patient_ids)) if table.patient_ids is not None else "?"
  per_class = ", ".join(f"{k} {v}" for k, v in counts.items())
  return (f"{table.name}: {len(table)} mammograms of {n_patients} patients ({per_class}; "
          "no normal mammograms)")
