"""A collection of 2-D binary segmentation datasets cut from volumes.

Every loader (Medical Decathlon, the embedded demo) produces a `SliceCollection`.
Images and label maps live in shared banks so that several datasets cut from the
same volumes (one per structure, or per structure x sequence) cost no copies.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SliceDataset:
  """One binary segmentation dataset: the kept slices of some volumes.

  Attributes:
    name: dataset key, e.g. `heart` or `thalamus_t2w`.
    group: organ group; a group of z datasets gives each member sampling weight 1/z.
    images: [M, H, W] float32 bank (may be shared with other datasets).
    labels: [M, H, W] integer label bank (may be shared).
    label_values: foreground is `isin(labels, label_values)`.
    rows: [N] indices into the banks of this dataset's kept slices, sorted by
      (volume, slice_index).
    volume: [N] volume index of each kept slice (into `volume_names`).
    slice_index: [N] position of the slice along the slicing axis of its volume.
    volume_names: names of the volumes (case stems for published data).
  """

  name: str
  group: str
  images: np.ndarray
  labels: np.ndarray
  label_values: tuple[int, ...]
  rows: np.ndarray
  volume: np.ndarray
  slice_index: np.ndarray
  volume_names: tuple[str, ...]

  def __len__(self) -> int:
    return int(self.rows.shape[0])

  @property
  def image_shape(self) -> tuple[int, int]:
    return tuple(self.images.shape[1:3])

  def volumes(self) -> np.ndarray:
    """Volume indices that have at least one kept slice, ascending."""
    return np.unique(self.volume)

  def slices_of_volume(self, v: int) -> np.ndarray:
    """Positions (into this dataset) of the kept slices of volume v, in slice order."""
    pos = np.flatnonzero(self.volume == v)
    return pos[np.argsort(self.slice_index[pos], kind="stable")]

  def batch(self, positions) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of the given positions: ([n, H, W, 1] float32, [n, H, W, 1] float32)."""
    rows = self.rows[np.asarray(positions, dtype=np.int64)]
    images = self.images[rows].astype(np.float32)[..., None]
    masks = np.isin(self.labels[rows], self.label_values).astype(np.float32)[..., None]
    return images, masks

  def restrict(self, volumes) -> "SliceDataset":
    """The same dataset with only the slices of `volumes` (volume indices)."""
    keep = np.isin(self.volume, np.asarray(volumes))
    return dataclasses.replace(self, rows=self.rows[keep], volume=self.volume[keep],
                               slice_index=self.slice_index[keep])


@dataclasses.dataclass(frozen=True)
class SliceCollection:
  """Datasets by name, plus a human-readable description of where they came from."""

  datasets: dict[str, SliceDataset]
  description: str = ""

  def __getitem__(self, name: str) -> SliceDataset:
    return self.datasets[name]

  def names(self) -> list[str]:
    return list(self.datasets)

  def group_weights(self, names) -> np.ndarray:
    """Sampling probabilities of `names`: 1/z per member of a group of z, normalised."""
    groups = [self.datasets[n].group for n in names]
    raw = np.array([1.0 / groups.count(g) for g in groups])
    return raw / raw.sum()


def split_volumes(volumes: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded volume-level split into (train, test) volume indices; test gets at least one."""
  volumes = np.sort(np.asarray(volumes))
  rng = np.random.default_rng(seed)
  order = rng.permutation(volumes)
  n_test = max(1, int(round(test_fraction * len(volumes))))
  if n_test >= len(volumes):
    raise ValueError(f"cannot split {len(volumes)} volume(s) into train and test")
  return np.sort(order[n_test:]), np.sort(order[:n_test])
