"""The 3-D demo sub-volumes: crops of the real volumes equal plain crops of the volume and
of its AAL hippocampus, labels follow the masks, crops are functions of (seed, index), and
only the named subjects are used."""

from __future__ import annotations

import numpy as np

from medda_jax.data import demo_brain
from medda_jax.data import demo_subvolumes as dsv


def _plain_crop(volume, corner, size):
  out = np.zeros((size,) * 3, volume.dtype)
  for i in range(size):
    for j in range(size):
      for k in range(size):
        x, y, z = corner[0] + i, corner[1] + j, corner[2] + k
        if 0 <= x < volume.shape[0] and 0 <= y < volume.shape[1] and 0 <= z < volume.shape[2]:
          out[i, j, k] = volume[x, y, z]
  return out


def test_real_subject_crops_are_plain_crops_of_the_volume_and_its_atlas():
  colin = demo_brain._anatomy("colin27")
  real = dsv.ANATOMIES.index("colin27") * 4  # subject 0 of colin27: no warp
  crops = dsv.hippocampus_task(4, 12, seed=3, subject_ids=[real])
  structures = colin["structures"] == demo_brain.STRUCTURE_VALUE["hippocampus"]
  brain = colin["tissue"] > 0
  scale = np.percentile(colin["image"][brain], 99.5)
  for image, mask, corner in zip(crops.images, crops.masks, crops.corners):
    np.testing.assert_array_equal(mask, _plain_crop(structures, corner, 12).astype(np.uint8))
    want = np.clip(_plain_crop(colin["image"], corner, 12) / scale, 0, 1)
    np.testing.assert_allclose(image, want, rtol=1e-6)


def test_labels_follow_the_masks_and_alternate_near_and_away():
  crops = dsv.hippocampus_task(10, 16, seed=0, subject_ids=[1, 5], min_voxels=20)
  held = crops.masks.reshape(10, -1).sum(1)
  np.testing.assert_array_equal(crops.labels, (held >= 20).astype(np.int32))
  assert crops.labels[0::2].sum() >= 4 and crops.labels[1::2].sum() == 0
  assert set(crops.subject_ids) <= {1, 5}
  assert crops.images.dtype == np.float32 and 0.0 <= crops.images.min() <= crops.images.max() <= 1


def test_crops_are_functions_of_seed_and_index():
  a = dsv.hippocampus_task(5, 8, seed=2, subject_ids=[0, 2, 6])
  b = dsv.hippocampus_task(8, 8, seed=2, subject_ids=[0, 2, 6])
  np.testing.assert_array_equal(a.images, b.images[:5])
  np.testing.assert_array_equal(a.corners, b.corners[:5])
  c = dsv.hippocampus_task(5, 8, seed=3, subject_ids=[0, 2, 6])
  assert not np.array_equal(a.corners, c.corners)
  corpus = dsv.corpus(3, 8, seed=0, subject_ids=[3])
  assert corpus.shape == (3, 8, 8, 8)


def test_warped_subjects_differ_from_the_real_one_and_keep_its_atlas_size():
  pool = dsv.subjects(4, 0)
  assert [s.name for s in pool][:2] == ["mni152_s0", "mni152_s1"]
  real, warped = pool[4], pool[5]
  assert real.image.shape == warped.image.shape
  assert not np.allclose(real.image, warped.image)
  assert abs(int(warped.target.sum()) - int(real.target.sum())) < 0.2 * real.target.sum()


def test_coarsened_subjects_are_block_means_any_and_majority_of_the_fine_ones():
  fine, coarse = dsv.subjects(2, 0)[1], dsv.subjects(2, 0, coarsen=2)[1]
  assert coarse.image.shape == tuple(n // 2 for n in fine.image.shape)
  rng = np.random.default_rng(0)
  for _ in range(200):
    x, y, z = (int(rng.integers(n)) for n in coarse.image.shape)
    block = np.s_[2 * x:2 * x + 2, 2 * y:2 * y + 2, 2 * z:2 * z + 2]
    np.testing.assert_allclose(coarse.image[x, y, z], fine.image[block].mean(), rtol=1e-5)
    assert coarse.brain[x, y, z] == fine.brain[block].any()
    assert coarse.target[x, y, z] == (fine.target[block].sum() >= 4)
  assert coarse.target.any() and coarse.brain.sum() > fine.brain.sum() / 8
