"""Segmentation data of one's own: Decathlon-layout folders with any task name, CSV
manifests, per-modality normalisation, Task03 Liver, and fine-tune-only MetaMedSeg runs."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

import test_msd
from conftest import final_metrics, run_train
from medda_jax.config_utils import load_config
from medda_jax.data import msd, user_seg
from medda_jax.errors import ConfigError, DataError

SIZE = 16
REPO = pathlib.Path(__file__).resolve().parents[1]
# Foreground pixels per slice: liver straddles the threshold 100 used below, tumour 40.
LIVER_AREAS = [{1: [0, 99, 100, 300, 150], 2: [0, 0, 40, 39, 60]},
               {1: [120, 0, 400, 99, 0], 2: [41, 0, 0, 50, 0]}]


def _ct_volume(shape, rng) -> np.ndarray:
  """Hounsfield units: air around a soft-tissue body with a bone rim, all outside and
  inside the default window."""
  image = np.full(shape, -1000.0, np.float32)
  image[3:-3, 2:-2] = rng.normal(60, 80, size=(shape[0] - 6, shape[1] - 4) + shape[2:])
  image[3, 2:-2] = 1500.0
  return image


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1])), path)


def _write_folder(task_dir, cases, labels=None, modality=None, drop=()) -> str:
  """A Decathlon-layout task folder with its own name and a full dataset.json."""
  entries = []
  for stem, (image, label) in cases.items():
    _save(os.path.join(task_dir, "imagesTr", f"{stem}.nii.gz"), image)
    _save(os.path.join(task_dir, "labelsTr", f"{stem}.nii.gz"), label)
    entries.append({"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz"})
  meta = {"name": os.path.basename(task_dir), "training": entries, "test": [],
          "labels": labels or {"0": "background", "1": "liver", "2": "liver tumour"},
          "modality": modality or {"0": "CT"}}
  for key in drop:
    del meta[key]
  with open(os.path.join(task_dir, "dataset.json"), "w") as f:
    json.dump(meta, f)
  return str(task_dir)


@pytest.fixture
def liver(tmp_path):
  rng = np.random.default_rng(0)
  cases = {stem: (_ct_volume((40, 36, 5), rng), test_msd._label_volume((40, 36, 5), areas))
           for stem, areas in zip(["ct_7", "ct_2"], LIVER_AREAS)}
  return _write_folder(tmp_path / "Task11_OurLiver", cases), cases


def _load(entries, **kwargs):
  kwargs.setdefault("image_size", SIZE)
  return user_seg.load_user_collection(user_seg.parse_sources(entries), **kwargs)


def _windowed(volume, window=msd.DEFAULT_CT_WINDOW):
  """The CT recipe written the plain way: clip to the window, scale to [0, 1]."""
  lo, hi = window
  return (np.minimum(np.maximum(volume.astype(np.float64), lo), hi) - lo) / (hi - lo)


def _slice(volume, j):
  return resize(volume[:, :, j], (SIZE, SIZE), order=1, anti_aliasing=True)


def test_folder_with_its_own_task_name_and_ct_window(liver):
  path, cases = liver
  c = _load([f"ourliver={path}"], threshold=100)
  assert c.names() == ["ourliver_liver", "ourliver_liver_tumour"]
  ds = c["ourliver_liver"]
  assert ds.group == c["ourliver_liver_tumour"].group == "ourliver"
  assert ds.label_values == (1,) and c["ourliver_liver_tumour"].label_values == (2,)
  assert test_msd._kept(ds) == test_msd._expected_kept(cases, 1, 100)
  assert test_msd._kept(c["ourliver_liver_tumour"]) == test_msd._expected_kept(cases, 2, 100)
  images, _ = ds.batch(np.arange(len(ds)))
  for i, (stem, j) in enumerate(test_msd._kept(ds)):
    np.testing.assert_allclose(images[i, ..., 0], _slice(_windowed(cases[stem][0]), j),
                               atol=1e-5)
  assert images.min() >= 0 and images.max() <= 1
  # Another window gives other intensities, computed the same way.
  other = _load([f"ourliver={path}"], threshold=100, ct_window=(-100, 200))["ourliver_liver"]
  images, _ = other.batch(np.arange(len(other)))
  stem, j = test_msd._kept(other)[0]
  np.testing.assert_allclose(images[0, ..., 0],
                             _slice(_windowed(cases[stem][0], (-100, 200)), j), atol=1e-5)


def test_single_label_mr_folder_is_named_as_its_source_and_z_scored(tmp_path):
  rng = np.random.default_rng(1)
  cases = {"a": (test_msd._image_volume((36, 40, 4), rng, [300.0]),
                 test_msd._label_volume((36, 40, 4), {1: [0, 5, 50, 500]}))}
  path = _write_folder(tmp_path / "AnyFolder", cases, labels={"0": "bg", "1": "lesion"},
                       modality={"0": "T2"})
  ds = _load([f"lesions={path}"])["lesions"]
  assert test_msd._kept(ds) == [("a", 1), ("a", 2), ("a", 3)]  # threshold 1 by default
  images, _ = ds.batch(np.arange(len(ds)))
  for i, (stem, j) in enumerate(test_msd._kept(ds)):
    np.testing.assert_allclose(images[i, ..., 0], _slice(test_msd._zscore(cases[stem][0]), j),
                               atol=1e-4)


def _write_csv(path, header, rows):
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for row in rows:
      f.write(",".join(row) + "\n")


@pytest.fixture
def manifest(tmp_path):
  """Four CT volumes, two sites; paths relative to the CSV and one absolute."""
  rng = np.random.default_rng(2)
  volumes = {}
  for i in range(4):
    areas = {1: [30 * i, 0, 80, 20], 2: [0, 10, 10, 0]}
    volumes[f"scan{i}"] = (_ct_volume((40, 36, 4), rng), test_msd._label_volume((40, 36, 4), areas))
    for kind, array in zip(("img", "seg"), volumes[f"scan{i}"]):
      _save(str(tmp_path / "files" / f"{kind}{i}.nii.gz"), array)
  rows = [["files/img0.nii.gz", "files/seg0.nii.gz", "p0", "a"],
          ["files/img1.nii.gz", "files/seg1.nii.gz", "p1", "b"],
          [str(tmp_path / "files" / "img2.nii.gz"), "files/seg2.nii.gz", "p2", "a"],
          ["files/img3.nii.gz", "files/seg3.nii.gz", "p3", "b"]]
  csv_path = tmp_path / "clinic.csv"
  _write_csv(csv_path, ["image", "label", "subject", "site"], rows)
  return str(csv_path), volumes


def test_csv_manifest_with_sites(manifest):
  path, volumes = manifest
  c = _load([f"clinic={path}"], modality="CT")
  assert c.names() == ["clinic_a", "clinic_b"]
  assert {c[n].group for n in c.names()} == {"clinic"}
  a = c["clinic_a"]
  assert a.volume_names == ("p0", "p2")
  # Every non-zero label value is foreground.
  binary = {"p0": volumes["scan0"], "p2": volumes["scan2"]}
  binary = {k: (img, (lab != 0).astype(np.uint8)) for k, (img, lab) in binary.items()}
  assert test_msd._kept(a) == test_msd._expected_kept(binary, 1, 1)
  images, masks = a.batch(np.arange(len(a)))
  for i, (stem, j) in enumerate(test_msd._kept(a)):
    np.testing.assert_allclose(images[i, ..., 0], _slice(_windowed(binary[stem][0]), j),
                               atol=1e-5)
    np.testing.assert_array_equal(masks[i, ..., 0],
                                  test_msd._resized_mask(binary[stem][1][:, :, j] == 1, SIZE))


def test_csv_modality_column_and_default_subject(tmp_path, manifest):
  path, volumes = manifest
  rows = [["files/img0.nii.gz", "files/seg0.nii.gz", "mri"],
          ["files/img1.nii.gz", "files/seg1.nii.gz", "MRI"]]
  mr = tmp_path / "mr.csv"
  _write_csv(mr, ["image", "label", "modality"], rows)
  ds = _load([f"mr={mr}"])["mr"]
  assert ds.volume_names == ("img0", "img1")
  images, _ = ds.batch(np.arange(len(ds)))
  stem, j = test_msd._kept(ds)[0]
  image = volumes[{"img0": "scan0", "img1": "scan1"}[stem]][0]
  np.testing.assert_allclose(images[0, ..., 0], _slice(test_msd._zscore(image), j), atol=1e-4)


# --- errors -------------------------------------------------------------------------------


def test_error_label_of_another_shape(tmp_path):
  rng = np.random.default_rng(3)
  path = _write_folder(tmp_path / "Task12_Odd", {
      "odd": (_ct_volume((40, 36, 5), rng), test_msd._label_volume((40, 36, 4), {1: [50] * 4}))})
  with pytest.raises(DataError) as e:
    _load([f"odd={path}"])
  assert "odd" in str(e.value) and "(40, 36, 5)" in str(e.value) and "(40, 36, 4)" in str(e.value)


def test_error_csv_names_a_missing_file(tmp_path, manifest):
  path, _ = manifest
  os.remove(tmp_path / "files" / "seg3.nii.gz")
  with pytest.raises(DataError) as e:
    _load([f"clinic={path}"], modality="CT")
  message = str(e.value)
  assert "line 5" in message and str(tmp_path / "files" / "seg3.nii.gz") in message
  assert "does not exist" in message


@pytest.mark.parametrize("key", ["labels", "modality"])
def test_error_dataset_json_missing_keys(liver, key):
  path, cases = liver
  _write_folder(path, cases, drop=(key,))
  with pytest.raises(DataError, match=f"dataset.json lacks the key.*'{key}'"):
    _load([f"ourliver={path}"])


def test_error_unknown_modality(liver, tmp_path, manifest):
  path, cases = liver
  _write_folder(path, cases, modality={"0": "PET"})
  with pytest.raises(DataError, match="unknown modality 'PET'"):
    _load([f"ourliver={path}"])
  csv_path, _ = manifest
  with pytest.raises(DataError, match="config.data.user_modality: unknown modality 'US'"):
    _load([f"clinic={csv_path}"], modality="US")
  with pytest.raises(DataError, match="line 2: no modality"):
    _load([f"clinic={csv_path}"])


@pytest.mark.parametrize("entry,error,match", [
    ("nameonly", ConfigError, "must be 'name=path'"),
    ("bad name=.", ConfigError, "letters, digits"),
    ("x=/no/such/folder", DataError, "does not exist"),
])
def test_error_user_entries(entry, error, match):
  with pytest.raises(error, match=match):
    user_seg.parse_sources([entry])


def test_error_folder_without_dataset_json(tmp_path):
  with pytest.raises(DataError, match="has no dataset.json"):
    user_seg.parse_sources([f"x={tmp_path}"])


# --- the official tasks --------------------------------------------------------------------


def test_task03_liver_is_known_and_ct_windowed(tmp_path):
  rng = np.random.default_rng(4)
  liver = {f"liver_{i}": (_ct_volume((40, 36, 5), rng),
                          test_msd._label_volume((40, 36, 5), {1: [1000, 999, 0, 1200, 1100],
                                                               2: [0, 400, 0, 10, 0]}))
           for i in range(2)}
  test_msd._write_task(tmp_path, "Task03_Liver", liver)
  heart = test_msd._make_heart(tmp_path, rng)
  assert "Task03_Liver" in msd.MSD_TASKS
  assert msd.KNOWN_TASKS["Task03_Liver"].modalities == ("CT",)
  # Not among the paper's datasets: loaded only when named.
  assert msd.load_msd(str(tmp_path), image_size=SIZE).names() == ["heart"]
  c = msd.load_msd(str(tmp_path), image_size=SIZE, include=["liver", "liver_tumour"])
  assert c.names() == ["heart", "liver", "liver_tumour"]
  ds = c["liver"]
  assert test_msd._kept(ds) == test_msd._expected_kept(liver, 1, 1000)
  images, _ = ds.batch(np.arange(len(ds)))
  for i, (stem, j) in enumerate(test_msd._kept(ds)):
    np.testing.assert_allclose(images[i, ..., 0], _slice(_windowed(liver[stem][0]), j),
                               atol=1e-5)
  # The MR task keeps the paper's z-score under the per-modality default.
  heart_ds = c["heart"]
  images, _ = heart_ds.batch(np.arange(len(heart_ds)))
  stem, j = test_msd._kept(heart_ds)[0]
  np.testing.assert_allclose(images[0, ..., 0], _slice(test_msd._zscore(heart[stem][0]), j),
                             atol=1e-4)
  # The paper's recipe stays one switch away: z-score for CT too.
  paper = msd.load_msd(str(tmp_path), ["liver"], image_size=SIZE,
                       normalisation="zscore_nonzero")["liver"]
  images, _ = paper.batch(np.arange(len(paper)))
  stem, j = test_msd._kept(paper)[0]
  np.testing.assert_allclose(images[0, ..., 0], _slice(test_msd._zscore(liver[stem][0]), j),
                             atol=1e-4)


def test_mr_cache_key_is_unchanged(tmp_path):
  """The cache of an MR task has the key the loader used before CT windows existed (written
  out here as the earlier code built it)."""
  rng = np.random.default_rng(5)
  test_msd._make_heart(tmp_path / "msd", rng)
  cache = tmp_path / "cache"
  msd.load_msd(str(tmp_path / "msd"), ["heart"], image_size=SIZE, cache_dir=str(cache))
  task_dir = tmp_path / "msd" / "Task02_Heart"
  cases = [(s, os.path.getsize(task_dir / "imagesTr" / f"{s}.nii.gz"),
            os.path.getsize(task_dir / "labelsTr" / f"{s}.nii.gz"))
           for s in ("la_003", "la_004", "la_010")]
  key = json.dumps({"version": 1, "task": "Task02_Heart",
                    "options": {"image_size": SIZE, "threshold_space": "native",
                                "normalisation": "zscore_nonzero"},
                    "datasets": ["heart"], "cases": cases}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  assert os.listdir(cache) == [f"Task02_Heart_{digest}"]


def test_no_task_folder_points_at_data_user(liver, tmp_path):
  with pytest.raises(DataError, match=r"no MSD task folder found(.|\n)*config\.data\.user"):
    msd.load_msd(str(tmp_path))


# --- MetaMedSeg ----------------------------------------------------------------------------


def _config(**data):
  config = load_config(str(REPO / "configs" / "metamedseg.py") + ":smoke")
  for key, value in data.items():
    config.data[key] = value
  return config


def test_user_dataset_is_a_source_and_a_target(liver, manifest, tmp_path):
  from medda_jax.methods import metamedseg
  path, _ = liver
  csv_path, _ = manifest
  config = _config(source="none", user=(f"ourliver={path}", f"clinic={csv_path}"),
                   user_modality="CT", targets=("ourliver",), user_threshold=100)
  collection = metamedseg.load_collection(config, tmp_path)
  targets, sources = metamedseg.targets_and_sources(config, collection)
  assert targets == ["ourliver_liver", "ourliver_liver_tumour"]
  assert sources == ["clinic_a", "clinic_b"]


@pytest.mark.parametrize("field,value,match", [
    ("source", "none", "config.data.source='none' needs your datasets"),
    ("user_modality", "XRAY", "unknown modality 'XRAY'"),
    ("ct_window", (240.0, -160.0), "config.data.ct_window must be"),
])
def test_config_errors(field, value, match):
  from medda_jax.methods import metamedseg
  with pytest.raises((ConfigError, DataError), match=match):
    metamedseg.validate(_config(**{field: value}))


def test_init_from_errors(smoke_run, tmp_path):
  import jax
  import jax.numpy as jnp
  from medda_jax.methods import metamedseg
  from medda_jax.models.unet import UNet
  workdir, _ = smoke_run
  config = _config()
  config.init_from = str(tmp_path / "absent")
  with pytest.raises(ConfigError, match="init_from=.*absent.*does not exist"):
    metamedseg.validate(config)
  (tmp_path / "empty").mkdir()
  # jitted: op-by-op initialisation compiles every random draw separately
  like = jax.jit(UNet(features=4, levels=3).init)(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(DataError, match="holds no checkpoint"):
    metamedseg.load_initialisations(tmp_path / "empty", like)
  wider = jax.eval_shape(UNet(features=8, levels=3).init, jax.random.PRNGKey(0),
                         jnp.zeros((1, 32, 32, 1)))  # shapes suffice: refused before reading
  with pytest.raises(DataError) as e:
    metamedseg.load_initialisations(workdir, wider)
  message = str(e.value)
  assert "holds another model" in message and "\n" not in message
  # The output convolution, saved with one output per source dataset by pre-training.
  assert re.search(r"\(1, 1, 4, \d+\)", message) and re.search(r"\(1, 1, 8, \d+\)", message)
  # One stage's folder, or the whole workdir.
  one = metamedseg.load_initialisations(workdir / "checkpoints" / "meta_aw", like)
  assert list(one) == ["meta_aw"]
  every = metamedseg.load_initialisations(workdir, like)
  assert list(every) == ["transfer", "meta_aw", "meta_idw"]
  jax.tree.map(np.testing.assert_array_equal, every["meta_aw"], one["meta_aw"])
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, every["meta_aw"], like)))


def test_fine_tune_only_on_a_new_ct_task_from_an_earlier_run(smoke_run, tmp_path):
  """The recipe: a new Decathlon-layout CT task as a fine-tune-only MetaMedSeg target,
  initialised from an earlier run, from the command line."""
  earlier, _ = smoke_run
  rng = np.random.default_rng(6)
  cases = {}
  for i in range(5):
    label = np.zeros((24, 20, 6), np.uint8)
    label[6:16, 5:13] = 1
    cases[f"case_{i}"] = (_ct_volume((24, 20, 6), rng), label)
  task = _write_folder(tmp_path / "Task11_OurLiver", cases, labels={"0": "background",
                                                                     "1": "liver"})
  workdir = tmp_path / "finetune"
  proc = run_train(workdir, f"--config.init_from={earlier}",
                   f"--config.data.user=('ourliver={task}',)",
                   "--config.data.targets=('ourliver',)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = final_metrics(workdir)
  inits = ("scratch", "transfer", "meta_aw", "meta_idw")
  assert sorted(k for k in final if k.startswith("iou/")) == sorted(
      f"iou/{i}/ourliver" for i in inits)
  # The initialisations are the earlier run's: different results from the random one.
  assert len({round(final[f"iou/{i}/ourliver"], 6) for i in inits}) > 1
  table = (workdir / "results.md").read_text()
  assert "ourliver" in table and "DEMO" not in table and "demo" not in table
  # Nothing was pre- or meta-trained here, and no demo data was read.
  stages = {json.loads(l)["stage"] for l in (workdir / "metrics.jsonl").read_text().splitlines()}
  assert stages == {"final"}
  assert not (workdir / "checkpoints").exists()
  assert "source datasets" in proc.stderr and "demo" not in proc.stderr.lower()


# --- gradient transfer ---------------------------------------------------------------------


def test_user_sites_as_volumes(liver, manifest):
  from medda_jax.data.cc359 import scale_mri
  path, cases = liver
  csv_path, volumes = manifest
  sites = user_seg.load_user_sites(user_seg.parse_sources([f"ourliver={path}",
                                                           f"clinic={csv_path}"]),
                                   modality="MR")
  assert sorted(sites) == ["clinic_a", "clinic_b", "ourliver"]
  ours, _ = sites["ourliver"]
  assert [v.id for v in ours] == ["ct_2", "ct_7"]
  image, label = cases["ct_2"]
  np.testing.assert_allclose(ours[0].image, _windowed(image).transpose(2, 0, 1), atol=1e-6)
  np.testing.assert_array_equal(ours[0].mask, (label != 0).transpose(2, 0, 1))
  assert ours[0].spacing == pytest.approx((2.5, 0.8, 0.8))
  clinic_b, _ = sites["clinic_b"]
  assert [v.id for v in clinic_b] == ["p1", "p3"]
  np.testing.assert_allclose(clinic_b[0].image,
                             scale_mri(volumes["scan1"][0]).transpose(2, 0, 1), atol=1e-6)


_TRANSFER = ("--config.methods=('fta', 'octl')", "--config.optimizers=('sgd',)",
             "--config.seeds=(0,)", "--config.budgets=(('small', 1, 1),)",
             "--config.data.test_subjects=1")


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
  """Gradient transfer from a CSV site to a Decathlon-layout CT site: (workdir, folder)."""
  root = tmp_path_factory.mktemp("transfer")
  rng = np.random.default_rng(7)
  rows = []
  for i in range(3):
    areas = {1: [0, 60, 80, 20]}
    for kind, array in (("img", _ct_volume((40, 36, 4), rng)),
                        ("seg", test_msd._label_volume((40, 36, 4), areas))):
      _save(str(root / "files" / f"{kind}{i}.nii.gz"), array)
    rows.append([f"files/img{i}.nii.gz", f"files/seg{i}.nii.gz"])
  _write_csv(root / "clinic.csv", ["image", "label"], rows)
  cases = {f"ct_{i}": (_ct_volume((40, 36, 5), rng),
                       test_msd._label_volume((40, 36, 5), LIVER_AREAS[i % 2])) for i in range(3)}
  folder = _write_folder(root / "Task11_OurLiver", cases)
  workdir = root / "run"
  proc = run_train(workdir, f"--config.data.user=('ourliver={folder}', 'clinic={root}/clinic.csv')",
                   "--config.data.user_modality=CT", "--config.data.pairs=(('clinic', 'ourliver'),)",
                   *_TRANSFER, config="configs/transfer.py:smoke")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, folder


def test_gradient_transfer_between_user_sites(transfer_run):
  workdir, _ = transfer_run
  results = json.loads((workdir / "transfer_results.json").read_text())
  assert sorted(results) == ["sgd/clinic->ourliver/small/fta/0",
                             "sgd/clinic->ourliver/small/octl/0",
                             "sgd/clinic->ourliver/source_model/0"]
  table = (workdir / "results.md").read_text()
  assert "your sites: clinic, ourliver" in table and "DEMO" not in table


def test_gradient_transfer_fine_tune_only(transfer_run, tmp_path):
  """Source models read from the earlier run; the source site is not in the data."""
  earlier, folder = transfer_run
  workdir = tmp_path / "finetune"
  proc = run_train(workdir, f"--config.init_from={earlier}",
                   f"--config.data.user=('ourliver={folder}',)",
                   "--config.data.pairs=(('clinic', 'ourliver'),)", *_TRANSFER,
                   config="configs/transfer.py:smoke")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (workdir / "checkpoints").exists()  # nothing pre-trained
  got = json.loads((workdir / "transfer_results.json").read_text())
  want = json.loads((earlier / "transfer_results.json").read_text())
  assert sorted(got) == sorted(want)
  for key in got:  # the same source model fine-tuned the same way: the same target scores
    assert got[key]["target"] == pytest.approx(want[key]["target"], rel=1e-5), key
    assert got[key]["source"] is None
  table = (workdir / "results.md").read_text()
  assert "n/a" in table and f"source models from {earlier}" in table
  # A model of another width is named in one line.
  proc = run_train(tmp_path / "wider", f"--config.init_from={earlier}",
                   f"--config.data.user=('ourliver={folder}',)", "--config.model.features=4",
                   "--config.data.pairs=(('clinic', 'ourliver'),)", *_TRANSFER,
                   config="configs/transfer.py:smoke")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "holds another model" in proc.stderr.strip().splitlines()[-1]
