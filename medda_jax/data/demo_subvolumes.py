"""DEMO DATA for 3-D self-supervised pre-training and its targets (DiRA): cubic sub-volumes
of the two real brain volumes of the brain demo (the MNI152 2009 T1 from nilearn and the
Colin27 T1 with its real AAL atlas, `DEMO_BRAIN_CARD.md`), with synthetic subjects made by
smooth random warps (`styles.random_subject`). It stands in for the paper's CT corpora
(LUNA16), which cannot be installed offline; the scale is tiny (2 mm voxels, 32-voxel cubes).

- `subjects(per_anatomy, seed, coarsen)`: the subject pool; subject 0 of each anatomy is the
  real volume itself, the others warps of it; `coarsen` = 2 gives 4 mm voxels (2x2x2 means
  of the image, the brain where any voxel of the block is, the target where most are). Splits are by subject, so no test crop shares a
  subject with a training crop.
- `corpus(count, size, seed, subject_ids)`: unlabelled crops inside the head, float32
  [count, S, S, S] in [0, 1] (the pre-training corpus).
- `hippocampus_task(count, size, seed, subject_ids)`: crops with the AAL hippocampus
  (hippocampus and parahippocampal gyrus, labels 37-40) as a segmentation mask, and a
  classification label, "the crop holds at least `min_voxels` of it"; half the crops are
  centred near the structure, half elsewhere in the brain.

Every crop is a function of (seed, crop index) and the subject pool's seed.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from medda_jax.data import demo_brain, styles

DESCRIPTION = ("DEMO DATA: cubic sub-volumes of two real brain MR volumes (MNI152, Colin27) "
               "with the real AAL hippocampus as the target label; synthetic subjects by "
               "smooth warps; MR, not CT; tiny scale")
ANATOMIES = demo_brain.ANATOMIES
TARGET = "hippocampus"


@dataclasses.dataclass(frozen=True)
class Subject:
  name: str
  image: np.ndarray  # float32 [X, Y, Z] in [0, 1], 2 mm, RAS
  brain: np.ndarray  # bool, the head's brain voxels
  target: np.ndarray  # bool, the AAL hippocampus


@dataclasses.dataclass(frozen=True)
class Crops:
  images: np.ndarray  # float32 [N, S, S, S] in [0, 1]
  masks: np.ndarray  # uint8 [N, S, S, S], 1 inside the target structure (zeros for a corpus)
  labels: np.ndarray  # int32 [N], 1 where the crop holds at least min_voxels of it
  corners: np.ndarray  # int [N, 3], each crop's first voxel in its subject's grid
  subject_ids: np.ndarray  # int [N]


def _coarsen(volume: np.ndarray, factor: int, reduce) -> np.ndarray:
  """Blocks of factor^3 voxels reduced to one (the trailing partial blocks dropped)."""
  if factor == 1:
    return volume
  x, y, z = (d // factor for d in volume.shape)
  blocks = volume[:x * factor, :y * factor, :z * factor].reshape(
      x, factor, y, factor, z, factor)
  return reduce(blocks, axis=(1, 3, 5))


@functools.lru_cache(maxsize=4)
def subjects(per_anatomy: int = 4, seed: int = 0, coarsen: int = 1) -> tuple[Subject, ...]:
  """Subjects of both anatomies, [anatomy 0: real, warp 1, ...; anatomy 1: ...]."""
  pool = []
  streams = np.random.SeedSequence([seed, 71]).spawn(len(ANATOMIES))
  for anatomy, stream in zip(ANATOMIES, streams):
    base = demo_brain._anatomy(anatomy)
    image = base["image"].astype(np.float32)
    brain = base["tissue"] > 0
    # One intensity scale per anatomy: the 99.5th percentile of the brain to 1.
    image = np.clip(image / np.percentile(image[brain], 99.5), 0.0, 1.0).astype(np.float32)
    target = np.isin(base["structures"], [demo_brain.STRUCTURE_VALUE[TARGET]])
    code = (brain.astype(np.uint8) + 2 * target.astype(np.uint8))  # one nearest warp for both
    for k, sub in enumerate(stream.spawn(per_anatomy)):
      if k == 0:
        warped, c = image, code
      else:
        warped, c = styles.random_subject([image, code], np.random.default_rng(sub),
                                          max_displacement_mm=4.0, voxel_mm=demo_brain.VOXEL_MM)
      brain_k, target_k = (c % 2).astype(bool), (c // 2).astype(bool)
      pool.append(Subject(f"{anatomy}_s{k}",
                          _coarsen(np.asarray(warped, np.float32), coarsen, np.mean),
                          _coarsen(brain_k, coarsen, np.any),
                          _coarsen(target_k.astype(np.float32), coarsen, np.mean) >= 0.5))
  return tuple(pool)


def _crop(volume: np.ndarray, corner: np.ndarray, size: int) -> np.ndarray:
  return demo_brain._crop(volume, corner, corner + size)


def _crops(count: int, size: int, seed: int, subject_ids, per_anatomy: int, pool_seed: int,
           centres_near_target: bool, min_voxels: int, coarsen: int) -> Crops:
  pool = subjects(per_anatomy, pool_seed, coarsen)
  ids = np.asarray(subject_ids)
  images, masks, labels, corners, chosen = [], [], [], [], []
  for i in range(count):
    rng = np.random.default_rng([seed, 73, i])
    s = int(ids[rng.integers(len(ids))])
    subject = pool[s]
    near = centres_near_target and i % 2 == 0
    voxels = np.argwhere(subject.target if near else subject.brain)
    for _ in range(50):  # a crop away from the target must not hold min_voxels of it
      centre = voxels[rng.integers(len(voxels))]
      if near:
        centre = centre + rng.integers(-size // 4, size // 4 + 1, size=3)
      corner = centre - size // 2
      mask = _crop(subject.target, corner, size)
      if near or not centres_near_target or mask.sum() < min_voxels:
        break
    images.append(_crop(subject.image, corner, size))
    masks.append(mask.astype(np.uint8))
    labels.append(int(mask.sum() >= min_voxels))
    corners.append(corner)
    chosen.append(s)
  return Crops(np.stack(images).astype(np.float32), np.stack(masks),
               np.asarray(labels, np.int32), np.stack(corners), np.asarray(chosen))


def corpus(count: int, size: int, seed: int, subject_ids, per_anatomy: int = 4,
           pool_seed: int = 0, coarsen: int = 1) -> np.ndarray:
  """Unlabelled crops centred on random brain voxels: float32 [count, S, S, S]."""
  return _crops(count, size, seed, subject_ids, per_anatomy, pool_seed, False, 1,
                coarsen).images


def hippocampus_task(count: int, size: int, seed: int, subject_ids, per_anatomy: int = 4,
                     pool_seed: int = 0, min_voxels: int = 20, coarsen: int = 1) -> Crops:
  """Crops with the hippocampus mask and label: even crops centred within size/4 voxels of
  a hippocampus voxel, odd crops on brain voxels holding fewer than `min_voxels` of it."""
  return _crops(count, size, seed, subject_ids, per_anatomy, pool_seed, True, min_voxels,
                coarsen)
