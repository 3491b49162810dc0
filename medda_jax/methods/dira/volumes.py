"""Pre-training corpora of whole volumes, streamed: LUNA16's CT scans in their published
layout, or your own folder (or CSV `path` column) of NIfTI / MetaImage volumes. Sample i is
a cube cropped from one volume at a position drawn from (seed, i); consecutive samples share
a volume (`crops_per_volume`), which is read once per visit and never the whole corpus at
once.

Intensities to [0, 1]: CT clipped to [-1000, 1000] HU and scaled (Models Genesis' window);
MR scaled between the 0.5th and 99.5th percentiles of its non-zero voxels.
"""

from __future__ import annotations

import csv
import functools
import pathlib

import numpy as np

from medda_jax.data import ct_sets, metaimage
from medda_jax.errors import DataError

SUFFIXES = (".nii", ".nii.gz", ".mhd")
INTENSITIES = ("ct", "mr")


def _is_volume(path: pathlib.Path) -> bool:
  return path.is_file() and any(path.name.endswith(s) for s in SUFFIXES)


def list_volumes(path) -> list[str]:
  """The volumes of a folder (searched recursively) or of a CSV's `path` column (relative
  paths from the CSV's folder), sorted."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    found = sorted(str(p) for p in path.rglob("*") if _is_volume(p))
    if not found:
      raise DataError(f"{path} holds no volume ({', '.join(SUFFIXES)})")
    return found
  if path.suffix == ".csv" and path.is_file():
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
      raise DataError(f"{path}: a corpus CSV needs a 'path' column")
    out = [str((path.parent / r["path"]).resolve()) for r in rows]
    missing = [p for p in out if not pathlib.Path(p).is_file()]
    if missing:
      raise DataError(f"{path}: {len(missing)} listed volumes are missing, e.g. {missing[0]}")
    return out
  raise DataError(f"{path} is neither a folder of volumes nor a CSV with a 'path' column")


def luna16_volumes(root) -> list[str]:
  """The `.mhd` headers of every LUNA16 scan under `root/subset*/`."""
  return sorted(scan.path for scan in ct_sets.load_luna16(root).scans.values())


def read_volume(path: str) -> np.ndarray:
  """float32 [Z, Y, X] (a MetaImage's numpy order; a NIfTI's stored axes reversed, as
  data/ct_sets.py reads them)."""
  if path.endswith(".mhd"):
    return np.asarray(metaimage.read_mhd(path)[0], np.float32)
  return ct_sets.read_nifti_zyx(path)[0]


def normalise(volume: np.ndarray, intensity: str) -> np.ndarray:
  if intensity == "ct":
    return ((np.clip(volume, -1000.0, 1000.0) + 1000.0) / 2000.0).astype(np.float32)
  inside = volume[volume != 0]
  if inside.size == 0:
    return np.zeros_like(volume, np.float32)
  lo, hi = np.percentile(inside, [0.5, 99.5])
  return np.clip((volume - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def cut(volume: np.ndarray, corner, size: int, fill) -> np.ndarray:
  """volume[corner : corner + size] per axis as a [size]^3 array; voxels outside the volume
  are `fill`. `corner` may be negative or run past the end."""
  out = np.full((size,) * 3, fill, volume.dtype)
  corner = np.asarray(corner, np.int64)
  lo = np.maximum(corner, 0)
  hi = np.minimum(corner + size, volume.shape)
  if np.all(hi > lo):
    out[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner))] = (
        volume[tuple(slice(a, b) for a, b in zip(lo, hi))])
  return out


class VolumeCorpus:
  """`corpus(sample_ids) -> float32 [n, S, S, S]`: cube i from volume
  order[(i // crops_per_volume) % len(paths)] (a fresh seeded order every pass), at a corner
  drawn from (seed, i); volumes smaller than the cube are padded with their minimum."""

  def __init__(self, paths, size: int, intensity: str, crops_per_volume: int = 8,
               seed: int = 0):
    if not paths:
      raise DataError("the pre-training corpus lists no volume")
    self.paths, self.size, self.intensity = list(paths), size, intensity
    self.crops_per_volume, self.seed = crops_per_volume, seed

  @functools.lru_cache(maxsize=2)
  def volume(self, index: int) -> np.ndarray:
    return normalise(read_volume(self.paths[index]), self.intensity)

  def _volume_of(self, sample: int) -> int:
    visit = sample // self.crops_per_volume
    passes, k = divmod(visit, len(self.paths))
    return int(np.random.default_rng([self.seed, 83, passes]).permutation(len(self.paths))[k])

  def __call__(self, sample_ids) -> np.ndarray:
    out = []
    for i in np.asarray(sample_ids):
      v = self.volume(self._volume_of(int(i)))
      rng = np.random.default_rng([self.seed, 89, int(i)])
      corner = [int(rng.integers(0, max(n - self.size, 0) + 1)) for n in v.shape]
      out.append(cut(v, corner, self.size, float(v.min())))
    return np.stack(out).astype(np.float32)
