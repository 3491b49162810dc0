"""The M&Ms loader on a written fixture of the published layout: vendors from the dataset
information CSV, the ED and ES frames of the 4-D cines, axis order and spacing, and
one-line errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import data_error
from medda_jax.data import mnms

CSV = ("External code,VendorName,Vendor,Centre,ED,ES\n"
       "A0S9V9,Siemens,A,1,0,3\n"
       "B1C2D3,Philips,B,2,1,2\n"
       "Z9Z9Z9,GE,C,3,0,1\n")  # a subject without files (validation / test sets)


def write_subject(root, code, shape=(6, 5, 3, 4), label_shape=None, seed=0):
  rng = np.random.default_rng(seed)
  folder = root / "Training" / "Labeled" / code
  folder.mkdir(parents=True)
  image = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
  labels = rng.integers(0, 4, size=label_shape or shape).astype(np.uint8)
  affine = np.diag([1.25, 1.5, 8.0, 1.0])
  nib.save(nib.Nifti1Image(image, affine), folder / f"{code}_sa.nii.gz")
  nib.save(nib.Nifti1Image(labels, affine), folder / f"{code}_sa_gt.nii.gz")
  return image, labels


@pytest.fixture
def root(tmp_path):
  (tmp_path / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(CSV)
  arrays = {"A0S9V9": write_subject(tmp_path, "A0S9V9", seed=1),
            "B1C2D3": write_subject(tmp_path, "B1C2D3", seed=2)}
  return tmp_path, arrays


def test_vendors_frames_axes_and_spacing(root, tmp_path):
  folder, arrays = root
  data = mnms.load_mnms(folder, cache_dir=tmp_path / "cache")
  assert data.names() == ["A", "B"]
  ed, es = data["A"]
  assert (ed.id, es.id) == ("A0S9V9_ED", "A0S9V9_ES")
  image, labels = arrays["A0S9V9"]
  # slices along z first; ED frame 0 and ES frame 3 of subject A, ED 1 / ES 2 of subject B
  np.testing.assert_array_equal(ed.mask, np.moveaxis(labels[..., 0], 2, 0))
  np.testing.assert_array_equal(es.mask, np.moveaxis(labels[..., 3], 2, 0))
  b_ed = data["B"][0]
  np.testing.assert_array_equal(b_ed.mask, np.moveaxis(arrays["B1C2D3"][1][..., 1], 2, 0))
  assert ed.image.shape == (3, 6, 5) and ed.spacing == (8.0, 1.25, 1.5)
  assert 0.0 <= ed.image.min() and ed.image.max() <= 1.0
  # the intensity order of the ED frame survives the scaling
  raw = np.moveaxis(image[..., 0], 2, 0)
  inner = (raw > np.percentile(image[..., 0], 1)) & (raw < np.percentile(image[..., 0], 99))
  order = np.argsort(raw[inner])
  assert np.all(np.diff(ed.image[inner][order]) >= 0)
  again = mnms.load_mnms(folder, cache_dir=tmp_path / "cache")  # from the cache
  np.testing.assert_array_equal(again["B"][1].image, data["B"][1].image)
  assert [v.id for v in mnms.load_mnms(folder, vendors=("B",))["B"]] == ["B1C2D3_ED", "B1C2D3_ES"]


def test_a_missing_information_csv_is_one_line(root):
  folder, _ = root
  (folder / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").unlink()
  assert "no dataset information CSV" in data_error(lambda: mnms.load_mnms(folder))


def test_labels_of_another_shape_are_one_line(tmp_path):
  (tmp_path / "info.csv").write_text(CSV)
  write_subject(tmp_path, "A0S9V9", label_shape=(6, 5, 2, 4))
  message = data_error(lambda: mnms.load_mnms(tmp_path))
  assert "A0S9V9_sa_gt.nii.gz has shape (6, 5, 2, 4)" in message and "(6, 5, 3, 4)" in message


def test_a_frame_outside_the_cine_and_a_missing_root_are_one_line(tmp_path):
  (tmp_path / "info.csv").write_text(CSV.replace("A0S9V9,Siemens,A,1,0,3", "A0S9V9,Siemens,A,1,0,9"))
  write_subject(tmp_path, "A0S9V9")
  assert "ES frame 9" in data_error(lambda: mnms.load_mnms(tmp_path))
  assert "does not exist" in data_error(lambda: mnms.load_mnms(tmp_path / "nowhere"))


def test_the_study_holds_out_both_frames_of_a_subject(root):
  """ED and ES of one subject are one subject for the source split (no leak into training)."""
  from medda_jax.config_utils import load_config
  from medda_jax.methods.avagrad.experiment import subject_of
  folder, _ = root
  c = load_config("configs/avagrad.py:smoke")
  c.data.source = "mnms"
  volumes = [v for vols in mnms.load_mnms(folder).domains.values() for v in vols]
  assert [subject_of(c, v) for v in volumes] == ["A0S9V9"] * 2 + ["B1C2D3"] * 2
  c.data.source = "demo_skull"
  assert subject_of(c, volumes[0]) == "A0S9V9_ED"
