"""SISSI's data: detection sets (uint8 RGB images resized to a square side, boxes in that
geometry), read per file so large sets stream; the Cellpose loader (its published layout);
the user's own image + box manifests (CSV or COCO JSON); and the embedded demo (a real IHC
image with weak labels as the noisy target, synthetic cells with exact boxes as the
labelled source).

Layouts:
  Cellpose      ROOT/train/XXX_img.png + XXX_masks.png (instance ids, 0 = background), and
                ROOT/test/ alike (or the pairs directly in ROOT); boxes from mask instances.
  CSV manifest  columns image,x1,y1,x2,y2 in pixels of the file, one row per box; a row with
                empty x1..y2 lists an image without boxes. Paths relative to the CSV.
  COCO JSON     "images" [{id, file_name}], "annotations" [{image_id, bbox: [x, y, w, h]}].
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from medda_jax.data.images import read_image
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

CELLPOSE_LAYOUT = ("Cellpose layout: ROOT/train/XXX_img.png with ROOT/train/XXX_masks.png "
                   "(instance masks), and ROOT/test/ alike")
CSV_COLUMNS = ("image", "x1", "y1", "x2", "y2")


def resize(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def scale_boxes(boxes: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
  return np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([size / width, size / height] * 2)


@dataclasses.dataclass
class DetSet:
  """Images (in memory, or read and resized per index from `paths`) and their boxes."""

  name: str
  size: int
  boxes: list
  arrays: np.ndarray | None = None
  paths: tuple = ()

  def __len__(self) -> int:
    return len(self.boxes)

  def image(self, i: int) -> np.ndarray:
    if self.arrays is not None:
      return self.arrays[i]
    # the project's reader (float in [0, 1] after its bilinear resize), back to the uint8
    # that PIL's resize gave: seamless cloning works on uint8 images
    return np.round(read_image(self.paths[i], self.size, 3) * 255).astype(np.uint8)

  def images(self, idx) -> np.ndarray:
    return np.stack([self.image(int(i)) for i in idx])

  def subset(self, idx) -> "DetSet":
    idx = list(idx)
    return DetSet(self.name, self.size, [self.boxes[i] for i in idx],
                  None if self.arrays is None else self.arrays[idx],
                  tuple(self.paths[i] for i in idx) if self.paths else ())


def image_size(path: pathlib.Path) -> tuple[int, int]:
  if not path.is_file():
    raise DataError(f"image {path} named in the data does not exist")
  try:
    with Image.open(path) as im:
      return im.size
  except OSError as e:
    raise DataError(f"cannot read image {path}: {e}") from None


def check_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> None:
  bad = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
         | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
  if bad.any():
    b = boxes[np.argmax(bad)]
    raise DataError(f"{where}: box ({b[0]:g}, {b[1]:g}, {b[2]:g}, {b[3]:g}) is outside the "
                    f"{width}x{height} image or empty (x1 < x2 <= width, y1 < y2 <= height)")


# --------------------------------------------------------------------------- Cellpose
def mask_boxes(mask: np.ndarray) -> np.ndarray:
  """Boxes (x1, y1, x2, y2) of the instances of an integer mask, by instance id."""
  boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop)
           for s in ndi.find_objects(mask.astype(np.int64)) if s is not None]
  return np.array(boxes, np.float64).reshape(-1, 4)


def load_cellpose(root, split: str, size: int) -> DetSet:
  root = pathlib.Path(root)
  folder = root / split if (root / split).is_dir() else root
  images = sorted(folder.glob("*_img.png"))
  if not images:
    raise DataError(f"no *_img.png files in {folder}; expected the {CELLPOSE_LAYOUT}")
  boxes = []
  for img in images:
    mpath = img.with_name(img.name[:-len("_img.png")] + "_masks.png")
    if not mpath.is_file():
      raise DataError(f"{mpath} is missing (the instance mask of {img.name}); expected the "
                      f"{CELLPOSE_LAYOUT}")
    try:
      with Image.open(mpath) as m:
        mask = np.asarray(m)
    except OSError as e:
      raise DataError(f"cannot read mask {mpath}: {e}") from None
    h, w = mask.shape[:2]
    boxes.append(scale_boxes(mask_boxes(mask if mask.ndim == 2 else mask[..., 0]), w, h, size))
  return DetSet(f"cellpose_{split}", size, boxes, paths=tuple(images))


# --------------------------------------------------------------------------- user manifests
def load_manifest(name: str, path, size: int) -> DetSet:
  """A CSV or COCO-JSON manifest of images and boxes (pixels of the files)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"data {name!r}: manifest {path} does not exist")
  per_image: dict[str, list] = {}
  if path.suffix.lower() == ".json":
    try:
      coco = json.loads(path.read_text())
      files = {im["id"]: im["file_name"] for im in coco["images"]}
      for f in files.values():
        per_image.setdefault(f, [])
      for a in coco.get("annotations", []):
        x, y, w, h = a["bbox"]
        per_image[files[a["image_id"]]].append((x, y, x + w, y + h))
    except (ValueError, KeyError, TypeError) as e:
      raise DataError(f"data {name!r}: {path} is not a COCO detection file (images with id "
                      f"and file_name, annotations with image_id and bbox): {e!r}") from None
  else:
    try:
      rows = read_csv_rows(path, CSV_COLUMNS, "")
    except DataError as e:
      raise DataError(f"data {name!r}: " + str(e).strip().replace("\n", " ")
                      + "; expected columns " + ",".join(CSV_COLUMNS)) from None
    for k, row in enumerate(rows, start=2):
      boxes = per_image.setdefault(row["image"], [])
      if row["x1"] == "":
        continue
      try:
        boxes.append(tuple(float(row[c]) for c in CSV_COLUMNS[1:]))
      except ValueError:
        raise DataError(f"data {name!r}: {path} line {k}: x1,y1,x2,y2 must be numbers") from None
  paths, boxes = [], []
  for f, bs in per_image.items():
    p = pathlib.Path(f) if pathlib.Path(f).is_absolute() else path.parent / f
    w, h = image_size(p)
    b = np.array(bs, np.float64).reshape(-1, 4)
    check_boxes(b, w, h, f"data {name!r}, {p.name}")
    paths.append(p)
    boxes.append(scale_boxes(b, w, h, size))
  if not paths:
    raise DataError(f"data {name!r}: {path} lists no images")
  return DetSet(name, size, boxes, paths=tuple(paths))


# --------------------------------------------------------------------------- demo
def synthetic_cells(n: int, size: int, seed: int, cells=(6, 16), radius=(3.0, 7.0)) -> DetSet:
  """Labelled source stand-in: textured dark ellipses (nucleus-like, hue jittered) on a
  light noisy background, with exact boxes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  images, boxes = [], []
  for _ in range(n):
    bg = np.array([0.92, 0.86, 0.88]) + rng.normal(0, 0.03, 3)
    img = np.broadcast_to(bg, (size, size, 3)).copy() + rng.normal(0, 0.03, (size, size, 3))
    bs = []
    for _ in range(rng.integers(*cells)):
      rx, ry = rng.uniform(*radius, size=2)
      cx, cy = rng.uniform(rx, size - rx), rng.uniform(ry, size - ry)
      t = rng.uniform(0, np.pi)
      u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / rx
      v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / ry
      inside = u ** 2 + v ** 2 <= 1
      if not inside.any():
        continue
      colour = np.array([0.35, 0.3, 0.55]) + rng.normal(0, 0.06, 3)
      img[inside] = colour + rng.normal(0, 0.05, (inside.sum(), 3))
      ys, xs = np.nonzero(inside)
      bs.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    boxes.append(np.array(bs, np.float64).reshape(-1, 4))
  return DetSet("synthetic_cells", size, boxes, arrays=np.stack(images))


def tile_boxes(boxes: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
  """The boxes whose centre lies in the tile, shifted and clipped to it."""
  c = (boxes[:, :2] + boxes[:, 2:]) / 2
  inside = (c[:, 0] >= x0) & (c[:, 0] < x0 + size) & (c[:, 1] >= y0) & (c[:, 1] < y0 + size)
  b = boxes[inside] - [x0, y0, x0, y0]
  return np.clip(b, 0, size).reshape(-1, 4)


def ihc_demo(tile: int, train_width: int, rows: int, noisy: dict) -> tuple[DetSet, DetSet]:
  """(target train, target test) tiles of scikit-image's IHC image: train tiles left of
  `train_width` with the generators' union as noisy boxes; test tiles right of it with the
  generators' consensus (boxes at least two of the three agree on) as the reference; the
  first `rows` rows of tiles."""
  from skimage import data
  from medda_jax.methods.sissi import noisy_labels
  image = data.immunohistochemistry()[:rows * tile]
  boxes, votes = noisy_labels.voted_boxes(image, **noisy)
  union, consensus = boxes, boxes[votes >= 2]
  h, w = image.shape[:2]
  sets = []
  for lo, hi, ref in ((0, train_width, union), (train_width, w, consensus)):
    imgs, boxes = [], []
    for y0 in range(0, h - tile + 1, tile):
      for x0 in range(lo, hi - tile + 1, tile):
        imgs.append(image[y0:y0 + tile, x0:x0 + tile])
        boxes.append(tile_boxes(ref, x0, y0, tile))
    sets.append(DetSet("ihc_tiles", tile, boxes, arrays=np.stack(imgs)))
  return sets[0], sets[1]
