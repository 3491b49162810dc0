"""Preprocessed arrays cached on disk as a folder of `.npy` files, read back memory-mapped.

The volume datasets (Decathlon, CC359, the prostate sites, a user's segmentation data) keep
their preprocessed slices and volumes here. Reading maps the files, so a run holds in memory
only the slices it samples (the OS pages them in and out), whatever the dataset's size.
Writing is incremental, one case at a time, so preprocessing holds a few cases, not the
dataset; and atomic: the folder appears under its final name only once complete, so a
killed run leaves no half-written cache behind.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)

_COPY_BYTES = 4 << 20  # raw -> .npy copy buffer

T = TypeVar("T")
R = TypeVar("R")


def load(path: str, mmap: bool = True) -> dict[str, np.ndarray] | None:
  """{name: array} of the folder `path`, memory-mapped read-only; None when the folder is
  absent or unreadable (a foreign or damaged folder is rebuilt, not trusted)."""
  if not os.path.isdir(path):
    return None
  try:
    arrays = {}
    for f in sorted(os.listdir(path)):
      if f.endswith(".npy"):
        arrays[f[:-4]] = _read(os.path.join(path, f), mmap)
    return arrays
  except Exception as e:
    log.warning("ignoring unreadable cache folder %s (%s)", path, e)
    return None


def _read(file: str, mmap: bool) -> np.ndarray:
  if mmap:
    try:
      return np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError:  # an empty array cannot be mapped
      pass
  return np.load(file, allow_pickle=False)


class Writer:
  """Builds a cache folder: `append` concatenates chunks along axis 0 (a case at a time),
  `put` stores a whole (small) array, `finish` publishes the folder and returns `load`'s
  memory-mapped view of it."""

  def __init__(self, path: str):
    self.path = path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    self._tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self._tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache
    self._parts: dict[str, list] = {}  # name -> [file, dtype, row shape, rows]

  def append(self, name: str, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows)
    part = self._parts.get(name)
    if part is None:
      part = self._parts[name] = [open(os.path.join(self._tmp, name + ".raw"), "wb"),
                                  rows.dtype, rows.shape[1:], 0]
    elif (rows.dtype, rows.shape[1:]) != (part[1], part[2]):
      raise ValueError(f"{name}: chunk {rows.dtype}{rows.shape[1:]} after "
                       f"{part[1]}{part[2]}")
    rows.tofile(part[0])
    part[3] += rows.shape[0]

  def put(self, name: str, array: np.ndarray) -> None:
    np.save(os.path.join(self._tmp, name + ".npy"), np.asarray(array), allow_pickle=False)

  def drop(self, name: str) -> None:
    """Forgets an appended array (one that turned out not to be needed)."""
    part = self._parts.pop(name, None)
    if part is not None:
      part[0].close()
      os.remove(part[0].name)

  def finish(self, mmap: bool = True) -> dict[str, np.ndarray]:
    for name, (file, dtype, shape, count) in self._parts.items():
      file.close()
      # Header, then the raw chunks copied through a small buffer: written with plain file
      # writes rather than through a map, so that finishing holds no page of the array.
      header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (count, *shape)}
      with open(os.path.join(self._tmp, name + ".npy"), "wb") as out, \
           open(file.name, "rb") as raw:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(raw, out, _COPY_BYTES)
      os.remove(file.name)
    self._parts = {}
    try:
      os.rename(self._tmp, self.path)
    except OSError:  # another process published the same cache first: theirs is as good
      shutil.rmtree(self._tmp, ignore_errors=True)
    arrays = load(self.path, mmap)
    if arrays is None:
      raise OSError(f"cannot read back the cache folder {self.path}")
    return arrays

  def abort(self) -> None:
    for part in self._parts.values():
      part[0].close()
    shutil.rmtree(self._tmp, ignore_errors=True)


def build(path: str | None, fill: Callable[[Writer], None]) -> dict[str, np.ndarray]:
  """The cache at `path` (memory-mapped), made by `fill(writer)` first when absent. With
  `path=None` the arrays are made in a temporary folder and returned in memory."""
  if path is None:
    with tempfile.TemporaryDirectory() as scratch:
      return _make(os.path.join(scratch, "arrays"), fill, mmap=False)
  cached = load(path)
  if cached is not None:
    return cached
  if os.path.lexists(path):  # damaged (load warned): made again
    shutil.rmtree(path, ignore_errors=True)
  return _make(path, fill, mmap=True)


def _make(path: str, fill: Callable[[Writer], None], mmap: bool) -> dict[str, np.ndarray]:
  writer = Writer(path)
  try:
    fill(writer)
  except BaseException:
    writer.abort()
    raise
  return writer.finish(mmap)


def ordered_map(fn: Callable[[T], R], items: Sequence[T],
                workers: int | None = None) -> Iterator[R]:
  """fn over items on `workers` threads (default: up to 4), yielded in order, with at most
  `workers` results held at a time (reading and resampling release the GIL for part of the
  time)."""
  workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(items)))
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    for start in range(0, len(items), workers):
      yield from pool.map(fn, items[start:start + workers])

