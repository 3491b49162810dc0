"""USPS handwritten digits (Hull 1994), 16 x 16, read from the files it is published in.

Either layout in `root` (the first found wins):

  LIBSVM (what torchvision's `USPS` downloads):  usps.bz2 / usps (train, 7,291 lines),
      usps.t.bz2 / usps.t (test, 2,007 lines); a line is `label idx:value ...` with label
      1..10 (digit = label - 1), indices 1..256 and values in [-1, 1]. An absent index
      means the value 0, as everywhere in LIBSVM files.
  ESL (Hastie, Tibshirani and Friedman's site):  zip.train.gz / zip.train,
      zip.test.gz / zip.test; a line is `digit v1 ... v256` (digit written as 6.0000),
      values in [-1, 1].

Pixels: uint8 round((v + 1) / 2 * 255), row-major 16 x 16.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pathlib

import numpy as np

from medda_jax.errors import DataError

SIDE = 16
SPLITS = ("train", "test", "all")
_FILES = {"train": (("libsvm", "usps.bz2"), ("libsvm", "usps"), ("esl", "zip.train.gz"),
                    ("esl", "zip.train")),
          "test": (("libsvm", "usps.t.bz2"), ("libsvm", "usps.t"), ("esl", "zip.test.gz"),
                   ("esl", "zip.test"))}


def _open(path: pathlib.Path):
  opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
  return opener(path, "rt", encoding="ascii")


def _parse_line(fmt: str, line: str) -> tuple[int, np.ndarray]:
  tokens = line.split()
  values = np.zeros(SIDE * SIDE, np.float64)
  if fmt == "libsvm":
    digit = int(float(tokens[0])) - 1
    for token in tokens[1:]:
      index, value = token.split(":")
      values[int(index) - 1] = float(value)
  else:
    digit = int(float(tokens[0]))
    if len(tokens) != 1 + SIDE * SIDE:
      raise ValueError(f"{len(tokens) - 1} values, expected {SIDE * SIDE}")
    values[:] = [float(t) for t in tokens[1:]]
  if not 0 <= digit <= 9:
    raise ValueError(f"label {tokens[0]} is not a digit")
  if np.abs(values).max(initial=0) > 1 + 1e-6:
    raise ValueError("pixel values outside [-1, 1]")
  return digit, values


def _read(path: pathlib.Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = [], []
  try:
    with _open(path) as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          digit, values = _parse_line(fmt, line)
        except (ValueError, IndexError) as e:
          raise DataError(f"{path} line {number}: not a USPS {fmt} record ({e})") from None
        labels.append(digit)
        images.append(np.rint((values + 1.0) / 2.0 * 255.0).clip(0, 255))
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path}: {e}") from e
  if not labels:
    raise DataError(f"{path} holds no USPS record")
  return (np.asarray(images, np.uint8).reshape(-1, SIDE, SIDE),
          np.asarray(labels, np.int64))


def load_usps(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 16, 16], labels int64 [N]) of the split ("train", "test" or "all")."""
  if split not in SPLITS:
    raise DataError(f"USPS split must be one of {SPLITS}, got {split!r}")
  root = pathlib.Path(root)
  parts = []
  for name in (("train", "test") if split == "all" else (split,)):
    found = next(((fmt, root / f) for fmt, f in _FILES[name] if (root / f).is_file()), None)
    if found is None:
      raise DataError(f"no USPS {name} file in {root}: looked for "
                      + ", ".join(f for _, f in _FILES[name]))
    parts.append(_read(found[1], found[0]))
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
