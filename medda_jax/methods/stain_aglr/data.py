"""Per-lab patch datasets, read one file per patch (never loaded whole), and the demo set.

Layouts (`config.data.layout`):

  folders      <root>/<lab>/**/<patch>.png + <root>/labels.csv with columns path,label
               (path relative to <root>; the lab is the path's first folder, or a `lab`
               column). Your own data, and the demo set.
  camelyon17   the Camelyon17 patch release as WILDS ships it (camelyon17_v1.0/):
               <root>/metadata.csv with columns patient,node,x_coord,y_coord,tumor,center
               and <root>/patches/patient_PPP_node_N/patch_patient_PPP_node_N_x_X_y_Y.png;
               lab = "center_<center>", label = tumor.
  tupac        <root>/labels.csv with columns path,label,case (TUPAC16 mitosis patches, e.g.
               cut around Bertram et al.'s labels): lab from the case number as in the
               paper, cases 1-23 -> centre_1, 24-48 -> centre_2, 49-73 -> centre_3.

Every bad input ends in one error message naming it (a CSV's, with the expected layout on
the lines after it): a CSV without a needed column, a row naming a missing file, a lab asked
for that holds no patches.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np

from medda_jax import files
from medda_jax.data.images import LazyImages, read_image
from medda_jax.data.tables import read_csv_rows
from medda_jax.errors import DataError

LAYOUTS = ("folders", "camelyon17", "tupac")
_LAYOUT_HELP = {
    "folders": "expected <root>/<lab>/<patch files> and <root>/labels.csv with columns "
               "path,label[,lab]",
    "camelyon17": "expected the WILDS camelyon17_v1.0 folder: metadata.csv (patient,node,"
                  "x_coord,y_coord,tumor,center) and patches/",
    "tupac": "expected <root>/labels.csv with columns path,label,case",
}
TUPAC_CENTRES = ((1, 23, "centre_1"), (24, 48, "centre_2"), (49, 73, "centre_3"))


@dataclasses.dataclass(frozen=True)
class PatchTable:
  """Every patch of a dataset: file, binary label and lab."""
  name: str
  paths: tuple[str, ...]
  labels: np.ndarray  # int32 [N], 0/1
  labs: np.ndarray    # str [N]

  def of_lab(self, lab: str) -> np.ndarray:
    idx = np.flatnonzero(self.labs == lab)
    if not len(idx):
      raise DataError(f"lab {lab!r} has no patches in {self.name}; labs with patches: "
                      f"{sorted(set(self.labs.tolist()))}")
    return idx


class PatchSource:
  """`source[i]` -> (patch float32 [size, size, 3] in [0, 1], label), decoded on access."""

  def __init__(self, table: PatchTable, size: int):
    self.table, self.size = table, size
    self.image_shape = (size, size, 3)

  def __len__(self) -> int:
    return len(self.table.paths)

  def __getitem__(self, i: int):
    return read_image(self.table.paths[i], self.size, 3), int(self.table.labels[i])

  def images(self, indices) -> LazyImages:
    """The patches at `indices` as a lazily decoded array."""
    return LazyImages(self, indices)


def _binary(value: str, where: str) -> int:
  try:
    v = int(float(value))
  except ValueError:
    v = -1
  if v not in (0, 1):
    raise DataError(f"{where}: label {value!r} is not 0 or 1")
  return v


def _checked(root: pathlib.Path, csv: pathlib.Path, line: int, rel: str) -> str:
  file = pathlib.Path(rel)
  file = file if file.is_absolute() else root / file
  if not file.is_file():
    raise DataError(f"{csv} line {line} names {file}, which does not exist")
  return str(file)


def load(root, layout: str, name: str) -> PatchTable:
  """The patch table of the dataset at `root` in `layout`."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"{name}: {root} is not a folder; {_LAYOUT_HELP[layout]}")
  paths, labels, labs = [], [], []
  if layout == "camelyon17":
    csv = root / "metadata.csv"
    rows = read_csv_rows(csv, ("patient", "node", "x_coord", "y_coord", "tumor", "center"),
                         _LAYOUT_HELP[layout])
    for line, r in enumerate(rows, start=2):
      p, n = int(r["patient"]), int(r["node"])
      rel = (f"patches/patient_{p:03d}_node_{n}/patch_patient_{p:03d}_node_{n}_x_"
             f"{int(r['x_coord'])}_y_{int(r['y_coord'])}.png")
      paths.append(_checked(root, csv, line, rel))
      labels.append(_binary(r["tumor"], f"{csv} line {line}"))
      labs.append(f"center_{int(r['center'])}")
  else:
    csv = root / "labels.csv"
    rows = read_csv_rows(csv, ("path", "label", "case") if layout == "tupac"
                         else ("path", "label"), _LAYOUT_HELP[layout])
    for line, r in enumerate(rows, start=2):
      paths.append(_checked(root, csv, line, r["path"]))
      labels.append(_binary(r["label"], f"{csv} line {line}"))
      if layout == "tupac":
        case = int(r["case"])
        lab = next((c for lo, hi, c in TUPAC_CENTRES if lo <= case <= hi), None)
        if lab is None:
          raise DataError(f"{csv} line {line}: case {case} is not a TUPAC16 case (1-73)")
        labs.append(lab)
      else:
        labs.append(r.get("lab") or pathlib.Path(r["path"]).parts[0])
  if not paths:
    raise DataError(f"{name}: {csv} lists no patch")
  return PatchTable(name, tuple(paths), np.asarray(labels, np.int32), np.asarray(labs))


def split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) of one lab's patches, a shuffled split from `seed`."""
  order = np.random.default_rng(seed).permutation(indices)
  n_val = max(1, int(round(len(order) * val_fraction)))
  return np.sort(order[n_val:]), np.sort(order[:n_val])


# --------------------------------------------------------------------------- demo
DEMO_LABEL = ("DEMO DATA (real IHC microscopy image, synthetic labs and labels: scikit-image's "
              "immunohistochemistry image tiled into patches, label = nuclear density of the "
              "unaltered patch above the median, unseen labs = fixed stain shifts of held-out "
              "tiles) — not a reproduction of the paper's numbers")
# The unseen labs: fixed strong stain shifts of the held-out tiles.
DEMO_LABS = {
    "lab_hed_dark": {"hed_scale": (1.5, 1.4, 1.0), "hed_bias": (0.01, 0.01, 0.0)},
    "lab_hed_pale": {"hed_scale": (0.55, 0.6, 1.0), "hed_bias": (0.0, 0.02, 0.0)},
    "lab_hsv": {"hue": 0.08, "saturation": 1.6},
}
SOURCE_LAB = "lab_source"


def shift_stain(rgb: np.ndarray, shift: dict) -> np.ndarray:
  """One lab's fixed colour shift of an RGB image in [0, 1]."""
  from skimage import color
  if "hed_scale" in shift:
    h = color.rgb2hed(rgb) * np.asarray(shift["hed_scale"]) + np.asarray(shift["hed_bias"])
    return color.hed2rgb(h).astype(np.float32)
  hsv = color.rgb2hsv(rgb)
  hsv[..., 0] = (hsv[..., 0] + shift["hue"]) % 1.0
  hsv[..., 1] = np.clip(hsv[..., 1] * shift["saturation"], 0.0, 1.0)
  return color.hsv2rgb(hsv).astype(np.float32)


def nuclear_density(rgb: np.ndarray, threshold: float) -> float:
  """Share of the patch covered by nuclei: haematoxylin density above `threshold`."""
  from skimage import color
  return float(np.mean(color.rgb2hed(rgb)[..., 0] > threshold))


def build_demo(root: pathlib.Path, patch: int, stride: int) -> pathlib.Path:
  """Writes the demo set in the `folders` layout (once; reused when labels.csv exists):
  tiles of scikit-image's IHC image; the left part (tiles ending left of 5/8 of the width)
  is the source lab, the tiles starting right of it are shifted into the unseen labs."""
  root = pathlib.Path(root)
  csv = root / "labels.csv"
  if csv.exists():
    return root
  from PIL import Image
  from skimage import color, data, filters
  image = data.immunohistochemistry().astype(np.float32) / 255.0
  side = image.shape[0]
  threshold = filters.threshold_otsu(color.rgb2hed(image)[..., 0])
  cut = (side * 5) // 8
  tiles = []
  for y in range(0, side - patch + 1, stride):
    for x in range(0, side - patch + 1, stride):
      region = "source" if x + patch <= cut else ("test" if x >= cut + stride else None)
      if region:
        tile = image[y:y + patch, x:x + patch]
        tiles.append((region, y, x, tile, nuclear_density(tile, threshold)))
  median = np.median([t[4] for t in tiles])  # over all tiles: balanced classes
  lines = ["path,label"]

  def write(lab, y, x, rgb, label):
    rel = f"{lab}/tile_y{y:03d}_x{x:03d}.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buffer, "PNG")
    files.write_bytes(root / rel, buffer.getvalue())
    lines.append(f"{rel},{label}")

  for region, y, x, tile, density in tiles:
    label = int(density > median)
    if region == "source":
      write(SOURCE_LAB, y, x, tile, label)
    else:
      for lab, shift in DEMO_LABS.items():
        write(lab, y, x, shift_stain(tile, shift), label)
  files.write_text(csv, "\n".join(lines) + "\n")  # last: marks the set complete
  return root
