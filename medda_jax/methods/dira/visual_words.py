"""TransVW's visual words (Haghighi et al., IEEE TMI 2021), DiRA's fifth pretext task: an
anatomical pattern at one coordinate across similar patients is a class, and a cube of it
is to be told by its class and restored from its Models Genesis distortion.

Self-discovery as TransVW's released pattern generator does it, with one substitution:

1. Each patient is coded by an auto-encoder of its whole volume: here the volume resampled
   to `grid`^3 voxels and projected on its first `dims` principal components (scikit-learn's
   PCA, the optimal linear auto-encoder). TransVW trains a 3-D U-Net auto-encoder for this
   code; PCA needs no training run and, like it, ranks patients by whole-volume likeness.
2. Visual word w: a reference patient not used before (a seeded order), its `instances`
   nearest patients by the codes' L2 distance (itself first), and a coordinate in the
   reference, redrawn (up to `TRIES` times, then the next reference) until the reference's
   cube there holds at least `min_tissue` of voxels at or above `tissue_level` (TransVW
   rejects cubes that are mostly air and lung in the same way).
3. Coordinates are fractions of each axis' free range (volume side minus cube side),
   `border` kept clear at both ends: patients of different shapes share a word by position
   in their field of view, as the published recipe assumes of its resampled scans.

Left out: TransVW's multi-resolution instances (jittered cubes of 50-80 voxels resized) and
its minimum distance between words' coordinates.

Sample i (as in `volumes.VolumeCorpus`, consecutive samples share a patient, read once per
visit): visit i // crops_per_volume reads a patient that holds a word (a fresh seeded order
every pass over them); the sample is one of that patient's words drawn from (seed, i), the
cube at the word's coordinate; its label is the word.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.dira.volumes import cut

TRIES = 100  # coordinates tried per reference patient


def resampled(volume: np.ndarray, grid: int) -> np.ndarray:
  """The volume linearly resampled (anti-aliased) to [grid, grid, grid], float32."""
  from skimage.transform import resize

  return resize(np.asarray(volume, np.float32), (grid,) * 3, order=1, anti_aliasing=True,
                preserve_range=True).astype(np.float32)


def patient_codes(volume: Callable[[int], np.ndarray], patients: int, grid: int, dims: int,
                  seed: int = 0) -> np.ndarray:
  """float32 [patients, min(dims, patients)]: each patient's resampled volume (read one at a
  time) projected on the principal components of all of them."""
  from sklearn.decomposition import PCA

  flat = np.stack([resampled(volume(p), grid).reshape(-1) for p in range(patients)])
  k = min(dims, patients)
  return PCA(k, svd_solver="full", random_state=seed).fit_transform(flat).astype(np.float32)


def corner(shape, fraction, size: int) -> np.ndarray:
  """The cube's first voxel: each fraction of the axis' free range, rounded."""
  free = np.maximum(np.asarray(shape) - size, 0)
  return np.rint(np.asarray(fraction) * free).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Words:
  references: np.ndarray  # int [W], each word's reference patient
  members: np.ndarray  # int [W, instances], the reference first, then its nearest
  fractions: np.ndarray  # float [W, 3], each word's coordinate


def discover(codes: np.ndarray, volume: Callable[[int], np.ndarray], *, words: int,
             instances: int, size: int, seed: int = 0, border: float = 0.1,
             tissue_level: float = 0.425, min_tissue: float = 0.5) -> Words:
  """Steps 2 and 3 of the module's recipe on the patients' codes [P, k]."""
  codes = np.asarray(codes, np.float64)
  count = len(codes)
  if not 1 <= instances <= count:
    raise ConfigError(f"TransVW: {instances} instances per word need as many patients; the "
                      f"corpus has {count}")
  if not 1 <= words <= count:
    raise ConfigError(f"TransVW: {words} visual words need as many reference patients; the "
                      f"corpus has {count}")
  if not 0.0 <= border < 0.5:
    raise ConfigError(f"TransVW: border={border} must be in [0, 0.5)")
  rng = np.random.default_rng([seed, 101])
  references, members, fractions = [], [], []
  for reference in rng.permutation(count):
    if len(references) == words:
      break
    reference_volume = volume(int(reference))
    for _ in range(TRIES):
      fraction = rng.uniform(border, 1.0 - border, size=3)
      first = corner(reference_volume.shape, fraction, size)
      cube = cut(reference_volume, first, size, float(reference_volume.min()))
      if np.mean(cube >= tissue_level) >= min_tissue:
        break
    else:
      continue  # no coordinate of this reference holds enough tissue
    distance = np.linalg.norm(codes - codes[reference], axis=1)
    distance[reference] = -1.0  # the reference first, even beside an identical patient
    references.append(int(reference))
    members.append(np.argsort(distance, kind="stable")[:instances])
    fractions.append(fraction)
  if len(references) < words:
    raise DataError(f"TransVW: only {len(references)} of {words} visual words found: the "
                    f"other patients hold no {size}-voxel cube with {min_tissue:.0%} of its "
                    f"voxels at or above {tissue_level} (config.pretrain.transvw."
                    "tissue_level / min_tissue)")
  return Words(np.asarray(references), np.stack(members), np.stack(fractions))


class VisualWords:
  """TransVW's samples of a corpus: `words(sample_ids) -> float32 [n, S, S, S]` cubes and
  `words.labels(sample_ids) -> int32 [n]` their visual words; `volume(p)` reads patient p
  normalised to [0, 1] (called once per patient for the codes, then once per visit)."""

  def __init__(self, volume: Callable[[int], np.ndarray], patients: int, *, size: int,
               words: int, instances: int, grid: int = 16, dims: int = 32,
               border: float = 0.1, tissue_level: float = 0.425, min_tissue: float = 0.5,
               crops_per_volume: int = 8, seed: int = 0, codes: np.ndarray | None = None):
    self.volume, self.size = volume, size
    self.crops_per_volume, self.seed = crops_per_volume, seed
    self.codes = (patient_codes(volume, patients, grid, dims, seed) if codes is None
                  else np.asarray(codes, np.float32))
    if len(self.codes) != patients:
      raise ConfigError(f"TransVW: {len(self.codes)} codes for {patients} patients")
    self.words = discover(self.codes, volume, words=words, instances=instances, size=size,
                          seed=seed, border=border, tissue_level=tissue_level,
                          min_tissue=min_tissue)
    self.holders = np.unique(self.words.members)  # the patients that hold a word
    self.words_of = {int(p): np.flatnonzero((self.words.members == p).any(axis=1))
                     for p in self.holders}

  def __len__(self) -> int:
    return len(self.words.references)

  def pick(self, sample: int) -> tuple[int, int]:
    """(patient, word) of a sample."""
    passes, k = divmod(sample // self.crops_per_volume, len(self.holders))
    order = np.random.default_rng([self.seed, 103, passes]).permutation(len(self.holders))
    patient = int(self.holders[order[k]])
    choices = self.words_of[patient]
    word = int(choices[np.random.default_rng([self.seed, 107, sample]).integers(len(choices))])
    return patient, word

  def labels(self, sample_ids) -> np.ndarray:
    return np.asarray([self.pick(int(i))[1] for i in np.asarray(sample_ids)], np.int32)

  def __call__(self, sample_ids) -> np.ndarray:
    out = []
    for i in np.asarray(sample_ids):
      patient, word = self.pick(int(i))
      v = self.volume(patient)
      first = corner(v.shape, self.words.fractions[word], self.size)
      out.append(cut(v, first, self.size, float(v.min())))
    return np.stack(out).astype(np.float32)
