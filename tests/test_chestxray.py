"""CheXpert and ChestX-ray14 tables on tiny CSVs and images in the published layouts."""

from __future__ import annotations

import csv
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from medda_jax.data import chestxray
from medda_jax.errors import DataError

nan = float("nan")
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA",
                   *chestxray.CHEXPERT_LABELS]
# (patient, study, view, frontal?, {label: raw value}); unlisted labels are blank.
CHEXPERT_ROWS = [
    ("patient00001", "study1", "view1_frontal", True,
     {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumonia": "0.0"}),
    ("patient00001", "study1", "view2_lateral", False,
     {"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0"}),
    ("patient00002", "study2", "view1_frontal", True, {"No Finding": "1.0"}),
    ("patient00017", "study1", "view1_frontal", True,
     {"Support Devices": "-1.0", "Fracture": "1.0", "Lung Opacity": "0.0"}),
]


def _gray_image(path: pathlib.Path, size=(20, 16), seed=0) -> np.ndarray:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  array = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
  Image.fromarray(array).save(path)
  return array


def _write_chexpert_csv(path: pathlib.Path, rows, prefix: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CHEXPERT_HEADER)
    for patient, study, view, frontal, values in rows:
      rel = f"{prefix}train/{patient}/{study}/{view}.jpg"
      writer.writerow([rel, "Female", 60, "Frontal" if frontal else "Lateral",
                       "AP" if frontal else ""]
                      + [values.get(name, "") for name in chestxray.CHEXPERT_LABELS])


def _chexpert(parent: pathlib.Path, folder="CheXpert-v1.0-small", prefix=None) -> pathlib.Path:
  root = parent / folder
  for i, (patient, study, view, _, _) in enumerate(CHEXPERT_ROWS):
    _gray_image(root / "train" / patient / study / f"{view}.jpg", seed=i)
  root.mkdir(parents=True, exist_ok=True)
  prefix = f"{folder}/" if prefix is None else prefix
  _write_chexpert_csv(root / "train.csv", CHEXPERT_ROWS, prefix)
  _write_chexpert_csv(root / "valid.csv", CHEXPERT_ROWS[2:3], prefix)
  return root


@pytest.fixture
def chexpert(tmp_path):
  return _chexpert(tmp_path)


def _expected_chexpert(uncertain_value: float) -> np.ndarray:
  out = np.zeros((len(CHEXPERT_ROWS), 14), np.float32)
  names = list(chestxray.CHEXPERT_LABELS)
  for i, (_, _, _, _, values) in enumerate(CHEXPERT_ROWS):
    for name, raw in values.items():
      out[i, names.index(name)] = uncertain_value if raw == "-1.0" else float(raw)
  return out


def test_label_tables():
  assert len(chestxray.CHEXPERT_LABELS) == len(chestxray.CHESTXRAY14_LABELS) == 14
  assert chestxray.CHEXPERT_LABELS[0] == "No Finding"
  assert chestxray.CHESTXRAY14_LABELS[-1] == "Hernia"
  assert ("Pleural Effusion", "Effusion") in chestxray.COMMON_LABELS
  for a, b in chestxray.COMMON_LABELS:
    assert a in chestxray.CHEXPERT_LABELS and b in chestxray.CHESTXRAY14_LABELS
  assert len(chestxray.COMMON_LABELS) == 7


@pytest.mark.parametrize("policy,value", [("zeros", 0.0), ("ones", 1.0), ("ignore", nan)])
def test_chexpert_uncertainty_policies_and_blanks(chexpert, policy, value):
  table = chestxray.load_chexpert(chexpert, uncertain=policy)
  assert table.label_names == chestxray.CHEXPERT_LABELS
  assert table.labels.dtype == np.float32 and table.labels.shape == (4, 14)
  np.testing.assert_array_equal(table.labels, _expected_chexpert(value))
  edema = chestxray.CHEXPERT_LABELS.index("Edema")
  assert np.isnan(table.labels[0, edema]) if policy == "ignore" else (
      table.labels[0, edema] == value)
  # Blank cells are 0 under every policy.
  assert table.labels[2, chestxray.CHEXPERT_LABELS.index("Cardiomegaly")] == 0.0
  assert np.isnan(table.labels).sum() == (3 if policy == "ignore" else 0)


def test_chexpert_paths_patients_and_frontal(chexpert):
  table = chestxray.load_chexpert(chexpert)
  assert table.root == chexpert
  assert table.paths[0] == "train/patient00001/study1/view1_frontal.jpg"
  assert all((chexpert / p).is_file() for p in table.paths)
  assert table.patient_ids == ("patient00001", "patient00001", "patient00002", "patient00017")
  frontal = chestxray.load_chexpert(chexpert, frontal_only=True)
  assert len(frontal) == 3
  assert "view2_lateral" not in " ".join(frontal.paths)
  valid = chestxray.load_chexpert(chexpert, split="valid")
  assert valid.paths == ("train/patient00002/study2/view1_frontal.jpg",)
  np.testing.assert_array_equal(valid.labels[0], np.eye(14, dtype=np.float32)[0])


def test_chexpert_root_is_the_parent_of_the_release_folder(tmp_path):
  # CSV paths start with the release folder, root is the folder above it.
  release = _chexpert(tmp_path / "data")
  os.replace(release / "train.csv", tmp_path / "data" / "train.csv")
  table = chestxray.load_chexpert(tmp_path / "data")
  assert table.paths[0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
  assert all((tmp_path / "data" / p).is_file() for p in table.paths)


def test_chexpert_paths_without_release_prefix(tmp_path):
  root = _chexpert(tmp_path, folder="chexpert", prefix="")
  table = chestxray.load_chexpert(root)
  assert table.paths[3] == "train/patient00017/study1/view1_frontal.jpg"
  assert table.patient_ids[3] == "patient00017"


def test_subset(chexpert):
  table = chestxray.load_chexpert(chexpert)
  sub = table.subset([3, 0])
  assert len(sub) == 2 and sub.patient_ids == ("patient00017", "patient00001")
  np.testing.assert_array_equal(sub.labels, table.labels[[3, 0]])
  assert sub.label_names == table.label_names and sub.root == table.root


def test_read_images_range_and_shape(chexpert):
  table = chestxray.load_chexpert(chexpert)
  native = chestxray.read_images(table, [2, 0], size=16)
  assert native.shape == (2, 16, 16, 1) and native.dtype == np.float32
  assert 0.0 <= native.min() and native.max() <= 1.0 and native.max() > 0.5
  small = chestxray.read_images(table, np.arange(4), size=8)
  assert small.shape == (4, 8, 8, 1)
  with Image.open(chexpert / table.paths[0]) as img:
    expected = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BILINEAR),
                          np.float32) / 255
  np.testing.assert_allclose(small[0, ..., 0], expected, atol=1e-6)


def test_read_images_png_modes(tmp_path):
  exact = np.array([[0, 255], [51, 102]], np.uint8)
  Image.fromarray(exact).save(tmp_path / "gray.png")
  Image.fromarray(np.stack([exact] * 3, -1)).save(tmp_path / "rgb.png")
  Image.fromarray(np.array([[0, 65535], [13107, 26214]], np.uint16)).save(tmp_path / "deep.png")
  table = chestxray.ImageLabelTable(
      root=tmp_path, paths=("gray.png", "rgb.png", "deep.png"),
      labels=np.zeros((3, 1), np.float32), label_names=("x",), patient_ids=("1", "2", "3"))
  images = chestxray.read_images(table, [0, 1, 2], size=2)
  for i in range(3):
    np.testing.assert_allclose(images[i, ..., 0], [[0.0, 1.0], [0.2, 0.4]], atol=1e-6)


# --- ChestX-ray14 --------------------------------------------------------------------------

CXR14_ROWS = [
    ("00000001_000.png", "Cardiomegaly", "1"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1"),
    ("00000002_000.png", "No Finding", "2"),
    ("00000003_000.png", "Effusion|Pleural_Thickening|Hernia", "3"),
    ("00000004_000.png", "Infiltration", "4"),
]
TRAIN_VAL = ["00000003_000.png", "00000001_000.png", "00000001_001.png"]
TEST = ["00000002_000.png", "00000004_000.png"]


def _chestxray14(root: pathlib.Path, layout: str) -> pathlib.Path:
  root.mkdir(parents=True)
  with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
    f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
    for k, (name, findings, patient) in enumerate(CXR14_ROWS):
      f.write(f"{name},{findings},{k},{patient},58,M,PA,2682,2749,0.143,0.143\n")
  (root / "train_val_list.txt").write_text("\n".join(TRAIN_VAL) + "\n")
  (root / "test_list.txt").write_text("\n".join(TEST) + "\n")
  for k, (name, _, _) in enumerate(CXR14_ROWS):
    folder = "images" if layout == "flat" else f"images_{1 + k // 3:03d}/images"
    _gray_image(root / folder / name, size=(12, 12), seed=k)
  return root


@pytest.fixture(params=["flat", "archives"])
def cxr14(request, tmp_path):
  return _chestxray14(tmp_path / "cxr14", request.param), request.param


def _row(*findings) -> list[float]:
  return [1.0 if name in findings else 0.0 for name in chestxray.CHESTXRAY14_LABELS]


def test_chestxray14_labels_and_splits(cxr14):
  root, layout = cxr14
  train = chestxray.load_chestxray14(root)
  assert train.label_names == chestxray.CHESTXRAY14_LABELS
  assert [p.rsplit("/", 1)[1] for p in train.paths] == TRAIN_VAL
  if layout == "flat":
    assert train.paths[1] == "images/00000001_000.png"
  else:
    assert train.paths == ("images_002/images/00000003_000.png",
                           "images_001/images/00000001_000.png",
                           "images_001/images/00000001_001.png")
  np.testing.assert_array_equal(train.labels, np.array([
      _row("Effusion", "Pleural_Thickening", "Hernia"), _row("Cardiomegaly"),
      _row("Cardiomegaly", "Emphysema")], np.float32))
  assert train.patient_ids == ("3", "1", "1")
  test = chestxray.load_chestxray14(root, split="test")
  assert test.patient_ids == ("2", "4")
  np.testing.assert_array_equal(test.labels, np.array([_row(), _row("Infiltration")],
                                                      np.float32))
  images = chestxray.read_images(test, [1, 0], size=6)
  assert images.shape == (2, 6, 6, 1) and 0 <= images.min() and images.max() <= 1


# --- errors -------------------------------------------------------------------------------


def test_chexpert_error_csv_missing(chexpert):
  os.remove(chexpert / "valid.csv")
  with pytest.raises(DataError, match=r"valid\.csv does not exist"):
    chestxray.load_chexpert(chexpert, split="valid")


def test_chexpert_error_wrong_columns(chexpert):
  text = (chexpert / "train.csv").read_text().replace("Pleural Effusion", "Effusion", 1)
  (chexpert / "train.csv").write_text(text)
  with pytest.raises(DataError, match=r"lacks column\(s\) \['Pleural Effusion'\]"):
    chestxray.load_chexpert(chexpert)


def test_chexpert_error_bad_value(chexpert):
  rows = [CHEXPERT_ROWS[0], ("patient00003", "study1", "view1_frontal", True, {"Edema": "2.0"})]
  _write_chexpert_csv(chexpert / "train.csv", rows, "CheXpert-v1.0-small/")
  with pytest.raises(DataError, match=r"line 3: Edema is '2.0'"):
    chestxray.load_chexpert(chexpert, check_files=False)


def test_chexpert_error_images_missing(chexpert):
  os.remove(chexpert / "train/patient00002/study2/view1_frontal.jpg")
  os.remove(chexpert / "train/patient00017/study1/view1_frontal.jpg")
  with pytest.raises(DataError, match=r"patient00002.* is missing \(2 of 4 images missing\)"):
    chestxray.load_chexpert(chexpert)


def test_chexpert_error_options(chexpert):
  with pytest.raises(DataError, match="split must be one of"):
    chestxray.load_chexpert(chexpert, split="test")
  with pytest.raises(DataError, match="uncertain must be one of"):
    chestxray.load_chexpert(chexpert, uncertain="maybe")
  with pytest.raises(DataError, match="does not exist"):
    chestxray.load_chexpert(chexpert / "nowhere")


def test_read_images_errors(chexpert):
  table = chestxray.load_chexpert(chexpert)
  os.remove(chexpert / table.paths[1])
  with pytest.raises(DataError, match="image file .*view2_lateral.jpg is missing"):
    chestxray.read_images(table, [0, 1], size=8)
  (chexpert / table.paths[2]).write_bytes(b"not an image")
  with pytest.raises(DataError, match="cannot read image file .*patient00002"):
    chestxray.read_images(table, [2], size=8)


def test_chestxray14_error_table_missing(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "flat")
  os.remove(root / "Data_Entry_2017.csv")
  with pytest.raises(DataError, match=r"Data_Entry_2017\.csv does not exist"):
    chestxray.load_chestxray14(root)


def test_chestxray14_error_wrong_columns(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "flat")
  text = (root / "Data_Entry_2017.csv").read_text().replace("Finding Labels", "Findings", 1)
  (root / "Data_Entry_2017.csv").write_text(text)
  with pytest.raises(DataError, match=r"lacks column\(s\) \['Finding Labels'\]"):
    chestxray.load_chestxray14(root)


def test_chestxray14_error_list_missing(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "flat")
  os.remove(root / "test_list.txt")
  with pytest.raises(DataError, match=r"split list .*test_list\.txt does not exist"):
    chestxray.load_chestxray14(root, split="test")


def test_chestxray14_error_unknown_finding(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "flat")
  text = (root / "Data_Entry_2017.csv").read_text().replace("Cardiomegaly|Emphysema",
                                                            "Cardiomegaly|Tumour")
  (root / "Data_Entry_2017.csv").write_text(text)
  with pytest.raises(DataError, match=r"line 3: .*unknown finding\(s\) \['Tumour'\]"):
    chestxray.load_chestxray14(root)


def test_chestxray14_error_listed_image_not_in_table(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "flat")
  (root / "test_list.txt").write_text("00000002_000.png\n00000009_000.png\n")
  with pytest.raises(DataError, match=r"00000009_000.png .* is not in .*\(1 of 2 listed"):
    chestxray.load_chestxray14(root, split="test")


def test_chestxray14_error_image_files_missing(tmp_path):
  root = _chestxray14(tmp_path / "cxr14", "archives")
  os.remove(root / "images_001/images/00000001_001.png")
  with pytest.raises(DataError, match=r"00000001_001.png .* is missing .*\(1 of 3 images"):
    chestxray.load_chestxray14(root)
