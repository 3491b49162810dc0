"""MetaImage (ITK MetaIO) volumes: a `.mhd` text header and its `.raw` data, without SimpleITK.

The header is `key = value` lines, `ElementDataFile` last:

  ObjectType = Image
  NDims = 3
  BinaryData = True
  BinaryDataByteOrderMSB = False      (ElementByteOrderMSB is a synonym)
  CompressedData = False              (True: the data is a zlib stream)
  TransformMatrix = 1 0 0 0 1 0 0 0 1
  Offset = -195 -195 -378             (Origin and Position are synonyms)
  ElementSpacing = 0.76 0.76 2.5
  DimSize = 512 512 121               (x y z: x varies fastest in the data)
  ElementType = MET_SHORT
  ElementDataFile = scan.raw          (relative to the header's folder, or LOCAL: the data
                                       follows the header in the same file)

`HeaderSize = n` skips n bytes at the start of the data file (-1: the data is the file's
last bytes). Arrays are returned in numpy order, the header's axes reversed: (z, y, x) for
a 3-D image, with spacing and origin reordered the same way. Several channels per voxel
(`ElementNumberOfChannels`) become a last axis. File lists and name patterns in
`ElementDataFile` are not supported.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Sequence

import numpy as np

from medda_jax.errors import DataError

# MetaIO element type -> numpy type (byte order applied from the header).
ELEMENT_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_NUMPY_TYPES = {np.dtype(code).str[1:]: name for name, code in ELEMENT_TYPES.items()}
_ORIGIN_KEYS = ("Offset", "Origin", "Position")
_DIRECTION_KEYS = ("TransformMatrix", "Rotation", "Orientation")
_MSB_KEYS = ("BinaryDataByteOrderMSB", "ElementByteOrderMSB")


@dataclasses.dataclass(frozen=True)
class MetaImage:
  """A MetaImage read into memory.

  Attributes:
    array: the voxels in numpy order, (z, y, x) for 3-D (header axes reversed), plus a last
      channel axis when the header has ElementNumberOfChannels > 1.
    spacing: voxel size along the array's axes, (z, y, x) for 3-D.
    origin: world position of voxel 0's centre, (z, y, x) for 3-D.
    direction: the header's TransformMatrix as an [n, n] array, in the header's (x, y, z)
      order as written; the identity when the header has none.
    header: the raw header values by key.
  """

  array: np.ndarray
  spacing: tuple[float, ...]
  origin: tuple[float, ...]
  direction: np.ndarray
  header: dict[str, str]


def _read_header(path: str) -> tuple[dict[str, str], int]:
  """Header values and the byte offset just after the `ElementDataFile` line."""
  header: dict[str, str] = {}
  try:
    with open(path, "rb") as f:
      number = 0
      while True:
        raw = f.readline()
        if not raw:
          raise DataError(f"{path}: MetaImage header has no ElementDataFile line")
        number += 1
        line = raw.decode("latin-1").strip()
        if not line:
          continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
          raise DataError(f"{path} line {number}: expected 'key = value' in a MetaImage "
                          f"header, got {line[:60]!r}")
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
          return header, f.tell()
  except OSError as e:
    raise DataError(f"cannot read MetaImage header {path}: {e.strerror or e}") from e


def read_header(path) -> dict[str, str]:
  """The `key = value` pairs of a MetaImage header, values as written (strings)."""
  return _read_header(os.fspath(path))[0]


def _get(header: dict[str, str], keys: Sequence[str]) -> str | None:
  for k in keys:
    if k in header:
      return header[k]
  return None


def _numbers(path: str, key: str, value: str, kind=float) -> list:
  try:
    return [kind(v) for v in value.split()]
  except ValueError:
    raise DataError(f"{path}: {key} = {value!r} is not a list of numbers") from None


def _flag(path: str, key: str, value: str | None) -> bool:
  if value is None:
    return False
  if value.lower() in ("true", "1"):
    return True
  if value.lower() in ("false", "0"):
    return False
  raise DataError(f"{path}: {key} = {value!r} is neither True nor False")


def read_metaimage(path) -> MetaImage:
  """Reads a `.mhd` (or `.mha`) file and its data; one-line DataError for bad input."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"MetaImage header {path} does not exist")
  header, data_offset = _read_header(path)
  if "DimSize" not in header:
    raise DataError(f"{path}: MetaImage header has no DimSize")
  dims = _numbers(path, "DimSize", header["DimSize"], int)
  if not dims or any(d < 1 for d in dims):
    raise DataError(f"{path}: DimSize = {header['DimSize']!r} must be positive integers")
  ndims = len(dims)
  if "NDims" in header and _numbers(path, "NDims", header["NDims"], int) != [ndims]:
    raise DataError(f"{path}: NDims = {header['NDims']} but DimSize has {ndims} values")
  element_type = header.get("ElementType")
  if element_type not in ELEMENT_TYPES:
    raise DataError(f"{path}: unknown ElementType {element_type!r} (known: "
                    f"{', '.join(ELEMENT_TYPES)})")

  def vector(keys, default) -> list[float]:
    value = _get(header, keys)
    if value is None:
      return list(default)
    out = _numbers(path, keys[0], value)
    if len(out) != ndims:
      raise DataError(f"{path}: {keys[0]} = {value!r} has {len(out)} values, DimSize {ndims}")
    return out

  spacing = vector(("ElementSpacing", "ElementSize"), [1.0] * ndims)
  origin = vector(_ORIGIN_KEYS, [0.0] * ndims)
  direction_value = _get(header, _DIRECTION_KEYS)
  direction = np.eye(ndims)
  if direction_value is not None:
    values = _numbers(path, "TransformMatrix", direction_value)
    if len(values) != ndims * ndims:
      raise DataError(f"{path}: TransformMatrix has {len(values)} values, expected "
                      f"{ndims * ndims}")
    direction = np.array(values).reshape(ndims, ndims)
  channels = _numbers(path, "ElementNumberOfChannels",
                      header.get("ElementNumberOfChannels", "1"), int)
  if len(channels) != 1 or channels[0] < 1:
    raise DataError(f"{path}: ElementNumberOfChannels must be a positive integer")
  msb = _flag(path, "BinaryDataByteOrderMSB", _get(header, _MSB_KEYS))
  compressed = _flag(path, "CompressedData", header.get("CompressedData"))
  dtype = np.dtype(ELEMENT_TYPES[element_type]).newbyteorder(">" if msb else "<")
  expected = int(np.prod(dims)) * channels[0] * dtype.itemsize

  data_file = header["ElementDataFile"]
  if data_file.upper() == "LOCAL":
    data_path, skip = path, data_offset
  elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
    raise DataError(f"{path}: ElementDataFile = {data_file!r} (a file list or pattern) is "
                    "not supported")
  else:
    data_path = os.path.join(os.path.dirname(path), data_file)
    skip = int(_numbers(path, "HeaderSize", header.get("HeaderSize", "0"), int)[0])
    if not os.path.isfile(data_path):
      raise DataError(f"{path} names data file {data_file}, which is missing")
  try:
    size = os.path.getsize(data_path)
    if skip < 0:  # HeaderSize = -1: the data is the last bytes of the file
      skip = max(size - expected, 0) if not compressed else 0
    with open(data_path, "rb") as f:
      f.seek(skip)
      data = f.read()
  except OSError as e:
    raise DataError(f"cannot read MetaImage data {data_path}: {e.strerror or e}") from e
  if compressed:
    try:
      data = zlib.decompress(data, wbits=47)  # zlib or gzip stream
    except zlib.error as e:
      raise DataError(f"{data_path}: CompressedData = True but the data does not "
                      f"decompress ({e})") from e
  if len(data) != expected:
    what = "decompressed data" if compressed else "data"
    raise DataError(f"{data_path}: {what} has {len(data)} bytes, but DimSize "
                    f"{' '.join(map(str, dims))} x {channels[0]} channel(s) of {element_type} "
                    f"({dtype.itemsize} bytes) needs {expected}")
  shape = tuple(reversed(dims)) + ((channels[0],) if channels[0] > 1 else ())
  array = np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))
  return MetaImage(array=array, spacing=tuple(float(s) for s in reversed(spacing)),
                   origin=tuple(float(o) for o in reversed(origin)), direction=direction,
                   header=header)


def read_mhd(path, with_origin: bool = False):
  """`(array, spacing)` of a MetaImage, or `(array, spacing, origin)` with `with_origin`;
  array, spacing and origin in numpy order, (z, y, x) for 3-D (see `read_metaimage`)."""
  image = read_metaimage(path)
  if with_origin:
    return image.array, image.spacing, image.origin
  return image.array, image.spacing


def _format(values) -> str:
  return " ".join(repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)
                  for v in values)


def write_mhd(path, array: np.ndarray, spacing: Sequence[float],
              origin: Sequence[float] | None = None, *, compressed: bool = False,
              local: bool = False, msb: bool = False) -> str:
  """Writes `array` (numpy order, (z, y, x) for 3-D) as a MetaImage that `read_mhd` reads
  back exactly; spacing and origin in the array's axis order (origin defaults to zeros).

  The data goes to `<stem>.raw` next to the header (`<stem>.zraw` with `compressed`, a zlib
  stream), or after the header in the same file with `local`; `msb` writes big-endian.
  Returns the header's path."""
  path = os.fspath(path)
  array = np.asarray(array)
  code = array.dtype.str[1:]
  if code not in _NUMPY_TYPES:
    raise ValueError(f"cannot write dtype {array.dtype} as MetaImage (types: "
                     f"{', '.join(sorted(_NUMPY_TYPES))})")
  origin = [0.0] * array.ndim if origin is None else list(origin)
  if array.ndim < 1 or len(spacing) != array.ndim or len(origin) != array.ndim:
    raise ValueError(f"spacing {tuple(spacing)} and origin {tuple(origin)} need one value per "
                     f"axis of the {array.shape} array")
  data = np.ascontiguousarray(array, array.dtype.newbyteorder(">" if msb else "<")).tobytes()
  if compressed:
    data = zlib.compress(data)
  stem = os.path.splitext(os.path.basename(path))[0]
  data_file = "LOCAL" if local else stem + (".zraw" if compressed else ".raw")
  n = array.ndim
  lines = [
      ("ObjectType", "Image"), ("NDims", n), ("BinaryData", "True"),
      ("BinaryDataByteOrderMSB", str(msb)), ("CompressedData", str(compressed)),
      *([("CompressedDataSize", len(data))] if compressed else []),
      ("TransformMatrix", _format(np.eye(n, dtype=int).reshape(-1))),
      ("Offset", _format(reversed(origin))), ("ElementSpacing", _format(reversed(spacing))),
      ("DimSize", _format(reversed(array.shape))), ("ElementType", _NUMPY_TYPES[code]),
      ("ElementDataFile", data_file),
  ]
  text = "".join(f"{k} = {v}\n" for k, v in lines).encode("ascii")
  with open(path, "wb") as f:
    f.write(text)
    if local:
      f.write(data)
  if not local:
    with open(os.path.join(os.path.dirname(path), data_file), "wb") as f:
      f.write(data)
  return path
