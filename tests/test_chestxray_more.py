"""Shenzhen, VinDr-CXR and RSNA Pneumonia tables on tiny fixtures in the published layouts
(DICOM written with pydicom), and their use as SimMIM targets."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import config_with
from medda_jax.data import chestxray
from medda_jax.data.images import read_image
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.simmim import experiment
from test_cbis_ddsm import write_dicom

CONFIG = "configs/simmim.py:smoke"


def _png(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, size=(10, 12), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def _dicom(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  pixels = np.random.default_rng(seed).integers(0, 4096, size=(10, 12)).astype(np.uint16)
  return write_dicom(path, pixels)


def _one_line(error: pytest.ExceptionInfo) -> str:
  text = str(error.value)
  assert "\n" not in text.split("\nexpected")[0], text
  return text


# --------------------------------------------------------------------------- Shenzhen
SHENZHEN = ["CHNCXR_0003_1.png", "CHNCXR_0001_0.png", "CHNCXR_0002_1.png"]


def _shenzhen(root: pathlib.Path, folder: str = "CXR_png") -> pathlib.Path:
  for k, name in enumerate(SHENZHEN):
    _png(root / folder / name, seed=k)
  (root / folder / "Thumbs.db").write_text("x")
  _png(root / folder / "CHNCXR_0004_0_mask.png")
  (root / folder / "CHNCXR_0005_1.txt").write_text("male 35yrs\nnormal\n")
  return root


@pytest.mark.parametrize("folder", ["CXR_png", "ChinaSet_AllFiles/CXR_png", "."])
def test_shenzhen_labels_patients_and_layouts(tmp_path, folder):
  root = _shenzhen(tmp_path / "shenzhen", folder)
  table = chestxray.load_shenzhen(root)
  prefix = "" if folder == "." else f"{folder}/"
  assert table.paths == tuple(prefix + n for n in sorted(SHENZHEN))
  assert table.label_names == ("Tuberculosis",)
  np.testing.assert_array_equal(table.labels, [[0.0], [1.0], [1.0]])
  assert table.labels.dtype == np.float32
  assert table.patient_ids == ("0001", "0002", "0003")
  images = chestxray.read_images(table, [2], size=8)
  assert images.shape == (1, 8, 8, 1) and 0 <= images.min() and images.max() <= 1


def test_shenzhen_error_no_images(tmp_path):
  (tmp_path / "shenzhen" / "CXR_png").mkdir(parents=True)
  _png(tmp_path / "shenzhen" / "CXR_png" / "other.png")
  with pytest.raises(DataError, match=r"no CHNCXR_NNNN_<0\|1>\.png image in .*shenzhen"
                     r"\nexpected the Shenzhen release layout") as e:
    chestxray.load_shenzhen(tmp_path / "shenzhen")
  _one_line(e)
  with pytest.raises(DataError, match="Shenzhen root folder .* does not exist"):
    chestxray.load_shenzhen(tmp_path / "nowhere")


# --------------------------------------------------------------------------- VinDr-CXR
VINDR_LABELS = ("Aortic enlargement", "Nodule/Mass", "No finding")
# image_id, rad_id, labels: image a: 2 of 3 mark Aortic enlargement, 1 of 3 Nodule/Mass.
VINDR_TRAIN = [
    ("a1", "R1", (1, 0, 0)), ("a1", "R2", (1, 1, 0)), ("a1", "R3", (0, 0, 1)),
    ("b2", "R4", (0, 0, 1)), ("b2", "R5", (0, 0, 1)), ("b2", "R6", (0, 0, 1)),
]
VINDR_TEST = [("c3", (0, 1, 0)), ("d4", (0, 0, 1))]


def _write(path: pathlib.Path, header, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n")


def _vindr(root: pathlib.Path, csvs: str = "") -> pathlib.Path:
  _write(root / csvs / "image_labels_train.csv", ("image_id", "rad_id", *VINDR_LABELS),
         [(i, r, *v) for i, r, v in VINDR_TRAIN])
  # the test CSV: its columns in another order, one spelled in the singular
  test_labels = ("No finding", "Aortic enlargement", "Nodule/Mas")
  _write(root / csvs / "image_labels_test.csv", ("image_id", *test_labels),
         [(i, v[2], v[0], v[1]) for i, v in VINDR_TEST])
  _dicom(root / "train" / "a1.dicom", seed=1)
  _png(root / "train" / "b2.png", seed=2)   # converted copies are accepted
  _dicom(root / "test" / "c3.dicom", seed=3)
  _png(root / "test" / "d4.png", seed=4)
  return root


@pytest.fixture
def vindr(tmp_path):
  return _vindr(tmp_path / "vindr")


def test_vindr_majority_any_and_test_split(vindr):
  train = chestxray.load_vindr_cxr(vindr)
  assert train.label_names == VINDR_LABELS
  assert train.paths == ("train/a1.dicom", "train/b2.png")
  assert train.patient_ids == ("a1", "b2")
  np.testing.assert_array_equal(train.labels, [[1, 0, 0], [0, 0, 1]])
  anyone = chestxray.load_vindr_cxr(vindr, aggregate="any")
  np.testing.assert_array_equal(anyone.labels, [[1, 1, 1], [0, 0, 1]])
  test = chestxray.load_vindr_cxr(vindr, split="test")
  assert test.paths == ("test/c3.dicom", "test/d4.png") and test.patient_ids == ("c3", "d4")
  assert test.label_names == ("No finding", "Aortic enlargement", "Nodule/Mas")
  np.testing.assert_array_equal(test.labels, [[0, 0, 1], [1, 0, 0]])
  images = chestxray.read_images(train, [0, 1], size=8)
  assert images.shape == (2, 8, 8, 1) and 0 <= images.min() and images.max() <= 1
  # `.dicom` is read as DICOM, exactly as images.read_image reads a `.dcm` copy.
  shutil.copy(vindr / "train" / "a1.dicom", vindr / "a1.dcm")
  np.testing.assert_allclose(images[0], read_image(vindr / "a1.dcm", 8, channels=1), atol=1e-6)


def test_vindr_errors(vindr):
  text = (vindr / "image_labels_train.csv").read_text()
  (vindr / "image_labels_train.csv").write_text(text.replace("rad_id", "reader", 1))
  with pytest.raises(DataError, match=r"lacks column\(s\) \['rad_id'\]") as e:
    chestxray.load_vindr_cxr(vindr)
  _one_line(e)
  (vindr / "image_labels_train.csv").write_text(text.replace("b2,R5,0,0,1", "b2,R5,0,0,2"))
  with pytest.raises(DataError, match=r"line 6: No finding is '2'; expected 1 or 0") as e:
    chestxray.load_vindr_cxr(vindr)
  _one_line(e)
  os.remove(vindr / "test" / "c3.dicom")
  with pytest.raises(DataError, match=r"image file .*test/c3\.dicom listed in .*"
                     r"image_labels_test\.csv is missing \(1 of 2") as e:
    chestxray.load_vindr_cxr(vindr, split="test")
  _one_line(e)
  with pytest.raises(DataError, match="aggregate must be one of"):
    chestxray.load_vindr_cxr(vindr, aggregate="mean")
  with pytest.raises(DataError, match="split must be one of"):
    chestxray.load_vindr_cxr(vindr, split="valid")


# --------------------------------------------------------------------------- RSNA Pneumonia
RSNA_ROWS = [("p-1", "Lung Opacity"), ("p-2", "Normal"), ("p-1", "Lung Opacity"),
             ("p-3", "No Lung Opacity / Not Normal")]


def _rsna(root: pathlib.Path, rows=RSNA_ROWS) -> pathlib.Path:
  _write(root / "stage_2_detailed_class_info.csv", ("patientId", "class"), rows)
  for k, patient in enumerate(dict.fromkeys(p for p, _ in rows)):
    _dicom(root / "stage_2_train_images" / f"{patient}.dcm", seed=k)
  return root


def test_rsna_pneumonia_one_hot_and_dedup(tmp_path):
  table = chestxray.load_rsna_pneumonia(_rsna(tmp_path / "rsna"))
  assert table.label_names == ("Normal", "Lung Opacity", "No Lung Opacity / Not Normal")
  assert table.patient_ids == ("p-1", "p-2", "p-3")
  assert table.paths == tuple(f"stage_2_train_images/p-{k}.dcm" for k in (1, 2, 3))
  np.testing.assert_array_equal(table.labels, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
  assert chestxray.read_images(table, [0], size=8).shape == (1, 8, 8, 1)


def test_rsna_pneumonia_errors(tmp_path):
  root = _rsna(tmp_path / "rsna", RSNA_ROWS + [("p-2", "Lung Opacity")])
  with pytest.raises(DataError, match=r"line 6: patient p-2 has class 'Lung Opacity' but "
                     r"'Normal' on line 3") as e:
    chestxray.load_rsna_pneumonia(root)
  _one_line(e)
  _write(root / "stage_2_detailed_class_info.csv", ("patientId", "class"), [("p-1", "Sick")])
  with pytest.raises(DataError, match=r"line 2: class 'Sick' is not one of") as e:
    chestxray.load_rsna_pneumonia(root)
  _one_line(e)
  _write(root / "stage_2_detailed_class_info.csv", ("patientId", "Target"), [("p-1", "1")])
  with pytest.raises(DataError, match=r"lacks column\(s\) \['class'\]") as e:
    chestxray.load_rsna_pneumonia(root)
  _one_line(e)
  root = _rsna(tmp_path / "rsna2")
  os.remove(root / "stage_2_train_images" / "p-3.dcm")
  with pytest.raises(DataError, match=r"image file .*p-3\.dcm listed in .* is missing "
                     r"\(1 of 3 images missing\)") as e:
    chestxray.load_rsna_pneumonia(root)
  _one_line(e)


# --------------------------------------------------------------------------- SimMIM
def test_simmim_published_targets(tmp_path):
  c = config_with(CONFIG, "transfer.targets", ("shenzhen",))
  with pytest.raises(ConfigError, match="config.data.dirs.shenzhen must name"):
    experiment.validate(c)
  c.data.dirs.shenzhen = str(_shenzhen(tmp_path / "shenzhen"))
  experiment.validate(c)
  rows = experiment.load_rows(c, "shenzhen", 32)
  assert len(rows) == 3 and rows.label_names == ("Tuberculosis",)
  assert rows.table.patient_ids == ("0001", "0002", "0003")
  assert rows.read([0], 32).shape == (1, 32, 32, 1)
  c.data.vindr_aggregate = "mean"
  with pytest.raises(ConfigError, match="vindr_aggregate"):
    experiment.validate(c)
  c.data.vindr_aggregate = "any"
  c.data.dirs.vindr_cxr = str(_vindr(tmp_path / "vindr", csvs="annotations"))
  rows = experiment.load_rows(c, "vindr_cxr", 32)  # train + test CSVs, test columns matched
  assert rows.table.patient_ids == ("a1", "b2", "c3", "d4")
  assert rows.label_names == VINDR_LABELS
  np.testing.assert_array_equal(rows.labels, [[1, 1, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1]])
  c.data.dirs.rsna_pneumonia = str(_rsna(tmp_path / "rsna"))
  assert len(experiment.load_rows(c, "rsna_pneumonia", 32)) == 3
  c.data.user = (f"shenzhen={tmp_path}",)
  with pytest.raises(ConfigError, match="taken by a published dataset"):
    experiment.validate(c)
