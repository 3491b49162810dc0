"""MM-WHS loader on tiny synthetic NIfTI files in the published layout, and SIFA's .npz."""

from __future__ import annotations

import gzip
import logging
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import data_error
from medda_jax.data import mmwhs
from medda_jax.errors import ConfigError

# Stored voxel axes (i, j, k) point to +S, -R (left) and -A (posterior): a permuted, flipped
# orientation, so the canonical RAS reorientation has work to do. Spacing 1, 1.2, 1.5 mm.
AFFINE = np.array([[0.0, -1.2, 0.0, 30.0],
                   [0.0, 0.0, -1.5, 20.0],
                   [1.0, 0.0, 0.0, -10.0],
                   [0.0, 0.0, 0.0, 1.0]])
STORED = (16, 16, 6)  # S, L, P extents; in our [A, R, S] slice layout: (6, 16, 16)
OURS = (6, 16, 16)


def to_stored(ours: np.ndarray) -> np.ndarray:
  """[A, R, S] (slices first) -> the stored (S, L, P) array: ours[a, r, s] is stored at
  i = s, j = 15 - r, k = 5 - a."""
  return ours.transpose(2, 1, 0)[:, ::-1, ::-1]


def to_ours(stored: np.ndarray) -> np.ndarray:
  return stored[:, ::-1, ::-1].transpose(2, 1, 0)


def _fixture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Image and raw MM-WHS label in our [A, R, S] layout. The foreground (all four classes)
  spans rows 3..12 and columns 4..13 (box side 10 each), over slices 1..4."""
  rng = np.random.default_rng(seed)
  image = rng.normal(100.0, 20.0, OURS)
  label = rng.choice([0, 550, 600, 850], size=OURS)
  label[1:5, 3:8, 4:9] = 205
  label[1:5, 8:13, 4:9] = 420
  label[1:5, 3:8, 9:14] = 500
  label[1:5, 8:13, 9:14] = 820
  # Strong values inside the crop box (clipped to +-1) and outside it (must not change the
  # z-score statistics, which come from the cropped volume only).
  image[2, 5, 6], image[3, 10, 12] = 900.0, -600.0
  image[0, 0, 0], image[5, 15, 15] = 5000.0, -5000.0
  return image.astype(np.float32), label


def _write(root, modality, case_id, image_ours, label_ours, label_affine=AFFINE):
  folder = os.path.join(root, f"{modality}_train")
  os.makedirs(folder, exist_ok=True)
  image_path, label_path = mmwhs.volume_paths(root, modality, case_id)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(to_stored(image_ours)), AFFINE), image_path)
  if label_ours is not None:
    label = np.ascontiguousarray(to_stored(label_ours)).astype(np.int16)
    nib.save(nib.Nifti1Image(label, label_affine), label_path)
  return image_path, label_path


def _mapped(raw: np.ndarray) -> np.ndarray:
  out = np.zeros(raw.shape, np.int32)
  for value, cls in ((205, 1), (420, 2), (500, 3), (820, 4)):
    out[raw == value] = cls
  return out


def _unit(z, lo, hi):
  return (np.clip(z, lo, hi) - lo) / (hi - lo) * 2 - 1


def test_paths_split_and_constants(tmp_path):
  assert mmwhs.volume_paths(tmp_path, "CT", 1003) == (
      str(tmp_path / "ct_train" / "ct_train_1003_image.nii.gz"),
      str(tmp_path / "ct_train" / "ct_train_1003_label.nii.gz"))
  assert mmwhs.volume_paths(tmp_path, "mr", 1020)[1].endswith("mr_train/mr_train_1020_label.nii.gz")
  train, test = mmwhs.SPLIT["train"], mmwhs.SPLIT["test"]
  assert len(train) == 16 and len(test) == 4 and not set(train) & set(test)
  assert sorted(train + test) == list(range(1001, 1021))
  assert [mmwhs.CLASS_NAMES[c] for c in (1, 2, 3, 4)] == ["MYO", "LAC", "LVC", "AA"]
  assert mmwhs.TABLE_ORDER == ("AA", "LAC", "LVC", "MYO")
  assert mmwhs.LIMITS == {"mr": (-1.8, 4.4), "ct": (-2.8, 3.2)}
  with pytest.raises(ConfigError, match="modality"):
    mmwhs.volume_paths(tmp_path, "pet", 1001)
  with pytest.raises(ConfigError, match="1001..1020"):
    mmwhs.volume_paths(tmp_path, "ct", 1021)


def test_crop_zscore_clip_and_map(tmp_path):
  image, raw = _fixture()
  _write(tmp_path, "ct", 1003, image, raw)
  # Box rows 3..12, columns 4..13 (side 10) + 10 % = 1 voxel per side: rows 2..13, columns
  # 3..14, a 12 x 12 crop; size 12 keeps it unresized, so everything is plain numpy here.
  vol = mmwhs.load_volume(tmp_path, "ct", 1003, size=12)
  assert vol.name == "ct_train_1003"
  assert vol.image.shape == vol.label.shape == (6, 12, 12) and vol.num_slices == 6
  assert vol.image.dtype == np.float32 and vol.label.dtype == np.int32
  crop = image[:, 2:14, 3:15].astype(np.float64)
  z = (crop - crop.mean()) / crop.std()
  np.testing.assert_allclose(vol.image, _unit(z, -2.8, 3.2), atol=1e-5)
  np.testing.assert_array_equal(vol.label, _mapped(raw)[:, 2:14, 3:15])
  assert vol.image.min() == -1.0 and vol.image.max() == 1.0  # the two outliers in the box
  assert vol.image[2, 3, 3] == 1.0 and vol.image[3, 8, 9] == -1.0
  # Statistics of the whole volume would differ (outliers outside the box).
  whole = image.astype(np.float64)
  assert abs(whole.std() - crop.std()) > 1.0
  # MR limits and explicit limits.
  _write(tmp_path, "mr", 1003, image, raw)
  mr = mmwhs.load_volume(tmp_path, "mr", 1003, size=12)
  np.testing.assert_allclose(mr.image, _unit(z, -1.8, 4.4), atol=1e-5)
  custom = mmwhs.load_volume(tmp_path, "mr", 1003, size=12, limits=(-1.0, 1.0))
  np.testing.assert_allclose(custom.image, _unit(z, -1.0, 1.0), atol=1e-5)


def test_crop_margin_is_clipped_to_the_volume(tmp_path):
  image, raw = _fixture()
  _write(tmp_path, "ct", 1001, image, raw)
  # margin 0.5: 5 voxels per side -> rows 3-5..13+5 = -2..18 and columns 4-5..14+5 =
  # -1..19 (stops exclusive), clipped to 0..16: the whole plane.
  vol = mmwhs.load_volume(tmp_path, "ct", 1001, size=16, margin=0.5)
  whole = image.astype(np.float64)
  np.testing.assert_allclose(vol.image, _unit((whole - whole.mean()) / whole.std(), -2.8, 3.2),
                             atol=1e-5)
  # margin 0: the box itself, 10 x 10.
  tight = mmwhs.load_volume(tmp_path, "ct", 1001, size=10, margin=0.0)
  np.testing.assert_array_equal(tight.label, _mapped(raw)[:, 3:13, 4:14])
  # margin 0.15: 1.5 voxels, rounded half up to 2 per side: rows 1..15, columns 2..16.
  half = mmwhs.load_volume(tmp_path, "ct", 1001, size=14, margin=0.15)
  np.testing.assert_array_equal(half.label, _mapped(raw)[:, 1:15, 2:16])


def test_canonical_orientation(tmp_path):
  image, raw = _fixture()
  raw[raw == 820] = 0
  stored_label = to_stored(raw).copy()
  voxel = (7, 3, 2)  # stored (i, j, k) of the only AA voxel
  stored_label[voxel] = 820
  folder = tmp_path / "mr_train"
  folder.mkdir()
  image_path, label_path = mmwhs.volume_paths(tmp_path, "mr", 1005)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(to_stored(image)), AFFINE), image_path)
  nib.save(nib.Nifti1Image(stored_label.astype(np.int16), AFFINE), label_path)
  # Where RAS says the voxel lies: its world point, in voxels of the canonical grid.
  world = AFFINE @ np.array([*voxel, 1.0])
  canonical = nib.as_closest_canonical(nib.load(label_path))
  r, a, s = np.rint(np.linalg.solve(canonical.affine, world)[:3]).astype(int)
  assert (r, a, s) == (15 - voxel[1], 5 - voxel[2], voxel[0])
  # margin 1 (clipped) keeps the whole 16 x 16 plane, size 16 keeps it unresized.
  vol = mmwhs.load_volume(tmp_path, "mr", 1005, size=16, margin=1.0)
  assert np.argwhere(vol.label == 4).tolist() == [[a, r, s]]
  # Slice a is coronal: it holds one A position and every R, S.
  np.testing.assert_array_equal(vol.label, _mapped(to_ours(stored_label)))
  whole = image.astype(np.float64)
  np.testing.assert_allclose(vol.image, _unit((whole - whole.mean()) / whole.std(), -1.8, 4.4),
                             atol=1e-5)


def test_label_mapping_and_unexpected_values(tmp_path, caplog):
  image, raw = _fixture()
  raw[0, 0, :3] = 421  # unexpected values become background, with one warning
  raw[5, 15, 0] = 7
  _write(tmp_path, "ct", 1002, image, raw)
  with caplog.at_level(logging.WARNING, logger="medda_jax.data.mmwhs"):
    vol = mmwhs.load_volume(tmp_path, "ct", 1002, size=16, margin=1.0)
  expected = _mapped(raw)
  assert set(np.unique(raw)) >= {0, 205, 420, 500, 550, 600, 820, 850}
  np.testing.assert_array_equal(vol.label, expected)
  assert vol.label[0, 0, 0] == 0 and vol.label[5, 15, 0] == 0
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "[7, 421]" in warnings[0].getMessage()
  assert "ct_train_1002_label.nii.gz" in warnings[0].getMessage()
  # Known values only: no warning.
  caplog.clear()
  image, raw = _fixture(1)
  _write(tmp_path, "ct", 1004, image, raw)
  with caplog.at_level(logging.WARNING, logger="medda_jax.data.mmwhs"):
    mmwhs.load_volume(tmp_path, "ct", 1004, size=8)
  assert not caplog.records


def test_default_size_resizes_slices(tmp_path):
  image, raw = _fixture()
  _write(tmp_path, "ct", 1001, image, raw)
  vol = mmwhs.load_volume(tmp_path, "ct", 1001)
  assert vol.image.shape == vol.label.shape == (6, 256, 256)
  assert vol.image.min() >= -1.0 and vol.image.max() <= 1.0
  assert set(np.unique(vol.label)) == {0, 1, 2, 3, 4}
  # Nearest-neighbour labels: the 12 x 12 crop scaled by 256 / 12; class 1 (crop rows 1..5,
  # columns 1..5) covers about (5 * 256 / 12)^2 pixels per foreground slice.
  per_slice = (vol.label[2] == 1).sum()
  assert abs(per_slice - (5 * 256 / 12) ** 2) < 2 * 5 * 256 / 12 + 1
  assert not vol.label[0].any() and not vol.label[5].any()  # slices without foreground kept


def test_volume_without_foreground(tmp_path, caplog):
  image, raw = _fixture()
  raw[np.isin(raw, (205, 420, 500, 820))] = 550
  _write(tmp_path, "mr", 1009, image, raw)
  with caplog.at_level(logging.WARNING, logger="medda_jax.data.mmwhs"):
    vol = mmwhs.load_volume(tmp_path, "mr", 1009, size=16)
  assert "holds no foreground class" in caplog.text
  assert not vol.label.any()
  whole = image.astype(np.float64)  # not cropped
  np.testing.assert_allclose(vol.image, _unit((whole - whole.mean()) / whole.std(), -1.8, 4.4),
                             atol=1e-5)


def test_load_split(tmp_path):
  image, raw = _fixture()
  for case_id in mmwhs.SPLIT["test"]:
    _write(tmp_path, "ct", case_id, image, raw)
  vols = mmwhs.load_split(tmp_path, "ct", "test", size=8, margin=0.0)
  assert [v.name for v in vols] == ["ct_train_1017", "ct_train_1018", "ct_train_1019",
                                    "ct_train_1020"]
  assert all(v.image.shape == (6, 8, 8) for v in vols)
  message = data_error(lambda: mmwhs.load_split(tmp_path, "ct", "train"))
  assert "ct_train_1001_image.nii.gz" in message
  with pytest.raises(ConfigError, match="split"):
    mmwhs.load_split(tmp_path, "ct", "val")


def test_missing_files_and_folders(tmp_path):
  message = data_error(lambda: mmwhs.load_volume(tmp_path / "nowhere", "ct", 1001))
  assert str(tmp_path / "nowhere") in message and "does not exist" in message
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "mr", 1001))
  assert str(tmp_path / "mr_train") in message and "missing" in message
  image, raw = _fixture()
  _write(tmp_path, "mr", 1001, image, None)  # image only
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "mr", 1001))
  assert "mr_train_1001_label.nii.gz" in message and "missing" in message
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "mr", 1002))
  assert "mr_train_1002_image.nii.gz" in message and "missing" in message


def test_shape_mismatch_and_unreadable_files(tmp_path):
  image, raw = _fixture()
  image_path, label_path = _write(tmp_path, "ct", 1001, image, None)
  nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.int16), AFFINE), label_path)
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "ct", 1001))
  assert "(16, 16, 6)" in message and "(16, 16, 5)" in message and label_path in message
  # Same stored shape, different orientation: the canonical arrays do not match.
  _write(tmp_path, "ct", 1002, image, raw, label_affine=np.diag([1.0, 1.0, 1.0, 1.0]))
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "ct", 1002))
  assert "orientations" in message
  # Not a NIfTI file at all.
  image_path, label_path = _write(tmp_path, "ct", 1003, image, raw)
  with gzip.open(image_path, "wb") as f:
    f.write(b"this is not a NIfTI header")
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "ct", 1003))
  assert "cannot read" in message and image_path in message
  # A truncated file: the header reads, the data do not.
  image_path, label_path = _write(tmp_path, "ct", 1004, image, raw)
  with gzip.open(label_path, "rb") as f:
    data = f.read()
  with gzip.open(label_path, "wb") as f:
    f.write(data[:len(data) // 2])
  message = data_error(lambda: mmwhs.load_volume(tmp_path, "ct", 1004))
  assert "cannot read" in message and label_path in message


def test_bad_arguments(tmp_path):
  image, raw = _fixture()
  _write(tmp_path, "ct", 1001, image, raw)
  for kwargs in ({"limits": (1.0, 1.0)}, {"limits": (2.0,)}, {"size": 0}, {"margin": -0.1}):
    with pytest.raises(ConfigError):
      mmwhs.load_volume(tmp_path, "ct", 1001, **kwargs)


def test_sifa_npz(tmp_path):
  rng = np.random.default_rng(3)
  image = rng.normal(0.0, 2.0, (5, 4, 3)).astype(np.float32)  # [H, W, D], z-scored
  image[0, 0, 0] = 9.0  # beyond the CT limits: not clipped, as evaluate.py
  label = rng.integers(0, 5, (5, 4, 3))
  path = tmp_path / "image_ct_1003.npz"
  np.savez(path, image, label)
  vol = mmwhs.load_sifa_npz(path, "ct")
  assert vol.name == "image_ct_1003"
  assert vol.image.shape == vol.label.shape == (3, 5, 4)
  assert vol.image.dtype == np.float32 and vol.label.dtype == np.int32
  for d, h, w in ((0, 0, 0), (2, 4, 3), (1, 2, 1), (0, 4, 0)):
    expected = (image[4 - h, 3 - w, d] - (-2.8)) / (3.2 - (-2.8)) * 2 - 1
    assert vol.image[d, h, w] == pytest.approx(expected, abs=1e-6)
    assert vol.label[d, h, w] == label[4 - h, 3 - w, d]
  assert vol.image[0, 4, 3] == pytest.approx((9.0 + 2.8) / 6.0 * 2 - 1)  # > 1
  mr = mmwhs.load_sifa_npz(path, "MR")
  assert mr.image[0, 4, 3] == pytest.approx((9.0 + 1.8) / 6.2 * 2 - 1)


def test_sifa_npz_errors(tmp_path):
  path = tmp_path / "named.npz"
  np.savez(path, image=np.zeros((4, 4, 2)), label=np.zeros((4, 4, 2)))
  message = data_error(lambda: mmwhs.load_sifa_npz(path, "ct"))
  assert "arr_0" in message and str(path) in message
  np.savez(path, np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))
  message = data_error(lambda: mmwhs.load_sifa_npz(path, "ct"))
  assert "(4, 4, 2)" in message and "(4, 4, 3)" in message
  np.savez(path, np.zeros((4, 4, 2)), np.full((4, 4, 2), 205))
  assert "0..4" in data_error(lambda: mmwhs.load_sifa_npz(path, "ct"))
  path.write_bytes(b"not a zip file")
  assert "cannot read" in data_error(lambda: mmwhs.load_sifa_npz(path, "ct"))
  assert "does not exist" in data_error(lambda: mmwhs.load_sifa_npz(tmp_path / "x.npz", "ct"))
