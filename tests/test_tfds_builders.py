"""TFDS builders prepare the loader fixtures as array_record and read them back, through
tfds.data_source and grain, without TensorFlow (checked in a fresh interpreter)."""

import gzip
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds  # the tfds extra, installed by the test command

import conftest
import test_breast_us
import test_cc359
import test_msd
import test_usps_cxr_sites
from medda_jax.data import cc359, msd
from medda_jax.data.builders import build
from medda_jax.errors import ConfigError, DataError


def _prepare(name, manual_dir, data_dir):
  return build.prepare(name, str(manual_dir), str(data_dir))


def test_msd_volumes_round_trip(tmp_path):
  root = tmp_path / "msd"
  root.mkdir()
  rng = np.random.default_rng(0)
  heart = test_msd._make_heart(root, rng)
  prostate = test_msd._make_prostate(root, rng)
  data_dir = tmp_path / "tfds"
  for config, cases in (("task02_heart", heart), ("task05_prostate", prostate)):
    builder = _prepare(f"medical_decathlon/{config}", root, data_dir)
    assert builder.info.splits["train"].num_examples == len(cases)
    # Read back by name, as grain does: a random-access source.
    source = tfds.data_source(f"medical_decathlon/{config}", split="train", data_dir=data_dir)
    records = {r["case"].decode() if isinstance(r["case"], bytes) else r["case"]: r
               for r in grain.MapDataset.source(source)}
    assert sorted(records) == sorted(cases)
    for stem, (image, label) in cases.items():
      got = records[stem]
      want = image if image.ndim == 4 else image[..., None]
      np.testing.assert_array_equal(got["image"], want)
      np.testing.assert_array_equal(got["label"], label)
      np.testing.assert_array_equal(got["spacing"], [1, 1, 1])
  assert list((data_dir / "medical_decathlon" / "task02_heart" / "1.0.0").glob(
      "*.array_record*"))


def _assert_same_collection(a, b):
  assert a.names() == b.names()
  for name in a.names():
    x, y = a[name], b[name]
    for field in ("images", "labels", "rows", "volume", "slice_index"):
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
      assert getattr(x, field).dtype == getattr(y, field).dtype
    assert (x.group, x.label_values, x.volume_names) == (y.group, y.label_values, y.volume_names)


def test_msd_loader_reads_prepared_datasets_like_the_files(tmp_path, monkeypatch):
  """`load_msd(layout="tfds")` on the prepared datasets gives the slices the NIfTI files
  give: 3-D, 4-D (channel split) and shared banks alike, cached under their own key."""
  root = tmp_path / "msd"
  root.mkdir()
  rng = np.random.default_rng(3)
  heart = test_msd._make_heart(root, rng)
  test_msd._make_prostate(root, rng)
  test_msd._make_brain(root, rng)
  data_dir = tmp_path / "tfds"
  for config in ("task01_braintumour", "task02_heart", "task05_prostate"):
    _prepare(f"medical_decathlon/{config}", root, data_dir)
  size = test_msd.SIZE
  for options in ({}, {"threshold_space": "resized", "normalisation": "slice_minmax"}):
    files = msd.load_msd(str(root), image_size=size, **options)
    prepared = msd.load_msd(str(data_dir), image_size=size, layout="tfds", **options)
    _assert_same_collection(files, prepared)
    assert "TFDS datasets" in prepared.description
  assert test_msd._kept(prepared["heart"]) == test_msd._expected_kept(heart, 1, 700, "resized")

  cache = tmp_path / "cache"
  first = msd.load_msd(str(data_dir), ["heart"], image_size=size, layout="tfds",
                       cache_dir=str(cache))

  def not_cached(*args, **kwargs):
    raise AssertionError("cache not used")

  # The second run reads no record: the case listing and the slices come from the cache.
  monkeypatch.setattr(msd, "_process_case", not_cached)
  monkeypatch.setattr(tfds.core.read_only_builder.ReadOnlyBuilder, "as_data_source", not_cached)
  _assert_same_collection(first, msd.load_msd(str(data_dir), ["heart"], image_size=size,
                                              layout="tfds", cache_dir=str(cache)))
  with pytest.raises(AssertionError, match="cache not used"):  # the files have their own key
    msd.load_msd(str(root), ["heart"], image_size=size, cache_dir=str(cache))


def test_msd_loader_names_the_build_command_for_a_missing_dataset(tmp_path):
  with pytest.raises(DataError, match="build medical_decathlon/task09_spleen --manual_dir=<Dec"):
    msd.load_msd(str(tmp_path), ["spleen"], layout="tfds")
  with pytest.raises(DataError, match="no prepared medical_decathlon task found"):
    msd.load_msd(str(tmp_path), layout="tfds")
  with pytest.raises(DataError, match="TFDS data dir .* does not exist"):
    msd.load_msd(str(tmp_path / "absent"), layout="tfds")
  with pytest.raises(ConfigError, match="layout must be one of"):
    msd.load_msd(str(tmp_path), layout="tfrecord")


def test_msd_builder_names_the_missing_file(tmp_path):
  root = tmp_path / "msd"
  root.mkdir()
  test_msd._make_heart(root, np.random.default_rng(0))
  (root / "Task02_Heart" / "labelsTr" / "la_004.nii.gz").unlink()
  with pytest.raises(Exception, match="la_004.nii.gz listed in .* is missing"):
    _prepare("medical_decathlon/task02_heart", root, tmp_path / "tfds")


def test_busi_and_breast_round_trip(tmp_path):
  busi_root = test_breast_us._busi(tmp_path)
  builder = _prepare("busi", busi_root.parent, tmp_path / "tfds")
  loader = test_breast_us.breast_us.load_busi(busi_root, size=8)
  source = builder.as_data_source()["train"]
  assert len(source) == len(loader.names)
  by_file = {source[i]["file"].decode() if isinstance(source[i]["file"], bytes)
             else source[i]["file"]: source[i] for i in range(len(source))}
  for name, label, cls in zip(loader.names, loader.labels, loader.classes):
    record = by_file[name]
    with Image.open(busi_root / name) as img:
      np.testing.assert_array_equal(record["image"][..., 0], np.asarray(img.convert("L")))
    assert record["malignant_vs_benign"] == label
    assert builder.info.features["label"].int2str(record["label"]) == cls

  breast_root = test_breast_us._breast(tmp_path / "BrEaST")
  builder = _prepare("breast_lesions_usg", breast_root, tmp_path / "tfds")
  loader = test_breast_us.breast_us.load_breast(breast_root, size=8)
  source = tfds.builder_from_directory(builder.data_dir).as_data_source()["train"]
  labels = {source[i]["file"].decode() if isinstance(source[i]["file"], bytes)
            else source[i]["file"]: source[i]["malignant_vs_benign"] for i in range(len(source))}
  assert labels == dict(zip(loader.names, loader.labels.tolist()))


@pytest.mark.parametrize("layout", ["meta", "original"])
def test_cc359_volumes_round_trip(tmp_path, layout):
  cases = {stem: test_cc359._arrays(i) for i, stem in enumerate(test_cc359.STEMS)}
  write = test_cc359._write_meta if layout == "meta" else test_cc359._write_original
  root = tmp_path / layout
  write(root, cases)
  builder = _prepare("cc359", root, tmp_path / "tfds")
  source = builder.as_data_source()["train"]
  assert len(source) == len(cases)
  records = {_text(source[i]["id"]): source[i] for i in range(len(source))}
  domains = builder.info.features["domain"]
  for stem, (image, mask) in cases.items():
    record = records[stem.split("_")[0]]
    np.testing.assert_array_equal(record["image"], image.astype(np.float32))
    np.testing.assert_array_equal(record["mask"], mask)
    assert record["mask"].dtype == np.float32 and record["spacing"].dtype == np.float64
    assert domains.int2str(record["domain"]) == "_".join(stem.split("_")[1:3])
    np.testing.assert_allclose(record["spacing"], test_cc359.ZOOMS)


@pytest.mark.parametrize("layout", ["meta", "original"])
def test_cc359_loader_reads_the_prepared_dataset_like_the_files(tmp_path, layout, monkeypatch):
  """`load_cc359(layout="tfds")` gives the files' volumes to the bit, resampled or not."""
  cases = {stem: test_cc359._arrays(i) for i, stem in enumerate(test_cc359.STEMS)}
  # A soft mask edge: the loader resamples the mask as stored before binarising it.
  for _, mask in cases.values():
    mask[3:9, 2:8, 6:8] = 0.45  # flips 48 of 504 voxels if binarised before resampling
  root = tmp_path / layout
  (test_cc359._write_meta if layout == "meta" else test_cc359._write_original)(root, cases)
  data_dir = tmp_path / "tfds"
  _prepare("cc359", root, data_dir)
  cache = tmp_path / "cache"
  for options in ({"spacing": None}, {"spacing": (1.0, 1.2, 0.9), "domains": ["siemens_15"]},
                  {"max_volumes_per_domain": 1, "cache_dir": str(cache)}):
    files = cc359.load_cc359(root, **options)
    prepared = cc359.load_cc359(data_dir, layout="tfds", **options)
    assert list(files.domains) == list(prepared.domains)
    for domain, volumes in files.domains.items():
      assert [v.id for v in volumes] == [v.id for v in prepared[domain]]
      for a, b in zip(volumes, prepared[domain]):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.spacing == b.spacing and a.domain == b.domain
  assert "prepared TFDS" in prepared.description

  def no_reading(*args, **kwargs):
    raise AssertionError("record read although the cache holds it")

  monkeypatch.setattr(tfds.core.read_only_builder.ReadOnlyBuilder, "as_data_source", no_reading)
  cc359.load_cc359(data_dir, layout="tfds", max_volumes_per_domain=1, cache_dir=str(cache))
  monkeypatch.undo()
  with pytest.raises(DataError, match="build cc359 --manual_dir=<CC359 root>"):
    cc359.load_cc359(tmp_path / "cache", layout="tfds")


def test_usps_splits_round_trip(tmp_path):
  values, digits = test_usps_cxr_sites._usps_records(n=7, seed=2)
  for name, rows in (("zip.train.gz", slice(0, 4)), ("zip.test.gz", slice(4, 7))):
    with gzip.open(tmp_path / name, "wt") as f:
      for v, d in zip(values[rows], digits[rows]):
        f.write(f"{d:.4f} " + " ".join(f"{x:.4f}" for x in v) + "\n")
  builder = _prepare("usps", tmp_path, tmp_path / "tfds")
  images, labels = test_usps_cxr_sites.load_usps(tmp_path, "all")
  got = [r for split in ("train", "test")
         for r in sorted(builder.as_data_source()[split], key=lambda r: r["index"])]
  np.testing.assert_array_equal([r["label"] for r in got], labels)
  np.testing.assert_array_equal(np.stack([r["image"][..., 0] for r in got]), images)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


def test_command_line_prepares_without_tensorflow(tmp_path):
  root = tmp_path / "msd"
  root.mkdir()
  test_msd._make_heart(root, np.random.default_rng(0))
  script = textwrap.dedent(f"""
      import sys
      from medda_jax.data.builders import build
      code = build.main(["medical_decathlon/task02_heart", "--manual_dir={root}",
                         "--data_dir={tmp_path / 'tfds'}"])
      import tensorflow_datasets as tfds
      src = tfds.data_source("medical_decathlon/task02_heart", split="train",
                             data_dir="{tmp_path / 'tfds'}")
      print(len(src), "tensorflow" in sys.modules)
      sys.exit(code)
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=conftest.REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "prepared medical_decathlon/task02_heart/1.0.0" in proc.stdout
  assert proc.stdout.strip().splitlines()[-1] == "3 False"


@pytest.mark.parametrize("args, message", [
    (["medical_decathlon", "--manual_dir=."], "needs a config, one of: task01_braintumour"),
    (["nope", "--manual_dir=."], "unknown dataset 'nope'"),
])
def test_command_line_rejects_bad_names(args, message, capsys):
  with pytest.raises(SystemExit, match=message):
    build.main(args)
