"""Reading a dataset that a `medda_jax.data.builders` builder prepared (array_record, with
random access and no TensorFlow), one feature at a time.

The loaders use it as an alternative source of the published files: the builders store the
publisher's data, so the loaders' own preprocessing gives the same arrays from either.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading

import numpy as np

from medda_jax.errors import ConfigError, DataError


LAYOUTS = ("files", "tfds")  # the loaders' sources: published files, or a prepared dataset


def build_command(name: str, data_dir: str, manual_dir: str = "<published data>") -> str:
  return (f"python -m medda_jax.data.builders.build {name} --manual_dir={manual_dir} "
          f"--data_dir={data_dir}")


def dataset_dir(data_dir: str, name: str) -> str:
  """`<data_dir>/<name>` (`name` may carry a config: `medical_decathlon/task02_heart`)."""
  return os.path.join(data_dir, *name.split("/"))


def _versions(data_dir: str, name: str) -> list[str]:
  """The prepared versions' folders, oldest first."""
  infos = glob.glob(os.path.join(dataset_dir(data_dir, name), "*", "dataset_info.json"))
  folders = [os.path.dirname(p) for p in infos]
  return sorted(folders, key=lambda f: tuple(int(n) for n in os.path.basename(f).split(".")
                                             if n.isdigit()))


def is_prepared(data_dir: str, name: str) -> bool:
  return bool(_versions(data_dir, name))


class PreparedDataset:
  """The `train` split of a prepared dataset (its newest version), read example by
  example with only the asked-for feature decoded."""

  def __init__(self, data_dir: str, name: str, manual_dir: str = "<published data>"):
    try:
      import tensorflow_datasets as tfds  # the tfds extra; only this source needs it
    except ImportError as e:
      raise ConfigError("reading prepared TFDS datasets needs tensorflow-datasets: "
                        "pip install 'medda_jax[tfds]'") from e
    versions = _versions(data_dir, name)
    if not versions:
      raise DataError(f"{dataset_dir(data_dir, name)} holds no prepared dataset; prepare it "
                      f"with\n  {build_command(name, data_dir, manual_dir)}")
    self.name, self.where = name, versions[-1]
    self._builder = tfds.builder_from_directory(self.where)
    self._skip = tfds.decode.SkipDecoding()
    self._features = list(self._builder.info.features)
    self._sources = {}
    self._lock = threading.Lock()  # one reader at a time; the callers' work runs in parallel
    # Shard names and sizes: a re-prepared dataset misses the loaders' caches.
    self.fingerprint = sorted((os.path.basename(f), os.path.getsize(f))
                              for f in glob.glob(os.path.join(self.where, "*.array_record*")))

  def _source(self, features: tuple[str, ...]):
    """A random-access source that decodes only `features` (call it under the lock)."""
    if features not in self._sources:
      self._sources[features] = self._builder.as_data_source("train", decoders={
          other: self._skip for other in self._features if other not in features})
    return self._sources[features]

  def read(self, index: int, feature: str) -> np.ndarray:
    """One feature (an array) of one example."""
    with self._lock:
      return np.asarray(self._source((feature,))[index][feature])

  def columns(self, *features: str, cache_dir: str | None = None) -> list[tuple]:
    """Small features (text, labels) of every example, in stored order.

    Listing reads every record once, volumes included, so with `cache_dir` the listing is
    kept there (keyed by the shards' names and sizes) and later runs read no record."""
    path = None
    if cache_dir is not None:
      key = json.dumps([self.name, self.where, self.fingerprint, features])
      digest = hashlib.sha256(key.encode()).hexdigest()[:16]
      path = os.path.join(cache_dir, f"{self.name.replace('/', '_')}_listing_{digest}.json")
      try:
        with open(path, encoding="utf-8") as f:
          return [tuple(row) for row in json.load(f)]
      except (OSError, ValueError):
        pass  # absent or unreadable: list again
    with self._lock:
      source = self._source(features)
      rows = [tuple(_plain(source[i][f]) for f in features) for i in range(len(source))]
    if path is not None:
      os.makedirs(cache_dir, exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rows, f)
      os.replace(tmp, path)  # atomic: a killed run leaves no half-written listing
    return rows


def _plain(value):
  """A decoded scalar feature as a JSON-able Python value."""
  if isinstance(value, bytes):
    return value.decode()
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()
