"""Melanoma domains: the published tables (ISIC 2020, ISIC 2017, Fitzpatrick17k), a generic
image folder or CSV (Atlas, ASAN, MClass, your own data), and the synthetic skin images of
the demo. A domain is a list of image files with a melanoma label (1 = malignant) and,
where known, a human Fitzpatrick type (-1 = unknown); images are read per batch.

Published layouts:
  ISIC 2020      <dir>/train.csv (image_name, target[, patient_id, ...]) + <dir>/train/<image_name>.jpg
  ISIC 2017      <dir>/ISIC-2017_Training_Part3_GroundTruth.csv (image_id, melanoma, ...)
                 + <dir>/ISIC-2017_Training_Data/<image_id>.jpg
  Fitzpatrick17k <dir>/fitzpatrick17k.csv (md5hash, fitzpatrick, three_partition_label[, qc])
                 + <dir>/images/<md5hash>.jpg; kept: three_partition_label benign or
                 malignant, qc not "3 Wrongly labelled", fitzpatrick 1-6
  your domain    a CSV path,label[,fitzpatrick][,patient_id] or a class-folder root
                 <root>/<class>/*; the malignant class is "malignant", "melanoma" or "1"
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from medda_jax import files
from medda_jax.data import images as images_lib
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

POSITIVE = ("malignant", "melanoma", "1", "mel")
ISIC2017_CSV = "ISIC-2017_Training_Part3_GroundTruth.csv"
ISIC2017_IMAGES = "ISIC-2017_Training_Data"
DEMO_LABEL = ("DEMO DATA (synthetic skin images in CIELAB with known ITA, lesions, texture and "
              "hairs — no dermatology data offline); not a reproduction of the paper's numbers")


@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  paths: tuple[str, ...]
  labels: np.ndarray  # int32 [N], 1 = malignant
  skin: np.ndarray  # int32 [N], human Fitzpatrick type 1-6, -1 unknown

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, idx) -> "Domain":
    idx = np.asarray(idx, np.int64)
    return Domain(self.name, tuple(self.paths[i] for i in idx), self.labels[idx], self.skin[idx])


def _check_files(name: str, paths, where) -> None:
  for line, p in enumerate(paths, start=2):
    if not pathlib.Path(p).is_file():
      raise DataError(f"domain {name}: {where} line {line} names {p}, which does not exist")


def _int(value: str, where: str, column: str) -> int:
  try:
    return int(float(value))
  except ValueError:
    raise DataError(f"{where}: column {column} holds {value!r}, not a number") from None


def load_isic2020(root, name: str = "isic2020") -> Domain:
  root = pathlib.Path(root)
  csv = root / "train.csv"
  rows = read_csv_rows(csv, ("image_name", "target"),
                       "expected ISIC 2020: train.csv (image_name, target, ...) and train/*.jpg")
  paths = [str(root / "train" / f"{r['image_name']}.jpg") for r in rows]
  _check_files(name, paths, csv)
  labels = [_int(r["target"], str(csv), "target") for r in rows]
  return Domain(name, tuple(paths), np.asarray(labels, np.int32), np.full(len(rows), -1, np.int32))


def load_isic2017(root, name: str = "isic2017") -> Domain:
  root = pathlib.Path(root)
  csv = root / ISIC2017_CSV
  rows = read_csv_rows(csv, ("image_id", "melanoma"),
                       f"expected ISIC 2017: {ISIC2017_CSV} (image_id, melanoma, "
                       f"seborrheic_keratosis) and {ISIC2017_IMAGES}/*.jpg")
  paths = [str(root / ISIC2017_IMAGES / f"{r['image_id']}.jpg") for r in rows]
  _check_files(name, paths, csv)
  labels = [_int(r["melanoma"], str(csv), "melanoma") for r in rows]
  return Domain(name, tuple(paths), np.asarray(labels, np.int32), np.full(len(rows), -1, np.int32))


def load_fitzpatrick17k(root, name: str = "fitzpatrick17k") -> Domain:
  """The neoplastic subset with a human type (the paper's filtering)."""
  root = pathlib.Path(root)
  csv = root / "fitzpatrick17k.csv"
  rows = read_csv_rows(csv, ("md5hash", "fitzpatrick", "three_partition_label"),
                       "expected Fitzpatrick17k: fitzpatrick17k.csv (md5hash, fitzpatrick, "
                       "three_partition_label, qc, ...) and images/<md5hash>.jpg")
  kept = [r for r in rows if r["three_partition_label"] in ("benign", "malignant")
          and r.get("qc", "") != "3 Wrongly labelled"
          and _int(r["fitzpatrick"], str(csv), "fitzpatrick") in range(1, 7)]
  if not kept:
    raise DataError(f"{csv} has no benign or malignant image with a Fitzpatrick type 1-6")
  paths = [str(root / "images" / f"{r['md5hash']}.jpg") for r in kept]
  _check_files(name, paths, csv)
  return Domain(name, tuple(paths),
                np.asarray([r["three_partition_label"] == "malignant" for r in kept], np.int32),
                np.asarray([int(float(r["fitzpatrick"])) for r in kept], np.int32))


def load_user(name: str, path) -> Domain:
  """A class-folder root or a CSV path,label[,fitzpatrick] (Atlas, ASAN, MClass, yours)."""
  table = images_lib.load_table(name, path)
  positive = [i for i, c in enumerate(table.class_names) if c.lower() in POSITIVE]
  if len(table.class_names) != 2 or len(positive) != 1:
    raise DataError(f"domain {name}: classes {list(table.class_names)} must be two, one of them "
                    f"the malignant class ({', '.join(POSITIVE)})")
  labels = (table.labels == positive[0]).astype(np.int32)
  skin = np.full(len(table), -1, np.int32)
  if str(path).lower().endswith(".csv"):
    rows = read_csv_rows(path, ("path", "label"), "")
    if rows and "fitzpatrick" in rows[0]:
      skin = np.asarray([_int(r["fitzpatrick"] or "-1", str(path), "fitzpatrick")
                         for r in rows], np.int32)
      skin = np.where((skin >= 1) & (skin <= 6), skin, -1).astype(np.int32)
  return Domain(name, table.paths, labels, skin)


# --------------------------------------------------------------------------- reading
def read_image(path: str, size: int) -> np.ndarray:
  """float32 [size, size, 3] in [0, 1]: centre-cropped to a square, then resized."""
  from PIL import Image
  try:
    with Image.open(path) as f:
      img = f.convert("RGB")
  except FileNotFoundError:
    raise DataError(f"image file {path} is missing") from None
  except Exception as e:  # PIL raises many kinds for a damaged file
    raise DataError(f"cannot read image file {path}: {e}") from None
  w, h = img.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  img = img.crop((left, top, left + side, top + side))
  if side != size:
    img = img.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(img, np.float32) / 255.0


def read_batch(paths, size: int) -> np.ndarray:
  return np.stack([read_image(p, size) for p in paths]) if len(paths) else np.zeros(
      (0, size, size, 3), np.float32)


# --------------------------------------------------------------------------- synthetic
def skin_lab(ita: float, radius: float = 26.0, a: float = 12.0) -> np.ndarray:
  """A skin colour (L*, a*, b*) whose ITA is exactly `ita`: L* - 50 = r sin, b* = r cos."""
  t = np.radians(ita)
  return np.array([50.0 + radius * np.sin(t), a, radius * np.cos(t)])


TYPE_ITA = {1: (58.0, 70.0), 2: (43.0, 53.0), 3: (30.0, 39.0), 4: (21.0, 26.0),
            5: (12.0, 17.0), 6: (-30.0, 7.0)}  # ITA drawn inside each type's band


def synth_image(rng: np.random.Generator, skin_type: int, malignant: bool, size: int,
                hairs: int, lighting: float = 1.0) -> tuple[np.ndarray, float]:
  """uint8 RGB [size, size, 3] and its skin ITA: a skin field of the type's ITA with texture,
  a darker elliptical lesion (malignant: irregular border and a blue-grey veil), dark hairs."""
  import cv2
  from scipy.ndimage import gaussian_filter
  from skimage.color import lab2rgb
  ita = float(rng.uniform(*TYPE_ITA[skin_type]))
  base = skin_lab(ita, radius=float(rng.uniform(24, 28)), a=float(rng.uniform(9, 15)))
  lab = np.broadcast_to(base, (size, size, 3)).copy()
  texture = gaussian_filter(rng.normal(size=(size, size)), size / 40) * 6.0
  lab[..., 0] += texture
  yy, xx = np.mgrid[:size, :size] / size
  cy, cx = rng.uniform(0.4, 0.6, 2)
  ry, rx = rng.uniform(0.12, 0.22, 2)
  angle = np.arctan2(yy - cy, xx - cx)
  wobble = 1.0 + (0.25 * np.sin(3 * angle + rng.uniform(0, 6)) * malignant)
  r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) / wobble
  lesion = np.clip(1.5 * (1.0 - r), 0.0, 1.0)  # soft edge
  contrast = 0.3 + 0.7 * (base[0] - 20) / 60  # lesions stand out less on darker skin
  lab[..., 0] -= float(rng.uniform(15, 30)) * contrast * lesion
  lab[..., 2] += 6.0 * lesion
  if malignant or rng.random() < 0.15:  # a blue-grey veil: b* falls inside the lesion
    veil = np.clip(2.0 * (1.0 - r / 0.6), 0.0, 1.0) * rng.uniform(0.5, 1.0) * contrast
    lab[..., 2] -= (18.0 if malignant else 8.0) * veil
  lab[..., 0] = np.clip(lab[..., 0] * lighting, 0, 100)
  rgb = (np.clip(lab2rgb(lab), 0, 1) * 255).round().astype(np.uint8)
  for _ in range(hairs):  # thin dark curves
    pts = rng.uniform(0, size, (2, 2)).astype(np.int32)
    mid = (pts.mean(0) + rng.normal(0, size / 8, 2)).astype(np.int32)
    curve = np.stack([pts[0], mid, pts[1]]).reshape(-1, 1, 2)
    cv2.polylines(rgb, [curve], False, (40, 28, 22), max(1, size // 128))
  return rgb, ita


def make_demo_domain(folder: pathlib.Path, name: str, counts: dict, size: int, seed: int,
                     hairs: int = 3, lighting=(0.8, 1.1)) -> pathlib.Path:
  """Writes `counts[(type, malignant)]` images per skin type and class as PNGs and a manifest
  `name.csv` (path, label, fitzpatrick, ita); returns the manifest (kept if present). Each
image's L* is scaled by a lighting factor drawn from `lighting` (dim photos read darker
to the ITA labeller, as real ones do)."""
  from PIL import Image
  manifest = folder / f"{name}.csv"
  if manifest.exists():
    return manifest
  (folder / name).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  lines = ["path,label,fitzpatrick,ita"]
  k = 0
  for (skin_type, malignant), n in sorted(counts.items()):
    for _ in range(n):
      rgb, ita = synth_image(rng, skin_type, bool(malignant), size,
                             int(rng.integers(0, hairs + 1)), float(rng.uniform(*lighting)))
      rel = f"{name}/{k:05d}.png"
      Image.fromarray(rgb).save(folder / rel)
      lines.append(f"{rel},{'malignant' if malignant else 'benign'},{skin_type},{ita:.3f}")
      k += 1
  files.write_text(manifest, "\n".join(lines) + "\n")  # last: marks the domain complete
  return manifest
