"""Breast-ultrasound classification sets in their published layouts: BUSI, BrEaST, BreastMNIST.

Labels follow BreastMNIST's coding everywhere: 1 = benign (or normal), 0 = malignant.

BUSI (Al-Dhabyani et al. 2020, "Dataset_BUSI_with_GT"):

  <root>/Dataset_BUSI_with_GT/benign/benign (1).png, ...
                              normal/normal (1).png, ...
                              malignant/malignant (1).png, ...
  plus masks `<class> (N)_mask.png`, `<class> (N)_mask_1.png`, ... (skipped)

  `root` may be `Dataset_BUSI_with_GT` itself or its parent.

BrEaST (Pawlowska et al. 2024, TCIA "BrEaST-Lesions-USG"):

  <root>/BrEaST-Lesions_USG-images_and_masks/case001.png, case002.png, ...
      plus masks `case001_tumor.png` and other `case001_*.png` (skipped)
  <root>/BrEaST-Lesions-USG-clinical-data-*.csv   (or .xlsx, read with openpyxl if installed)
      columns Image_filename (e.g. case001.png), Classification (benign|malignant|normal)

  `root` may also be the image folder itself, with the table there or one level up.

BreastMNIST (MedMNIST v2, Yang et al. 2023):

  breastmnist.npz (28 x 28) or breastmnist_128.npz (or another breastmnist_<size>.npz), keys
  train_images [N, H, W] uint8, train_labels [N, 1] (0 malignant, 1 normal or benign), and the
  same for val and test. `path` is the file or a folder holding it.

Every loader returns an `UltrasoundSet`: greyscale float32 images [N, size, size, 1] in [0, 1]
(RGB PNGs are converted by PIL's luminance, 16-bit PNGs scaled by 1/65535), resized to
`size` x `size` with PIL's bilinear filter (aspect ratio not kept), and logs its class counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

log = logging.getLogger(__name__)

BENIGN = 1
MALIGNANT = 0
LABEL_NAMES = {MALIGNANT: "malignant", BENIGN: "benign"}
BUSI_FOLDER = "Dataset_BUSI_with_GT"
BUSI_CLASSES = ("benign", "normal", "malignant")
BREAST_FOLDER = "BrEaST-Lesions_USG-images_and_masks"
BREAST_TABLE_PREFIX = "BrEaST-Lesions-USG-clinical-data"
BREAST_COLUMNS = ("Image_filename", "Classification")
BREAST_CLASSES = ("benign", "malignant", "normal")
NORMAL_POLICIES = ("benign", "drop")
BREASTMNIST_SPLITS = ("train", "val", "test")
BREASTMNIST_CLASS = {MALIGNANT: "malignant", BENIGN: "normal_or_benign"}
_BREAST_IMAGE = re.compile(r"^case\d+\.png$", re.IGNORECASE)
_BREASTMNIST_FILE = re.compile(r"^breastmnist(?:_(\d+))?\.npz$")


@dataclasses.dataclass(frozen=True)
class UltrasoundSet:
  """Labelled breast-ultrasound images of one site.

  Attributes:
    images: float32 [N, S, S, 1] in [0, 1].
    labels: int32 [N]; 1 benign (or normal), 0 malignant.
    names: where each image comes from: its path relative to the dataset folder, or
      `<split>/<index>` for BreastMNIST.
    site: "busi", "breast" or "breastmnist".
    classes: each image's class as published ("benign", "normal", "malignant"; BreastMNIST:
      "normal_or_benign" or "malignant").
  """

  images: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]
  site: str
  classes: tuple[str, ...]

  def __post_init__(self):
    n = len(self.names)
    if (self.images.ndim != 4 or self.images.shape[0] != n or self.labels.shape != (n,)
        or len(self.classes) != n):
      raise ValueError(f"{self.site}: images {self.images.shape}, labels {self.labels.shape}, "
                       f"{n} names and {len(self.classes)} classes do not agree")

  def __len__(self) -> int:
    return len(self.names)

  def subset(self, indices) -> "UltrasoundSet":
    """The images at positions `indices` (in that order)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx],
                               names=tuple(self.names[i] for i in idx),
                               classes=tuple(self.classes[i] for i in idx))

  def class_counts(self) -> dict[str, int]:
    """Images per published class, in sorted class order."""
    names, counts = np.unique(np.asarray(self.classes, dtype=object).astype(str),
                              return_counts=True)
    return {str(k): int(v) for k, v in zip(names, counts)}

  def label_counts(self) -> dict[int, int]:
    """Images per label: {0: malignant, 1: benign (or normal)}."""
    counts = np.bincount(self.labels, minlength=2)
    return {MALIGNANT: int(counts[MALIGNANT]), BENIGN: int(counts[BENIGN])}

  def summary(self) -> str:
    """One line with the counts, for logs and result files."""
    lc = self.label_counts()
    classes = ", ".join(f"{k} {v}" for k, v in self.class_counts().items())
    return (f"{self.site}: {len(self)} images ({classes}); label 1 (benign): {lc[BENIGN]}, "
            f"label 0 (malignant): {lc[MALIGNANT]}")


def _check_size(size) -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise DataError(f"size must be a positive integer, got {size!r}")
  return int(size)


def _natural_key(name: str):
  """'benign (10).png' after 'benign (9).png'."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_gray(path: str | os.PathLike, size: int) -> np.ndarray:
  """One image file as float32 [size, size] in [0, 1] (greyscale, bilinear resize)."""
  path = pathlib.Path(path)
  try:
    with Image.open(path) as img:
      if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = Image.fromarray(np.asarray(img, np.float32) / 65535.0)
      else:
        gray = img.convert("L")
      if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
      out = np.asarray(gray, np.float32)
  except FileNotFoundError as e:
    raise DataError(f"image file {path} is missing") from e
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read image file {path}: {e}") from e
  if gray.mode == "L":
    out = out / 255.0
  return np.clip(out, 0.0, 1.0)


def _read_all(folder: pathlib.Path, names: Sequence[str], size: int) -> np.ndarray:
  out = np.empty((len(names), size, size, 1), np.float32)
  for i, name in enumerate(names):
    out[i, ..., 0] = read_gray(folder / name, size)
  return out


def _finish(images, labels, names, site, classes) -> UltrasoundSet:
  data = UltrasoundSet(images=images, labels=np.asarray(labels, np.int32).reshape(-1),
                       names=tuple(names), site=site, classes=tuple(classes))
  log.info("%s", data.summary())
  return data


# ---------------------------------------------------------------------------
# BUSI.

_BUSI_LAYOUT = f"""expected the BUSI release layout:
  <root>/{BUSI_FOLDER}/benign/benign (1).png, ...   (masks '... (1)_mask.png' are skipped)
  <root>/{BUSI_FOLDER}/normal/normal (1).png, ...
  <root>/{BUSI_FOLDER}/malignant/malignant (1).png, ...
  (root may be {BUSI_FOLDER} itself)"""


def _busi_dir(root: pathlib.Path) -> pathlib.Path:
  if not root.is_dir():
    raise DataError(f"BUSI folder {root} does not exist\n{_BUSI_LAYOUT}")
  if (root / BUSI_FOLDER).is_dir():
    return root / BUSI_FOLDER
  if any((root / c).is_dir() for c in BUSI_CLASSES):
    return root
  raise DataError(f"{root} has neither {BUSI_FOLDER}/ nor the class folders "
                  f"{list(BUSI_CLASSES)}\n{_BUSI_LAYOUT}")


def busi_files(root: str | os.PathLike, include_normal: bool = True
               ) -> tuple[pathlib.Path, list[str], list[str]]:
  """BUSI's image files (masks skipped), without reading them.

  Returns:
    (dataset folder, paths relative to it, published class of each), class by class in the
    order benign, normal, malignant, files in natural order (`benign (2)` before `benign (10)`).
  """
  folder = _busi_dir(pathlib.Path(root))
  names, classes = [], []
  for cls in BUSI_CLASSES:
    if cls == "normal" and not include_normal:
      continue
    class_dir = folder / cls
    if not class_dir.is_dir():
      raise DataError(f"BUSI class folder {class_dir} does not exist\n{_BUSI_LAYOUT}")
    files = sorted((p.name for p in class_dir.iterdir()
                    if p.is_file() and p.suffix.lower() == ".png" and "_mask" not in p.name
                    and not p.name.startswith(".")), key=_natural_key)
    if not files:
      raise DataError(f"no images found in BUSI class folder {class_dir} (only files named "
                      f"'{cls} (N).png' count; '_mask' files are skipped)\n{_BUSI_LAYOUT}")
    names.extend(f"{cls}/{f}" for f in files)
    classes.extend([cls] * len(files))
  return folder, names, classes


def load_busi(root: str | os.PathLike, size: int = 128,
              include_normal: bool = True) -> UltrasoundSet:
  """BUSI as benign (1, normal included unless `include_normal=False`) vs malignant (0).

  Args:
    root: `Dataset_BUSI_with_GT` or its parent.
    size: output side in pixels.
    include_normal: keep the `normal` folder (label 1, as in BreastMNIST); False drops it.
  """
  size = _check_size(size)
  folder, names, classes = busi_files(root, include_normal)
  labels = [MALIGNANT if c == "malignant" else BENIGN for c in classes]
  return _finish(_read_all(folder, names, size), labels, names, "busi", classes)


# ---------------------------------------------------------------------------
# BrEaST.

_BREAST_LAYOUT = f"""expected the BrEaST-Lesions-USG (TCIA) release layout:
  <root>/{BREAST_FOLDER}/case001.png, ...   (masks 'case001_tumor.png', 'case001_*.png' skipped)
  <root>/{BREAST_TABLE_PREFIX}-*.csv   (or .xlsx), columns Image_filename, Classification
      (benign, malignant or normal)"""


def _find_table(folders: Sequence[pathlib.Path]) -> pathlib.Path:
  for suffix in (".csv", ".xlsx"):
    for folder in folders:
      found = sorted(folder.glob(f"{BREAST_TABLE_PREFIX}*{suffix}"))
      if found:
        return found[-1]
  raise DataError(f"no {BREAST_TABLE_PREFIX}-*.csv or .xlsx in "
                  f"{', '.join(str(f) for f in folders)}\n{_BREAST_LAYOUT}")


def _read_xlsx_rows(path: pathlib.Path) -> list[dict[str, str]]:
  try:
    import openpyxl  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"{path} is an Excel file and openpyxl is not installed: install openpyxl "
                    f"or export the sheet as CSV ({path.with_suffix('.csv').name}) next to "
                    "it") from e
  try:
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
      rows = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
      book.close()
  except Exception as e:  # openpyxl raises many types on a damaged file
    raise DataError(f"cannot read {path}: {e}") from e

  def cell(v) -> str:
    if v is None:
      return ""
    if isinstance(v, float) and v.is_integer():
      v = int(v)
    return str(v).strip()

  if not rows:
    raise DataError(f"{path} is empty\n{_BREAST_LAYOUT}")
  header = [cell(v) for v in rows[0]]
  missing = [c for c in BREAST_COLUMNS if c not in header]
  if missing:
    raise DataError(f"{path} lacks column(s) {missing} (found {header})\n{_BREAST_LAYOUT}")
  return [dict(zip(header, (cell(v) for v in row))) for row in rows[1:]]


def read_breast_table(path: str | os.PathLike) -> dict[str, str]:
  """Image file name -> Classification (lower case) from the BrEaST clinical table.

  Raises:
    DataError: unreadable table, missing column, empty or repeated file name, or a
      classification other than benign, malignant or normal.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() == ".xlsx":
    if not path.is_file():
      raise DataError(f"{path} does not exist\n{_BREAST_LAYOUT}")
    rows = _read_xlsx_rows(path)
  else:
    rows = read_csv_rows(path, BREAST_COLUMNS, _BREAST_LAYOUT)
  table: dict[str, str] = {}
  for line, row in enumerate(rows, start=2):
    name = (row.get("Image_filename") or "").strip()
    value = (row.get("Classification") or "").strip().lower()
    if not name:
      if not value:
        continue  # a blank row
      raise DataError(f"{path} line {line}: empty Image_filename")
    if value not in BREAST_CLASSES:
      raise DataError(f"{path} line {line}: Classification of {name} is "
                      f"{row['Classification']!r}; expected one of {list(BREAST_CLASSES)}")
    if name in table:
      raise DataError(f"{path} line {line}: {name} is listed twice")
    table[name] = value
  return table


def breast_files(root: str | os.PathLike, normal: str = "benign",
                 table: str | os.PathLike | None = None
                 ) -> tuple[pathlib.Path, list[str], list[str], list[str]]:
  """BrEaST's labelled images (masks skipped), without reading them; arguments as
  `load_breast`.

  Returns:
    (image folder, file names, class of each, names relative to `root` for display), in
    case order.
  """
  if normal not in NORMAL_POLICIES:
    raise DataError(f"normal must be one of {NORMAL_POLICIES}, got {normal!r}")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"BrEaST folder {root} does not exist\n{_BREAST_LAYOUT}")
  folder = root / BREAST_FOLDER if (root / BREAST_FOLDER).is_dir() else root
  files = sorted((p.name for p in folder.iterdir()
                  if p.is_file() and _BREAST_IMAGE.match(p.name)), key=_natural_key)
  if not files:
    raise DataError(f"no images caseNNN.png found in {folder}\n{_BREAST_LAYOUT}")
  table_path = pathlib.Path(table) if table is not None else _find_table(
      list(dict.fromkeys([root, folder, folder.parent])))
  classes_by_name = read_breast_table(table_path)
  lowered = {k.lower(): v for k, v in classes_by_name.items()}
  names, classes = [], []
  unlabelled = []
  for f in files:
    cls = classes_by_name.get(f, lowered.get(f.lower(), lowered.get(f.lower()[:-4])))
    if cls is None:
      unlabelled.append(f)
      continue
    if cls == "normal" and normal == "drop":
      continue
    names.append(f)
    classes.append(cls)
  if unlabelled:
    raise DataError(f"image {folder / unlabelled[0]} has no row in {table_path} "
                    f"({len(unlabelled)} of {len(files)} images without a label)")
  present = {f.lower() for f in files} | {f.lower()[:-4] for f in files}
  absent = [k for k in classes_by_name if k.lower() not in present]
  if absent:
    raise DataError(f"{table_path} lists {absent[0]}, which is not in {folder} ({len(absent)} "
                    f"of {len(classes_by_name)} listed images missing)\n{_BREAST_LAYOUT}")
  if not names:
    raise DataError(f"no BrEaST images left in {folder} after dropping normal images")
  rel = folder.relative_to(root).as_posix() if folder != root else ""
  return folder, names, classes, [f"{rel}/{n}" if rel else n for n in names]


def load_breast(root: str | os.PathLike, size: int = 128, normal: str = "benign",
                table: str | os.PathLike | None = None) -> UltrasoundSet:
  """BrEaST-Lesions-USG as benign (1) vs malignant (0).

  Args:
    root: the release folder (holding `BrEaST-Lesions_USG-images_and_masks/` and the clinical
      table) or the image folder itself.
    size: output side in pixels.
    normal: what the few `normal` images become: "benign" (label 1, BreastMNIST's coding) or
      "drop".
    table: the clinical table (.csv, or .xlsx with openpyxl); default: the newest
      `BrEaST-Lesions-USG-clinical-data-*.csv` (else `.xlsx`) in root, the image folder or its
      parent.

  Returns:
    The images `caseNNN.png` in case order; masks (`caseNNN_*.png`) are skipped. Every image
    must have a table row and every row must name an image of the folder.
  """
  size = _check_size(size)
  folder, names, classes, shown = breast_files(root, normal, table)
  labels = [MALIGNANT if c == "malignant" else BENIGN for c in classes]
  return _finish(_read_all(folder, names, size), labels, shown, "breast", classes)


# ---------------------------------------------------------------------------
# BreastMNIST.

_BREASTMNIST_LAYOUT = """expected a MedMNIST v2 BreastMNIST file: breastmnist.npz or
  breastmnist_<size>.npz (e.g. breastmnist_128.npz) with keys train_images, train_labels,
  val_images, val_labels, test_images, test_labels (labels [N, 1]: 0 malignant, 1 normal or
  benign)"""


def _breastmnist_file(path: pathlib.Path, size: int) -> pathlib.Path:
  if path.is_file():
    return path
  if not path.is_dir():
    raise DataError(f"BreastMNIST file or folder {path} does not exist\n{_BREASTMNIST_LAYOUT}")
  found = {}
  for p in path.iterdir():
    m = _BREASTMNIST_FILE.match(p.name)
    if m and p.is_file():
      found[int(m.group(1) or 28)] = p
  if not found:
    raise DataError(f"no breastmnist*.npz in {path}\n{_BREASTMNIST_LAYOUT}")
  # The file at the requested size, else the largest one.
  return found.get(size, found[max(found)])


def load_breastmnist(path: str | os.PathLike, split: str | Sequence[str] = "train",
                     size: int = 128) -> UltrasoundSet:
  """BreastMNIST (MedMNIST v2): normal or benign (1) vs malignant (0), as published.

  Args:
    path: `breastmnist.npz` / `breastmnist_128.npz`, or a folder holding one (the one at
      `size` is preferred, else the largest).
    split: "train", "val", "test", a sequence of them (concatenated in that order) or "all".
    size: output side in pixels (bilinear resize when the file's size differs).
  """
  size = _check_size(size)
  if isinstance(split, str):
    splits = BREASTMNIST_SPLITS if split == "all" else (split,)
  else:
    splits = tuple(split)
  bad = [s for s in splits if s not in BREASTMNIST_SPLITS]
  if bad or not splits:
    raise DataError(f"BreastMNIST split must be one of {BREASTMNIST_SPLITS}, 'all' or a "
                    f"sequence of them, got {split!r}")
  file = _breastmnist_file(pathlib.Path(path), size)
  images, labels, names = [], [], []
  try:
    with np.load(file) as f:
      keys = set(f.files)
      need = [f"{s}_{k}" for s in splits for k in ("images", "labels")]
      missing = [k for k in need if k not in keys]
      if missing:
        raise DataError(f"{file} lacks key(s) {missing} (found {sorted(keys)})\n"
                        f"{_BREASTMNIST_LAYOUT}")
      for s in splits:
        x, y = f[f"{s}_images"], f[f"{s}_labels"]
        if x.ndim == 4 and x.shape[-1] == 1:
          x = x[..., 0]
        if x.ndim != 3 or x.shape[1] != x.shape[2] or len(y) != len(x) or (
            y.size != len(x)):
          raise DataError(f"{file}: {s}_images {x.shape} and {s}_labels {y.shape}; expected "
                          "[N, H, H] and [N, 1]")
        y = y.reshape(-1)
        if not np.isin(y, (0, 1)).all():
          raise DataError(f"{file}: {s}_labels holds {sorted(set(np.unique(y).tolist()))}; "
                          "expected 0 (malignant) and 1 (normal or benign)")
        images.append(x)
        labels.append(y.astype(np.int32))
        names.extend(f"{s}/{i}" for i in range(len(x)))
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read {file}: {e}") from e
  x = np.concatenate(images)
  if x.dtype != np.uint8:
    if x.size and (x.min() < 0 or x.max() > 255):
      raise DataError(f"{file}: images hold values outside 0..255")
    x = np.rint(x).astype(np.uint8)
  if x.shape[1] == size:
    out = x.astype(np.float32)[..., None] / 255.0
  else:
    out = np.empty((len(x), size, size, 1), np.float32)
    for i, img in enumerate(x):
      out[i, ..., 0] = np.asarray(Image.fromarray(img).resize(
          (size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
  y = np.concatenate(labels)
  return _finish(out, y, names, "breastmnist", [BREASTMNIST_CLASS[int(v)] for v in y])
