"""Atomic file writes: a temporary file beside the target, then a rename over it, so a
run killed mid-write leaves the old file or the new one, never half of one (progress
files are read back by the next run, which would otherwise die on a truncated one)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path beside `path` for a writer that needs a file name (np.savez,
  savefig); renamed onto `path` when the block ends, removed if it raises."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_bytes(path, data: bytes) -> None:
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def write_text(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)
