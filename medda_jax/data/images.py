"""Labelled image domains from a user's own files, and the library's one image-set type.

A user domain is declared in a config as `name=path`, where `name` is what every result
file, table and figure calls it and `path` is either

  a class-folder root     <root>/<class>/*.{png,jpg,jpeg,tif,tiff,dcm}
                          (class names = the sorted folder names; any number of classes)
  or a CSV file           path,label[,patient_id][,site]
                          (paths relative to the CSV's folder or absolute; labels class names
                          or integers; with a patient_id column, splits keep every patient in
                          one split)

Images are decoded lazily: `ImageSource` is a random-access source (`len`, `[i]` ->
(image, label)) that reads, converts (grey or RGB) and resizes one file per access, so it
can be streamed through grain. DICOM files are read through pydicom.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import zlib
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import ConfigError, DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_FOLDER_LAYOUT = ("expected a class-folder root <root>/<class>/*.{png,jpg,jpeg,tif,tiff,dcm} "
                  "or a CSV with columns path,label[,patient_id][,site]")
_CSV_LAYOUT = ("expected a CSV with columns path,label[,patient_id][,site] (paths relative "
               "to the CSV's folder or absolute; labels class names or integers)")


# --------------------------------------------------------------------------- image sets
@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images with integer labels: the unit every classification and GAN method trains on.
  `images` is a numpy array or a `LazyImages` (decoded per access, for sets too large for
  memory); code that indexes it per batch works with both. The value range is the
  method's (e.g. [0, 1] or [-1, 1])."""
  images: "np.ndarray | LazyImages"  # float32 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices) -> "ImageSet":
    if isinstance(self.images, LazyImages):  # stays lazy: only the indices compose
      return ImageSet(self.images.subset(indices), self.labels[indices])
    return ImageSet(self.images[indices], self.labels[indices])

  def counts(self) -> dict[int, int]:
    """Images per label."""
    return {int(k): int(v) for k, v in zip(*np.unique(self.labels, return_counts=True))}


class LazyImages:
  """An image array [N, H, W, C] read from a random-access source (`source[i]` ->
  (image, label), e.g. `ImageSource`) at `indices`, with `transform` applied per image:
  indexing it (an integer, a slice or an index array of any shape) decodes only the
  requested images, `threads` files at a time, so a set of any size costs the memory of
  the batch in use. `shape`, `dtype` and `len` need no decoding when the source tells its
  `image_shape`."""

  def __init__(self, source, indices=None, transform=None, threads: int = 4):
    self.source, self.transform, self.threads = source, transform, threads
    self.indices = (np.arange(len(source), dtype=np.int64) if indices is None
                    else np.asarray(indices, np.int64).reshape(-1))
    probe = (np.zeros(source.image_shape, np.float32) if hasattr(source, "image_shape")
             else source[int(self.indices[0])][0])
    probe = np.asarray(probe if transform is None else transform(probe))
    self._item_shape, self.dtype = probe.shape, probe.dtype

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.indices),) + self._item_shape

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __len__(self) -> int:
    return len(self.indices)

  def subset(self, key) -> "LazyImages":
    """The images at `key` (as for numpy), still undecoded."""
    return LazyImages(self.source, self.indices[key], self.transform, self.threads)

  def _one(self, i: int) -> np.ndarray:
    image = self.source[int(i)][0]
    return np.asarray(image if self.transform is None else self.transform(image), self.dtype)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self._one(self.indices[key])
    idx = self.indices[key]  # slices, index arrays and masks as numpy reads them
    flat = idx.reshape(-1)
    out = np.empty((len(flat),) + self._item_shape, self.dtype)
    if len(flat) > 1 and self.threads > 1:
      from concurrent.futures import ThreadPoolExecutor
      with ThreadPoolExecutor(min(self.threads, len(flat))) as pool:
        for j, image in enumerate(pool.map(self._one, flat)):
          out[j] = image
    else:
      for j, i in enumerate(flat):
        out[j] = self._one(i)
    return out.reshape(idx.shape + self._item_shape)

  def __array__(self, dtype=None, copy=None):  # whole-array reads decode everything
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class _Joined:
  """A source over several image arrays end to end (numpy or lazy)."""

  def __init__(self, parts):
    self.parts = parts
    self.starts = np.cumsum([0] + [len(p) for p in parts])
    self.image_shape = tuple(parts[0].shape[1:])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, i: int):
    p = int(np.searchsorted(self.starts, i, side="right")) - 1
    return self.parts[p][int(i - self.starts[p])], 0


def concat(sets: Sequence[ImageSet]) -> ImageSet:
  """The sets end to end; lazy when any of them is (nothing decoded)."""
  labels = np.concatenate([s.labels for s in sets])
  if not any(isinstance(s.images, LazyImages) for s in sets):
    return ImageSet(np.concatenate([s.images for s in sets]), labels)
  shapes = {tuple(s.images.shape[1:]) for s in sets}
  if len(shapes) > 1:
    raise ValueError(f"cannot join image sets of shapes {sorted(shapes)}")
  return ImageSet(LazyImages(_Joined([s.images for s in sets]),
                             threads=max(s.images.threads for s in sets
                                         if isinstance(s.images, LazyImages))), labels)


class NpyRows:
  """A source over the rows of a .npy file, read per access with `pread` (not a memory
  map, whose pages would count in the process's memory as they are read)."""

  def __init__(self, path):
    self.path = str(path)
    with open(self.path, "rb") as f:
      np.lib.format.read_magic(f)
      shape, _, self.dtype = np.lib.format.read_array_header_1_0(f)
      self.offset = f.tell()
    self.n, self.image_shape = shape[0], tuple(shape[1:])
    self.row_bytes = int(np.prod(self.image_shape)) * self.dtype.itemsize

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int):
    fd = os.open(self.path, os.O_RDONLY)
    try:
      raw = os.pread(fd, self.row_bytes, self.offset + int(i) * self.row_bytes)
    finally:
      os.close(fd)
    return np.frombuffer(raw, self.dtype).reshape(self.image_shape), 0


def spill(path, images: "np.ndarray | LazyImages", fn, batch_size: int) -> LazyImages:
  """`fn` (a batch -> a batch of images) over `images` in batches of `batch_size`, written
  to the .npy file `path` as it goes and read back lazily: the result of a set too large
  for memory, held on disk."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:
    for start in range(0, len(images), batch_size):
      out = np.ascontiguousarray(fn(images[start:start + batch_size]))
      if start == 0:
        np.lib.format.write_array_header_1_0(f, {
            "descr": np.lib.format.dtype_to_descr(out.dtype), "fortran_order": False,
            "shape": (len(images),) + out.shape[1:]})
      f.write(out.tobytes())
  return LazyImages(NpyRows(path))


def map_set(fn, data: ImageSet, stem, batch_size: int) -> ImageSet:
  """`data` with `fn` (a batch -> a batch of images, e.g. a translator) applied, labels kept:
  in memory for an in-memory set; for a lazy set (one too large for memory) spilled batch
  by batch into a per-process .npy file at `stem` and read back lazily (`drop_spill`
  removes it)."""
  if not isinstance(data.images, LazyImages):
    return ImageSet(fn(data.images), data.labels)
  import jax  # the file is per process: every process of a run maps its own copy
  stem = pathlib.Path(stem)
  path = stem.with_name(f"{stem.name}.p{jax.process_index()}.npy")
  return ImageSet(spill(path, data.images, fn, batch_size), data.labels)


def drop_spill(data: ImageSet) -> None:
  """Deletes the .npy file behind a set `map_set` spilled (nothing for any other set)."""
  source = getattr(data.images, "source", None)
  if isinstance(source, NpyRows):
    pathlib.Path(source.path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- tables
@dataclasses.dataclass(frozen=True)
class ImageTable:
  """A user domain's files and labels, nothing decoded yet."""
  name: str
  paths: tuple[str, ...]  # absolute paths
  labels: np.ndarray  # int32 [N], indices into class_names
  class_names: tuple[str, ...]
  patient_ids: tuple[str, ...] | None = None  # None: no patient column

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, indices) -> "ImageTable":
    idx = np.asarray(indices, np.int64).reshape(-1)
    return dataclasses.replace(
        self, paths=tuple(self.paths[i] for i in idx), labels=self.labels[idx],
        patient_ids=None if self.patient_ids is None else tuple(self.patient_ids[i] for i in idx))

  def counts(self) -> dict[str, int]:
    """Images per class name."""
    n = np.bincount(self.labels, minlength=len(self.class_names))
    return {k: int(v) for k, v in zip(self.class_names, n)}


def parse_domain(entry: str) -> tuple[str, str | None]:
  """`name=path` -> (name, path); a plain name (a built-in domain) -> (name, None)."""
  name, sep, path = str(entry).partition("=")
  name = name.strip()
  if not _NAME.match(name) or (sep and not path.strip()):
    raise ConfigError(f"domain {entry!r}: write a built-in name or name=path with a name of "
                      "letters, digits, '_', '.', '+' or '-' and the path of a class-folder "
                      "root or a .csv")
  return name, (path.strip() if sep else None)


def _check_classes(name: str, class_names: Sequence[str], where) -> None:
  if len(class_names) < 2:
    raise DataError(f"{where} holds a single class {list(class_names)}; a labelled domain "
                    f"({name}) needs at least two")


def load_folder(root, name: str) -> ImageTable:
  """`<root>/<class>/*` (recursively below each class folder), classes in sorted order."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"domain {name}: {root} is not a folder or a .csv; {_FOLDER_LAYOUT}")
  classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise DataError(f"domain {name}: {root} has no class folders; {_FOLDER_LAYOUT}")
  _check_classes(name, classes, root)
  paths, labels = [], []
  for k, cls in enumerate(classes):
    files = sorted(str(p) for p in (root / cls).rglob("*")
                   if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
      raise DataError(f"domain {name}: class folder {root / cls} holds no image "
                      f"({', '.join(SUFFIXES)})")
    paths += files
    labels += [k] * len(files)
  return ImageTable(name, tuple(paths), np.asarray(labels, np.int32), tuple(classes))


def load_csv(path, name: str) -> ImageTable:
  """A CSV `path,label[,patient_id][,site]`; integer labels are ordered numerically."""
  path = pathlib.Path(path)
  rows = read_csv_rows(path, ("path", "label"), _CSV_LAYOUT)
  if not rows:
    raise DataError(f"domain {name}: {path} lists no image")
  raw = [r["label"] for r in rows]
  try:
    values = sorted({int(v) for v in raw})
    class_names = tuple(str(v) for v in values)
    raw = [str(int(v)) for v in raw]
  except ValueError:
    class_names = tuple(sorted(set(raw)))
  _check_classes(name, class_names, path)
  index = {k: i for i, k in enumerate(class_names)}
  paths = []
  for line, row in enumerate(rows, start=2):
    file = pathlib.Path(row["path"])
    file = file if file.is_absolute() else path.parent / file
    if not file.is_file():
      raise DataError(f"domain {name}: {path} line {line} names {file}, which does not exist")
    paths.append(str(file))
  patients = None
  if "patient_id" in rows[0]:
    patients = tuple(r["patient_id"] for r in rows)
  return ImageTable(name, tuple(paths), np.asarray([index[v] for v in raw], np.int32),
                    class_names, patients)


def load_table(name: str, path) -> ImageTable:
  """A user domain from a class-folder root or a CSV."""
  path = pathlib.Path(os.path.expanduser(str(path)))
  if path.suffix.lower() == ".csv":
    return load_csv(path, name)
  return load_folder(path, name)


# --------------------------------------------------------------------------- decoding
def _read_dicom(path: pathlib.Path) -> np.ndarray:
  try:
    import pydicom
  except ImportError:
    raise DataError(f"{path} is a DICOM file; reading it needs pydicom "
                    "(pip install pydicom)") from None
  ds = pydicom.dcmread(path)
  pixels = ds.pixel_array.astype(np.float32)
  if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):  # a multi-frame series: frame 0
    pixels = pixels[0]
  lo, hi = float(pixels.min()), float(pixels.max())
  pixels = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
  if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
    pixels = 1.0 - pixels  # MONOCHROME1 shows low values white
  return pixels


def read_image(path, size: int, channels: int, pad_square: bool = False) -> np.ndarray:
  """One file as float32 [size, size, channels] in [0, 1]: grey (luminance) or RGB (grey
  replicated), bilinear resize; 16-bit images scaled by their range. The aspect ratio is
  not kept unless `pad_square`, which first centres the image on a black (0) square of its
  longer side (mammograms, whose background is black)."""
  path = pathlib.Path(path)
  try:
    if path.suffix.lower() in (".dcm", ".dicom"):  # VinDr-CXR ships `.dicom`
      pixels = _read_dicom(path)
      img = Image.fromarray(pixels if pixels.ndim == 2 else pixels[..., :3].mean(-1))
    else:
      with Image.open(path) as f:
        f.load()
        if f.mode.startswith("I") or f.mode == "F":  # 16-bit or float greyscale
          img = Image.fromarray(np.asarray(f, np.float32) / (65535.0 if f.mode != "F" else 1.0))
        else:
          img = f.convert("RGB" if channels == 3 else "L")
    if pad_square and img.width != img.height:
      side = max(img.size)
      square = Image.new(img.mode, (side, side), 0)
      square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
      img = square
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img, np.float32)
  except DataError:
    raise
  except FileNotFoundError as e:
    raise DataError(f"image file {path} is missing") from e
  except Exception as e:  # PIL and pydicom raise many kinds for a damaged file
    raise DataError(f"cannot read image file {path}: {e}") from e
  if img.mode in ("L", "RGB"):
    out = out / 255.0
  if out.ndim == 2:
    out = out[..., None]
  if out.shape[-1] != channels:
    out = np.repeat(out, channels, -1) if channels == 3 else out.mean(-1, keepdims=True)
  return np.clip(out, 0.0, 1.0)


class ImageSource:
  """Random-access source over a table: `source[i]` decodes file i -> (image, label), with
  image float32 [size, size, channels] in [0, 1] (`pad_square` as in `read_image`). A grain
  `MapDataset.source` accepts it."""

  def __init__(self, table: ImageTable, size: int, channels: int, pad_square: bool = False):
    self.table, self.size, self.channels = table, size, channels
    self.pad_square = pad_square
    self.image_shape = (size, size, channels)

  def __len__(self) -> int:
    return len(self.table)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return (read_image(self.table.paths[i], self.size, self.channels, self.pad_square),
            int(self.table.labels[i]))


def dataset(source, indices=None) -> grain.MapDataset:
  """The source's elements (at `indices`) as a grain MapDataset, decoded in the map."""
  if indices is None:
    return grain.MapDataset.source(source)
  idx = np.asarray(indices, np.int64)
  return grain.MapDataset.range(len(idx)).map(lambda k: source[int(idx[k])])


def batches(source, indices, batch_size: int, seed: int, *, shuffle: bool = True,
            drop_remainder: bool = False, threads: int = 4, workers: int = 0,
            prefetch: int = 2) -> grain.IterDataset:
  """One pass over `source[indices]` as batches (images [B, H, W, C], labels [B]), decoded
  and resized in the map, so memory holds only the batches in flight, whatever the size of
  the set: `threads` decoding threads per process, `workers` > 0 decoding processes
  (`mp_prefetch`) with `prefetch` batches buffered each. Shuffled from `seed`."""
  idx = np.asarray(indices, np.int64)
  ds = grain.MapDataset.range(len(idx))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.map(lambda k: source[int(idx[k])]).batch(batch_size, drop_remainder=drop_remainder)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=max(1, prefetch)))
  if workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (outside `train.py`)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=max(1, prefetch)))
  return it


def read_set(source, indices=None, threads: int = 8) -> ImageSet:
  """Decodes the images at `indices` (default all) into memory, `threads` files at a time."""
  idx = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
  if not len(idx):
    raise DataError("no image to read")
  it = dataset(source, idx).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
  first = None
  images = labels = None
  for j, (image, label) in enumerate(it):
    if first is None:
      first = image
      images = np.empty((len(idx),) + image.shape, np.float32)
      labels = np.empty(len(idx), np.int32)
    images[j], labels[j] = image, label
  return ImageSet(images, labels)


# --------------------------------------------------------------------------- splits
def split_indices(table: ImageTable, fractions: Sequence[float], seed: int,
                  limit: int = 0) -> list[np.ndarray]:
  """Disjoint index sets with the given shares of at most `limit` images (0 = all),
  deterministic from `seed` and the domain's name. With a patient column, every patient's
  images land in one split (patients shuffled, filled into the splits in turn); otherwise
  each split is stratified by class."""
  rng = np.random.default_rng((seed, zlib.crc32(table.name.encode())))
  n_all = len(table)
  if table.patient_ids is None:
    from medda_jax.data import digits
    n = min(limit or n_all, n_all)
    sizes = [int(round(n * f)) for f in fractions[:-1]]
    return digits.stratified_splits(table.labels, sizes + [n - sum(sizes)], rng)
  groups: dict[str, list[int]] = {}
  for i, p in enumerate(table.patient_ids):
    groups.setdefault(p, []).append(i)
  patients = sorted(groups)
  order = rng.permutation(len(patients))
  n = min(limit or n_all, n_all)
  bounds = np.cumsum(fractions)[:-1] * n
  parts: list[list[int]] = [[] for _ in fractions]
  taken, part = 0, 0
  for k in order:
    if taken >= n:
      break
    while part < len(bounds) and taken >= bounds[part]:
      part += 1
    parts[part].extend(groups[patients[k]])
    taken += len(groups[patients[k]])
  return [np.asarray(sorted(p), np.int64) for p in parts]


def group_pick(groups: Sequence[str], n: int, rng: np.random.Generator,
               pool=None) -> np.ndarray:
  """Whole groups (patients) from `pool` (default all), in a random order, until at least
  n images are taken: no group is split between the picked and the remaining images."""
  pool = np.arange(len(groups)) if pool is None else np.asarray(pool)
  if n > len(pool):
    raise ConfigError(f"asked for {n} images but only {len(pool)} are available")
  members: dict[str, list[int]] = {}
  for i in pool:
    members.setdefault(groups[i], []).append(int(i))
  out: list[int] = []
  for g in rng.permutation(sorted(members)):
    if len(out) >= n:
      break
    out += members[g]
  return np.sort(np.asarray(out, np.int64))
