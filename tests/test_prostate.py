"""Six-site prostate loader on tiny synthetic NIfTI files in the SAML layout."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from skimage.transform import resize

from medda_jax.data import prostate
from medda_jax.data.volumes import Volume
from medda_jax.errors import DataError

SHAPE = (12, 10, 8)
ZOOMS = (0.5, 0.6, 3.0)


def _arrays(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
  """Intensity grows with the last array index; labels 1 and 2 in a box on slices 2..4."""
  rng = np.random.default_rng(seed)
  z = np.arange(shape[2], dtype=np.float32)
  image = 300.0 + 40.0 * z[None, None, :] + rng.normal(0, 5, shape)
  image[:, :2, :] = 0.0  # air: statistics over all voxels differ from the non-zero ones
  label = np.zeros(shape, np.uint8)
  label[3:9, 2:8, 2:5] = 1
  label[4:7, 3:6, 3:5] = 2
  return image.astype(np.float32), label


def _save(path, array, zooms=ZOOMS) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), path)


def _write_case(site_dir, stem, image, label, suffix="_segmentation") -> None:
  _save(os.path.join(site_dir, f"{stem}.nii.gz"), image)
  _save(os.path.join(site_dir, f"{stem}{suffix}.nii.gz"), label)


@pytest.fixture
def data(tmp_path):
  """Site A by release name, site B by code name (with `_Segmentation`), site F square."""
  root = tmp_path / "msm"
  cases = {
      ("RUNMC", "Case01"): _arrays(1), ("RUNMC", "Case00"): _arrays(0),
      ("BMC", "Case00"): _arrays(2), ("HK", "Case00"): _arrays(3, (10, 10, 6)),
  }
  _write_case(root / "RUNMC", "Case01", *cases["RUNMC", "Case01"])
  _write_case(root / "RUNMC", "Case00", *cases["RUNMC", "Case00"])
  _write_case(root / "ISBI_1.5", "Case00", *cases["BMC", "Case00"], suffix="_Segmentation")
  _write_case(root / "hk", "Case00", *cases["HK", "Case00"])
  (root / "notes").mkdir()
  return str(root), cases


def _zscore(image: np.ndarray) -> np.ndarray:
  x = image.astype(np.float64)
  return (x - x.mean()) / x.std()


def test_site_table_and_aliases():
  assert [s.letter for s in prostate.PROSTATE_SITES] == list("ABCDEF")
  assert [s.name for s in prostate.PROSTATE_SITES] == ["RUNMC", "BMC", "HCRUDB", "UCL", "BIDMC",
                                                       "HK"]
  assert [s.code for s in prostate.PROSTATE_SITES] == ["ISBI", "ISBI_1.5", "I2CVB", "UCL",
                                                       "BIDMC", "HK"]
  assert prostate.PROSTATE_SITES[2].aliases == ("HCRUDB", "I2CVB")
  assert prostate.PROSTATE_SITES[3].aliases == ("UCL",)
  for alias, name in [("isbi", "RUNMC"), ("ISBI_1.5", "BMC"), ("i2cvb", "HCRUDB"), ("c", "HCRUDB"),
                      ("E", "BIDMC"), ("hk", "HK")]:
    assert prostate.site_by_alias(alias).name == name
  with pytest.raises(DataError, match="unknown prostate site 'NCI'"):
    prostate.site_by_alias("NCI")


def test_sites_shapes_spacing_and_orientation(data):
  root, cases = data
  vols = prostate.load_prostate(root, image_size=16)
  assert vols.names() == ["RUNMC", "BMC", "HK"]
  assert [v.id for v in vols["RUNMC"]] == ["Case00", "Case01"]
  v = vols["RUNMC"][0]
  assert v.domain == "RUNMC"
  assert v.image.shape == v.mask.shape == (8, 16, 16)
  # Slice spacing first; in-plane spacing scaled by 12/16 and 10/16.
  np.testing.assert_allclose(v.spacing, (3.0, 0.5 * 12 / 16, 0.6 * 10 / 16))
  assert np.all(np.diff(v.image.mean(axis=(1, 2))) > 0)
  image, label = cases["RUNMC", "Case00"]
  expected = resize(_zscore(image), (16, 16, 8), order=1, preserve_range=True,
                    anti_aliasing=True)
  np.testing.assert_allclose(v.image, expected.transpose(2, 0, 1), atol=1e-4)
  expected_mask = resize((label > 0).astype(np.uint8), (16, 16, 8), order=0,
                         preserve_range=True, anti_aliasing=False)
  np.testing.assert_array_equal(v.mask, expected_mask.transpose(2, 0, 1))
  assert v.image.dtype == np.float32 and v.mask.dtype == np.uint8
  # Site B came from a code-named folder with `_Segmentation` files.
  assert [v.id for v in vols["BMC"]] == ["Case00"]


def test_native_size_keeps_zscore_and_binary_mask(data):
  root, cases = data
  vols = prostate.load_prostate(root, image_size=10, sites=["F"])
  assert vols.names() == ["HK"]
  v = vols["HK"][0]
  image, label = cases["HK", "Case00"]
  assert v.image.shape == (6, 10, 10)
  np.testing.assert_allclose(v.spacing, (3.0, 0.5, 0.6))
  # z-score over all voxels: mean 0 and std 1 over the whole volume.
  np.testing.assert_allclose(v.image, _zscore(image).transpose(2, 0, 1), atol=1e-5)
  assert abs(v.image.mean()) < 1e-5 and v.image.std() == pytest.approx(1.0, abs=1e-5)
  nonzero = image[image != 0]
  assert abs(v.image.max() - (image.max() - nonzero.mean()) / nonzero.std()) > 0.5
  # Labels 1 and 2 both become prostate.
  assert set(np.unique(label)) == {0, 1, 2}
  np.testing.assert_array_equal(v.mask, (label > 0).transpose(2, 0, 1))
  for k in range(6):
    np.testing.assert_array_equal(v.mask[k], label[:, :, k] > 0)


def test_sites_by_any_alias(data):
  root, _ = data
  vols = prostate.load_prostate(root, image_size=8, sites=["hk", "ISBI", "b"])
  assert vols.names() == ["RUNMC", "BMC", "HK"]


def test_context_channels_clamp_at_the_ends():
  image = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
  assert prostate.context_channels(image, 2).shape == (2, 3, 3)
  for index, expected in [(0, [0, 0, 1]), (2, [1, 2, 3]), (4, [3, 4, 4])]:
    np.testing.assert_array_equal(prostate.context_channels(image, index)[0, 0], expected)
  np.testing.assert_array_equal(prostate.context_channels(image, 0, k=5)[1, 2], [0, 0, 0, 1, 2])
  np.testing.assert_array_equal(prostate.context_channels(image, 3, k=1)[0, 0], [3])
  with pytest.raises(ValueError, match="odd"):
    prostate.context_channels(image, 2, k=2)
  with pytest.raises(IndexError):
    prostate.context_channels(image, 5)


def _volume_with_slices(present, num=20) -> Volume:
  mask = np.zeros((num, 4, 4), np.uint8)
  mask[present, 1, 1] = 1
  return Volume("Case00", "RUNMC", np.zeros((num, 4, 4), np.float32), mask, (3.0, 0.5, 0.5))


def test_training_slices_rule():
  # Foreground on slices 5 and 9 only: the whole range 5..9 is kept.
  volume = _volume_with_slices([5, 9])
  draws = np.random.default_rng(3).random(20)
  expected = [i for i in range(20) if 5 <= i <= 9 or draws[i] < 0.1]
  got = prostate.prostate_training_slices(volume, np.random.default_rng(3))
  assert got.tolist() == expected
  assert len(expected) > 5  # the fixture's seed draws some outside slices
  again = prostate.prostate_training_slices(volume, np.random.default_rng(3))
  np.testing.assert_array_equal(got, again)
  none = prostate.prostate_training_slices(volume, np.random.default_rng(3), 0.0)
  assert none.tolist() == [5, 6, 7, 8, 9]
  every = prostate.prostate_training_slices(volume, np.random.default_rng(3), 1.0)
  assert every.tolist() == list(range(20))
  empty = prostate.prostate_training_slices(_volume_with_slices([]), np.random.default_rng(0),
                                            0.0)
  assert empty.size == 0


def test_cache_round_trip(data, tmp_path, monkeypatch):
  root, _ = data
  cache = tmp_path / "cache"
  first = prostate.load_prostate(root, image_size=16, cache_dir=cache)
  assert len(os.listdir(cache)) == 3

  def no_reading(*args, **kwargs):
    raise AssertionError("NIfTI read although the cache holds the site")

  monkeypatch.setattr(prostate, "read_nifti", no_reading)
  second = prostate.load_prostate(root, image_size=16, cache_dir=cache)
  for site in first.names():
    for a, b in zip(first[site], second[site]):
      assert (a.id, a.domain, a.spacing) == (b.id, b.domain, b.spacing)
      np.testing.assert_array_equal(a.image, b.image)
      np.testing.assert_array_equal(a.mask, b.mask)
  monkeypatch.undo()
  prostate.load_prostate(root, image_size=8, sites=["A"], cache_dir=cache)
  assert len(os.listdir(cache)) == 4


# --- errors -------------------------------------------------------------------------------


def test_error_root_missing(tmp_path):
  with pytest.raises(DataError, match="prostate root folder .* does not exist"):
    prostate.load_prostate(tmp_path / "nowhere")


def test_error_no_site_folder(tmp_path):
  (tmp_path / "scans").mkdir()
  with pytest.raises(DataError, match=r"no prostate site folder found .*\['scans'\]") as e:
    prostate.load_prostate(tmp_path)
  assert "HCRUDB or I2CVB" in str(e.value)


def test_error_requested_site_missing_lists_found_and_expected(data):
  root, _ = data
  with pytest.raises(DataError) as e:
    prostate.load_prostate(root, sites=["A", "C", "D"])
  message = str(e.value)
  assert "missing site folder(s)" in message
  assert "C (HCRUDB or I2CVB), D (UCL)" in message
  assert "found: ['ISBI_1.5', 'RUNMC', 'hk']" in message


def test_error_two_folders_for_one_site(data):
  root, _ = data
  os.makedirs(os.path.join(root, "ISBI"))
  with pytest.raises(DataError, match="site A .* has two folders"):
    prostate.load_prostate(root)


def test_error_image_without_segmentation(data):
  root, _ = data
  os.remove(os.path.join(root, "RUNMC", "Case01_segmentation.nii.gz"))
  with pytest.raises(DataError, match=r"image .*Case01.nii.gz has no segmentation"):
    prostate.load_prostate(root)


def test_error_segmentation_without_image(data):
  root, _ = data
  os.remove(os.path.join(root, "RUNMC", "Case01.nii.gz"))
  with pytest.raises(DataError, match=r"segmentation .*Case01_segmentation.nii.gz has no image"):
    prostate.load_prostate(root)


def test_error_empty_site_folder(tmp_path):
  (tmp_path / "UCL").mkdir()
  with pytest.raises(DataError, match="holds no Case"):
    prostate.load_prostate(tmp_path)


def test_error_unreadable_file(data):
  root, _ = data
  path = os.path.join(root, "hk", "Case00.nii.gz")
  with open(path, "wb") as f:
    f.write(b"not a NIfTI file")
  with pytest.raises(DataError, match="cannot read NIfTI file .*hk.*Case00.nii.gz"):
    prostate.load_prostate(root)


def test_error_shape_mismatch(tmp_path):
  image, label = _arrays(0)
  _write_case(tmp_path / "UCL", "Case03", image, label[:, :, :7])
  with pytest.raises(DataError, match=r"Case03 of UCL.*\(12, 10, 8\).*\(12, 10, 7\)"):
    prostate.load_prostate(tmp_path)


def test_error_unexpected_label_values(tmp_path):
  image, label = _arrays(0)
  label[0, 0, 0] = 4
  _write_case(tmp_path / "BIDMC", "Case00", image, label)
  with pytest.raises(DataError, match=r"values \[0.0, 1.0, 2.0, 4.0\]"):
    prostate.load_prostate(tmp_path)
