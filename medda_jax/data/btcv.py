"""BTCV abdominal CT (Multi-Atlas Labeling Beyond the Cranial Vault, MICCAI 2015), as the
CateNorm paper uses it: 8 of the 13 organs.

Layout (the challenge's RawData/Training folder):

  <root>/img/img0001.nii.gz
  <root>/label/label0001.nii.gz

Labels 1..13 (spleen, right kidney, left kidney, gallbladder, esophagus, liver, stomach,
aorta, inferior vena cava, portal and splenic veins, pancreas, right adrenal, left adrenal)
are mapped to the paper's 8 organs (`ORGANS`, values 1..8); the other organs become
background. Preprocessing (paper Sec. 4.1): clip to [-125, 275] HU, keep the slices of the
organs' z-range, resize in-plane to `image_size` (bilinear with anti-aliasing for the image,
nearest for the labels), z-score per volume. Slices along the last NIfTI axis, so
`Volume.image` is [slices, rows, columns].
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re

import numpy as np
from skimage.transform import resize

from medda_jax.data.arraycache import ordered_map
from medda_jax.data.volumes import DomainVolumes, Volume, cached_volumes, read_nifti
from medda_jax.errors import DataError

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
SITE = "BTCV"
ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "pancreas", "liver",
          "stomach", "aorta")
# BTCV label value of each of ORGANS.
BTCV_VALUES = (1, 2, 3, 4, 11, 6, 7, 8)
HU_WINDOW = (-125.0, 275.0)
_IMAGE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_LAYOUT = ("expected the BTCV training layout: <root>/img/img0001.nii.gz and "
           "<root>/label/label0001.nii.gz")


def organ_map() -> np.ndarray:
  """Lookup table BTCV label (0..255) -> organ value (0 = background)."""
  lut = np.zeros(256, np.uint8)
  for value, btcv in enumerate(BTCV_VALUES, start=1):
    lut[btcv] = value
  return lut


def _cases(root: str) -> list[tuple[str, str, str]]:
  img_dir, label_dir = os.path.join(root, "img"), os.path.join(root, "label")
  if not os.path.isdir(img_dir) or not os.path.isdir(label_dir):
    raise DataError(f"BTCV folder {root} has no img/ and label/ folders; {_LAYOUT}")
  cases = []
  for name in sorted(os.listdir(img_dir)):
    m = _IMAGE.match(name)
    if not m:
      continue
    number = m.group(1)
    label = next((os.path.join(label_dir, f"label{number}{ext}") for ext in (".nii.gz", ".nii")
                  if os.path.exists(os.path.join(label_dir, f"label{number}{ext}"))), None)
    if label is None:
      raise DataError(f"image {os.path.join(img_dir, name)} has no label "
                      f"{os.path.join(label_dir, f'label{number}.nii.gz')}")
    cases.append((f"img{number}", os.path.join(img_dir, name), label))
  if not cases:
    raise DataError(f"{img_dir} holds no img*.nii.gz volumes; {_LAYOUT}")
  return cases


def process_case(case_id: str, image_path: str, label_path: str, image_size: int,
                 ct_window=HU_WINDOW) -> Volume:
  image, zooms = read_nifti(image_path)
  label, _ = read_nifti(label_path)
  if image.shape != label.shape:
    raise DataError(f"BTCV case {case_id}: image {image_path} has shape {image.shape} but "
                    f"label {label_path} has shape {label.shape}")
  label = np.rint(label)
  if label.min() < 0 or label.max() > 13:
    raise DataError(f"label {label_path} has values outside 0..13 (the 13 BTCV organs)")
  organs = organ_map()[label.astype(np.int64)]
  present = np.flatnonzero(organs.any(axis=(0, 1)))
  if present.size == 0:
    raise DataError(f"label {label_path} holds none of the 8 organs {list(ORGANS)}")
  keep = slice(present[0], present[-1] + 1)  # the organs' z-range
  image = np.clip(image[..., keep], *ct_window).astype(np.float32)
  organs = organs[..., keep]
  rows, cols, depth = image.shape
  if (rows, cols) != (image_size, image_size):
    image = resize(image, (image_size, image_size, depth), order=1, preserve_range=True,
                   anti_aliasing=True).astype(np.float32)
    organs = resize(organs, (image_size, image_size, depth), order=0, preserve_range=True,
                    anti_aliasing=False).astype(np.uint8)
  std = float(image.std())
  image = ((image - image.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
  spacing = (zooms[2], zooms[0] * rows / image_size, zooms[1] * cols / image_size)
  return Volume(id=case_id, domain=SITE, image=np.ascontiguousarray(image.transpose(2, 0, 1)),
                mask=np.ascontiguousarray(organs.transpose(2, 0, 1)),
                spacing=tuple(float(s) for s in spacing))


def load_btcv(root, *, image_size: int = 384, ct_window=HU_WINDOW,
              cache_dir=None) -> DomainVolumes:
  """The BTCV training volumes under `root` as one site `BTCV` (masks of organ values
  1..8, `ORGANS`), preprocessed once into `cache_dir` (None: kept in memory)."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"BTCV folder {root} does not exist; {_LAYOUT}")
  cases = _cases(root)
  path = None
  if cache_dir is not None:
    key = json.dumps({"version": _CACHE_VERSION, "size": image_size,
                      "window": list(ct_window),
                      "cases": [(c, os.path.basename(i), os.path.getsize(i),
                                 os.path.getsize(lab)) for c, i, lab in cases]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = os.path.join(os.fspath(cache_dir), f"btcv_{digest}")

  def make():
    log.info("preprocessing BTCV: %d volumes", len(cases))
    return ordered_map(lambda c: process_case(*c, image_size, ct_window), cases)

  volumes = cached_volumes(path, SITE, make)
  return DomainVolumes({SITE: volumes}, f"BTCV abdominal CT from {root}: {len(volumes)} "
                       f"volumes, 8 organs, HU {list(ct_window)}, {image_size}x{image_size}")
