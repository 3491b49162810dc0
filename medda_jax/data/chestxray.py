"""CheXpert, ChestX-ray14, Shenzhen, VinDr-CXR and RSNA Pneumonia as image / multi-label tables
(chest X-ray transfer).

CheXpert (Irvin et al. 2019), as extracted from the release archive:

  <root>/train.csv, <root>/valid.csv
      columns Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations (`CHEXPERT_LABELS`)
      with values 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned)
  <root>/train/patient00001/study1/view1_frontal.jpg

  `Path` starts with the release folder name (`CheXpert-v1.0-small/train/...`). When that is
  root's own folder name it is resolved from root's parent, otherwise from root.

ChestX-ray14 (NIH, Wang et al. 2017):

  <root>/Data_Entry_2017.csv     columns Image Index, Finding Labels, Follow-up #, Patient ID, ...
      (`Data_Entry_2017_v2020.csv` is accepted too); findings joined by `|`, or `No Finding`
  <root>/train_val_list.txt, <root>/test_list.txt   one image name a line
  <root>/images/00000001_000.png                    or the archives' folders
  <root>/images_001/images/00000001_000.png ... images_012/images/...

Shenzhen (NIH, Jaeger et al. 2014), as extracted:

  <root>/CXR_png/CHNCXR_0001_0.png    (or the images directly in <root>, or under
                                        <root>/ChinaSet_AllFiles/CXR_png/)
      the last digit is the label: 1 tuberculosis, 0 normal; the 4-digit number is the patient;
      other files (ClinicalReadings/, masks, ...) are ignored

VinDr-CXR (Nguyen et al. 2022), as downloaded from PhysioNet:

  <root>/image_labels_train.csv   columns image_id, rad_id, then the label columns (0/1),
                                  one row per radiologist (3 per training image)
  <root>/image_labels_test.csv    columns image_id, then the label columns; one consensus row
                                  per image (rad_id not needed)
  <root>/train/<image_id>.dicom, <root>/test/<image_id>.dicom
      (.png / .jpg / .jpeg with the same stem accepted, as many people convert them; the CSVs
      may also be in <root>/annotations/, as PhysioNet ships them)

RSNA Pneumonia Detection Challenge (2018), as downloaded from Kaggle:

  <root>/stage_2_detailed_class_info.csv   columns patientId, class (Normal, Lung Opacity or
                                           No Lung Opacity / Not Normal); a patient with several
                                           boxes is listed on several rows with the same class
  <root>/stage_2_train_images/<patientId>.dcm

A user's own dataset (`load_user`, a config's `data.user` entry `name=path`) is either

  a CSV manifest   path[,patient_id],<label>,<label>,...
      every column besides path and patient_id is a label: 1 positive, 0 negative,
      -1 uncertain (treated as CheXpert's by `uncertain`), blank unlabelled (ignored by the
      loss); paths relative to the CSV's folder or absolute; without patient_id every
      image is its own patient
  or a class-folder root   <root>/<class>/*.{png,jpg,jpeg,tif,tiff,dcm}
      one label per class folder, positive for the images in it (one-vs-rest)

Labels are float32 [N, K], NaN where a label is to be ignored by the loss.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Sequence

import numpy as np


from medda_jax.data import images
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")
CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia")
# (CheXpert name, ChestX-ray14 name) of the findings both label sets define the same way.
# Only "Pleural Effusion" / "Effusion" differ in spelling. Left out on purpose: Lung Opacity
# (CXR14 Infiltration is narrower), Lung Lesion (CXR14 splits it into Mass and Nodule),
# Pleural Other (CXR14 Pleural_Thickening is one of its kinds), and the findings only one set
# has (Enlarged Cardiomediastinum, Fracture, Support Devices; Emphysema, Fibrosis, Hernia).
COMMON_LABELS = (
    ("Atelectasis", "Atelectasis"),
    ("Cardiomegaly", "Cardiomegaly"),
    ("Consolidation", "Consolidation"),
    ("Edema", "Edema"),
    ("Pleural Effusion", "Effusion"),
    ("Pneumonia", "Pneumonia"),
    ("Pneumothorax", "Pneumothorax"),
)
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
CHEXPERT_SPLITS = ("train", "valid")
CHESTXRAY14_SPLITS = ("train_val", "test")
_CHEXPERT_COLUMNS = ("Path", "Frontal/Lateral") + CHEXPERT_LABELS
_CXR14_TABLES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_CXR14_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
_PATIENT = re.compile(r"(patient\d+)")


@dataclasses.dataclass(frozen=True)
class ImageLabelTable:
  """Images with multi-label targets.

  Attributes:
    root: folder the image paths are relative to.
    paths: image paths relative to root.
    labels: [N, K] float32; 1 positive, 0 negative, NaN ignored by the loss.
    label_names: the K label names.
    patient_ids: patient of each image (for patient-level splits).
  """

  root: pathlib.Path
  paths: tuple[str, ...]
  labels: np.ndarray
  label_names: tuple[str, ...]
  patient_ids: tuple[str, ...]

  def __post_init__(self):
    n = len(self.paths)
    if self.labels.shape != (n, len(self.label_names)) or len(self.patient_ids) != n:
      raise ValueError(f"table of {n} paths has labels {self.labels.shape} for "
                       f"{len(self.label_names)} names and {len(self.patient_ids)} patient ids")

  def __len__(self) -> int:
    return len(self.paths)

  @staticmethod
  def concatenate(tables: Sequence["ImageLabelTable"]) -> "ImageLabelTable":
    """The rows of every table in order, under the first table's root and label names (the
    splits of one published set, e.g. its train and test CSVs)."""
    return dataclasses.replace(
        tables[0], paths=sum((t.paths for t in tables), ()),
        labels=np.concatenate([t.labels for t in tables]),
        patient_ids=sum((t.patient_ids for t in tables), ()))

  def subset(self, indices) -> "ImageLabelTable":
    """The rows `indices` (in that order)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    return dataclasses.replace(self, paths=tuple(self.paths[i] for i in idx),
                               labels=self.labels[idx],
                               patient_ids=tuple(self.patient_ids[i] for i in idx))


def _root_folder(root, dataset: str, layout: str) -> pathlib.Path:
  """`root` as a path, or a DataError naming the dataset and showing its layout."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{dataset} root folder {root} does not exist\n{layout}")
  return root


def _check_files(root: pathlib.Path, paths: Sequence[str], source: str) -> None:
  missing = [p for p in paths if not (root / p).is_file()]
  if missing:
    raise DataError(f"image file {root / missing[0]} listed in {source} is missing "
                    f"({len(missing)} of {len(paths)} images missing)")


_CHEXPERT_LAYOUT = """expected the CheXpert release layout:
  <root>/train.csv, <root>/valid.csv  (columns Path, Sex, Age, Frontal/Lateral, AP/PA and the
                                       14 observations)
  <root>/train/patient00001/study1/view1_frontal.jpg"""


def _relative_chexpert_path(root: pathlib.Path, path: str) -> str:
  """CSV `Path` -> path relative to root (drops the release folder when root is that folder)."""
  parts = pathlib.PurePosixPath(path.replace("\\", "/")).parts
  if len(parts) > 1 and parts[0] == root.name:
    parts = parts[1:]
  return "/".join(parts)


def load_chexpert(root: str | os.PathLike, split: str = "train", uncertain: str = "zeros",
                  frontal_only: bool = False, check_files: bool = True) -> ImageLabelTable:
  """Reads CheXpert's `train.csv` or `valid.csv`.

  Args:
    root: the extracted release folder (e.g. `CheXpert-v1.0-small`).
    split: "train" or "valid".
    uncertain: what -1 (uncertain) becomes: "zeros" (U-Zeros, 0), "ones" (U-Ones, 1) or
      "ignore" (NaN). Blank (not mentioned) is always 0.
    frontal_only: keep only frontal views.
    check_files: raise a DataError when listed images are missing.

  Returns:
    A table with the 14 observations (`CHEXPERT_LABELS`) in CSV row order.
  """
  if split not in CHEXPERT_SPLITS:
    raise DataError(f"CheXpert split must be one of {CHEXPERT_SPLITS}, got {split!r}")
  if uncertain not in UNCERTAIN_POLICIES:
    raise DataError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
  root = _root_folder(root, "CheXpert", _CHEXPERT_LAYOUT)
  csv_path = root / f"{split}.csv"
  rows = read_csv_rows(csv_path, _CHEXPERT_COLUMNS, _CHEXPERT_LAYOUT)
  uncertain_value = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
  paths, patients, labels = [], [], []
  for line, row in enumerate(rows, start=2):
    if frontal_only and row["Frontal/Lateral"].lower() != "frontal":
      continue
    match = _PATIENT.search(row["Path"])
    if not row["Path"] or match is None:
      raise DataError(f"{csv_path} line {line}: Path {row['Path']!r} names no patientNNNNN "
                      "folder")
    values = []
    for name in CHEXPERT_LABELS:
      raw = row[name]
      try:
        value = float(raw) if raw else 0.0
      except ValueError:
        value = None
      if value not in (1.0, 0.0, -1.0):
        raise DataError(f"{csv_path} line {line}: {name} is {raw!r}; expected 1.0, 0.0, -1.0 "
                        "or blank")
      values.append(uncertain_value if value == -1.0 else value)
    paths.append(_relative_chexpert_path(root, row["Path"]))
    patients.append(match.group(1))
    labels.append(values)
  if check_files:
    _check_files(root, paths, str(csv_path))
  return ImageLabelTable(root=root, paths=tuple(paths),
                         labels=np.asarray(labels, np.float32).reshape(-1, len(CHEXPERT_LABELS)),
                         label_names=CHEXPERT_LABELS, patient_ids=tuple(patients))


_CXR14_LAYOUT = """expected the ChestX-ray14 release layout:
  <root>/Data_Entry_2017.csv  (columns Image Index, Finding Labels, Follow-up #, Patient ID, ...)
  <root>/train_val_list.txt, <root>/test_list.txt
  <root>/images/00000001_000.png  or  <root>/images_001/images/00000001_000.png ..."""


def _image_index(root: pathlib.Path) -> dict[str, str]:
  """Image name -> path relative to root, over `images/` and `images_NNN/images/`."""
  folders = [root / "images"] + sorted(root.glob("images_*/images"))
  index: dict[str, str] = {}
  for folder in folders:
    if not folder.is_dir():
      continue
    rel = folder.relative_to(root).as_posix()
    with os.scandir(folder) as entries:
      for entry in entries:
        if entry.is_file() and not entry.name.startswith("._"):
          index.setdefault(entry.name, f"{rel}/{entry.name}")
  return index


def _read_list(path: pathlib.Path) -> list[str]:
  if not path.is_file():
    raise DataError(f"split list {path} does not exist\n{_CXR14_LAYOUT}")
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path}: {e}") from e


def load_chestxray14(root: str | os.PathLike, split: str = "train_val") -> ImageLabelTable:
  """Reads ChestX-ray14's findings table and the official split list.

  Args:
    root: the release folder.
    split: "train_val" (`train_val_list.txt`) or "test" (`test_list.txt`).

  Returns:
    A table with the 14 findings (`CHESTXRAY14_LABELS`) in split-list order; `No Finding`
    is all zeros.
  """
  if split not in CHESTXRAY14_SPLITS:
    raise DataError(f"ChestX-ray14 split must be one of {CHESTXRAY14_SPLITS}, got {split!r}")
  root = _root_folder(root, "ChestX-ray14", _CXR14_LAYOUT)
  csv_path = next((root / n for n in _CXR14_TABLES if (root / n).is_file()),
                  root / _CXR14_TABLES[0])
  rows = read_csv_rows(csv_path, _CXR14_COLUMNS, _CXR14_LAYOUT)
  position = {name: k for k, name in enumerate(CHESTXRAY14_LABELS)}
  entries: dict[str, tuple[np.ndarray, str]] = {}
  for line, row in enumerate(rows, start=2):
    findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
    unknown = [f for f in findings if f not in position and f != "No Finding"]
    if unknown or not findings:
      raise DataError(f"{csv_path} line {line}: Finding Labels {row['Finding Labels']!r} has "
                      f"unknown finding(s) {unknown}; known: No Finding, "
                      + ", ".join(CHESTXRAY14_LABELS))
    target = np.zeros(len(CHESTXRAY14_LABELS), np.float32)
    target[[position[f] for f in findings if f in position]] = 1.0
    entries[row["Image Index"]] = (target, row["Patient ID"])
  list_path = root / f"{split}_list.txt"
  names = _read_list(list_path)
  absent = [n for n in names if n not in entries]
  if absent:
    raise DataError(f"{absent[0]} of {list_path} is not in {csv_path} ({len(absent)} of "
                    f"{len(names)} listed images missing from the table)")
  index = _image_index(root)
  missing = [n for n in names if n not in index]
  if missing:
    raise DataError(f"image file {missing[0]} listed in {list_path} is missing from "
                    f"{root / 'images'} and {root / 'images_*/images'} ({len(missing)} of "
                    f"{len(names)} images missing)\n{_CXR14_LAYOUT}")
  labels = np.stack([entries[n][0] for n in names]) if names else np.zeros(
      (0, len(CHESTXRAY14_LABELS)), np.float32)
  return ImageLabelTable(root=root, paths=tuple(index[n] for n in names), labels=labels,
                         label_names=CHESTXRAY14_LABELS,
                         patient_ids=tuple(entries[n][1] for n in names))


SHENZHEN_LABELS = ("Tuberculosis",)
VINDR_SPLITS = ("train", "test")
VINDR_AGGREGATES = ("majority", "any")
RSNA_PNEUMONIA_LABELS = ("Normal", "Lung Opacity", "No Lung Opacity / Not Normal")
_SHENZHEN_NAME = re.compile(r"^CHNCXR_(\d{4})_([01])\.png$", re.IGNORECASE)
_SHENZHEN_FOLDERS = ("CXR_png", "ChinaSet_AllFiles/CXR_png", ".")
_VINDR_SUFFIXES = (".dicom", ".png", ".jpg", ".jpeg")

_SHENZHEN_LAYOUT = """expected the Shenzhen release layout:
  <root>/CXR_png/CHNCXR_0001_0.png  (last digit 1 tuberculosis, 0 normal; or the images in
                                     <root> itself or <root>/ChinaSet_AllFiles/CXR_png/)"""


def load_shenzhen(root: str | os.PathLike) -> ImageLabelTable:
  """Reads the Shenzhen tuberculosis set from its file names.

  Args:
    root: the extracted folder; the images are looked for in `CXR_png/`, then
      `ChinaSet_AllFiles/CXR_png/`, then root itself (the first that has any).

  Returns:
    A table with one label (`SHENZHEN_LABELS`, 1 tuberculosis) in file-name order; patient id
    = the 4-digit number.
  """
  root = _root_folder(root, "Shenzhen", _SHENZHEN_LAYOUT)
  found: list[tuple[str, re.Match]] = []
  for folder in _SHENZHEN_FOLDERS:
    path = root / folder
    if not path.is_dir():
      continue
    with os.scandir(path) as entries:
      found = [(e.name, m) for e in entries
               if e.is_file() and (m := _SHENZHEN_NAME.match(e.name)) is not None]
    if found:
      prefix = "" if folder == "." else f"{folder}/"
      break
  if not found:
    raise DataError(f"no CHNCXR_NNNN_<0|1>.png image in {root}\n{_SHENZHEN_LAYOUT}")
  found.sort(key=lambda item: item[0])
  return ImageLabelTable(
      root=root, paths=tuple(prefix + name for name, _ in found),
      labels=np.asarray([[float(m.group(2))] for _, m in found], np.float32),
      label_names=SHENZHEN_LABELS, patient_ids=tuple(m.group(1) for _, m in found))


_VINDR_LAYOUT = """expected the VinDr-CXR release layout:
  <root>/image_labels_train.csv  (columns image_id, rad_id, then the labels; a row per radiologist)
  <root>/image_labels_test.csv   (columns image_id, then the labels; a row per image)
  <root>/train/<image_id>.dicom, <root>/test/<image_id>.dicom  (or .png / .jpg)
  (the CSVs may be in <root>/annotations/ instead)"""


def _stem_index(folder: pathlib.Path, suffixes: Sequence[str]) -> dict[str, str]:
  """File stem -> file name in `folder`, for the first of `suffixes` each stem has."""
  rank = {s: k for k, s in enumerate(suffixes)}
  best: dict[str, tuple[int, str]] = {}
  if folder.is_dir():
    with os.scandir(folder) as entries:
      for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        k = rank.get(suffix.lower())
        if k is not None and entry.is_file() and (stem not in best or k < best[stem][0]):
          best[stem] = (k, entry.name)
  return {stem: name for stem, (_, name) in best.items()}


def load_vindr_cxr(root: str | os.PathLike, split: str = "train",
                   aggregate: str = "majority") -> ImageLabelTable:
  """Reads VinDr-CXR's image-level labels.

  Args:
    root: the release folder.
    split: "train" (`image_labels_train.csv`, per-radiologist rows) or "test"
      (`image_labels_test.csv`, one consensus row per image).
    aggregate: how an image's radiologists combine: "majority" (positive when more than half
      marked the label) or "any" (positive when one did). A single row is taken as is.

  Returns:
    A table with every label column of the CSV (all but image_id and rad_id, in file order),
    one row per image in first-listed order; patient id = image_id.
  """
  if split not in VINDR_SPLITS:
    raise DataError(f"VinDr-CXR split must be one of {VINDR_SPLITS}, got {split!r}")
  if aggregate not in VINDR_AGGREGATES:
    raise DataError(f"VinDr-CXR aggregate must be one of {VINDR_AGGREGATES}, got {aggregate!r}")
  root = _root_folder(root, "VinDr-CXR", _VINDR_LAYOUT)
  csv_path = root / f"image_labels_{split}.csv"
  if not csv_path.is_file() and (root / "annotations" / csv_path.name).is_file():
    csv_path = root / "annotations" / csv_path.name
  required = ("image_id", "rad_id") if split == "train" else ("image_id",)
  rows = read_csv_rows(csv_path, required, _VINDR_LAYOUT)
  if not rows:
    raise DataError(f"{csv_path} lists no image\n{_VINDR_LAYOUT}")
  label_names = tuple(k for k in rows[0] if k and k not in ("image_id", "rad_id"))
  if not label_names:
    raise DataError(f"{csv_path} has no label column besides image_id and rad_id\n"
                    f"{_VINDR_LAYOUT}")
  votes: dict[str, list[np.ndarray]] = {}
  for line, row in enumerate(rows, start=2):
    if not row["image_id"]:
      raise DataError(f"{csv_path} line {line} has an empty image_id")
    values = np.empty(len(label_names), np.float32)
    for k, name in enumerate(label_names):
      raw = row[name]
      try:
        value = float(raw)
      except ValueError:
        value = None
      if value not in (0.0, 1.0):
        raise DataError(f"{csv_path} line {line}: {name} is {raw!r}; expected 1 or 0")
      values[k] = value
    votes.setdefault(row["image_id"], []).append(values)
  ids = list(votes)
  marks = [np.stack(votes[i]) for i in ids]
  if aggregate == "majority":
    labels = [(m.sum(0) > m.shape[0] / 2) for m in marks]
  else:
    labels = [m.max(0) > 0 for m in marks]
  index = _stem_index(root / split, _VINDR_SUFFIXES)
  missing = [i for i in ids if i not in index]
  if missing:
    raise DataError(f"image file {root / split / missing[0]}.dicom listed in {csv_path} is "
                    f"missing ({len(missing)} of {len(ids)} images missing; .png / .jpg "
                    "accepted too)")
  return ImageLabelTable(root=root, paths=tuple(f"{split}/{index[i]}" for i in ids),
                         labels=np.asarray(labels, np.float32).reshape(-1, len(label_names)),
                         label_names=label_names, patient_ids=tuple(ids))


_RSNA_PNEUMONIA_LAYOUT = """expected the RSNA Pneumonia Detection Challenge layout:
  <root>/stage_2_detailed_class_info.csv  (columns patientId, class: Normal, Lung Opacity or
                                           No Lung Opacity / Not Normal)
  <root>/stage_2_train_images/<patientId>.dcm"""


def load_rsna_pneumonia(root: str | os.PathLike) -> ImageLabelTable:
  """Reads the RSNA Pneumonia Detection Challenge's stage-2 training classes.

  The task has three exclusive classes. The paper scores it by accuracy; SimMIM's table
  reports the mean one-vs-rest AUC over the three one-hot labels, as for every target.

  Args:
    root: the competition folder.

  Returns:
    A table with the three classes one-hot (`RSNA_PNEUMONIA_LABELS`), one row per patient in
    first-listed order (repeated rows, one per box, merged); patient id = patientId.
  """
  root = _root_folder(root, "RSNA Pneumonia", _RSNA_PNEUMONIA_LAYOUT)
  csv_path = root / "stage_2_detailed_class_info.csv"
  rows = read_csv_rows(csv_path, ("patientId", "class"), _RSNA_PNEUMONIA_LAYOUT)
  position = {name: k for k, name in enumerate(RSNA_PNEUMONIA_LABELS)}
  classes: dict[str, tuple[str, int]] = {}
  for line, row in enumerate(rows, start=2):
    patient, name = row["patientId"], row["class"]
    if not patient:
      raise DataError(f"{csv_path} line {line} has an empty patientId")
    if name not in position:
      raise DataError(f"{csv_path} line {line}: class {name!r} is not one of "
                      f"{list(RSNA_PNEUMONIA_LABELS)}")
    first = classes.setdefault(patient, (name, line))
    if first[0] != name:
      raise DataError(f"{csv_path} line {line}: patient {patient} has class {name!r} but "
                      f"{first[0]!r} on line {first[1]}")
  ids = list(classes)
  paths = tuple(f"stage_2_train_images/{i}.dcm" for i in ids)
  _check_files(root, paths, str(csv_path))
  labels = np.eye(len(RSNA_PNEUMONIA_LABELS), dtype=np.float32)[
      [position[classes[i][0]] for i in ids]].reshape(-1, len(RSNA_PNEUMONIA_LABELS))
  return ImageLabelTable(root=root, paths=paths, labels=labels,
                         label_names=RSNA_PNEUMONIA_LABELS, patient_ids=tuple(ids))


def _read_gray(path: pathlib.Path, size: int) -> np.ndarray:
  """One image as [size, size] float32 in [0, 1] (PNG/JPEG of any bit depth, or DICOM)."""
  return images.read_image(path, size, channels=1)[..., 0]


def read_images(table: ImageLabelTable, indices, size: int) -> np.ndarray:
  """Images of the rows `indices`: [n, size, size, 1] float32 in [0, 1] (grayscale,
  bilinear resize)."""
  idx = np.asarray(indices, dtype=np.int64).reshape(-1)
  out = np.empty((idx.size, size, size, 1), np.float32)
  for j, i in enumerate(idx):
    out[j, ..., 0] = _read_gray(table.root / table.paths[i], size)
  return out


_USER_CSV_LAYOUT = ("expected a CSV with columns path[,patient_id],<label>,... (labels 1, 0, -1 "
                    "uncertain or blank; paths relative to the CSV's folder or absolute) or a "
                    "class-folder root <root>/<class>/*.{png,jpg,jpeg,tif,tiff,dcm}")


def load_user(name: str, path, uncertain: str = "zeros") -> ImageLabelTable:
  """A user's multi-label dataset from a CSV manifest or a class-folder root (module
  docstring); `name` is what errors call it."""
  if uncertain not in UNCERTAIN_POLICIES:
    raise DataError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
  path = pathlib.Path(os.path.expanduser(str(path)))
  if path.suffix.lower() != ".csv":
    table = images.load_folder(path, name)
    labels = np.eye(len(table.class_names), dtype=np.float32)[table.labels]
    return ImageLabelTable(root=path, paths=table.paths, labels=labels,
                           label_names=table.class_names, patient_ids=table.paths)
  rows = read_csv_rows(path, ("path",), _USER_CSV_LAYOUT)
  if not rows:
    raise DataError(f"dataset {name}: {path} lists no image")
  label_names = tuple(k for k in rows[0] if k and k not in ("path", "patient_id"))
  if not label_names:
    raise DataError(f"dataset {name}: {path} has no label column besides path and patient_id; "
                    f"{_USER_CSV_LAYOUT}")
  uncertain_value = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
  labels = np.empty((len(rows), len(label_names)), np.float32)
  for line, row in enumerate(rows, start=2):
    if not row["path"]:
      raise DataError(f"dataset {name}: {path} line {line} has an empty path")
    for k, label in enumerate(label_names):
      raw = row[label]
      try:
        value = float(raw) if raw else np.nan
      except ValueError:
        value = None
      if value is None or not (np.isnan(value) or value in (1.0, 0.0, -1.0)):
        raise DataError(f"dataset {name}: {path} line {line}: {label} is {raw!r}; expected 1, "
                        "0, -1 (uncertain) or blank (unlabelled)")
      labels[line - 2, k] = uncertain_value if value == -1.0 else value
  paths = tuple(r["path"] for r in rows)
  _check_files(path.parent, paths, f"dataset {name}'s manifest {path}")
  patients = (tuple(r["patient_id"] for r in rows) if "patient_id" in rows[0] else paths)
  return ImageLabelTable(root=path.parent, paths=paths, labels=labels, label_names=label_names,
                         patient_ids=patients)
