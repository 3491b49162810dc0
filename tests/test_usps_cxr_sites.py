"""USPS in its two published formats, the four chest X-ray sites with the paper's opacity
label, patient-level splits, and the StarGAN chest X-ray path end to end on fixtures."""

import bz2
import csv
import gzip
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import run_train
from medda_jax.data import cxr_sites
from medda_jax.data.usps import load_usps
from medda_jax.errors import DataError


# ------------------------------------------------------------------------------ USPS
def _usps_records(n=5, seed=0):
  rng = np.random.default_rng(seed)
  values = rng.uniform(-1, 1, (n, 256)).round(4)
  values[:, :10] = -1.0  # the white margin real USPS digits have
  digits = np.arange(n) % 10
  return values, digits


def test_usps_libsvm_bz2_with_sparse_entries(tmp_path):
  values, digits = _usps_records()
  lines = []
  for v, d in zip(values, digits):
    # LIBSVM drops zeros: leave index 11 (value set to 0) out of the line.
    v = v.copy()
    v[10] = 0.0
    entries = " ".join(f"{i + 1}:{x:.4f}" for i, x in enumerate(v) if x != 0.0)
    lines.append(f"{d + 1} {entries}\n")
  with bz2.open(tmp_path / "usps.bz2", "wt") as f:
    f.writelines(lines)
  images, labels = load_usps(tmp_path, "train")
  assert images.shape == (5, 16, 16) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, digits)
  expect = values.copy()
  expect[:, 10] = 0.0
  np.testing.assert_array_equal(images.reshape(5, -1),
                                np.rint((expect + 1) / 2 * 255).astype(np.uint8))
  assert images[0, 0, 10] == 128  # the absent entry is LIBSVM's 0 -> mid grey


def test_usps_esl_gz_and_all_splits(tmp_path):
  values, digits = _usps_records(seed=1)
  for name, rows in (("zip.train.gz", slice(0, 3)), ("zip.test.gz", slice(3, 5))):
    with gzip.open(tmp_path / name, "wt") as f:
      for v, d in zip(values[rows], digits[rows]):
        f.write(f"{d:.4f} " + " ".join(f"{x:.4f}" for x in v) + "\n")
  images, labels = load_usps(tmp_path, "all")
  np.testing.assert_array_equal(labels, digits)
  np.testing.assert_array_equal(images.reshape(5, -1),
                                np.rint((values + 1) / 2 * 255).astype(np.uint8))
  assert len(load_usps(tmp_path, "test")[1]) == 2


def test_usps_errors(tmp_path):
  with pytest.raises(DataError, match="looked for usps.bz2"):
    load_usps(tmp_path)
  (tmp_path / "zip.train").write_text("3.0 0.5 0.5\n")
  with pytest.raises(DataError, match="zip.train line 1.*2 values, expected 256"):
    load_usps(tmp_path)
  (tmp_path / "usps").write_text("11 1:0.5\n")
  with pytest.raises(DataError, match="usps line 1.*not a digit"):
    load_usps(tmp_path)
  with pytest.raises(DataError, match="split"):
    load_usps(tmp_path, "val")


# ------------------------------------------------------------------------------ sites
def _png(path: pathlib.Path, value: int, suffix_jpg=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(value)
  img = np.clip(rng.normal(value, 20, (40, 40)), 0, 255).astype(np.uint8)
  Image.fromarray(img).save(path)


def _write_csv(path: pathlib.Path, header, rows, gz=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


NIH_FINDINGS = ["No Finding", "Infiltration|Effusion", "Cardiomegaly", "Mass", "Hernia",
                "Pneumonia"]


def make_nih(root: pathlib.Path, patients=30, per_patient=2) -> list[int]:
  rows, names, labels = [], [], []
  for p in range(patients):
    for k in range(per_patient):
      finding = NIH_FINDINGS[(p + k) % len(NIH_FINDINGS)]
      name = f"{p + 1:08d}_{k:03d}.png"
      opacity = int(any(f in cxr_sites.NIH_OPACITY for f in finding.split("|")))
      _png(root / "images_001" / "images" / name, 60 + 120 * opacity)
      rows.append([name, finding, k, p + 1, "PA"])
      names.append(name)
      labels.append(opacity)
  _write_csv(root / "Data_Entry_2017.csv",
             ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"], rows)
  cut = len(names) * 3 // 4
  (root / "train_val_list.txt").write_text("\n".join(names[:cut]) + "\n")
  (root / "test_list.txt").write_text("\n".join(names[cut:]) + "\n")
  return labels


def make_chexpert(parent: pathlib.Path, patients=30) -> pathlib.Path:
  from medda_jax.data import chestxray
  root = parent / "CheXpert-v1.0-small"
  header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *chestxray.CHEXPERT_LABELS]
  rows = {"train": [], "valid": []}
  for p in range(patients):
    split = "valid" if p % 10 == 0 else "train"
    for view, frontal in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
      rel = f"{split}/patient{p + 1:05d}/study1/{view}.jpg"
      label = {"Lung Opacity": ["1.0", "", "-1.0", "0.0"][p % 4]}
      _png(root / rel, 60 + 120 * (p % 4 == 0))
      rows[split].append([f"CheXpert-v1.0-small/{rel}", "Male", 50, frontal,
                          "PA" if frontal == "Frontal" else ""]
                         + [label.get(n, "") for n in chestxray.CHEXPERT_LABELS])
  for split, r in rows.items():
    _write_csv(root / f"{split}.csv", header, r)
  return root


def test_nih_opacity_groups_the_papers_findings(tmp_path):
  labels = make_nih(tmp_path)
  table = cxr_sites.load_opacity_site("nih", tmp_path)
  assert len(table) == 60 and table.site == "nih"
  # Both official lists, in list order: train_val then test, i.e. the writing order.
  np.testing.assert_array_equal(table.labels, labels)
  assert table.paths[0] == "images_001/images/00000001_000.png"
  assert table.patient_ids[:2] == ("1", "1")


def test_chexpert_opacity_frontal_only_and_uncertain_policy(tmp_path):
  root = make_chexpert(tmp_path)
  zeros = cxr_sites.load_opacity_site("chexpert", root, uncertain="zeros")
  ones = cxr_sites.load_opacity_site("chexpert", root, uncertain="ones")
  assert len(zeros) == 30 and all("frontal" in p for p in zeros.paths)
  # Lung Opacity 1.0 / blank / -1.0 / 0.0 by patient p % 4.
  expect = {(0, "zeros"): 1, (1, "zeros"): 0, (2, "zeros"): 0, (3, "zeros"): 0,
            (0, "ones"): 1, (1, "ones"): 0, (2, "ones"): 1, (3, "ones"): 0}
  for table, policy in ((zeros, "zeros"), (ones, "ones")):
    for path, label in zip(table.paths, table.labels):
      p = int(path.split("patient")[1][:5]) - 1
      assert label == expect[(p % 4, policy)], (path, policy)


def test_mimic_layout_labels_and_views(tmp_path):
  from medda_jax.data import chestxray
  studies = [("10000032", "50414267", "1.0", ""), ("10000032", "53189527", "", "-1.0"),
             ("11000011", "51234567", "0.0", "")]
  header = ["subject_id", "study_id", *chestxray.CHEXPERT_LABELS]
  rows = []
  for subject, study, opacity, edema in studies:
    values = {"Lung Opacity": opacity, "Edema": edema}
    rows.append([subject, study] + [values.get(n, "") for n in chestxray.CHEXPERT_LABELS])
  _write_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", header, rows, gz=True)
  meta = [("d1", "10000032", "50414267", "PA"), ("d2", "10000032", "50414267", "LATERAL"),
          ("d3", "10000032", "53189527", "AP"), ("d4", "11000011", "51234567", "PA")]
  _write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv",
             ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta)
  for dicom, subject, study, view in meta:
    if view != "LATERAL":
      _png(tmp_path / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", 100)
  table = cxr_sites.load_opacity_site("mimic", tmp_path)
  assert table.paths == ("files/p10/p10000032/s50414267/d1.jpg",
                         "files/p10/p10000032/s53189527/d3.jpg",
                         "files/p11/p11000011/s51234567/d4.jpg")
  np.testing.assert_array_equal(table.labels, [1, 0, 0])
  np.testing.assert_array_equal(cxr_sites.load_opacity_site("mimic", tmp_path, "ones").labels,
                                [1, 1, 0])
  (tmp_path / "files/p11/p11000011/s51234567/d4.jpg").unlink()
  with pytest.raises(DataError, match="d4.jpg is missing"):
    cxr_sites.load_opacity_site("mimic", tmp_path)


def test_padchest_layout_findings_and_errors(tmp_path):
  header = ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"]
  rows = [("a.png", "0", "p1", "PA", "['pneumonia', 'cardiomegaly']"),
          ("b.png", "0", "p1", "L", "['pneumonia']"),
          ("c.png", "1", "p2", "AP_horizontal", "['normal']"),
          ("d.png", "1", "p3", "AP", "[' ground glass pattern']"),
          ("e.png", "2", "p4", "PA", "nan")]
  _write_csv(tmp_path / cxr_sites._PADCHEST_TABLE, header, rows)
  for image, folder, *_ in rows:
    _png(tmp_path / folder / image, 90)
  table = cxr_sites.load_opacity_site("padchest", tmp_path)
  assert table.paths == ("0/a.png", "1/c.png", "1/d.png", "2/e.png")
  np.testing.assert_array_equal(table.labels, [1, 0, 1, 0])
  assert len(cxr_sites.PADCHEST_OPACITY) == 33
  _write_csv(tmp_path / cxr_sites._PADCHEST_TABLE, header, [("a.png", "0", "p1", "PA", "pneu")])
  with pytest.raises(DataError, match="line 2: Labels 'pneu' is not a list"):
    cxr_sites.load_opacity_site("padchest", tmp_path)
  with pytest.raises(DataError, match="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"):
    cxr_sites.load_opacity_site("padchest", tmp_path / "nowhere")
  with pytest.raises(DataError, match="unknown chest X-ray site"):
    cxr_sites.load_opacity_site("vindr", tmp_path)


def test_patient_split_keeps_patients_together(tmp_path):
  make_nih(tmp_path, patients=50, per_patient=3)
  table = cxr_sites.load_opacity_site("nih", tmp_path)
  parts = cxr_sites.patient_split(table, (0.8, 0.1, 0.1), seed=3)
  assert [len(p) for p in parts] == [120, 15, 15]
  patients = [set(p.patient_ids) for p in parts]
  assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
  assert sum(len(p) for p in patients) == 50
  again = cxr_sites.patient_split(table, (0.8, 0.1, 0.1), seed=3)
  assert [p.paths for p in again] == [p.paths for p in parts]
  other = cxr_sites.patient_split(table, (0.8, 0.1, 0.1), seed=4)
  assert other[2].paths != parts[2].paths
  images = cxr_sites.read_images(parts[2], 24)
  assert images.shape == (15, 24, 24, 1) and 0 <= images.min() and images.max() <= 1


def test_stargan_chest_xray_domain_decodes_only_the_images_asked_for(tmp_path, monkeypatch):
  """A chest X-ray domain holds no decoded site: each access reads its own files, with the
  values the whole-site read gives."""
  from medda_jax.config_utils import load_config
  from medda_jax.data import images
  from medda_jax.methods import stargan_da as sd
  make_nih(tmp_path / "nih", patients=20)
  c = load_config(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "stargan.py")
                  + ":cxr_smoke")
  c.data.dirs.nih, c.data.size = str(tmp_path / "nih"), 12
  read = []
  opened = Image.open
  monkeypatch.setattr(Image, "open", lambda path, *a: read.append(str(path)) or opened(path, *a))
  dom = sd.experiment._cxr_domain(c, "nih")
  assert read == []
  for part in (dom.train, dom.val, dom.test):
    assert isinstance(part.images, images.LazyImages) and part.images.shape[1:] == (12, 12, 3)
  table = cxr_sites.load_opacity_site("nih", tmp_path / "nih")
  train = cxr_sites.patient_split(table, tuple(c.data.split), seed=c.data.split_seed)[0]
  want = sd.experiment._normalise(cxr_sites.read_images(train, 12))  # the whole site, in memory
  batch = np.array([[5, 0], [len(want) - 1, 5]])
  read.clear()
  np.testing.assert_array_equal(dom.train.images[batch], want[batch])
  assert sorted(read) == sorted(str(train.root / train.paths[i]) for i in batch.ravel())
  np.testing.assert_array_equal(dom.train.labels, train.labels)


def test_stargan_chest_xray_path_runs_on_fixtures(tmp_path):
  make_nih(tmp_path / "nih", patients=40)
  chexpert = make_chexpert(tmp_path / "chexpert", patients=80)
  proc = run_train(tmp_path / "run", f"--config.data.dirs.nih={tmp_path / 'nih'}",
                   f"--config.data.dirs.chexpert={chexpert}", config="configs/stargan.py:cxr_smoke")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert list(results["pairs"]) == ["nih->chexpert", "chexpert->nih"]
  assert "binary opacity AUC" in (tmp_path / "run" / "results.md").read_text()
  for p in results["pairs"].values():
    assert 0 <= p["external"]["auc"] <= 100 and 0 <= p["adapted"]["auc"] <= 100
  assert (tmp_path / "run" / "translations_nih_to_chexpert.png").exists()
