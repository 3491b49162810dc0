"""BUSI, BrEaST and BreastMNIST loaders on tiny fixtures in the published layouts."""

from __future__ import annotations

import csv
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from medda_jax.data import breast_us
from medda_jax.errors import DataError


def _png(path: pathlib.Path, seed: int, size=(20, 14), rgb: bool = False) -> np.ndarray:
  """A random PNG (width x height `size`); returns its greyscale as PIL reads it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
  array = rng.integers(0, 256, size=shape, dtype=np.uint8)
  Image.fromarray(array).save(path)
  with Image.open(path) as img:
    return np.asarray(img.convert("L"))


def _expected(path: pathlib.Path, size: int) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR),
                      np.float32) / 255


# --- BUSI -----------------------------------------------------------------------------------

# (class, image numbers); masks are added for every image, and `_mask_1` for some.
BUSI = {"benign": (1, 2, 10), "normal": (1, 2), "malignant": (3, 1)}


def _busi(parent: pathlib.Path) -> pathlib.Path:
  root = parent / "Dataset_BUSI_with_GT"
  seed = 0
  for cls, numbers in BUSI.items():
    for n in numbers:
      seed += 1
      # Real BUSI has some RGB PNGs: make one.
      _png(root / cls / f"{cls} ({n}).png", seed, rgb=(cls, n) == ("benign", 2))
      _png(root / cls / f"{cls} ({n})_mask.png", 100 + seed)
    _png(root / cls / f"{cls} ({numbers[0]})_mask_1.png", 200 + seed)
  (root / "benign" / "notes.txt").write_text("not an image")
  return root


@pytest.fixture
def busi(tmp_path):
  return _busi(tmp_path)


def test_busi_labels_counts_and_order(busi):
  data = breast_us.load_busi(busi, size=16)
  assert data.site == "busi"
  assert data.names == ("benign/benign (1).png", "benign/benign (2).png",
                        "benign/benign (10).png", "normal/normal (1).png",
                        "normal/normal (2).png", "malignant/malignant (1).png",
                        "malignant/malignant (3).png")
  np.testing.assert_array_equal(data.labels, [1, 1, 1, 1, 1, 0, 0])
  assert data.labels.dtype == np.int32
  assert data.class_counts() == {"benign": 3, "malignant": 2, "normal": 2}
  assert data.label_counts() == {0: 2, 1: 5}
  assert "busi: 7 images (benign 3, malignant 2, normal 2); label 1 (benign): 5" in (
      data.summary())
  assert data.images.shape == (7, 16, 16, 1) and data.images.dtype == np.float32
  assert 0 <= data.images.min() and data.images.max() <= 1
  for i in (1, 5):  # the RGB PNG and a grey one
    np.testing.assert_allclose(data.images[i, ..., 0], _expected(busi / data.names[i], 16),
                               atol=1e-6)


def test_busi_without_normal_and_from_the_folder_itself(busi):
  data = breast_us.load_busi(busi, size=8, include_normal=False)
  assert len(data) == 5 and "normal" not in data.class_counts()
  np.testing.assert_array_equal(data.labels, [1, 1, 1, 0, 0])
  parent = breast_us.load_busi(busi.parent, size=8, include_normal=False)
  assert parent.names == data.names
  np.testing.assert_array_equal(parent.images, data.images)
  sub = data.subset([4, 0])
  assert sub.names == ("malignant/malignant (3).png", "benign/benign (1).png")
  np.testing.assert_array_equal(sub.labels, [0, 1])


def test_busi_native_size_keeps_pixels(tmp_path):
  root = tmp_path / "Dataset_BUSI_with_GT"
  grey = _png(root / "benign" / "benign (1).png", 1, size=(12, 12))
  rgb = _png(root / "malignant" / "malignant (1).png", 2, size=(12, 12), rgb=True)
  data = breast_us.load_busi(root, size=12, include_normal=False)
  np.testing.assert_allclose(data.images[0, ..., 0], grey / 255, atol=1e-6)
  # RGB -> luminance (PIL's ITU-R 601-2 L = R 299/1000 + G 587/1000 + B 114/1000).
  np.testing.assert_allclose(data.images[1, ..., 0], rgb / 255, atol=1e-6)


def test_busi_errors(busi, tmp_path):
  with pytest.raises(DataError, match="BUSI folder .*nowhere does not exist"):
    breast_us.load_busi(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="has neither Dataset_BUSI_with_GT/ nor the class"):
    breast_us.load_busi(tmp_path / "empty")
  for f in (busi / "normal").glob("normal (?).png"):
    os.remove(f)
  with pytest.raises(DataError, match=r"no images found in BUSI class folder .*normal"):
    breast_us.load_busi(busi)
  assert len(breast_us.load_busi(busi, size=8, include_normal=False)) == 5
  for f in (busi / "normal").iterdir():
    os.remove(f)
  (busi / "normal").rmdir()
  with pytest.raises(DataError, match=r"class folder .*normal does not exist"):
    breast_us.load_busi(busi)
  (busi / "benign" / "benign (1).png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"cannot read image file .*benign \(1\).png"):
    breast_us.load_busi(busi, include_normal=False)
  with pytest.raises(DataError, match="size must be a positive integer"):
    breast_us.load_busi(busi, size=0)


# --- BrEaST ---------------------------------------------------------------------------------

BREAST_ROWS = [("case001.png", "benign"), ("case002.png", "Malignant"),
               ("case003.png", "normal"), ("case004.png", "benign"),
               ("case010.png", "malignant")]
TABLE = "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv"


def _write_table(path: pathlib.Path, rows) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["CaseID", "Image_filename", "Mask_tumor_filename", "Age", "BIRADS",
                     "Classification"])
    for k, (name, cls) in enumerate(rows, start=1):
      mask = "" if cls == "normal" else name.replace(".png", "_tumor.png")
      writer.writerow([k, name, mask, 50 + k, "4a", cls])


def _breast(parent: pathlib.Path) -> pathlib.Path:
  folder = parent / "BrEaST-Lesions_USG-images_and_masks"
  for k, (name, cls) in enumerate(BREAST_ROWS):
    _png(folder / name, k, size=(18 + k, 15), rgb=k == 1)
    if cls != "normal":
      _png(folder / name.replace(".png", "_tumor.png"), 50 + k)
  _png(folder / "case002_other1.png", 90)
  _png(folder / "case099_tumor.png", 91)  # a mask without its image: ignored
  _write_table(parent / TABLE, BREAST_ROWS)
  return parent


@pytest.fixture
def breast(tmp_path):
  return _breast(tmp_path / "BrEaST")


def test_breast_labels_and_masks_skipped(breast):
  data = breast_us.load_breast(breast, size=12)
  folder = "BrEaST-Lesions_USG-images_and_masks"
  assert data.site == "breast"
  assert data.names == tuple(f"{folder}/{n}" for n, _ in BREAST_ROWS)
  np.testing.assert_array_equal(data.labels, [1, 0, 1, 1, 0])
  assert data.classes == ("benign", "malignant", "normal", "benign", "malignant")
  assert data.class_counts() == {"benign": 2, "malignant": 2, "normal": 1}
  assert data.images.shape == (5, 12, 12, 1)
  for i in (0, 1):  # grey and RGB
    np.testing.assert_allclose(data.images[i, ..., 0], _expected(breast / data.names[i], 12),
                               atol=1e-6)


def test_breast_drop_normal_and_image_folder_root(breast):
  data = breast_us.load_breast(breast, size=8, normal="drop")
  assert len(data) == 4 and "normal" not in data.class_counts()
  np.testing.assert_array_equal(data.labels, [1, 0, 1, 0])
  # Root = the image folder, table one level up.
  inner = breast_us.load_breast(breast / "BrEaST-Lesions_USG-images_and_masks", size=8,
                                normal="drop")
  assert inner.names == tuple(n.rsplit("/", 1)[1] for n in data.names)
  np.testing.assert_array_equal(inner.images, data.images)


def test_breast_explicit_table(breast, tmp_path):
  other = tmp_path / "labels.csv"
  _write_table(other, [(n, "malignant") for n, _ in BREAST_ROWS])
  data = breast_us.load_breast(breast, size=8, table=other)
  np.testing.assert_array_equal(data.labels, [0] * 5)


def test_breast_errors(breast, tmp_path):
  with pytest.raises(DataError, match="normal must be one of"):
    breast_us.load_breast(breast, normal="malignant")
  with pytest.raises(DataError, match="BrEaST folder .*nowhere does not exist"):
    breast_us.load_breast(tmp_path / "nowhere")
  (tmp_path / "no_images").mkdir()
  with pytest.raises(DataError, match="no images caseNNN.png found"):
    breast_us.load_breast(tmp_path / "no_images")
  # An image without a row.
  _write_table(breast / TABLE, BREAST_ROWS[:4])
  with pytest.raises(DataError, match=r"case010.png has no row in .*\(1 of 5 images without"):
    breast_us.load_breast(breast)
  # A row without its image.
  _write_table(breast / TABLE, BREAST_ROWS + [("case011.png", "benign")])
  with pytest.raises(DataError, match=r"lists case011.png, which is not in"):
    breast_us.load_breast(breast)
  _write_table(breast / TABLE, BREAST_ROWS[:4] + [("case010.png", "suspicious")])
  with pytest.raises(DataError, match=r"line 6: Classification of case010.png is 'suspicious'"):
    breast_us.load_breast(breast)
  _write_table(breast / TABLE, BREAST_ROWS + [("case001.png", "benign")])
  with pytest.raises(DataError, match=r"line 7: case001.png is listed twice"):
    breast_us.load_breast(breast)
  text = (breast / TABLE).read_text().replace("Classification", "Diagnosis")
  (breast / TABLE).write_text(text)
  with pytest.raises(DataError, match=r"lacks column\(s\) \['Classification'\]"):
    breast_us.load_breast(breast)
  os.remove(breast / TABLE)
  with pytest.raises(DataError, match="no BrEaST-Lesions-USG-clinical-data-\\*.csv or .xlsx"):
    breast_us.load_breast(breast)


def test_breast_xlsx_without_openpyxl(breast, monkeypatch):
  os.remove(breast / TABLE)
  (breast / TABLE.replace(".csv", ".xlsx")).write_bytes(b"PK fake workbook")
  monkeypatch.setitem(sys.modules, "openpyxl", None)  # import fails
  with pytest.raises(DataError, match=r"openpyxl is not installed.*export the sheet as CSV"):
    breast_us.load_breast(breast)


def test_breast_xlsx_with_openpyxl(breast):
  openpyxl = pytest.importorskip("openpyxl")
  os.remove(breast / TABLE)
  book = openpyxl.Workbook()
  sheet = book.active
  sheet.append(["CaseID", "Image_filename", "Classification"])
  for k, (name, cls) in enumerate(BREAST_ROWS, start=1):
    sheet.append([k, name, cls])
  book.save(breast / TABLE.replace(".csv", ".xlsx"))
  data = breast_us.load_breast(breast, size=8)
  np.testing.assert_array_equal(data.labels, [1, 0, 1, 1, 0])


# --- BreastMNIST ----------------------------------------------------------------------------

SPLIT_LABELS = {"train": [0, 1, 1, 1, 0, 1], "val": [1, 0], "test": [1, 1, 0]}


def _breastmnist(path: pathlib.Path, side: int, seed: int = 0, **override) -> dict:
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, labels in SPLIT_LABELS.items():
    arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), side, side), dtype=np.uint8)
    arrays[f"{split}_labels"] = np.asarray(labels, np.uint8)[:, None]
  arrays.update(override)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return arrays


def test_breastmnist_splits_and_labels(tmp_path):
  arrays = _breastmnist(tmp_path / "breastmnist.npz", 28)
  train = breast_us.load_breastmnist(tmp_path / "breastmnist.npz", size=28)
  assert train.site == "breastmnist" and len(train) == 6
  np.testing.assert_array_equal(train.labels, SPLIT_LABELS["train"])
  np.testing.assert_allclose(train.images[..., 0], arrays["train_images"] / 255, atol=1e-7)
  assert train.names[:2] == ("train/0", "train/1")
  assert train.class_counts() == {"malignant": 2, "normal_or_benign": 4}
  both = breast_us.load_breastmnist(tmp_path / "breastmnist.npz", ("train", "val"), size=28)
  np.testing.assert_array_equal(both.labels, SPLIT_LABELS["train"] + SPLIT_LABELS["val"])
  assert both.names[6:] == ("val/0", "val/1")
  everything = breast_us.load_breastmnist(tmp_path, "all", size=28)
  assert len(everything) == 11 and everything.names[-1] == "test/2"
  test = breast_us.load_breastmnist(tmp_path, "test", size=16)
  assert test.images.shape == (3, 16, 16, 1)
  expected = np.asarray(Image.fromarray(arrays["test_images"][2]).resize(
      (16, 16), Image.Resampling.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(test.images[2, ..., 0], expected, atol=1e-6)


def test_breastmnist_picks_the_file_at_the_size(tmp_path):
  small = _breastmnist(tmp_path / "breastmnist.npz", 28, seed=1)
  big = _breastmnist(tmp_path / "breastmnist_64.npz", 64, seed=2)
  at28 = breast_us.load_breastmnist(tmp_path, "val", size=28)
  np.testing.assert_allclose(at28.images[..., 0], small["val_images"] / 255, atol=1e-7)
  at64 = breast_us.load_breastmnist(tmp_path, "val", size=64)
  np.testing.assert_allclose(at64.images[..., 0], big["val_images"] / 255, atol=1e-7)
  at128 = breast_us.load_breastmnist(tmp_path, "val", size=128)  # from the largest file
  expected = np.asarray(Image.fromarray(big["val_images"][0]).resize(
      (128, 128), Image.Resampling.BILINEAR), np.float32) / 255
  np.testing.assert_allclose(at128.images[0, ..., 0], expected, atol=1e-6)


def test_breastmnist_errors(tmp_path):
  with pytest.raises(DataError, match="BreastMNIST file or folder .* does not exist"):
    breast_us.load_breastmnist(tmp_path / "missing.npz")
  with pytest.raises(DataError, match=r"no breastmnist\*.npz in"):
    breast_us.load_breastmnist(tmp_path)
  path = tmp_path / "bad" / "breastmnist.npz"
  _breastmnist(path, 28)
  with pytest.raises(DataError, match="BreastMNIST split must be one of"):
    breast_us.load_breastmnist(path, "validation")
  arrays = dict(np.load(path))
  arrays["valid_images"] = arrays.pop("val_images")
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=r"lacks key\(s\) \['val_images'\]"):
    breast_us.load_breastmnist(path, "val")
  assert len(breast_us.load_breastmnist(path, "train", size=28)) == 6
  _breastmnist(path, 28, train_labels=np.array([[0], [2], [1], [1], [0], [1]], np.uint8))
  with pytest.raises(DataError, match=r"train_labels holds \[0, 1, 2\]"):
    breast_us.load_breastmnist(path)
  _breastmnist(path, 28, test_labels=np.zeros((2, 1), np.uint8))
  with pytest.raises(DataError, match=r"test_images \(3, 28, 28\) and test_labels \(2, 1\)"):
    breast_us.load_breastmnist(path, "test")
  path.write_bytes(b"not an npz")
  with pytest.raises(DataError, match="cannot read .*breastmnist.npz"):
    breast_us.load_breastmnist(path)
