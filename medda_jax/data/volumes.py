"""Labelled 3-D volumes grouped by site (domain): what cross-site segmentation loaders give.

CC359 (six scanner sites), the six-site prostate collection and the embedded skull-stripping
demo all produce a `DomainVolumes`: for every domain, a list of `Volume`s with their masks
and voxel spacing. Training draws 2-D slices from them; evaluation predicts every slice of
a volume and scores the volume in 3-D with its spacing (surface Dice needs millimetres).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import nibabel as nib
import numpy as np

from medda_jax.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Volume:
  """One subject.

  Attributes:
    id: case identifier (file stem for published data).
    domain: site / scanner the volume comes from.
    image: [S, H, W] float32, slices first (the axis the 2-D network slices along).
    mask: [S, H, W] uint8 binary label.
    spacing: voxel size in mm along (slice, row, column).
  """

  id: str
  domain: str
  image: np.ndarray
  mask: np.ndarray
  spacing: tuple[float, float, float]

  def __post_init__(self):
    if self.image.ndim != 3 or self.image.shape != self.mask.shape:
      raise ValueError(f"volume {self.id}: image {self.image.shape} and mask "
                       f"{self.mask.shape} must both be [slices, rows, columns]")

  @property
  def num_slices(self) -> int:
    return int(self.image.shape[0])


@dataclasses.dataclass(frozen=True)
class DomainVolumes:
  """Volumes per domain, in a fixed order (domain order is the loader's site order)."""

  domains: dict[str, list[Volume]]
  description: str = ""

  def names(self) -> list[str]:
    return list(self.domains)

  def __getitem__(self, domain: str) -> list[Volume]:
    return self.domains[domain]


def split_ids(num: int, counts: tuple[int, ...], seed: int) -> list[np.ndarray]:
  """Splits range(num) into consecutive groups of `counts` after a seeded shuffle
  (e.g. train / validation / test patients of one site); the last count may be -1 for
  'the rest'."""
  order = np.random.default_rng(seed).permutation(num)
  out, start = [], 0
  for k in counts:
    stop = num if k < 0 else start + k
    if stop > num:
      raise ValueError(f"cannot take {counts} from {num} volumes")
    out.append(np.sort(order[start:stop]))
    start = stop
  return out


def load_volume_cache(path: str, domain: str) -> list[Volume] | None:
  """Volumes saved by `save_volume_cache`, or None when the file is absent or unreadable."""
  try:
    with np.load(path, allow_pickle=False) as f:
      return [Volume(id=str(case_id), domain=domain, image=f[f"image_{i}"], mask=f[f"mask_{i}"],
                     spacing=tuple(float(s) for s in f["spacing"][i]))
              for i, case_id in enumerate(f["ids"])]
  except FileNotFoundError:
    return None
  except Exception as e:  # a partial or foreign file is rebuilt, not trusted
    log.warning("ignoring unreadable cache file %s (%s)", path, e)
    return None


def save_volume_cache(path: str, volumes: Sequence[Volume]) -> None:
  """One .npz holding the preprocessed volumes of a domain."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arrays = {"ids": np.array([v.id for v in volumes], dtype=str),
            "spacing": np.array([v.spacing for v in volumes], np.float64).reshape(-1, 3)}
  for i, v in enumerate(volumes):
    arrays[f"image_{i}"] = v.image
    arrays[f"mask_{i}"] = v.mask
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  # Atomic rename: a killed run never leaves a half-written cache behind.
  os.replace(tmp, path)


def read_nifti(path: str, squeeze_trailing: bool = False) -> tuple[np.ndarray, tuple[float, ...]]:
  """Array (stored axis order, float32) and voxel size of a 3-D NIfTI file; with
  `squeeze_trailing`, trailing axes of size 1 (4-D single-modality files) are dropped."""
  try:
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
  except Exception as e:  # nibabel raises many types for broken or truncated files
    raise DataError(f"cannot read NIfTI file {path}: {e}") from e
  while squeeze_trailing and data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
  return data, zooms
