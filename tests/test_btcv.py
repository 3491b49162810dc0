"""The BTCV loader on fixtures written here: organ mapping, HU clip, out-of-mask slices
dropped, resize, z-score, and one-line errors."""

import nibabel as nib
import numpy as np
import pytest

from conftest import data_error
from medda_jax.data import btcv


def write(path, array, zooms=(0.8, 0.8, 3.0)):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*zooms, 1.0])), str(path))


def make_case(root, number, shape=(12, 12, 6), label_shape=None, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1000, 1000, shape).astype(np.float32)
  label = np.zeros(label_shape or shape, np.int16)
  label[2:6, 2:6, 2] = 1    # spleen -> 1
  label[6:9, 6:9, 3] = 11   # pancreas -> 5
  label[1:3, 8:10, 3] = 5   # esophagus -> background
  write(root / "img" / f"img{number:04d}.nii.gz", image)
  write(root / "label" / f"label{number:04d}.nii.gz", label)
  return image, label


def test_loads_the_eight_organs_in_their_z_range(tmp_path):
  image, label = make_case(tmp_path, 1)
  make_case(tmp_path, 2, seed=1)
  volumes = btcv.load_btcv(tmp_path, image_size=12)["BTCV"]
  assert [v.id for v in volumes] == ["img0001", "img0002"]
  v = volumes[0]
  assert v.image.shape == (2, 12, 12)  # slices 2 and 3: the organs' z-range
  assert set(np.unique(v.mask)) == {0, 1, 5}
  np.testing.assert_array_equal(v.mask[0], (label[..., 2] == 1) * 1)
  # plain reference: clip, keep slices 2..3, z-score over the kept voxels
  clipped = np.clip(image[..., 2:4], -125, 275)
  want = (clipped - clipped.mean()) / clipped.std()
  np.testing.assert_allclose(v.image, want.transpose(2, 0, 1), rtol=1e-4, atol=1e-4)
  assert v.spacing == pytest.approx((3.0, 0.8, 0.8))


def test_resize_scales_the_spacing_and_keeps_label_values(tmp_path):
  make_case(tmp_path, 1)
  v = btcv.load_btcv(tmp_path, image_size=6, cache_dir=tmp_path / "cache")["BTCV"][0]
  assert v.image.shape == (2, 6, 6) and set(np.unique(v.mask)) <= {0, 1, 5}
  assert v.spacing == pytest.approx((3.0, 1.6, 1.6))
  again = btcv.load_btcv(tmp_path, image_size=6, cache_dir=tmp_path / "cache")["BTCV"][0]
  np.testing.assert_array_equal(again.image, v.image)


def test_errors_are_one_line(tmp_path):
  assert "has no img/ and label/" in data_error(lambda: btcv.load_btcv(tmp_path))
  make_case(tmp_path, 1, label_shape=(12, 12, 5))
  assert "has shape (12, 12, 6) but label" in data_error(lambda: btcv.load_btcv(tmp_path))
  (tmp_path / "label" / "label0001.nii.gz").unlink()
  assert "has no label" in data_error(lambda: btcv.load_btcv(tmp_path))
