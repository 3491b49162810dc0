"""Medical Decathlon loader on tiny synthetic NIfTI files in the published layout."""

from __future__ import annotations

import collections
import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

from medda_jax.config_utils import load_config
from medda_jax.data import msd
from medda_jax.data.collection import SliceCollection, SliceDataset, split_volumes
from medda_jax.errors import ConfigError, DataError

SIZE = 16

# Foreground pixel counts per slice and label value. Each list straddles the thresholds of
# the spec (heart 700; prostate peripheral 300, transitional 600; brain 1000 / 400 / 600).
HEART_AREAS = [
    {1: [0, 699, 700, 701, 1200, 350, 10, 900]},
    {1: [700, 0, 0, 800, 0, 0, 0, 699]},
    {1: [0, 0, 0, 0, 0, 0, 0, 0]},
]
PROSTATE_AREAS = [
    {1: [0, 299, 300, 310, 40, 500], 2: [600, 599, 0, 700, 800, 100]},
    {1: [300, 0, 299, 0, 400, 0], 2: [0, 601, 0, 250, 599, 0]},
]
BRAIN_AREAS = [{1: [1000, 900, 0, 1200], 2: [400, 0, 399, 100], 3: [0, 600, 599, 200]}]


def _label_volume(shape, areas: dict[int, list[int]]) -> np.ndarray:
  """Compact blobs: label k fills the next `area` pixels of the slice in raster order."""
  label = np.zeros(shape, np.uint8)
  for j in range(shape[2]):
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    start = 37  # away from the corner so that resizing sees both sides of the blob
    for k in sorted(areas):
      a = areas[k][j]
      flat[start:start + a] = k
      start += a
    label[:, :, j] = flat.reshape(shape[:2])
  return label


def _image_volume(shape, rng, means) -> np.ndarray:
  """Positive intensities inside a box, exact zeros around it (background)."""
  image = np.zeros(shape, np.float32)
  for c, mean in enumerate(means):
    region = rng.normal(mean, mean / 5, size=(shape[0] - 6, shape[1] - 4) + shape[2:3])
    if len(shape) == 4:
      image[3:-3, 2:-2, :, c] = region
    else:
      image[3:-3, 2:-2, :] = region
  return image


def _write_task(root, task: str, cases: dict[str, tuple[np.ndarray, np.ndarray]],
                extra_entries=()) -> str:
  task_dir = os.path.join(root, task)
  os.makedirs(os.path.join(task_dir, "imagesTr"), exist_ok=True)
  os.makedirs(os.path.join(task_dir, "labelsTr"), exist_ok=True)
  entries = []
  for stem, (image, label) in cases.items():
    for sub, array in (("imagesTr", image), ("labelsTr", label)):
      nib.save(nib.Nifti1Image(array, np.eye(4)), os.path.join(task_dir, sub, f"{stem}.nii.gz"))
    entries.append({"image": f"./imagesTr/{stem}.nii.gz", "label": f"./labelsTr/{stem}.nii.gz"})
  entries += list(extra_entries)
  with open(os.path.join(task_dir, "dataset.json"), "w") as f:
    json.dump({"name": task, "numTraining": len(entries), "training": entries,
               "test": []}, f)
  return task_dir


def _make_heart(root, rng) -> dict:
  # Stems written in non-sorted order: the loader must sort them.
  cases = {}
  for stem, areas in zip(["la_010", "la_003", "la_004"], HEART_AREAS):
    cases[stem] = (_image_volume((40, 36, 8), rng, [300.0]), _label_volume((40, 36, 8), areas))
  _write_task(root, "Task02_Heart", cases)
  return cases


def _make_prostate(root, rng) -> dict:
  cases = {}
  for stem, areas in zip(["prostate_00", "prostate_01"], PROSTATE_AREAS):
    cases[stem] = (_image_volume((36, 40, 6, 2), rng, [300.0, 1500.0]),
                   _label_volume((36, 40, 6), areas))
  _write_task(root, "Task05_Prostate", cases)
  return cases


def _make_brain(root, rng) -> dict:
  cases = {"BRATS_001": (_image_volume((40, 40, 4, 4), rng, [100.0, 200.0, 400.0, 800.0]),
                         _label_volume((40, 40, 4), BRAIN_AREAS[0]))}
  _write_task(root, "Task01_BrainTumour", cases)
  return cases


@pytest.fixture
def data(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "msd"
  root.mkdir()
  return str(root), {"Task02_Heart": _make_heart(root, rng),
                     "Task05_Prostate": _make_prostate(root, rng)}


def _zscore(volume: np.ndarray) -> np.ndarray:
  nonzero = volume[volume != 0].astype(np.float64)
  return (volume - nonzero.mean()) / nonzero.std()


def _resized_mask(mask: np.ndarray, size: int) -> np.ndarray:
  return resize(mask.astype(np.float64), (size, size), order=1, anti_aliasing=True) > 0.5


def _expected_kept(cases, label_value, threshold, space="native", size=SIZE):
  """The (case, slice) pairs a plain loop over the slices keeps."""
  kept = []
  for stem in sorted(cases):
    label = cases[stem][1]
    for j in range(label.shape[2]):
      mask = label[:, :, j] == label_value
      if space == "native":
        count, t = mask.sum(), threshold
      else:
        count, t = _resized_mask(mask, size).sum(), threshold * (size / 256) ** 2
      if count >= t:
        kept.append((stem, j))
  return kept


def _kept(ds) -> list[tuple[str, int]]:
  return [(ds.volume_names[v], int(s)) for v, s in zip(ds.volume, ds.slice_index)]


SPEC_THRESHOLDS = {
    "brain_edema": 1000, "brain_ne_tumour": 400, "brain_e_tumour": 600, "heart": 700,
    "hippocampus_anterior": 100, "hippocampus_posterior": 100, "prostate_peripheral_T2": 300,
    "prostate_transitional_T2": 600, "lung": 1000, "pancreas": 1000, "pancreas_cancer": 1000,
    "vessel": 1000, "vessel_cancer": 1000, "spleen": 600, "colon": 400,
}


def test_table_matches_the_spec():
  brain = [f"brain_{s}_{c}" for s in ("edema", "ne_tumour", "e_tumour")
           for c in ("FLAIR", "T1w", "t1gd", "T2w")]
  others = ["heart", "hippocampus_anterior", "hippocampus_posterior", "prostate_peripheral_T2",
            "prostate_transitional_T2", "lung", "pancreas", "pancreas_cancer", "vessel",
            "vessel_cancer", "spleen", "colon"]
  assert sorted(msd.MSD_DATASETS) == sorted(brain + others)
  assert len(msd.MSD_DATASETS) == 24
  for name, d in msd.MSD_DATASETS.items():
    key = name if name in SPEC_THRESHOLDS else name.rsplit("_", 1)[0]
    assert d.threshold == SPEC_THRESHOLDS[key], name
  groups = collections.Counter(d.group for d in msd.MSD_DATASETS.values())
  assert groups == {"brain": 12, "hippocampus": 2, "pancreas": 2, "prostate": 2, "vessel": 2,
                    "heart": 1, "lung": 1, "spleen": 1, "colon": 1}
  assert [msd.MSD_DATASETS[f"brain_edema_{c}"].channel
          for c in ("FLAIR", "T1w", "t1gd", "T2w")] == [0, 1, 2, 3]
  assert {msd.MSD_DATASETS[n].label for n in ("pancreas", "vessel", "hippocampus_anterior")} == {1}
  assert msd.MSD_DATASETS["brain_ne_tumour_T2w"].label == 2
  assert msd.MSD_DATASETS["brain_e_tumour_T2w"].label == 3
  assert msd.MSD_DATASETS["prostate_transitional_T2"].label == 2
  assert msd.MSD_DATASETS["prostate_peripheral_T2"].channel == 0
  assert msd.TARGETS == ("heart", "spleen", "prostate_peripheral_T2", "prostate_transitional_T2")


def test_labels_map_to_datasets_and_native_thresholds(data):
  root, cases = data
  c = msd.load_msd(root, image_size=SIZE)
  assert c.names() == ["heart", "prostate_peripheral_T2", "prostate_transitional_T2"]
  for name, task, k, t in [("heart", "Task02_Heart", 1, 700),
                           ("prostate_peripheral_T2", "Task05_Prostate", 1, 300),
                           ("prostate_transitional_T2", "Task05_Prostate", 2, 600)]:
    ds = c[name]
    assert ds.label_values == (k,)
    assert ds.volume_names == tuple(sorted(cases[task]))
    expected = _expected_kept(cases[task], k, t)
    assert _kept(ds) == expected, name
    # The fixture straddles the threshold, so the check above can fail both ways.
    counts = [(label == k).sum(axis=(0, 1)) for _, label in cases[task].values()]
    counts = np.concatenate(counts).tolist()
    assert t in counts and t - 1 in counts
    # Each mask is exactly `label == k` of its slice, resized and re-binarised.
    _, masks = ds.batch(np.arange(len(ds)))
    for i, (stem, j) in enumerate(expected):
      np.testing.assert_array_equal(masks[i, ..., 0],
                                    _resized_mask(cases[task][stem][1][:, :, j] == k, SIZE))
  assert c["heart"].group == "heart"
  assert c["prostate_peripheral_T2"].group == c["prostate_transitional_T2"].group == "prostate"
  # A volume with no kept slice is still named but has no slices.
  assert "la_004" not in {c["heart"].volume_names[v] for v in c["heart"].volumes()}
  assert "la_004" in c["heart"].volume_names


def test_resized_threshold_space(data):
  root, cases = data
  size = 64
  native = msd.load_msd(root, image_size=size)
  resized = msd.load_msd(root, image_size=size, threshold_space="resized")
  differs = False
  for name, task, k, t in [("heart", "Task02_Heart", 1, 700),
                           ("prostate_transitional_T2", "Task05_Prostate", 2, 600)]:
    assert _kept(resized[name]) == _expected_kept(cases[task], k, t, "resized", size)
    differs |= _kept(resized[name]) != _kept(native[name])
  assert differs


def test_channel_split_and_shared_banks(tmp_path):
  rng = np.random.default_rng(1)
  prostate = _make_prostate(tmp_path, rng)
  brain = _make_brain(tmp_path, rng)
  c = msd.load_msd(str(tmp_path), image_size=SIZE)
  assert c.names()[:12] == [f"brain_{s}_{q}" for s in ("edema", "ne_tumour", "e_tumour")
                            for q in ("FLAIR", "T1w", "t1gd", "T2w")]
  assert not any("ADC" in n for n in c.names())
  # The ADC channel is scaled five times larger than T2 in the fixture; only T2 may appear.
  for name in ("prostate_peripheral_T2", "prostate_transitional_T2"):
    ds = c[name]
    images, _ = ds.batch(np.arange(len(ds)))
    for i, (stem, j) in enumerate(_kept(ds)):
      t2 = resize(_zscore(prostate[stem][0][..., 0])[:, :, j], (SIZE, SIZE), order=1,
                  anti_aliasing=True)
      np.testing.assert_allclose(images[i, ..., 0], t2, atol=1e-4)
  assert c["prostate_peripheral_T2"].images is c["prostate_transitional_T2"].images
  for q, channel in [("FLAIR", 0), ("T1w", 1), ("t1gd", 2), ("T2w", 3)]:
    ds = c[f"brain_e_tumour_{q}"]
    assert _kept(ds) == _expected_kept(brain, 3, 600)
    images, _ = ds.batch(np.arange(len(ds)))
    for i, (stem, j) in enumerate(_kept(ds)):
      expected = resize(_zscore(brain[stem][0][..., channel])[:, :, j], (SIZE, SIZE), order=1,
                        anti_aliasing=True)
      np.testing.assert_allclose(images[i, ..., 0], expected, atol=1e-4)
    assert ds.images is c[f"brain_edema_{q}"].images
  assert c["brain_edema_FLAIR"].labels is c["brain_edema_T2w"].labels
  assert not np.array_equal(c["brain_edema_FLAIR"].images, c["brain_edema_T1w"].images)


def test_zscore_over_nonzero_voxels(data):
  root, cases = data
  heart = cases["Task02_Heart"]
  ds = msd.load_msd(root, ["heart"], image_size=SIZE)["heart"]
  assert (heart["la_003"][0] == 0).mean() > 0.2  # the background must matter
  images, _ = ds.batch(np.arange(len(ds)))
  for i, (stem, j) in enumerate(_kept(ds)):
    volume = heart[stem][0].astype(np.float64)
    nonzero = volume[volume != 0]
    expected = resize((volume[:, :, j] - nonzero.mean()) / nonzero.std(), (SIZE, SIZE),
                      order=1, anti_aliasing=True)
    np.testing.assert_allclose(images[i, ..., 0], expected, atol=1e-4)
    # Statistics over all voxels give clearly different values.
    over_all = resize((volume[:, :, j] - volume.mean()) / volume.std(), (SIZE, SIZE), order=1,
                      anti_aliasing=True)
    assert np.abs(images[i, ..., 0] - over_all).max() > 0.1


def test_slice_minmax(data):
  root, cases = data
  heart = cases["Task02_Heart"]
  ds = msd.load_msd(root, ["heart"], image_size=SIZE, normalisation="slice_minmax")["heart"]
  images, _ = ds.batch(np.arange(len(ds)))
  for i, (stem, j) in enumerate(_kept(ds)):
    raw = resize(heart[stem][0][:, :, j].astype(np.float64), (SIZE, SIZE), order=1,
                 anti_aliasing=True)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(images[i, ..., 0], expected, atol=1e-5)
    assert images[i].min() == 0 and abs(images[i].max() - 1) < 1e-6


def test_resize_shapes_and_binary_masks(data):
  root, _ = data
  c = msd.load_msd(root, image_size=SIZE)
  for ds in c.datasets.values():
    assert ds.images.shape[1:] == (SIZE, SIZE) and ds.images.dtype == np.float32
    assert ds.labels.shape == ds.images.shape and ds.labels.dtype == np.uint8
    assert set(np.unique(ds.labels)) <= {0, 1, 2}
    images, masks = ds.batch(np.arange(len(ds)))
    assert images.shape == masks.shape == (len(ds), SIZE, SIZE, 1)
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert np.all(masks.sum(axis=(1, 2, 3)) > 0)
  # The shared prostate label bank holds both structures.
  assert set(np.unique(c["prostate_peripheral_T2"].labels)) == {0, 1, 2}


def test_cache_round_trip(data, tmp_path, monkeypatch):
  root, _ = data
  cache = tmp_path / "cache"
  first = msd.load_msd(root, image_size=SIZE, cache_dir=str(cache))
  files = sorted(os.listdir(cache))
  assert len(files) == 2 and all((cache / f / "volume_names.npy").is_file() for f in files)

  def no_reading(*args, **kwargs):
    raise AssertionError("NIfTI read although the cache holds the task")

  monkeypatch.setattr(msd.nib, "load", no_reading)
  second = msd.load_msd(root, image_size=SIZE, cache_dir=str(cache))
  assert first.names() == second.names()
  for name in first.names():
    a, b = first[name], second[name]
    for field in ("images", "labels", "rows", "volume", "slice_index"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
      assert getattr(a, field).dtype == getattr(b, field).dtype
    assert a.volume_names == b.volume_names and a.label_values == b.label_values
  assert second["prostate_peripheral_T2"].images is second["prostate_transitional_T2"].images
  monkeypatch.undo()
  # Read from the cache, the banks are memory-mapped, and equal the ones made in memory.
  in_memory = msd.load_msd(root, image_size=SIZE)
  for name in first.names():
    for field in ("images", "labels"):
      assert isinstance(getattr(second[name], field), np.memmap)
      assert not isinstance(getattr(in_memory[name], field), np.memmap)
      np.testing.assert_array_equal(getattr(in_memory[name], field), getattr(second[name], field))
  # Other preprocessing options get their own cache file.
  msd.load_msd(root, image_size=8, cache_dir=str(cache))
  assert len(os.listdir(cache)) == 4


def test_volume_split_is_reproducible(data):
  root, _ = data
  names = []
  for _ in range(2):
    ds = msd.load_msd(root, ["prostate_transitional_T2"], image_size=SIZE)[
        "prostate_transitional_T2"]
    train, test = split_volumes(ds.volumes(), 0.5, seed=6)
    names.append(([ds.volume_names[v] for v in train], [ds.volume_names[v] for v in test]))
  assert names[0] == names[1]
  assert sorted(names[0][0] + names[0][1]) == ["prostate_00", "prostate_01"]


def test_dot_underscore_files_are_ignored(data):
  root, cases = data
  task_dir = os.path.join(root, "Task02_Heart")
  for sub in ("imagesTr", "labelsTr"):
    for stem in ("la_003", "la_099"):
      with open(os.path.join(task_dir, sub, f"._{stem}.nii.gz"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 resource fork")
  with open(os.path.join(task_dir, "dataset.json")) as f:
    meta = json.load(f)
  meta["training"].append({"image": "./imagesTr/._la_099.nii.gz",
                           "label": "./labelsTr/._la_099.nii.gz"})
  with open(os.path.join(task_dir, "dataset.json"), "w") as f:
    json.dump(meta, f)
  ds = msd.load_msd(root, ["heart"], image_size=SIZE)["heart"]
  assert ds.volume_names == ("la_003", "la_004", "la_010")
  assert _kept(ds) == _expected_kept(cases["Task02_Heart"], 1, 700)


# --- errors -------------------------------------------------------------------------------


def _heart_dir(root) -> str:
  return os.path.join(root, "Task02_Heart")


def test_error_root_missing(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(DataError) as e:
    msd.load_msd(missing)
  message = str(e.value)
  assert missing in message and "does not exist" in message
  assert "dataset.json" in message and "imagesTr" in message and "labelsTr" in message


def test_error_named_task_folder_missing(data):
  root, _ = data
  with pytest.raises(DataError, match="Task09_Spleen"):
    msd.load_msd(root, ["heart", "spleen"])


def test_error_unknown_dataset(data):
  root, _ = data
  with pytest.raises(DataError, match="unknown MSD dataset.*kidney"):
    msd.load_msd(root, ["kidney"])


def test_error_no_dataset_json(data):
  root, _ = data
  os.remove(os.path.join(_heart_dir(root), "dataset.json"))
  with pytest.raises(DataError, match=r"Task02_Heart has no dataset\.json"):
    msd.load_msd(root, ["heart"])


def test_error_invalid_json(data):
  root, _ = data
  with open(os.path.join(_heart_dir(root), "dataset.json"), "w") as f:
    f.write('{"training": [')
  with pytest.raises(DataError, match=r"cannot read .*dataset\.json: not valid JSON"):
    msd.load_msd(root, ["heart"])


def test_error_json_without_training_list(data):
  root, _ = data
  with open(os.path.join(_heart_dir(root), "dataset.json"), "w") as f:
    json.dump({"training": ["la_003.nii.gz"]}, f)
  with pytest.raises(DataError, match=r"dataset\.json is invalid.*training"):
    msd.load_msd(root, ["heart"])


@pytest.mark.parametrize("kind,sub", [("image", "imagesTr"), ("label", "labelsTr")])
def test_error_listed_file_missing(data, kind, sub):
  root, _ = data
  path = os.path.join(_heart_dir(root), sub, "la_004.nii.gz")
  os.remove(path)
  with pytest.raises(DataError) as e:
    msd.load_msd(root, ["heart"])
  assert f"{kind} file {path}" in str(e.value) and "is missing" in str(e.value)


def test_error_unreadable_nifti(data):
  root, _ = data
  path = os.path.join(_heart_dir(root), "imagesTr", "la_004.nii.gz")
  with open(path, "wb") as f:
    f.write(b"this is not a NIfTI file")
  with pytest.raises(DataError, match=f"cannot read NIfTI file {path}"):
    msd.load_msd(root, ["heart"])


def test_error_truncated_nifti(data):
  root, _ = data
  # Random intensities do not compress: half of the file keeps the header, not the data.
  path = os.path.join(_heart_dir(root), "imagesTr", "la_010.nii.gz")
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[:len(content) // 2])
  with pytest.raises(DataError, match=f"cannot read NIfTI file {path}"):
    msd.load_msd(root, ["heart"])


def test_error_shape_mismatch(tmp_path):
  rng = np.random.default_rng(2)
  image = _image_volume((40, 36, 8), rng, [300.0])
  label = _label_volume((40, 36, 7), {1: [700] * 7})
  _write_task(tmp_path, "Task02_Heart", {"la_005": (image, label)})
  with pytest.raises(DataError) as e:
    msd.load_msd(str(tmp_path))
  message = str(e.value)
  assert "la_005" in message and "(40, 36, 8)" in message and "(40, 36, 7)" in message


def test_error_four_d_where_three_d_expected(tmp_path):
  rng = np.random.default_rng(3)
  image = _image_volume((40, 36, 8, 2), rng, [300.0, 300.0])
  label = _label_volume((40, 36, 8), HEART_AREAS[0])
  _write_task(tmp_path, "Task02_Heart", {"la_005": (image, label)})
  with pytest.raises(DataError, match=r"la_005\.nii\.gz: Task02_Heart images must be 3-D.*4-D"):
    msd.load_msd(str(tmp_path))


def test_error_three_d_where_four_d_expected(tmp_path):
  rng = np.random.default_rng(4)
  image = _image_volume((36, 40, 6), rng, [300.0])
  _write_task(tmp_path, "Task05_Prostate",
              {"prostate_00": (image, _label_volume((36, 40, 6), PROSTATE_AREAS[0]))})
  with pytest.raises(DataError, match=r"prostate_00\.nii\.gz: Task05_Prostate images must be 4-D"):
    msd.load_msd(str(tmp_path))


def test_error_no_task_folder(tmp_path):
  with pytest.raises(DataError, match="no MSD task folder found"):
    msd.load_msd(str(tmp_path))


def _metamedseg_config():
  config = load_config(str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
                           "metamedseg.py"))
  config.data.source = "msd"
  return config


def _collection(names):
  empty = np.zeros((0, 2, 2))
  return SliceCollection({n: SliceDataset(n, msd.MSD_DATASETS[n].group, empty, empty, (1,),
                                          np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), ())
                          for n in names})


def test_colon_is_held_out_by_default_only_when_loaded():
  from medda_jax.methods.metamedseg import targets_and_sources
  config = _metamedseg_config()
  with_colon = ["heart", "spleen", "lung", "colon", "pancreas"]
  assert targets_and_sources(config, _collection(with_colon)) == (
      ["heart", "spleen"], ["lung", "pancreas"])
  # A download without the colon task trains on what is there.
  assert targets_and_sources(config, _collection(["heart", "lung", "pancreas"])) == (
      ["heart"], ["lung", "pancreas"])
  config.data.exclude = ("pancreas",)  # an explicit exclusion replaces the default
  assert targets_and_sources(config, _collection(with_colon)) == (
      ["heart", "spleen"], ["lung", "colon"])
  config.data.exclude = ("colon",)
  with pytest.raises(ConfigError, match="'colon'.*is not in the data"):
    targets_and_sources(config, _collection(["heart", "lung"]))
