"""TFDS builders prepare the loader fixtures as array_record and read them back, through
tfds.data_source and grain, without TensorFlow (checked in a fresh interpreter)."""

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
import test_msd
from medda_jax.data.builders import build


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
