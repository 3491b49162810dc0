"""CC359 loader on tiny synthetic NIfTI files in both published layouts."""

from __future__ import annotations

import csv
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medda_jax.data import cc359
from medda_jax.errors import DataError

SHAPE = (12, 10, 8)
ZOOMS = (1.0, 1.5, 2.0)  # anisotropic, along the NIfTI array axes
# Stems written out of id order: the loader must sort them. Two domains stay empty.
STEMS = ["CC0002_siemens_15_40_F", "CC0001_siemens_15_55_M", "CC0070_siemens_3_61_M",
         "CC0130_ge_15_38_F", "CC0300_philips_3_52_M"]
FOLDS = {"siemens_15": 0, "siemens_3": 1, "ge_15": 2, "ge_3": 3, "philips_15": 4, "philips_3": 5}


def _arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Intensity grows with the last array index, so the slice axis is recognisable."""
  rng = np.random.default_rng(seed)
  z = np.arange(SHAPE[2], dtype=np.float32)
  image = 100.0 + 25.0 * z[None, None, :] + rng.normal(0, 3, SHAPE).astype(np.float32)
  image[0, 0, 0] = 5000.0  # one outlier that the percentile clipping must remove
  mask = np.zeros(SHAPE, np.float32)
  mask[3:9, 2:8, 2:6] = 1.0
  return image.astype(np.float32), mask


def _save(path, array, zooms) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), path)


def _write_original(root, cases, mask_dir="Silver-standard") -> str:
  for stem, (image, mask) in cases.items():
    _save(os.path.join(root, "Original", f"{stem}.nii.gz"), image, ZOOMS)
    _save(os.path.join(root, mask_dir, f"{stem}_ss.nii.gz"), mask, ZOOMS)
  return str(root)


def _write_meta(root, cases) -> str:
  rows = []
  for stem, (image, mask) in cases.items():
    case_id, domain = stem.split("_")[0], "_".join(stem.split("_")[1:3])
    # Unit header spacing: the loader must take the spacing from meta.csv.
    _save(os.path.join(root, "images", f"{stem}.nii.gz"), image, (1.0, 1.0, 1.0))
    _save(os.path.join(root, "masks", f"{stem}_ss.nii.gz"), mask, (1.0, 1.0, 1.0))
    rows.append({"id": case_id, "MRI": f"images/{stem}.nii.gz",
                 "brain_mask": f"masks/{stem}_ss.nii.gz", "fold": FOLDS[domain],
                 "tomograph_model": domain.split("_")[0], "tesla_value": domain.split("_")[1],
                 "x": ZOOMS[0], "y": ZOOMS[1], "z": ZOOMS[2]})
  with open(os.path.join(root, "meta.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return str(root)


@pytest.fixture
def cases():
  return {stem: _arrays(i) for i, stem in enumerate(STEMS)}


@pytest.fixture
def original(tmp_path, cases):
  return _write_original(tmp_path / "orig", cases)


@pytest.fixture
def meta(tmp_path, cases):
  return _write_meta(tmp_path / "meta", cases)


def _scaled(image: np.ndarray) -> np.ndarray:
  lo, hi = np.percentile(image, [1, 99])
  return (np.clip(image, lo, hi) - lo) / (hi - lo)


def test_parse_names():
  assert cc359.parse_cc359_name("CC0001_philips_15_55_M") == ("CC0001", "philips_15")
  assert cc359.parse_cc359_name("CC0123_ge_3_41_F_ss.nii.gz") == ("CC0123", "ge_3")
  assert cc359.parse_cc359_name("CC0359_Siemens_3_60_M") == ("CC0359", "siemens_3")
  assert cc359.CC359_DOMAINS == ("siemens_15", "siemens_3", "ge_15", "ge_3", "philips_15",
                                 "philips_3")
  for bad in ("CC0001_toshiba_15_55_M", "CC0001_ge_7_55_M", "case01"):
    with pytest.raises(DataError, match="cannot parse CC359 file name"):
      cc359.parse_cc359_name(bad)


def test_native_grid_orientation_and_scaling(original, cases):
  data = cc359.load_cc359(original, spacing=None)
  assert data.names() == ["siemens_15", "siemens_3", "ge_15", "philips_3"]
  assert [v.id for v in data["siemens_15"]] == ["CC0001", "CC0002"]
  v = data["siemens_15"][0]
  image, mask = cases["CC0001_siemens_15_55_M"]
  assert v.domain == "siemens_15"
  # Slices along the last NIfTI axis; the spacing follows the axes.
  assert v.image.shape == v.mask.shape == (8, 12, 10)
  assert v.spacing == (2.0, 1.0, 1.5)
  np.testing.assert_allclose(v.image, _scaled(image).transpose(2, 0, 1), atol=1e-6)
  for k in range(8):
    np.testing.assert_allclose(v.image[k], _scaled(image)[:, :, k], atol=1e-6)
  assert np.all(np.diff(v.image.mean(axis=(1, 2))) > 0)
  np.testing.assert_array_equal(v.mask, mask.transpose(2, 0, 1))
  assert v.image.dtype == np.float32 and v.mask.dtype == np.uint8


def test_intensity_range(original):
  for vols in cc359.load_cc359(original, spacing=None).domains.values():
    for v in vols:
      assert v.image.min() == 0.0 and v.image.max() == pytest.approx(1.0, abs=1e-6)
      # The outlier was clipped to the 99th percentile, so ~1% of voxels sit at 1.
      assert 0.005 < np.mean(v.image > 1 - 1e-6) < 0.02


def test_resampling_to_target_spacing(original, cases):
  v = cc359.load_cc359(original, domains=["siemens_15"])["siemens_15"][0]
  image, mask = cases["CC0001_siemens_15_55_M"]
  # 1.5 mm -> 1 mm: 10 -> 15 rows; 2 mm -> 1 mm: 8 -> 16 slices.
  assert v.image.shape == (16, 12, 15)
  assert v.spacing == (1.0, 1.0, 1.0)
  expected = _scaled(ndimage.zoom(image, (1.0, 1.5, 2.0), order=3)).transpose(2, 0, 1)
  np.testing.assert_allclose(v.image, expected, atol=1e-5)
  expected_mask = ndimage.zoom(mask, (1.0, 1.5, 2.0), order=3) >= 0.5
  np.testing.assert_array_equal(v.mask, expected_mask.transpose(2, 0, 1))
  assert set(np.unique(v.mask)) == {0, 1}
  # The box keeps its physical volume: 3x the voxels at 1/3 of the voxel size.
  assert v.mask.sum() == pytest.approx(3 * mask.sum(), rel=0.1)

  other = cc359.load_cc359(original, spacing=(1.0, 1.5, 1.0), domains=["siemens_15"])
  v = other["siemens_15"][0]
  assert v.image.shape == (16, 12, 10) and v.spacing == (1.0, 1.0, 1.5)


def test_both_layouts_give_the_same_volumes(original, meta):
  a = cc359.load_cc359(original, spacing=(1.0, 1.0, 1.0))
  b = cc359.load_cc359(meta, spacing=(1.0, 1.0, 1.0))
  assert a.names() == b.names()
  for d in a.names():
    assert [v.id for v in a[d]] == [v.id for v in b[d]]
    for va, vb in zip(a[d], b[d]):
      assert va.domain == vb.domain == d and va.spacing == vb.spacing
      np.testing.assert_array_equal(va.image, vb.image)
      np.testing.assert_array_equal(va.mask, vb.mask)
  assert "meta.csv" in b.description and "Original" in a.description


def test_alternative_mask_folder(tmp_path, cases):
  root = _write_original(tmp_path, {STEMS[3]: cases[STEMS[3]]},
                         os.path.join("Silver-standard-machine-learning", "Silver-standard"))
  assert [v.id for v in cc359.load_cc359(root)["ge_15"]] == ["CC0130"]


def test_domain_selection_order_and_limit(meta):
  data = cc359.load_cc359(meta, spacing=None, domains=["philips_3", "siemens_15"],
                          max_volumes_per_domain=1)
  assert data.names() == ["siemens_15", "philips_3"]
  assert [v.id for v in data["siemens_15"]] == ["CC0001"]
  assert [v.id for v in data["philips_3"]] == ["CC0300"]


def test_cache_round_trip(original, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  first = cc359.load_cc359(original, cache_dir=cache)
  assert len(os.listdir(cache)) == 4

  def no_reading(*args, **kwargs):
    raise AssertionError("NIfTI read although the cache holds the domain")

  monkeypatch.setattr(cc359, "read_nifti", no_reading)
  second = cc359.load_cc359(original, cache_dir=cache)
  for d in first.names():
    for va, vb in zip(first[d], second[d]):
      assert (va.id, va.domain, va.spacing) == (vb.id, vb.domain, vb.spacing)
      np.testing.assert_array_equal(va.image, vb.image)
      np.testing.assert_array_equal(va.mask, vb.mask)
      assert vb.image.dtype == np.float32 and vb.mask.dtype == np.uint8
  monkeypatch.undo()
  # Other options get their own cache file.
  cc359.load_cc359(original, spacing=None, domains=["ge_15"], cache_dir=cache)
  assert len(os.listdir(cache)) == 5


# --- errors -------------------------------------------------------------------------------


def test_error_root_missing(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(DataError, match="does not exist") as e:
    cc359.load_cc359(missing)
  assert missing in str(e.value)


def test_error_no_layout_describes_both(tmp_path):
  with pytest.raises(DataError, match="neither meta.csv nor an Original/ folder") as e:
    cc359.load_cc359(tmp_path)
  message = str(e.value)
  assert "brain_mask" in message and "images/CC0001" in message
  assert "Silver-standard/CC0001" in message and "Original/CC0001" in message


def test_error_meta_listed_file_missing(meta):
  path = os.path.join(meta, "masks", "CC0130_ge_15_38_F_ss.nii.gz")
  os.remove(path)
  with pytest.raises(DataError, match="mask file .*CC0130_ge_15_38_F_ss.nii.gz.* is missing"):
    cc359.load_cc359(meta)


def test_error_meta_missing_column(meta):
  path = os.path.join(meta, "meta.csv")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text.replace("brain_mask", "mask", 1))
  with pytest.raises(DataError, match=r"lacks column\(s\) \['brain_mask'\]"):
    cc359.load_cc359(meta)


def test_error_meta_bad_fold(meta):
  path = os.path.join(meta, "meta.csv")
  with open(path) as f:
    rows = list(csv.DictReader(f))
  rows[1]["fold"] = "7"
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with pytest.raises(DataError, match="line 3: fold 7 is not a domain id"):
    cc359.load_cc359(meta)


def test_error_original_mask_missing(original):
  path = os.path.join(original, "Silver-standard", "CC0070_siemens_3_61_M_ss.nii.gz")
  os.remove(path)
  with pytest.raises(DataError, match="mask file .*CC0070_siemens_3_61_M_ss.nii.gz.* is missing"):
    cc359.load_cc359(original)


def test_error_original_without_mask_folder(original):
  shutil.rmtree(os.path.join(original, "Silver-standard"))
  with pytest.raises(DataError, match="no silver-standard mask folder"):
    cc359.load_cc359(original)


def test_error_original_unparseable_name(original):
  _save(os.path.join(original, "Original", "scan01.nii.gz"), np.zeros(SHAPE, np.float32), ZOOMS)
  with pytest.raises(DataError, match="cannot parse CC359 file name 'scan01'"):
    cc359.load_cc359(original)


def test_error_shape_mismatch(tmp_path):
  image, _ = _arrays(0)
  stem = "CC0001_siemens_15_55_M"
  _save(os.path.join(tmp_path, "Original", f"{stem}.nii.gz"), image, ZOOMS)
  _save(os.path.join(tmp_path, "Silver-standard", f"{stem}_ss.nii.gz"),
        np.zeros((12, 10, 7), np.float32), ZOOMS)
  with pytest.raises(DataError, match=r"CC0001.*\(12, 10, 8\).*\(12, 10, 7\)"):
    cc359.load_cc359(tmp_path)


def test_error_requested_domain_empty(original):
  with pytest.raises(DataError, match="domain ge_3 has no volumes"):
    cc359.load_cc359(original, domains=["siemens_15", "ge_3"])


def test_error_unknown_domain(original):
  with pytest.raises(DataError, match=r"unknown CC359 domain\(s\) \['toshiba_15'\]"):
    cc359.load_cc359(original, domains=["toshiba_15"])


def test_error_unreadable_nifti(original):
  path = os.path.join(original, "Original", "CC0130_ge_15_38_F.nii.gz")
  with open(path, "wb") as f:
    f.write(b"not a NIfTI file")
  with pytest.raises(DataError, match="cannot read NIfTI file .*CC0130_ge_15_38_F.nii.gz"):
    cc359.load_cc359(original, domains=["ge_15"])
