"""CBIS-DDSM in its published layout (case CSVs, DICOM folders named by the first path
component), the image-level "any malignant" label, patient-level splits, square padding of
mammograms, and the errors a user can cause."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pydicom
import pytest

from conftest import data_error
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medda_jax.data import cbis_ddsm, images
from medda_jax.errors import ConfigError, DataError

MASS_HEADER = ("patient_id", "breast density", "left or right breast", "image view",
               "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
               "pathology", "subtlety", "image file path", "cropped image file path",
               "ROI mask file path")
CALC_HEADER = ("patient_id", "breast_density", "left or right breast", "image view",
               "abnormality id", "abnormality type", "calc type", "calc distribution",
               "assessment", "pathology", "subtlety", "image file path",
               "cropped image file path", "ROI mask file path")
UID = "1.3.6.1.4.1.9590.100.1.2"
# (patient, breast, view, abnormality id, pathology) per abnormality row.
MASS_TRAIN = [
    ("P_00001", "LEFT", "CC", 1, "MALIGNANT"),
    ("P_00001", "LEFT", "MLO", 1, "MALIGNANT"),
    ("P_00004", "LEFT", "CC", 1, "BENIGN"),
    ("P_00004", "LEFT", "CC", 2, "MALIGNANT"),  # one benign, one malignant: the image is 1
    ("P_00004", "RIGHT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK"),
    ("P_00009", "RIGHT", "CC", 1, "BENIGN"),
    ("P_00009", "RIGHT", "CC", 2, "BENIGN_WITHOUT_CALLBACK"),
]
CALC_TEST = [
    ("P_00038", "LEFT", "CC", 1, "BENIGN"),
    ("P_00038", "LEFT", "MLO", 1, "MALIGNANT"),
    ("P_00001", "RIGHT", "CC", 1, "BENIGN_WITHOUT_CALLBACK"),  # a patient in both CSVs
]
TRAIN_IMAGES = {  # image -> (label, patient)
    "Mass-Training_P_00001_LEFT_CC": (1, "P_00001"),
    "Mass-Training_P_00001_LEFT_MLO": (1, "P_00001"),
    "Mass-Training_P_00004_LEFT_CC": (1, "P_00004"),
    "Mass-Training_P_00004_RIGHT_MLO": (0, "P_00004"),
    "Mass-Training_P_00009_RIGHT_CC": (0, "P_00009"),
}
TEST_IMAGES = {
    "Calc-Test_P_00038_LEFT_CC": (0, "P_00038"),
    "Calc-Test_P_00038_LEFT_MLO": (1, "P_00038"),
    "Calc-Test_P_00001_RIGHT_CC": (0, "P_00001"),
}
# The full mammogram: 12 rows x 8 columns, the left half 0, the right half 4000.
MAMMOGRAM = np.zeros((12, 8), np.uint16)
MAMMOGRAM[:, 4:] = 4000


def write_dicom(path: pathlib.Path, pixels: np.ndarray | None,
                photometric: str = "MONOCHROME2") -> pathlib.Path:
  """A 16-bit grey DICOM file; `pixels` None writes the header without pixel data."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "MG"
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  shape = MAMMOGRAM.shape if pixels is None else pixels.shape
  ds.Rows, ds.Columns = shape
  if pixels is not None:
    ds.PixelData = np.ascontiguousarray(pixels, "<u2").tobytes()
  if int(pydicom.__version__.split(".")[0]) < 3:
    ds.is_little_endian, ds.is_implicit_VR = True, False
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path)
  return path


def _csv_rows(prefix: str, rows, with_calc_columns: bool):
  out = []
  for k, (patient, breast, view, abnormality, pathology) in enumerate(rows):
    image = f"{prefix}_{patient}_{breast}_{view}"
    # The CSV's deeper components are not the downloaded folder names (as in the real data).
    written = f"{image}/{UID}.{100 + k}/{UID}.{200 + k}/000000.dcm"
    crop = f"{image}_{abnormality}/{UID}.{300 + k}/{UID}.{400 + k}/000000.dcm"
    mask = f"{image}_{abnormality}/{UID}.{300 + k}/{UID}.{400 + k}/000001.dcm"
    kind = ("calcification", "PLEOMORPHIC", "CLUSTERED") if with_calc_columns else (
        "mass", "OVAL", "CIRCUMSCRIBED")
    out.append((patient, 3, breast, view, abnormality) + kind
               + (4, pathology, 3, written, crop, mask))
  return out


def write_csv(path: pathlib.Path, header, rows) -> pathlib.Path:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def write_cbis(root: pathlib.Path) -> pathlib.Path:
  """Two case CSVs and a DICOM folder per image, as TCIA's download writes them; the first
  image's folder also holds a smaller ROI crop (sorted before the mammogram)."""
  root.mkdir(parents=True, exist_ok=True)
  write_csv(root / "mass_case_description_train_set.csv", MASS_HEADER,
            _csv_rows("Mass-Training", MASS_TRAIN, False))
  write_csv(root / "calc_case_description_test_set.csv", CALC_HEADER,
            _csv_rows("Calc-Test", CALC_TEST, True))
  for k, image in enumerate({**TRAIN_IMAGES, **TEST_IMAGES}):
    series = root / "CBIS-DDSM" / image / f"07-20-2016-DDSM-{k}" / f"1.000000-full mammogram-{k}"
    write_dicom(series / "1-1.dcm", MAMMOGRAM)
  roi = (root / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016-DDSM-0"
         / "0.000000-ROI crop-0" / "1-1.dcm")
  write_dicom(roi, np.full((4, 3), 7, np.uint16))
  return root


@pytest.fixture
def cbis(tmp_path) -> pathlib.Path:
  return write_cbis(tmp_path / "cbis")


def _by_image(table: images.ImageTable) -> dict[str, tuple[int, str]]:
  """First path component (the image folder, or an export's stem) -> (label, patient)."""
  out = {}
  for path, label, patient in zip(table.paths, table.labels, table.patient_ids):
    parts = pathlib.Path(path).parts
    image = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "CBIS-DDSM"),
                 pathlib.Path(path).stem)
    out[image] = (int(label), patient)
  return out


def test_labels_are_any_malignant_per_image_with_patient_ids(cbis):
  table = cbis_ddsm.load_cbis_ddsm(cbis)
  assert table.name == "cbis_ddsm" and table.class_names == ("benign", "malignant")
  assert _by_image(table) == {**TRAIN_IMAGES, **TEST_IMAGES}
  assert all(pathlib.Path(p).is_absolute() and p.endswith(".dcm") for p in table.paths)
  assert table.counts() == {"benign": 4, "malignant": 4}
  assert cbis_ddsm.describe(table) == ("cbis_ddsm: 8 mammograms of 4 patients (benign 4, "
                                       "malignant 4; no normal mammograms)")


def test_full_mammogram_is_the_largest_dicom_of_its_folder(cbis):
  table = cbis_ddsm.load_cbis_ddsm(cbis, split="train")
  picked = [p for p in table.paths if "Mass-Training_P_00001_LEFT_CC" in p]
  assert len(picked) == 1 and "full mammogram" in picked[0]


def test_train_and_test_are_the_published_split_and_all_is_both(cbis):
  train = cbis_ddsm.load_cbis_ddsm(cbis, "ddsm_train", split="train")
  test = cbis_ddsm.load_cbis_ddsm(cbis, split="test")
  assert train.name == "ddsm_train"
  assert _by_image(train) == TRAIN_IMAGES and _by_image(test) == TEST_IMAGES
  assert len(cbis_ddsm.load_cbis_ddsm(cbis, split="all")) == len(train) + len(test)
  with pytest.raises(ConfigError, match="split"):
    cbis_ddsm.load_cbis_ddsm(cbis, split="val")


def test_patient_level_split_keeps_each_patient_in_one_split(cbis):
  table = cbis_ddsm.load_cbis_ddsm(cbis)
  for seed in range(5):
    parts = images.split_indices(table, (0.8, 0.2), seed=seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(table)))
    patients = [{table.patient_ids[i] for i in part} for part in parts]
    assert not patients[0] & patients[1]


def test_root_may_be_the_image_folder_and_csv_names_vary_in_case_and_dashes(cbis):
  (cbis / "mass_case_description_train_set.csv").rename(
      cbis / "Mass-Case-Description-Train-Set.csv")
  want = _by_image(cbis_ddsm.load_cbis_ddsm(cbis))
  assert _by_image(cbis_ddsm.load_cbis_ddsm(cbis / "CBIS-DDSM")) == want
  assert len(want) == 8


def test_exports_are_accepted_beside_the_csvs(tmp_path):
  root = tmp_path / "png"
  root.mkdir()
  write_csv(root / "calc_case_description_test_set.csv", CALC_HEADER,
            _csv_rows("Calc-Test", CALC_TEST, True))
  for image in TEST_IMAGES:
    Image.fromarray(np.full((12, 8), 200, np.uint8)).save(root / f"{image}.png")
  table = cbis_ddsm.load_cbis_ddsm(root)
  assert _by_image(table) == TEST_IMAGES
  image, _ = cbis_ddsm.image_source(table, 6)[0]
  assert image.shape == (6, 6, 1)


def test_mammogram_is_padded_to_a_black_square_before_resizing(cbis):
  table = cbis_ddsm.load_cbis_ddsm(cbis, split="train")
  image, label = cbis_ddsm.image_source(table, 12)[0]
  assert label == 1
  want = np.zeros((12, 12, 1), np.float32)  # 8 columns centred: 2 black columns each side
  want[:, 6:10] = 1.0  # the original right half (columns 4..7) at 2 + 4 .. 2 + 7
  np.testing.assert_array_equal(image, want)
  stretched, _ = images.ImageSource(table, 12, 1)[0]  # the default keeps the old stretch
  assert stretched[:, 11].min() == 1.0
  grey3, _ = images.ImageSource(table, 12, 3, pad_square=True)[0]
  np.testing.assert_array_equal(grey3, np.repeat(want, 3, -1))


def test_pad_square_pads_wide_images_and_monochrome1_with_black(tmp_path):
  wide = tmp_path / "wide.png"
  Image.fromarray(np.full((2, 6), 255, np.uint8)).save(wide)
  got = images.read_image(wide, 6, 1, pad_square=True)[..., 0]
  np.testing.assert_array_equal(got, np.repeat([[0], [0], [1], [1], [0], [0]], 6, 1))
  inverted = write_dicom(tmp_path / "m1.dcm", MAMMOGRAM, photometric="MONOCHROME1")
  got = images.read_image(inverted, 12, 1, pad_square=True)[..., 0]
  want = np.zeros((12, 12), np.float32)
  want[:, 2:6] = 1.0  # MONOCHROME1: the low half shows white; the padding stays black
  np.testing.assert_array_equal(got, want)
  square = tmp_path / "square.png"
  Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(square)
  np.testing.assert_array_equal(images.read_image(square, 4, 1, pad_square=True),
                                images.read_image(square, 4, 1))


def test_missing_column_names_the_csv_and_the_column(cbis):
  rows = _csv_rows("Mass-Training", MASS_TRAIN, False)
  keep = [i for i, c in enumerate(MASS_HEADER) if c != "pathology"]
  write_csv(cbis / "mass_case_description_train_set.csv", [MASS_HEADER[i] for i in keep],
            [[r[i] for i in keep] for r in rows])
  with pytest.raises(DataError, match=r"mass_case_description_train_set\.csv lacks "
                                      r"column\(s\) \['pathology'\]"):
    cbis_ddsm.load_cbis_ddsm(cbis)


def test_unknown_pathology_names_the_line(cbis):
  rows = _csv_rows("Mass-Training", MASS_TRAIN, False)
  rows[2] = rows[2][:9] + ("UNPROVEN",) + rows[2][10:]
  write_csv(cbis / "mass_case_description_train_set.csv", MASS_HEADER, rows)
  message = data_error(lambda: cbis_ddsm.load_cbis_ddsm(cbis))
  assert "line 4" in message and "'UNPROVEN'" in message and "BENIGN_WITHOUT_CALLBACK" in message


def test_image_folder_that_does_not_exist_is_an_error_naming_it(cbis):
  rows = _csv_rows("Mass-Training", MASS_TRAIN + [("P_00099", "LEFT", "CC", 1, "BENIGN")],
                   False)
  write_csv(cbis / "mass_case_description_train_set.csv", MASS_HEADER, rows)
  message = data_error(lambda: cbis_ddsm.load_cbis_ddsm(cbis))
  assert "Mass-Training_P_00099_LEFT_CC" in message and "line 9" in message
  assert str(cbis / "CBIS-DDSM" / "Mass-Training_P_00099_LEFT_CC") in message


def test_dicom_without_pixel_data_fails_when_read(cbis):
  table = cbis_ddsm.load_cbis_ddsm(cbis, split="test")
  write_dicom(pathlib.Path(table.paths[1]), None)
  source = cbis_ddsm.image_source(table, 8)
  assert source[0][0].shape == (8, 8, 1)
  message = data_error(lambda: source[1])
  assert "cannot read image file" in message and table.paths[1] in message


def test_root_without_case_csv_is_an_error(tmp_path):
  (tmp_path / "empty").mkdir()
  message = data_error(lambda: cbis_ddsm.load_cbis_ddsm(tmp_path / "empty"))
  assert "mass_case_description_train_set.csv" in message and str(tmp_path / "empty") in message
  assert "not a folder" in data_error(lambda: cbis_ddsm.load_cbis_ddsm(tmp_path / "missing"))


def test_split_without_its_csv_is_an_error(cbis):
  (cbis / "calc_case_description_test_set.csv").unlink()
  message = data_error(lambda: cbis_ddsm.load_cbis_ddsm(cbis, split="test"))
  assert "calc_case_description_test_set.csv" in message


@pytest.mark.parametrize("split", ["official", "patient"])
def test_cyclegan_uda_reads_cbis_ddsm_as_a_domain(tmp_path, split):
  """The default CycleGAN UDA config's domain A: CBIS-DDSM split by patient (or by its own
  CSVs), every patient here holding a malignant CC and a benign MLO image."""
  from medda_jax.config_utils import load_config
  from medda_jax.methods import cyclegan_uda
  root = tmp_path / "cbis"
  root.mkdir()
  rows = {"train": [], "test": []}
  for p in range(16):
    part = "train" if p < 12 else "test"
    for view, pathology in (("CC", "MALIGNANT"), ("MLO", "BENIGN")):
      rows[part].append((f"P_{p:05d}", "LEFT", view, 1, pathology))
  prefixes = {"train": "Mass-Training", "test": "Mass-Test"}
  for part, prefix in prefixes.items():
    write_csv(root / f"mass_case_description_{part}_set.csv", MASS_HEADER,
              _csv_rows(prefix, rows[part], False))
    for patient, breast, view, _, _ in rows[part]:
      write_dicom(root / "CBIS-DDSM" / f"{prefix}_{patient}_{breast}_{view}" / "s" / "1-1.dcm",
                  MAMMOGRAM)
  c = load_config("configs/cyclegan.py")
  c.data.dirs.cbis_ddsm = str(root)
  c.data.cbis_split = split
  c.data.val_fraction = 0.25
  c.cyclegan.crop_size, c.cyclegan.load_size = 12, 16
  domain = cyclegan_uda.load_domain(c, "cbis_ddsm")
  assert domain.classes == ("benign", "malignant")
  sizes = [len(s) for s in (domain.train, domain.val, domain.test)]
  assert sum(sizes) == 32 and len(domain.gan_images) == sizes[0] + sizes[1]
  if split == "official":
    assert sizes[2] == 8  # CBIS's own test CSV
  for s in (domain.train, domain.val, domain.test):
    assert sorted(set(s.labels.tolist())) == [0, 1]
  x = domain.train.images[:2]
  assert x.shape == (2, 12, 12, 1) and domain.gan_images[:1].shape == (1, 16, 16, 1)
  # The 12 x 8 mammogram padded to 12 x 12 with black: 2 black columns each side, then
  # its own black left half and bright right half.
  np.testing.assert_allclose(x[0, :, :2, 0], -1.0)
  np.testing.assert_allclose(x[0, :, -2:, 0], -1.0)
  assert x[0, :, 8, 0].min() > 0.9
