"""Atomic file writes: a temporary file beside the target, then a rename over it, so a
run killed mid-write leaves the old file or the new one, never half of one (progress
files are read back by the next run, which would otherwise die on a truncated one). And
the per-user cache: compiled steps and the built demo data, kept across runs and workdirs."""

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


def user_cache_dir(kind: str) -> pathlib.Path:
  """`<root>/<kind>`, root = $MEDDA_JAX_CACHE, else $XDG_CACHE_HOME/medda_jax, else
  ~/.cache/medda_jax: what every run of this user may reuse (kinds: "xla", "demo")."""
  root = os.environ.get("MEDDA_JAX_CACHE")
  if not root:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "medda_jax")
  return pathlib.Path(root) / kind


def data_cache_dir(configured: str, workdir) -> pathlib.Path:
  """Where a dataset's preprocessed arrays are cached: `config.data.cache_dir` when set,
  else `<workdir>/cache` (a user's own data, keyed by its files, stays with its run)."""
  return pathlib.Path(configured) if configured else pathlib.Path(workdir) / "cache"


def demo_cache_dir(configured: str) -> pathlib.Path:
  """Where a demo collection is cached: `config.data.cache_dir` when set, else the per-user
  cache, so a demo is built once per machine rather than once per workdir (3 s of
  MetaMedSeg's and CateNorm's start). Safe to share: each file's name holds the builder's
  arguments, its version and a digest of its source assets."""
  return pathlib.Path(configured) if configured else user_cache_dir("demo")
