"""Skin-tone labelling by the individual typology angle (ITA), as the paper's code does it:
hair removal, eight 20x20 patches near the border of the 256x256 image, the lightest
patch's ITA, mapped to a Fitzpatrick type 1-6 (-1: no label).

  ITA = atan((L* - 50) / b*) * 180 / pi     (plain atan: a negative b* gives a negative ITA)

The labels are noisy (the paper: 60.6 % within +-1 of the human type) and are training
targets for the bias head, never clinical skin types.
"""

from __future__ import annotations

import numpy as np

SIZE = 256  # the labeller's image side; patches are placed for it
PATCH = 20
# (row, col) of each patch's top-left corner at 256x256: bottom, top, left, right centre,
# then the four corners.
CORNERS = ((230, 115), (5, 115), (115, 5), (115, 230), (216, 216), (216, 20), (20, 20),
           (20, 216))
# Fitzpatrick type by ITA: type t for ITA in (LOWER[t], upper], type 1 above 55, 6 at <= 10.
THRESHOLDS = (55.0, 41.0, 28.0, 19.0, 10.0)
FAILED = -1


def remove_hair(image_uint8: np.ndarray) -> np.ndarray:
  """Dark hairs painted over (uint8 RGB [H, W, 3]): the black-hat of the grey image with a
  17x17 cross (OpenCV shape id 1), thresholded at > 10, inpainted (Telea, radius 1)."""
  import cv2
  grey = cv2.cvtColor(image_uint8, cv2.COLOR_RGB2GRAY)
  kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (17, 17))
  blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel)
  _, mask = cv2.threshold(blackhat, 10, 255, cv2.THRESH_BINARY)
  return cv2.inpaint(image_uint8, mask, 1, cv2.INPAINT_TELEA)


def to_labeller_size(image: np.ndarray) -> np.ndarray:
  """Centre-crop to a square and resize to 256x256 (uint8 RGB), as the code prepares
  images before labelling; float input is taken as [0, 1]."""
  import cv2
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = np.ascontiguousarray(image[top:top + side, left:left + side, :3])
  if side != SIZE:
    image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
  return image


def patch_means(lab: np.ndarray, rescale: bool = False) -> np.ndarray:
  """Mean (L*, b*) of the eight patches: lab [N, H, W, 3] -> [N, 8, 2]. The images must be
  256x256 unless `rescale`, which scales the patch corners and side to the image size."""
  n, h, w, _ = lab.shape
  if (h, w) != (SIZE, SIZE) and not rescale:
    raise ValueError(f"the ITA patches are placed for {SIZE}x{SIZE} images, got {h}x{w} "
                     "(resize first, or pass rescale=True)")
  sy, sx = h / SIZE, w / SIZE
  ph, pw = max(1, round(PATCH * sy)), max(1, round(PATCH * sx))
  out = np.empty((n, len(CORNERS), 2), np.float64)
  for k, (r, c) in enumerate(CORNERS):
    r0, c0 = round(r * sy), round(c * sx)
    patch = lab[:, r0:r0 + ph, c0:c0 + pw]
    out[:, k, 0] = patch[..., 0].mean(axis=(1, 2))
    out[:, k, 1] = patch[..., 2].mean(axis=(1, 2))
  return out


def ita_of(lightness, b) -> np.ndarray:
  """ITA in degrees with plain atan; NaN where b* = 0 (undefined)."""
  lightness, b = np.asarray(lightness, np.float64), np.asarray(b, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ita = np.degrees(np.arctan((lightness - 50.0) / b))
  return np.where(b == 0, np.nan, ita)


def fitzpatrick_type(ita, thresholds=THRESHOLDS) -> np.ndarray:
  """Type 1 if ITA > 55, 2 if in (41, 55], 3 (28, 41], 4 (19, 28], 5 (10, 19], 6 <= 10
  (`thresholds`: the five bounds); -1 where ITA is not finite."""
  ita = np.asarray(ita, np.float64)
  types = 1 + np.sum(ita[..., None] <= np.asarray(thresholds, np.float64), axis=-1)
  return np.where(np.isfinite(ita), types, FAILED).astype(np.int32)


def label_batch(images: np.ndarray, hair_removal: bool = True, rescale: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
  """(ITA [N], Fitzpatrick type [N]) of RGB images [N, H, W, 3] (uint8, or float in [0, 1]):
  per image the largest patch ITA (the lightest patch, taken as healthy skin)."""
  from skimage.color import rgb2lab
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.clip(np.round(images.astype(np.float64) * 255), 0, 255).astype(np.uint8)
  if hair_removal:
    images = np.stack([remove_hair(np.ascontiguousarray(x)) for x in images])
  lab = rgb2lab(images)  # vectorised over the batch (channel axis last)
  means = patch_means(lab, rescale)
  ita = ita_of(means[..., 0], means[..., 1])
  # the largest finite patch ITA; an image whose patches are all undefined fails
  best = np.where(np.isfinite(ita), ita, -np.inf).max(axis=1)
  best = np.where(np.isfinite(best), best, np.nan)
  return best, fitzpatrick_type(best)


def label_files(paths, batch_size: int = 64, hair_removal: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
  """ITA and type of image files, read, centre-cropped and resized one batch at a time."""
  from PIL import Image
  itas, types = [], []
  for start in range(0, len(paths), batch_size):
    batch = []
    for p in paths[start:start + batch_size]:
      with Image.open(p) as f:
        batch.append(to_labeller_size(np.asarray(f.convert("RGB"))))
    ita, t = label_batch(np.stack(batch), hair_removal)
    itas.append(ita)
    types.append(t)
  if not itas:
    return np.zeros(0), np.zeros(0, np.int32)
  return np.concatenate(itas), np.concatenate(types)
