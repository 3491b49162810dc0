"""Derive the small Colin27 + AAL file embedded in medda_jax from Debian's `mricron-data`.

The Debian package `mricron-data` installs MRIcron's templates (BSD-3-clause,
Copyright 2006-2010 Chris Rorden) into `/usr/share/mricron/templates`:
`ch2.nii.gz` (Colin27 T1 with scalp and skull), `ch2bet.nii.gz` (the same volume
skull-stripped), `aal.nii.gz` (the AAL atlas, 116 labels, on the same grid) and
`aal.nii.txt` (label index, name, AAL code). All three volumes are 181x217x181 at 1 mm.

This script resamples them to a 2 mm grid whose voxel centres lie on even world
coordinates (the grid of nilearn's 2 mm MNI152 template, so that mapping the atlas
onto that template is an integer shift), crops to the head bounding box and writes
`medda_jax/data/assets/colin27_aal_2mm.npz` with:

  t1        uint8 [X, Y, Z]  ch2, Gaussian prefilter (sigma 0.5 mm) + linear
                             interpolation, scaled so its maximum is 255
  t1_brain  uint8 [X, Y, Z]  ch2bet, same processing, scaled to its own maximum 255
  aal       uint8 [X, Y, Z]  AAL label (0 = none, 1..116), nearest neighbour
  affine    float64 [4, 4]   voxel -> world (mm) of the 2 mm grid (RAS, MNI space)
  aal_index uint8 [116]      label values, in the order of `aal.nii.txt`
  aal_names <U [116]         AAL names (e.g. `Thalamus_L`)

Without the package installed (no root needed):

  apt-get download mricron-data
  python scripts/derive_colin27.py --deb mricron-data_*.deb

or unpack it yourself with `dpkg -x mricron-data_*.deb x` and pass
`x/usr/share/mricron/templates`. With the package installed:

  python scripts/derive_colin27.py                # reads /usr/share/mricron/templates
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import tempfile

import nibabel as nib
import numpy as np
from scipy import ndimage

DEFAULT_TEMPLATES = "/usr/share/mricron/templates"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "medda_jax/data/assets/colin27_aal_2mm.npz"
VOXEL_MM = 2.0
# Intensity above which a voxel counts as head when cropping (0..255 scale).
HEAD_THRESHOLD = 4
MARGIN = 2  # voxels of background kept around the head


def read_aal_names(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(indices, names) from MRIcron's `aal.nii.txt` lines `index name code`."""
  idx, names = [], []
  for line in path.read_text().splitlines():
    parts = line.split()
    if len(parts) >= 2:
      idx.append(int(parts[0]))
      names.append(parts[1])
  return np.asarray(idx, np.uint8), np.asarray(names)


def target_grid(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """World coordinates (per axis) of a 2 mm grid on even mm inside the source field of view."""
  if not np.allclose(affine[:3, :3], np.eye(3)):
    raise ValueError(f"expected a 1 mm axis-aligned RAS grid, got affine\n{affine}")
  lo = affine[:3, 3]
  hi = lo + np.asarray(shape) - 1
  first = np.ceil(lo / VOXEL_MM) * VOXEL_MM
  axes = [np.arange(f, h + 1e-6, VOXEL_MM) for f, h in zip(first, hi)]
  new_affine = np.diag([VOXEL_MM] * 3 + [1.0])
  new_affine[:3, 3] = first
  return axes, new_affine


def resample(volume: np.ndarray, affine: np.ndarray, axes, order: int) -> np.ndarray:
  """Sample `volume` (1 mm grid `affine`) at the world points of `axes`."""
  vox = [(a - affine[i, 3]) / affine[i, i] for i, a in enumerate(axes)]
  grid = np.meshgrid(*vox, indexing="ij")
  return ndimage.map_coordinates(volume, grid, order=order, mode="nearest")


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Scale so the maximum is 255 and round to uint8."""
  return np.clip(np.rint(x / x.max() * 255.0), 0, 255).astype(np.uint8)


def derive(templates: pathlib.Path) -> dict[str, np.ndarray]:
  """All arrays of the derived file from an MRIcron templates directory."""
  imgs = {k: nib.load(templates / f"{k}.nii.gz") for k in ("ch2", "ch2bet", "aal")}
  affine = imgs["ch2"].affine
  for k, im in imgs.items():
    if not np.allclose(im.affine, affine) or im.shape != imgs["ch2"].shape:
      raise ValueError(f"{k}.nii.gz is not on the grid of ch2.nii.gz")
  axes, new_affine = target_grid(imgs["ch2"].shape, affine)
  out = {}
  for key, src in (("t1", "ch2"), ("t1_brain", "ch2bet")):
    vol = np.asarray(imgs[src].dataobj, dtype=np.float32)
    # Light prefilter so that 2 mm sampling does not alias (skimage's (factor-1)/2 rule).
    vol = ndimage.gaussian_filter(vol, sigma=0.5)
    out[key] = to_uint8(resample(vol, affine, axes, order=1))
  # Linear interpolation smears the brain edge outward; keep ch2bet's own support.
  brain_support = resample(np.asarray(imgs["ch2bet"].dataobj) > 0, affine, axes, order=0)
  out["t1_brain"] = np.where(brain_support, out["t1_brain"], 0).astype(np.uint8)
  out["aal"] = resample(np.asarray(imgs["aal"].dataobj, dtype=np.uint8), affine, axes, order=0)

  head = out["t1"] > HEAD_THRESHOLD
  nz = np.argwhere(head)
  lo = np.maximum(nz.min(0) - MARGIN, 0)
  hi = np.minimum(nz.max(0) + MARGIN + 1, head.shape)
  crop = tuple(slice(a, b) for a, b in zip(lo, hi))
  for k in ("t1", "t1_brain", "aal"):
    out[k] = np.ascontiguousarray(out[k][crop])
  new_affine[:3, 3] += lo * VOXEL_MM
  out["affine"] = new_affine
  out["aal_index"], out["aal_names"] = read_aal_names(templates / "aal.nii.txt")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("templates", nargs="?", default=DEFAULT_TEMPLATES,
                      help="MRIcron templates directory (default: the Debian install location)")
  parser.add_argument("--deb", default=None, help="a downloaded mricron-data .deb to unpack instead")
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="output .npz")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    templates = pathlib.Path(args.templates)
    if args.deb:
      subprocess.run(["dpkg", "-x", args.deb, tmp], check=True)
      templates = pathlib.Path(tmp) / "usr/share/mricron/templates"
    missing = [f for f in ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
               if not (templates / f).exists()]
    if missing:
      raise SystemExit(f"{templates} lacks {', '.join(missing)}; expected MRIcron's templates "
                       "directory (Debian package mricron-data)")
    out = derive(templates)
  np.savez_compressed(args.out, **out)
  size = pathlib.Path(args.out).stat().st_size
  print(f"wrote {args.out}: {size / 1024:.0f} KiB, grid {out['t1'].shape}, "
        f"origin {out['affine'][:3, 3]}, {len(out['aal_names'])} AAL labels")


if __name__ == "__main__":
  main()
