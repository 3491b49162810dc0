"""Every mistake a user can make on the command line ends with one clear line and a
non-zero exit, never a traceback."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import error_message, run_train


def _assert_clean_error(proc, *needles, code=2):
  message = error_message(proc, code)
  for needle in needles:
    assert needle in message, message


@pytest.mark.parametrize("overrides,needles", [
    (["--config.meta.bogus=3"], ["unknown config field", "config.meta.bogus"]),
    (["--config.meta.shots=0"], ["config.meta.shots=0", "out of range"]),
    (["--config.meta.task_definition=random"], ["config.meta.task_definition", "volumetric"]),
    (["--config.meta.shots=abc"], ["config.meta.shots"]),
    (["--config.data.source=msd"], ["config.data.root"]),
    (["--config.data.targets=('nosuch',)"], ["nosuch", "not in the data"]),
])
def test_bad_config_values(tmp_path, demo_cache, overrides, needles):
  proc = run_train(tmp_path / "w", f"--config.data.cache_dir={demo_cache}", *overrides)
  _assert_clean_error(proc, *needles)


def test_unknown_variant_and_missing_file(tmp_path):
  _assert_clean_error(run_train(tmp_path, config="configs/metamedseg.py:nosuch"),
                      "unknown variant 'nosuch'")
  _assert_clean_error(run_train(tmp_path, config="configs/nope.py"), "configs/nope.py",
                      "does not exist")


def test_missing_data_root(tmp_path):
  proc = run_train(tmp_path / "w", "--config.data.source=msd",
                   f"--config.data.root={tmp_path / 'no_such_dir'}")
  _assert_clean_error(proc, "no_such_dir")
  assert "dataset.json" in proc.stderr  # the expected layout is shown


def test_tfds_layout_without_prepared_dataset(tmp_path):
  (tmp_path / "tfds").mkdir()
  proc = run_train(tmp_path / "w", "--config.data.source=msd", "--config.data.layout=tfds",
                   "--config.data.targets=('heart',)", f"--config.data.root={tmp_path / 'tfds'}")
  _assert_clean_error(proc, "no prepared medical_decathlon task",
                      "python -m medda_jax.data.builders.build medical_decathlon/<task>",
                      "task02_heart")


def test_root_without_dataset_json(tmp_path):
  (tmp_path / "msd" / "Task02_Heart" / "imagesTr").mkdir(parents=True)
  proc = run_train(tmp_path / "w", "--config.data.source=msd",
                   f"--config.data.root={tmp_path / 'msd'}")
  _assert_clean_error(proc, "dataset.json")


def _write_heart(root, image_shape, label_shape, corrupt=False):
  task = root / "Task02_Heart"
  (task / "imagesTr").mkdir(parents=True)
  (task / "labelsTr").mkdir(parents=True)
  (task / "dataset.json").write_text(json.dumps({"training": [
      {"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}]}))
  nib.save(nib.Nifti1Image(np.ones(image_shape, np.float32), np.eye(4)),
           task / "imagesTr" / "la_003.nii.gz")
  if corrupt:
    (task / "labelsTr" / "la_003.nii.gz").write_bytes(b"not a nifti file")
  else:
    nib.save(nib.Nifti1Image(np.zeros(label_shape, np.uint8), np.eye(4)),
             task / "labelsTr" / "la_003.nii.gz")


def test_image_and_label_shapes_differ(tmp_path):
  _write_heart(tmp_path / "msd", (8, 8, 4), (8, 6, 4))
  proc = run_train(tmp_path / "w", "--config.data.source=msd",
                   f"--config.data.root={tmp_path / 'msd'}")
  _assert_clean_error(proc, "la_003")


def test_unreadable_nifti(tmp_path):
  _write_heart(tmp_path / "msd", (8, 8, 4), (8, 8, 4), corrupt=True)
  proc = run_train(tmp_path / "w", "--config.data.source=msd",
                   f"--config.data.root={tmp_path / 'msd'}")
  _assert_clean_error(proc, "la_003")
