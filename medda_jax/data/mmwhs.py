"""MM-WHS 2017 cardiac MR and CT volumes (synthmix_sifa spec §f), slices for SIFA-style UDA.

Published layout of the labelled training sets (NN = 01..20):

  <root>/mr_train/mr_train_10NN_image.nii.gz   <root>/mr_train/mr_train_10NN_label.nii.gz
  <root>/ct_train/ct_train_10NN_image.nii.gz   <root>/ct_train/ct_train_10NN_label.nii.gz

Labels: 205 -> 1 (MYO, left-ventricle myocardium), 420 -> 2 (LAC, left-atrium blood cavity),
500 -> 3 (LVC, left-ventricle blood cavity), 820 -> 4 (AA, ascending aorta), the class order of
SIFA's `evaluate.py`. The other structures, 550 (right atrium), 600 (right ventricle) and 850
(pulmonary artery), and 0 become background without a message; any other value also becomes
background, with one logged warning per volume that lists the values. Label files are read as
numbers and rounded to the nearest integer first (NIfTI scaling may store them as floats).

Preprocessing (following the PnP-AdaNet data that SIFA used; the exact steps are not
published, so this is our reading):
  1. image and label are reoriented to the closest canonical RAS orientation
     (`nib.as_closest_canonical`), array axes (R, A, S);
  2. coronal slices: the A-P axis (axis 1) becomes the slice axis, `np.moveaxis(x, 1, 0)`,
     giving [A, R, S]: the slice index grows towards anterior, the row index towards the
     patient's right, the column index towards superior;
  3. in-plane crop to the bounding box of the foreground (classes 1-4, over all slices),
     widened on each side by `margin` times the box side along that axis (rounded half up)
     and clipped to the volume. The box is not made square, so the resize in 4 may change
     the aspect ratio. Every slice is kept, also those without foreground;
  4. z-score with the mean and standard deviation (ddof 0) of the cropped volume on its
     native grid (a constant volume becomes 0);
  5. resize every slice to `size` x `size` (`skimage.transform.resize`, order 1 for the
     image, order 0 for the label, no anti-aliasing, range preserved). Bilinear resizing
     commutes with the affine z-score, so this equals resizing first and normalising with
     the statistics of step 4;
  6. clip to the modality limits (lo, hi) and map linearly to [-1, 1]:
     `(clip(z, lo, hi) - lo) / (hi - lo) * 2 - 1`. SIFA's constants (`LIMITS`) are the
     defaults; recompute them for this pipeline and pass them from the experiment config.

A volume without foreground is not cropped; a warning is logged and the volume returned
(the caller decides whether to keep it).

`load_sifa_npz` reads SIFA's released, already preprocessed test volumes instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import nibabel as nib
import numpy as np

from medda_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODALITIES = ("mr", "ct")
CLASS_NAMES = {1: "MYO", 2: "LAC", 3: "LVC", 4: "AA"}
TABLE_ORDER = ("AA", "LAC", "LVC", "MYO")  # the row order of the paper's tables
# MM-WHS label value -> class id; `BACKGROUND_VALUES` map to 0 without a message.
LABEL_VALUES = {205: 1, 420: 2, 500: 3, 820: 4}
BACKGROUND_VALUES = (0, 550, 600, 850)
# Clip limits after z-scoring, SIFA's `evaluate.py` (CT: its `USE_newstat` constants).
LIMITS = {"mr": (-1.8, 4.4), "ct": (-2.8, 3.2)}
CASE_IDS = tuple(range(1001, 1021))
# Our fixed split of the 20 labelled volumes per modality: the seed does not publish the
# paper's test IDs, so the first 16 case ids train and the last 4 test.
SPLIT = {"train": tuple(range(1001, 1017)), "test": tuple(range(1017, 1021))}


@dataclasses.dataclass(frozen=True)
class Volume:
  """One preprocessed volume.

  Attributes:
    name: e.g. "ct_train_1003" (for a SIFA .npz volume: the file name without ".npz").
    image: [D, H, W] float32, slices first, in [-1, 1] for `load_volume` (a SIFA .npz
      volume is mapped without clipping, so it may leave that range).
    label: [D, H, W] int32 class ids 0..4 (`CLASS_NAMES`).
  """

  name: str
  image: np.ndarray
  label: np.ndarray

  def __post_init__(self):
    if self.image.ndim != 3 or self.image.shape != self.label.shape:
      raise ValueError(f"volume {self.name}: image {self.image.shape} and label "
                       f"{self.label.shape} must both be [slices, rows, columns]")

  @property
  def num_slices(self) -> int:
    return int(self.image.shape[0])


def _modality(modality: str) -> str:
  m = str(modality).lower()
  if m not in MODALITIES:
    raise ConfigError(f"MM-WHS modality must be one of {MODALITIES}, got {modality!r}")
  return m


def _case_id(case_id) -> int:
  try:
    n = int(case_id)
  except (TypeError, ValueError):
    n = None
  if n not in CASE_IDS:
    raise ConfigError(f"MM-WHS case id must be one of 1001..1020, got {case_id!r}")
  return n


def _limits(modality: str, limits) -> tuple[float, float]:
  if limits is None:
    return LIMITS[modality]
  try:
    lo, hi = (float(x) for x in limits)
  except (TypeError, ValueError):
    lo = hi = float("nan")
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ConfigError(f"intensity limits must be two finite numbers lo < hi, got {limits!r}")
  return lo, hi


def volume_paths(root: str | os.PathLike, modality: str, case_id: int) -> tuple[str, str]:
  """(image path, label path) of a case in the published layout; nothing is checked on disk.

  Example: `volume_paths(root, "ct", 1003)` ->
  (`<root>/ct_train/ct_train_1003_image.nii.gz`, `<root>/ct_train/ct_train_1003_label.nii.gz`).
  """
  m, n = _modality(modality), _case_id(case_id)
  folder = os.path.join(os.fspath(root), f"{m}_train")
  return (os.path.join(folder, f"{m}_train_{n}_image.nii.gz"),
          os.path.join(folder, f"{m}_train_{n}_label.nii.gz"))


def map_labels(values: np.ndarray, name: str = "") -> np.ndarray:
  """MM-WHS label values -> class ids 0..4 (int32), logging unexpected values once.

  Values are rounded to the nearest integer first. 205, 420, 500, 820 -> 1..4 (MYO, LAC,
  LVC, AA); 0, 550, 600, 850 -> 0 silently; any other value -> 0 with one warning naming
  `name` and listing the values.
  """
  values = np.rint(np.asarray(values))
  lo, hi = (values.min(), values.max()) if values.size else (0, 0)
  if lo >= 0 and hi < 1 << 16:
    # The usual case: counting (slice by slice, to bound memory) is faster than sorting.
    ints = values.astype(np.int32)
    counts = np.zeros(1 << 16, np.int64)
    for part in (ints if ints.ndim > 1 else [ints]):
      counts += np.bincount(np.ravel(part), minlength=1 << 16)
    present = np.flatnonzero(counts)
  else:
    ints = values
    present = np.unique(values)
  out = np.zeros(values.shape, np.int32)
  for value, cls in LABEL_VALUES.items():
    out[ints == value] = cls
  known = set(LABEL_VALUES) | set(BACKGROUND_VALUES)
  unexpected = [v for v in present.tolist() if v not in known]
  if unexpected:
    shown = [int(v) if float(v).is_integer() else float(v) for v in unexpected]
    log.warning("%s: label values %s are not MM-WHS structures; they are set to background "
                "(0)", name or "MM-WHS label", shown)
  return out


def _open(path: str, what: str):
  try:
    return nib.load(path)
  except Exception as e:  # nibabel raises many types for broken or truncated files
    raise DataError(f"cannot read the MM-WHS {what} file {path} ({_one_line(e)}); "
                    "re-download or re-extract it") from e


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _canonical_array(img, path: str, what: str) -> np.ndarray:
  """The data of `img` in closest canonical (RAS) axis order, float32, trailing 1s dropped."""
  try:
    data = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
  except Exception as e:
    raise DataError(f"cannot read the MM-WHS {what} file {path} ({_one_line(e)}); "
                    "re-download or re-extract it") from e
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise DataError(f"the MM-WHS {what} file {path} holds an array of shape {data.shape}, "
                    "not a 3-D volume; replace it with the published file")
  return data


def _read_pair(image_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray]:
  image_img, label_img = _open(image_path, "image"), _open(label_path, "label")
  if tuple(image_img.shape) != tuple(label_img.shape):
    raise DataError(f"the MM-WHS image {image_path} has shape {tuple(image_img.shape)} but "
                    f"its label {label_path} has shape {tuple(label_img.shape)}; replace "
                    "the mismatched pair with the published files")
  image = _canonical_array(image_img, image_path, "image")
  label = _canonical_array(label_img, label_path, "label")
  if image.shape != label.shape:  # same stored shape, different orientations
    raise DataError(f"the MM-WHS image {image_path} and label {label_path} have different "
                    f"orientations (canonical shapes {image.shape} and {label.shape}); "
                    "replace the mismatched pair with the published files")
  return image, label


def _crop_box(foreground: np.ndarray, margin: float) -> tuple[slice, slice]:
  """In-plane (rows, columns) slices of the foreground's bounding box over all slices of a
  [D, H, W] mask, each side widened by round-half-up(margin * box side), clipped."""
  box = []
  for axis, n in ((2, foreground.shape[1]), (1, foreground.shape[2])):
    idx = np.flatnonzero(foreground.any(axis=(0, axis)))
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    pad = int(np.floor(margin * (hi - lo) + 0.5))
    box.append(slice(max(0, lo - pad), min(n, hi + pad)))
  return box[0], box[1]


def _to_unit_range(z: np.ndarray, lo: float, hi: float, clip: bool) -> np.ndarray:
  if clip:
    z = np.clip(z, lo, hi)
  return ((z - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def load_volume(root: str | os.PathLike, modality: str, case_id: int, size: int = 256,
                limits: tuple[float, float] | None = None, margin: float = 0.1) -> Volume:
  """Reads and preprocesses one labelled MM-WHS volume (module docstring, steps 1-6).

  Args:
    root: folder holding `mr_train/` and/or `ct_train/`.
    modality: "mr" or "ct" (case-insensitive).
    case_id: 1001..1020.
    size: output slice side in pixels.
    limits: (lo, hi) clip limits after z-scoring; None uses `LIMITS[modality]`.
    margin: crop margin per side as a fraction of the foreground box side (>= 0).

  Returns:
    Volume named e.g. "ct_train_1003", image float32 [D, size, size] in [-1, 1], label
    int32 [D, size, size] in 0..4, with D the number of coronal slices.

  Raises:
    DataError: the root, modality folder, image or label file is missing, a file cannot be
      read, or image and label differ in shape.
  """
  m, n = _modality(modality), _case_id(case_id)
  lo, hi = _limits(m, limits)
  if int(size) != size or size < 1:
    raise ConfigError(f"size must be a positive integer, got {size!r}")
  if not (np.isfinite(margin) and margin >= 0):
    raise ConfigError(f"margin must be a number >= 0, got {margin!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"MM-WHS root folder {root} does not exist; point it at the folder that "
                    "holds mr_train/ and ct_train/ of the MM-WHS 2017 training data")
  folder = os.path.join(root, f"{m}_train")
  if not os.path.isdir(folder):
    raise DataError(f"MM-WHS folder {folder} is missing; extract the {m.upper()} training "
                    f"set there ({m}_train/{m}_train_10NN_image.nii.gz and _label.nii.gz)")
  image_path, label_path = volume_paths(root, m, n)
  name = f"{m}_train_{n}"
  if not os.path.isfile(image_path):
    raise DataError(f"MM-WHS image file {image_path} is missing; put the published "
                    f"{name}_image.nii.gz in {folder}")
  if not os.path.isfile(label_path):
    raise DataError(f"MM-WHS label file {label_path} for image {image_path} is missing; put "
                    f"the published {name}_label.nii.gz next to the image")

  return load_pair(image_path, label_path, name, size=size, limits=(lo, hi), margin=margin)


def load_pair(image_path: str, label_path: str, name: str, size: int = 256,
              limits: tuple[float, float] = LIMITS["ct"], margin: float = 0.1,
              labels: str = "mmwhs") -> Volume:
  """One image / label NIfTI pair through the MM-WHS preprocessing (a user's own volumes
  use it too). `labels`: "mmwhs" maps the published values (205, 420, 500, 820) to 1-4;
  "indices" takes label values 0-4 as the classes themselves (anything else -> 0, logged)."""
  lo, hi = limits
  image, raw_label = _read_pair(image_path, label_path)
  if labels == "indices":
    raw = np.rint(raw_label).astype(np.int64)
    unexpected = sorted(set(np.unique(raw).tolist()) - set(range(5)))
    if unexpected:
      log.warning("%s: label values %s are not classes 0-4; read as background", label_path,
                  unexpected)
    label = np.where((raw >= 0) & (raw <= 4), raw, 0).astype(np.int32)
  elif labels == "mmwhs":
    label = map_labels(raw_label, label_path)
  else:
    raise ConfigError(f"labels must be 'mmwhs' or 'indices', got {labels!r}")
  del raw_label
  # RAS -> coronal slices first: [A, R, S].
  image, label = np.moveaxis(image, 1, 0), np.moveaxis(label, 1, 0)
  foreground = label > 0
  if foreground.any():
    rows, cols = _crop_box(foreground, margin)
    image, label = image[:, rows, cols], label[:, rows, cols]
  else:
    log.warning("%s: the label holds no foreground class; the volume is "
                "returned uncropped", label_path)

  image = image.astype(np.float64)
  std = image.std()
  z = (image - image.mean()) / std if std > 0 else np.zeros_like(image)
  from skimage.transform import resize  # Imported here: only preprocessing needs it.
  shape = (image.shape[0], int(size), int(size))
  # The slice axis keeps its length, so this is an exact per-slice 2-D resize.
  z = resize(z, shape, order=1, anti_aliasing=False, preserve_range=True)
  label = resize(label, shape, order=0, anti_aliasing=False, preserve_range=True)
  return Volume(name=name, image=_to_unit_range(z, lo, hi, clip=True),
                label=np.asarray(label, np.int32))


def load_split(root: str | os.PathLike, modality: str, split: str, **kwargs) -> list[Volume]:
  """The volumes of `SPLIT[split]` ("train": 1001-1016, "test": 1017-1020), in id order;
  `kwargs` go to `load_volume` (size, limits, margin)."""
  if split not in SPLIT:
    raise ConfigError(f"MM-WHS split must be one of {tuple(SPLIT)}, got {split!r}")
  return [load_volume(root, modality, n, **kwargs) for n in SPLIT[split]]


def load_sifa_npz(path: str | os.PathLike, modality: str,
                  limits: tuple[float, float] | None = None) -> Volume:
  """One of SIFA's released test volumes (`.npz` with `arr_0` image, `arr_1` label).

  As SIFA's `evaluate.py`: image and label [H, W, D] are flipped along axes 0 and 1, and the
  (already z-scored) image is mapped with `(x - lo) / (hi - lo) * 2 - 1` without clipping.
  These volumes are in SIFA's training orientation, which need not match `load_volume`'s;
  score a model trained on `load_volume` data on `load_volume` test volumes.

  Args:
    path: the .npz file.
    modality: "mr" or "ct", selects the default limits.
    limits: (lo, hi); None uses `LIMITS[modality]`.

  Returns:
    Volume named after the file (without ".npz"), image float32 and label int32 [D, H, W].
  """
  lo, hi = _limits(_modality(modality), limits)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"SIFA test volume {path} does not exist; download SIFA's released "
                    "test .npz files and pass one of their paths")
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = set(npz.files)
      if not {"arr_0", "arr_1"} <= keys:
        raise DataError(f"SIFA test volume {path} holds {sorted(keys)}, not arr_0 (image) "
                        "and arr_1 (label); pass one of SIFA's released test .npz files")
      image, label = np.asarray(npz["arr_0"]), np.asarray(npz["arr_1"])
  except DataError:
    raise
  except Exception as e:
    raise DataError(f"cannot read the SIFA test volume {path} ({_one_line(e)}); "
                    "re-download it") from e
  if image.ndim != 3 or image.shape != label.shape:
    raise DataError(f"SIFA test volume {path}: image arr_0 {image.shape} and label arr_1 "
                    f"{label.shape} must both be [H, W, D]; re-download the file")
  if label.size and not (np.all(label == np.rint(label)) and label.min() >= 0
                         and label.max() <= max(CLASS_NAMES)):
    raise DataError(f"SIFA test volume {path}: label arr_1 must hold class ids 0..4, got "
                    f"values in [{label.min()}, {label.max()}]")
  image = np.flip(image, axis=(0, 1)).astype(np.float64)
  label = np.flip(label, axis=(0, 1))
  name = os.path.basename(path)
  name = name[:-len(".npz")] if name.endswith(".npz") else name
  return Volume(name=name,
                image=np.ascontiguousarray(_to_unit_range(image, lo, hi, clip=False)
                                           .transpose(2, 0, 1)),
                label=np.ascontiguousarray(label.transpose(2, 0, 1)).astype(np.int32))
