"""Tests of the embedded brain demo collection, its derived asset, styles and deformations."""

from __future__ import annotations

import numpy as np
import pytest

from medda_jax.data import demo_brain
from medda_jax.data import styles

SIZE = 32
SUBJECTS = 2


@pytest.fixture(scope="module")
def collection():
  return demo_brain.build_demo_brain(image_size=SIZE, subjects_per_anatomy=SUBJECTS, seed=0)


def _bank_arrays(c):
  """Every distinct bank of a collection, by a stable key."""
  out = {}
  for name, d in c.datasets.items():
    out[f"images/{name}"] = d.images
    out[f"labels/{name}"] = d.labels
    out[f"rows/{name}"] = d.rows
  return out


# --- the derived Colin27 + AAL asset ---------------------------------------------------------

def test_asset_shapes_and_dtypes():
  assert demo_brain.ASSET.stat().st_size < 2 * 1024 * 1024
  with np.load(demo_brain.ASSET) as f:
    a = {k: f[k] for k in f.files}
  assert set(a) == {"t1", "t1_brain", "aal", "affine", "aal_index", "aal_names"}
  shape = a["t1"].shape
  assert len(shape) == 3 and all(60 < n < 120 for n in shape)
  for k in ("t1", "t1_brain", "aal"):
    assert a[k].shape == shape and a[k].dtype == np.uint8, k
  assert a["t1"].max() == 255 and a["t1_brain"].max() == 255
  # The brain lies inside the head and the atlas inside (or at the edge of) the brain.
  brain = a["t1_brain"] > 0
  assert np.all(a["t1"][brain] > 0)
  assert 0.1 < brain.mean() < 0.6
  assert np.isin(a["aal"][a["aal"] > 0], np.arange(1, 117)).all()
  assert len(np.unique(a["aal"])) == 117  # every AAL label survives at 2 mm
  np.testing.assert_allclose(np.diag(a["affine"]), [2.0, 2.0, 2.0, 1.0])
  np.testing.assert_array_equal(a["aal_index"], np.arange(1, 117))
  assert a["aal_names"].shape == (116,) and a["aal_names"][76] == "Thalamus_L"


def test_structure_groups_are_disjoint_and_cover_aal():
  values = [v for vs in demo_brain.STRUCTURES.values() for v in vs]
  assert sorted(values) == list(range(1, 117))


# --- the collection --------------------------------------------------------------------------

def test_description_marks_demo_data(collection):
  assert ("anatomy from two real brain volumes (MNI152 2009 template, Colin27 with AAL); "
          "subjects and scanner styles are synthetic variations") in collection.description


def test_dataset_names_and_groups(collection):
  n_groups = len(demo_brain.STRUCTURES) + len(demo_brain.TISSUES)
  assert len(collection.datasets) == n_groups * len(demo_brain.DEMO_STYLES)
  for name, d in collection.datasets.items():
    assert name in {f"{d.group}_{s}" for s in demo_brain.DEMO_STYLES}
  w = collection.group_weights(collection.names())
  np.testing.assert_allclose(w * w.size, np.ones(w.size))  # every group has z = 3


def test_masks_binary_and_above_threshold(collection):
  threshold = demo_brain.min_foreground(SIZE)
  assert threshold == 4 and demo_brain.min_foreground(64) == 16
  n_volumes = 2 * SUBJECTS
  for name, d in collection.datasets.items():
    assert len(d) > 0, name
    assert d.images.dtype == np.float32 and d.images.shape[1:] == (SIZE, SIZE)
    assert d.labels.dtype == np.uint8 and d.labels.shape == d.images.shape
    images, masks = d.batch(np.arange(len(d)))
    assert images.shape == masks.shape == (len(d), SIZE, SIZE, 1)
    assert np.isfinite(images).all()
    assert set(np.unique(masks)) <= {0.0, 1.0}, name
    assert masks.sum(axis=(1, 2, 3)).min() >= threshold, name
    # Every slice that meets the threshold is kept, and none that does not.
    counts = np.isin(d.labels, d.label_values).sum(axis=(1, 2))
    np.testing.assert_array_equal(np.sort(d.rows), np.flatnonzero(counts >= threshold))
    order = np.lexsort((d.slice_index, d.volume))
    np.testing.assert_array_equal(order, np.arange(len(d)))
    assert d.volume_names == ("mni152_s0", "mni152_s1", "colin27_s0", "colin27_s1")
    assert d.volumes().max() < n_volumes


def test_images_are_z_normalised_per_volume(collection):
  d = collection["brain_t1w"]
  for v in d.volumes():
    imgs, masks = d.batch(d.slices_of_volume(v))
    inside = imgs[masks > 0]
    # Statistics were taken over the head before resizing: close to 0 / 1, not exact.
    assert abs(inside.mean()) < 0.5 and 0.5 < inside.std() < 1.5


def test_styles_share_labels_and_differ_in_images(collection):
  for group in list(demo_brain.STRUCTURES) + list(demo_brain.TISSUES):
    ds = [collection[f"{group}_{s}"] for s in demo_brain.DEMO_STYLES]
    for d in ds[1:]:
      assert d.labels is ds[0].labels
      np.testing.assert_array_equal(d.rows, ds[0].rows)
      assert d.images is not ds[0].images
      assert not np.allclose(d.images[d.rows], ds[0].images[ds[0].rows], atol=0.1)
  # Structures share one bank, tissues another.
  assert collection["thalamus_t1w"].labels is collection["frontal_t2w_like"].labels
  assert collection["brain_t1w"].labels is collection["white_matter_t2w_like"].labels
  assert collection["thalamus_t1w"].labels is not collection["brain_t1w"].labels


def test_targets_and_sources(collection):
  assert len(demo_brain.DEMO_TARGETS) >= 3
  sources = demo_brain.source_datasets(collection)
  for target in demo_brain.DEMO_TARGETS:
    for style in demo_brain.DEMO_STYLES:
      name = demo_brain.target_dataset(target, style)
      assert name in collection.datasets and name not in sources
      assert len(collection[name].volumes()) == 2 * SUBJECTS
  assert len(sources) == len(collection.datasets) - 3 * len(demo_brain.DEMO_TARGETS)
  assert "frontal_t1w" in sources and "brain_lowres_noisy" in sources
  with pytest.raises(KeyError):
    demo_brain.target_dataset("thalamus", "no_such_style")


def test_cache_round_trip_and_determinism(collection, tmp_path):
  built = demo_brain.build_demo_brain(SIZE, SUBJECTS, seed=0, cache_dir=tmp_path)
  files = list(tmp_path.glob("*.npz"))
  assert len(files) == 1
  loaded = demo_brain.build_demo_brain(SIZE, SUBJECTS, seed=0, cache_dir=tmp_path)
  a, b, ref = _bank_arrays(built), _bank_arrays(loaded), _bank_arrays(collection)
  for k in ref:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(a[k], ref[k], err_msg=k)  # same seed, same arrays
  assert loaded.description == collection.description


def test_other_seed_differs(collection):
  other = demo_brain.build_demo_brain(SIZE, SUBJECTS, seed=1)
  d0, d1 = collection["thalamus_t1w"], other["thalamus_t1w"]
  assert not np.array_equal(d0.images, d1.images)
  # The deformed subject differs; the real volume gives the same anatomy (only its
  # crop box, the union of all subjects' brains, may move a little).
  s1 = d0.volume_names.index("mni152_s1")
  assert not np.array_equal(d0.labels[d0.rows[d0.volume == s1]],
                            d1.labels[d1.rows[d1.volume == s1]])
  s0 = d0.volume_names.index("mni152_s0")
  n0, n1 = (np.isin(d.labels[d.rows[d.volume == s0]], d.label_values).sum() for d in (d0, d1))
  assert abs(n0 - n1) <= 0.1 * n0


# --- deformations ------------------------------------------------------------------------------

def _toy_volumes(seed=0, shape=(24, 28, 20)):
  rng = np.random.default_rng(seed)
  labels = rng.choice(np.array([0, 3, 7, 200], np.uint8), size=shape)
  image = np.asarray(rng.normal(size=shape), np.float32)
  return image, labels


def test_deformation_keeps_label_values():
  image, labels = _toy_volumes()
  out_img, out_lab = styles.random_subject([image, labels], np.random.default_rng(1),
                                           max_displacement_mm=6.0)
  assert out_lab.dtype == np.uint8 and out_lab.shape == labels.shape
  assert set(np.unique(out_lab)) <= {0, 3, 7, 200}
  assert not np.array_equal(out_lab, labels)
  assert out_img.dtype == np.float32 and not np.allclose(out_img, image)
  mask = labels > 0
  (out_mask,) = styles.random_subject([mask], np.random.default_rng(1))
  assert out_mask.dtype == bool


def test_deformation_identity():
  image, labels = _toy_volumes()
  out_img, out_lab = styles.random_subject([image, labels], np.random.default_rng(2),
                                           max_displacement_mm=0.0, max_rotation_deg=0.0,
                                           max_scale=0.0)
  np.testing.assert_array_equal(out_lab, labels)
  np.testing.assert_allclose(out_img, image, atol=1e-6)


def test_displacement_bound_and_determinism():
  shape = (20, 24, 16)
  coords = styles.random_warp(shape, np.random.default_rng(3), max_displacement_mm=4.0,
                              voxel_mm=2.0, max_rotation_deg=0.0, max_scale=0.0)
  disp = coords - np.indices(shape)
  norm = np.sqrt((disp ** 2).sum(0))
  assert 0.5 < norm.max() <= 2.0 + 1e-4  # 4 mm at 2 mm voxels
  again = styles.random_warp(shape, np.random.default_rng(3), max_displacement_mm=4.0,
                             voxel_mm=2.0, max_rotation_deg=0.0, max_scale=0.0)
  np.testing.assert_array_equal(coords, again)
  other = styles.random_warp(shape, np.random.default_rng(4))
  assert not np.allclose(coords, other)


# --- styles ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def colin():
  return demo_brain._anatomy("colin27")


def test_styles_change_intensities_keep_shape(colin):
  vol = colin["image"][:, :, 30:50]
  assert len(styles.STYLES) >= 3
  for name in styles.STYLES:
    out = styles.apply_style(vol, name, np.random.default_rng(0))
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.allclose(out / np.percentile(out, 99), vol / np.percentile(vol, 99), atol=0.02)
    same = styles.apply_style(vol, name, np.random.default_rng(0))
    np.testing.assert_array_equal(out, same)
    assert not np.array_equal(out, styles.apply_style(vol, name, np.random.default_rng(1)))
  with pytest.raises(KeyError):
    styles.apply_style(vol, "no_such_style", np.random.default_rng(0))


def test_t2_like_inverts_tissue_contrast(colin):
  vol, tissue = colin["image"], colin["tissue"]
  t1 = styles.apply_style(vol, "t1w", np.random.default_rng(0))
  t2 = styles.apply_style(vol, "t2w_like", np.random.default_rng(0))
  csf, gm, wm = (tissue == 1), (tissue == 2), (tissue == 3)
  assert np.median(t1[wm]) > np.median(t1[gm]) > np.median(t1[csf])
  assert np.median(t2[csf]) > np.median(t2[gm]) > np.median(t2[wm])


def test_lowres_style_blurs():
  rng = np.random.default_rng(0)
  vol = np.zeros((40, 40, 30), np.float32)
  vol[10:30, 10:30, 5:25] = 1.0
  vol[::2] *= 0.5  # fine stripes only a full-resolution scan keeps
  sharp = styles.Style()
  blurry = styles.Style(resolution=(2.0, 2.0, 3.0))
  a = styles.apply_style(vol, sharp, rng)
  b = styles.apply_style(vol, blurry, rng)
  assert np.abs(np.diff(b, axis=0)).mean() < 0.5 * np.abs(np.diff(a, axis=0)).mean()
