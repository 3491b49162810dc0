"""Tests of the embedded skull-stripping demo (one real head, synthetic subjects and sites)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import filters as sk_filters

from medda_jax.data import demo_skull
from medda_jax.data.volumes import DomainVolumes, Volume

SIZE = 32
SUBJECTS = 2


@pytest.fixture(scope="module")
def demo():
  return demo_skull.build_demo_skull(image_size=SIZE, subjects_per_domain=SUBJECTS, seed=0)


def _all(dv: DomainVolumes) -> list[Volume]:
  return [v for d in dv.names() for v in dv[d]]


def _assert_same(a: DomainVolumes, b: DomainVolumes):
  assert a.names() == b.names() and a.description == b.description
  for va, vb in zip(_all(a), _all(b), strict=True):
    assert (va.id, va.domain, va.spacing) == (vb.id, vb.domain, vb.spacing)
    np.testing.assert_array_equal(va.image, vb.image, err_msg=va.id)
    np.testing.assert_array_equal(va.mask, vb.mask, err_msg=va.id)


def _head(image: np.ndarray) -> np.ndarray:
  """Head region of a clean-site volume: smoothed image above background, holes filled."""
  smooth = ndimage.gaussian_filter(image, (0, 1, 1))
  return np.stack([ndimage.binary_fill_holes(s > 0.15) for s in smooth])


# --- the real head and its mask -------------------------------------------------------------

def test_real_head_mask_is_one_clean_blob():
  image, mask = demo_skull.real_head()
  assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() == 1.0
  assert mask.dtype == np.uint8 and mask.shape == image.shape
  _, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
  assert n == 1
  np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask > 0)
  # Brain is a minority of the head and lies inside it.
  head = demo_skull.head_mask(image)
  assert np.all(head[mask > 0])
  assert 0.3 < mask.sum() / head.sum() < 0.6


# --- structure of the demo ------------------------------------------------------------------

def test_domains_ids_and_description(demo):
  assert demo.names() == list(demo_skull.DEMO_SKULL_DOMAINS)
  assert len(demo_skull.DEMO_SKULL_DOMAINS) == 6
  for name in demo_skull.DEMO_SKULL_DOMAINS:
    assert demo_skull.SITES[name].description
    vols = demo[name]
    assert [v.id for v in vols] == [f"{name}_s{i:02d}" for i in range(SUBJECTS)]
    assert all(v.domain == name for v in vols)
  assert demo.description == (
    "Demo data: one real head MRI (Colin27 with its real brain mask from Debian's "
    "mricron-data); subjects (deformations) and scanner sites are synthetic")


def test_shapes_dtypes_ranges_and_spacing(demo):
  for v in _all(demo):
    assert v.image.dtype == np.float32 and v.mask.dtype == np.uint8
    assert v.image.shape[1:] == (SIZE, SIZE) and 60 <= v.num_slices <= 100, v.id
    assert np.isfinite(v.image).all()
    assert v.image.min() == 0.0 and v.image.max() == 1.0  # 1st-99th percentile, min-max
    assert set(np.unique(v.mask)) == {0, 1}
    # 2 mm slices; in-plane the square head box (about 200-240 mm) over SIZE pixels.
    assert v.spacing[0] == 2.0 and v.spacing[1] == v.spacing[2]
    assert 190.0 < v.spacing[1] * SIZE < 250.0, v.spacing
    assert (v.spacing[1] * SIZE / 2.0).is_integer()  # a whole number of 2 mm voxels
    # The brain covers a plausible fraction: about 20 % of the box at mid-volume.
    mid = v.mask[v.num_slices // 3: 2 * v.num_slices // 3]
    assert 0.15 < mid.mean() < 0.45, v.id
    # Head slices without brain (neck) and with brain are both there.
    per_slice = v.mask.sum(axis=(1, 2))
    assert per_slice[0] < per_slice[v.num_slices // 2]


def test_brain_lies_inside_head_with_skull_and_scalp(demo):
  for v in demo["site_a_clean"]:
    head = _head(v.image)
    brain = v.mask > 0
    assert (head & brain).sum() >= 0.99 * brain.sum()
    assert brain.sum() < 0.6 * head.sum()  # strictly less: the skull and scalp are there
    outside = v.image[head & ~brain]
    assert outside.mean() > 0.1 and np.percentile(outside, 95) > 0.5  # bright scalp fat
  for v in _all(demo):
    ring = np.stack([ndimage.binary_dilation(s, iterations=2) for s in v.mask > 0]) & (v.mask == 0)
    assert v.image[ring].mean() > 0.1, v.id


def test_noise_covers_the_background(demo):
  for v in _all(demo):
    corners = v.image[:, :3, :3]
    # Rician noise everywhere: the background is not one flat value.
    assert corners.std() > 0.0, v.id


def test_determinism_and_other_seed(demo):
  again = demo_skull.build_demo_skull(image_size=SIZE, subjects_per_domain=SUBJECTS, seed=0)
  _assert_same(demo, again)
  other = demo_skull.build_demo_skull(image_size=SIZE, subjects_per_domain=1, seed=1,
                                      domains=["site_a_clean"])
  v0, v1 = demo["site_a_clean"][0], other["site_a_clean"][0]
  assert v0.image.shape != v1.image.shape or not np.array_equal(v0.image, v1.image)
  assert v0.mask.shape != v1.mask.shape or not np.array_equal(v0.mask, v1.mask)


def test_domain_subset_gives_the_same_volumes(demo):
  sub = demo_skull.build_demo_skull(image_size=SIZE, subjects_per_domain=1, seed=0,
                                    domains=("site_f_inverted", "site_c_gamma_bright"))
  assert sub.names() == ["site_f_inverted", "site_c_gamma_bright"]
  for name in sub.names():
    np.testing.assert_array_equal(sub[name][0].image, demo[name][0].image)
    np.testing.assert_array_equal(sub[name][0].mask, demo[name][0].mask)


def test_subjects_differ_within_and_across_domains(demo):
  vols = _all(demo)
  brain_sizes = [int(v.mask.sum()) for v in vols]
  assert len(set(brain_sizes)) == len(vols)  # every volume is its own deformation
  for i, a in enumerate(vols):
    for b in vols[i + 1:]:
      assert a.mask.shape != b.mask.shape or not np.array_equal(a.mask, b.mask), (a.id, b.id)


def test_cache_round_trip(demo, tmp_path):
  built = demo_skull.build_demo_skull(SIZE, SUBJECTS, seed=0, cache_dir=tmp_path)
  files = list(tmp_path.glob("demo_skull_*.npz"))
  assert len(files) == 1
  loaded = demo_skull.build_demo_skull(SIZE, SUBJECTS, seed=0, cache_dir=tmp_path)
  _assert_same(built, loaded)
  _assert_same(demo, loaded)
  assert loaded["site_b_gamma_dark"][0].image.dtype == np.float32
  # Other arguments, other file.
  demo_skull.build_demo_skull(SIZE, 1, seed=0, cache_dir=tmp_path, domains=["site_a_clean"],
                              slice_step=3)
  assert len(list(tmp_path.glob("demo_skull_*.npz"))) == 2


def test_slice_step(demo):
  step = demo_skull.build_demo_skull(SIZE, SUBJECTS, seed=0, slice_step=3,
                                     domains=["site_d_blurry"])
  for full, sub in zip(demo["site_d_blurry"], step["site_d_blurry"], strict=True):
    np.testing.assert_array_equal(sub.image, full.image[::3])
    np.testing.assert_array_equal(sub.mask, full.mask[::3])
    assert sub.spacing == (6.0, full.spacing[1], full.spacing[2])


# --- the sites ------------------------------------------------------------------------------

def _brain_mean(dv: DomainVolumes, name: str) -> float:
  return float(np.mean([v.image[v.mask > 0].mean() for v in dv[name]]))


def test_sites_differ_in_intensity_statistics(demo):
  means = {name: _brain_mean(demo, name) for name in demo.names()}
  assert means["site_c_gamma_bright"] > means["site_b_gamma_dark"] + 0.08
  # Noise: spread of the background in the image corners (outside the head).
  def noise(name):
    return np.mean([np.concatenate([v.image[:, :3, :3], v.image[:, :3, -3:]]).std()
                    for v in demo[name]])
  assert noise("site_e_noisy") > 3 * noise("site_a_clean")
  assert noise("site_b_gamma_dark") > 2 * noise("site_a_clean")
  # Blur: less fine detail (high-pass residual) inside the brain.
  def detail(name):
    return np.mean([(v.image - ndimage.gaussian_filter(v.image, (0, 1, 1)))[v.mask > 0].std()
                    for v in demo[name]])
  assert detail("site_d_blurry") < 0.8 * detail("site_a_clean")


def test_inverted_site_reverses_tissue_order():
  image, mask = demo_skull.real_head()
  brain = mask > 0
  lo, hi = sk_filters.threshold_multiotsu(image[brain], classes=3)
  csf, wm = brain & (image < lo), brain & (image > hi)
  head_only = demo_skull.head_mask(image) & ~brain
  fat = head_only & (image > 0.6)
  rendered = {name: demo_skull.render_site(image, name, np.random.default_rng(0))
              for name in ("site_a_clean", "site_f_inverted")}
  a, f = rendered["site_a_clean"], rendered["site_f_inverted"]
  assert a[wm].mean() > a[csf].mean() + 0.1 and a[fat].mean() > a[wm].mean()
  assert f[csf].mean() > f[wm].mean() + 0.1 and f[fat].mean() < f[wm].mean()
  # Background stays dark (Rician noise floor only).
  background = ~ndimage.binary_dilation(demo_skull.head_mask(image), iterations=3)
  assert f[background].mean() < 0.1 and a[background].mean() < 0.1


# --- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
  (dict(domains=["site_z"]), "unknown domain"),
  (dict(domains=[]), "at least one"),
  (dict(domains=["site_a_clean", "site_a_clean"]), "repeat"),
  (dict(image_size=8), "image_size"),
  (dict(subjects_per_domain=0), "subjects_per_domain"),
  (dict(slice_step=0), "slice_step"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    demo_skull.build_demo_skull(**kwargs)
  with pytest.raises(ValueError, match="unknown site"):
    demo_skull.render_site(np.zeros((4, 4, 4), np.float32), "site_z", np.random.default_rng(0))
