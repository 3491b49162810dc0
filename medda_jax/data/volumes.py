"""Labelled 3-D volumes grouped by site (domain): what cross-site segmentation loaders give.

CC359 (six scanner sites), the six-site prostate collection and the embedded skull-stripping
demo all produce a `DomainVolumes`: for every domain, a list of `Volume`s with their masks
and voxel spacing. Training draws 2-D slices from them; evaluation predicts every slice of
a volume and scores the volume in 3-D with its spacing (surface Dice needs millimetres).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import nibabel as nib
import numpy as np

from medda_jax.data import arraycache
from medda_jax.errors import DataError


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


def cached_volumes(path: str | None, domain: str,
                   make: Callable[[], Iterable[Volume]]) -> list[Volume]:
  """The volumes of a domain from the cache folder `path`, memory-mapped: a run reads only
  the slices it uses. The images (and masks) of all volumes lie end to end in one file, so
  a domain of hundreds of volumes maps two files. When the folder is absent, `make()`
  yields the volumes, stored one at a time. `path=None`: made and kept in memory."""
  def fill(writer: arraycache.Writer) -> None:
    ids, spacing, shapes, dtype = [], [], [], None
    for v in make():
      if dtype is None:  # the volumes of a loader share one dtype: the first one's
        dtype = v.image.dtype
      writer.append("images", np.asarray(v.image, dtype).reshape(-1))
      writer.append("masks", np.asarray(v.mask, np.uint8).reshape(-1))
      ids.append(v.id)
      spacing.append(v.spacing)
      shapes.append(v.image.shape)
    writer.put("ids", np.array(ids, dtype=str))
    writer.put("spacing", np.array(spacing, np.float64).reshape(-1, 3))
    writer.put("shapes", np.array(shapes, np.int64).reshape(-1, 3))

  arrays = arraycache.build(path, fill)
  starts = np.concatenate([[0], np.cumsum(np.prod(arrays["shapes"], axis=1))]).astype(int)
  return [Volume(id=str(case_id), domain=domain,
                 image=arrays["images"][starts[i]:starts[i + 1]].reshape(arrays["shapes"][i]),
                 mask=arrays["masks"][starts[i]:starts[i + 1]].reshape(arrays["shapes"][i]),
                 spacing=tuple(float(s) for s in arrays["spacing"][i]))
          for i, case_id in enumerate(arrays["ids"])]


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
