"""Six-site prostate T2 MRI (the SAML multi-site release, Liu et al., MICCAI 2020).

Layout: one folder per site under root, named by the release name or the reference code's
name (case-insensitive):

  site A  RUNMC   (code name ISBI)
  site B  BMC     (ISBI_1.5)
  site C  HCRUDB  (I2CVB)
  site D  UCL
  site E  BIDMC
  site F  HK

  <root>/RUNMC/Case00.nii.gz
  <root>/RUNMC/Case00_segmentation.nii.gz   (some sites spell `_Segmentation`)

Labels {0, 1, 2} (central gland / peripheral zone) are merged into one binary prostate mask.
Preprocessing (reference code `msm_ds.py`): per-volume z-score over all voxels; slices along
the last NIfTI axis, so `Volume.image` is [slices, rows, columns]; in-plane resize to
`image_size` (bilinear with anti-aliasing for the image, nearest for the mask), the in-plane
spacing scaled by the resize factor. The network sees 3 adjacent slices as channels
(`context_channels`); training keeps the slices of the prostate's z-range plus each other
slice with probability 0.1 (`prostate_training_slices`).

Deviations from the reference code, on purpose: it drops the first and the last two slices
of each volume (it has no clamping for the adjacent-slice channels) and leaves out the top
slice of the prostate's z-range (`min <= i < max`); here every slice is a candidate, the
neighbours of the end slices are clamped, and the z-range includes both ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Iterable, Sequence

import numpy as np
from skimage.transform import resize

from medda_jax.data.msd import case_stem
from medda_jax.data.arraycache import ordered_map
from medda_jax.data.volumes import DomainVolumes, Volume, cached_volumes, read_nifti
from medda_jax.errors import DataError

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_SEGMENTATION_SUFFIX = "_segmentation"


@dataclasses.dataclass(frozen=True)
class ProstateSite:
  """One site: `name` is the SAML release folder name and the DomainVolumes key."""

  name: str
  code: str
  letter: str

  @property
  def aliases(self) -> tuple[str, ...]:
    """Names accepted for the site folder (any case): release name and code name."""
    return tuple(dict.fromkeys((self.name, self.code)))


# Sites A..F; code names from the reference code's `paths.py` (domain ids 0..5).
PROSTATE_SITES = (
    ProstateSite("RUNMC", "ISBI", "A"),
    ProstateSite("BMC", "ISBI_1.5", "B"),
    ProstateSite("HCRUDB", "I2CVB", "C"),
    ProstateSite("UCL", "UCL", "D"),
    ProstateSite("BIDMC", "BIDMC", "E"),
    ProstateSite("HK", "HK", "F"),
)


def _layout() -> str:
  sites = "\n".join(f"  site {s.letter}: {' or '.join(s.aliases)}" for s in PROSTATE_SITES)
  return ("expected the six-site prostate layout, one folder per site:\n"
          "  <root>/RUNMC/Case00.nii.gz\n"
          "  <root>/RUNMC/Case00_segmentation.nii.gz  (or _Segmentation)\n"
          f"site folders (any case):\n{sites}")


def site_by_alias(alias: str) -> ProstateSite:
  """The site of a release name, code name or letter (any case)."""
  key = alias.strip().lower()
  for site in PROSTATE_SITES:
    if key in {a.lower() for a in site.aliases} or key == site.letter.lower():
      return site
  known = ", ".join(f"{s.letter}={'/'.join(s.aliases)}" for s in PROSTATE_SITES)
  raise DataError(f"unknown prostate site {alias!r}; known: {known}")


def _site_folders(root: str) -> dict[str, str]:
  """Canonical site name -> folder, for the site folders present under root."""
  found: dict[str, str] = {}
  for entry in sorted(os.listdir(root)):
    path = os.path.join(root, entry)
    if not os.path.isdir(path):
      continue
    site = next((s for s in PROSTATE_SITES
                 if entry.lower() in {a.lower() for a in s.aliases}), None)
    if site is None:
      continue
    if site.name in found:
      raise DataError(f"site {site.letter} ({site.name}) has two folders in {root}: "
                      f"{os.path.basename(found[site.name])} and {entry}")
    found[site.name] = path
  return found


@dataclasses.dataclass(frozen=True)
class _Case:
  id: str
  image: str
  label: str


def _read_cases(site_dir: str) -> list[_Case]:
  images: dict[str, str] = {}
  labels: dict[str, str] = {}
  for name in os.listdir(site_dir):
    if not name.endswith((".nii.gz", ".nii")) or name.startswith("._"):
      continue
    stem = case_stem(name)
    if stem.lower().endswith(_SEGMENTATION_SUFFIX):
      labels[stem[:-len(_SEGMENTATION_SUFFIX)]] = os.path.join(site_dir, name)
    else:
      images[stem] = os.path.join(site_dir, name)
  without = sorted(set(images) - set(labels))
  if without:
    raise DataError(f"image {images[without[0]]} has no segmentation "
                    f"{without[0]}_segmentation.nii.gz ({len(without)} image(s) without one in "
                    f"{site_dir})")
  orphans = sorted(set(labels) - set(images))
  if orphans:
    raise DataError(f"segmentation {labels[orphans[0]]} has no image {orphans[0]}.nii.gz "
                    f"({len(orphans)} segmentation(s) without one in {site_dir})")
  if not images:
    raise DataError(f"site folder {site_dir} holds no Case*.nii.gz volumes\n{_layout()}")
  return [_Case(stem, images[stem], labels[stem]) for stem in sorted(images)]


def _process(site: str, case: _Case, image_size: int) -> Volume:
  image, zooms = read_nifti(case.image)
  label, _ = read_nifti(case.label)
  if image.shape != label.shape:
    raise DataError(f"case {case.id} of {site}: image {case.image} has shape {image.shape} but "
                    f"segmentation {case.label} has shape {label.shape}")
  label = np.rint(label)
  values = np.unique(label)
  if not np.isin(values, (0, 1, 2)).all():
    raise DataError(f"segmentation {case.label} has values {values.tolist()}; expected a subset "
                    "of {0, 1, 2}")
  # Central gland (1) and peripheral zone (2) form one binary prostate mask.
  mask = (label > 0).astype(np.uint8)
  mean = float(image.mean(dtype=np.float64))
  std = float(image.std(dtype=np.float64))
  image = ((image - np.float32(mean)) / np.float32(std if std > 0 else 1.0)).astype(np.float32)
  rows, cols, depth = image.shape
  if (rows, cols) != (image_size, image_size):
    out_shape = (image_size, image_size, depth)
    # anti_aliasing only acts along axes that shrink; the slice axis keeps its size.
    image = resize(image, out_shape, order=1, preserve_range=True,
                   anti_aliasing=True).astype(np.float32)
    mask = resize(mask, out_shape, order=0, preserve_range=True,
                  anti_aliasing=False).astype(np.uint8)
  spacing = (zooms[2], zooms[0] * rows / image_size, zooms[1] * cols / image_size)
  return Volume(id=case.id, domain=site, image=np.ascontiguousarray(image.transpose(2, 0, 1)),
                mask=np.ascontiguousarray(mask.transpose(2, 0, 1)),
                spacing=tuple(float(s) for s in spacing))


def _cache_path(cache_dir: str, site: str, cases: Sequence[_Case], image_size: int) -> str:
  # File sizes make a changed or re-extracted data set miss the cache.
  key = json.dumps({
      "version": _CACHE_VERSION, "site": site, "image_size": image_size,
      "cases": [(c.id, os.path.basename(c.image), os.path.basename(c.label),
                 os.path.getsize(c.image), os.path.getsize(c.label)) for c in cases],
  }, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"prostate_{site}_{digest}")


def read_split_file(site_dir: str, name: str) -> list[str]:
  """Case stems listed in a site's split file (the reference layout's `all_list.txt`: one
  case per line, with or without `.nii.gz`; blank lines and `#` comments skipped)."""
  path = os.path.join(site_dir, name)
  if not os.path.isfile(path):
    raise DataError(f"site folder {site_dir} has no split file {name} (config.data."
                    "split_file; expected one case name per line, e.g. Case00.nii.gz)")
  stems = []
  with open(path) as f:
    for line in f:
      entry = line.split("#", 1)[0].strip()
      if entry:
        stem = case_stem(os.path.basename(entry))
        if stem.lower().endswith(_SEGMENTATION_SUFFIX):
          stem = stem[:-len(_SEGMENTATION_SUFFIX)]
        stems.append(stem)
  if not stems:
    raise DataError(f"split file {path} lists no case")
  return list(dict.fromkeys(stems))


def _listed_cases(cases: list[_Case], site_dir: str, split_file: str) -> list[_Case]:
  by_id = {c.id: c for c in cases}
  stems = read_split_file(site_dir, split_file)
  missing = [s for s in stems if s not in by_id]
  if missing:
    raise DataError(f"{os.path.join(site_dir, split_file)} lists {missing[0]}, which has no "
                    f"image {missing[0]}.nii.gz with a segmentation in {site_dir} "
                    f"({len(missing)} listed case(s) missing)")
  return [by_id[s] for s in stems]


def _load_site(site: str, site_dir: str, image_size: int,
               cache_dir: str | None, split_file: str | None = None) -> list[Volume]:
  cases = _read_cases(site_dir)
  if split_file:
    cases = _listed_cases(cases, site_dir, split_file)
  path = None if cache_dir is None else _cache_path(cache_dir, site, cases, image_size)

  def make():
    log.info("preprocessing prostate site %s: %d volumes", site, len(cases))
    return ordered_map(lambda c: _process(site, c, image_size), cases)

  return cached_volumes(path, site, make)


def load_prostate(root: str | os.PathLike, *, image_size: int = 384,
                  sites: Iterable[str] | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  split_file: str | None = None) -> DomainVolumes:
  """Loads the prostate sites under `root`.

  Args:
    root: folder holding the site folders.
    image_size: side of the square in-plane grid.
    sites: site names, code names or letters (any case); None loads every site folder found.
    cache_dir: if given, preprocessed volumes are stored there (a folder of .npy files per
      site and image size), reused, and read memory-mapped.

  Returns:
    DomainVolumes keyed by release site name (RUNMC, BMC, HCRUDB, UCL, BIDMC, HK) in the order
    A..F; volumes sorted by case stem (`Case00`, ...).
  """
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise DataError(f"image_size must be a positive integer, got {image_size!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"prostate root folder {root} does not exist\n{_layout()}")
  folders = _site_folders(root)
  if sites is None:
    names = [s.name for s in PROSTATE_SITES if s.name in folders]
    if not names:
      found = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
      raise DataError(f"no prostate site folder found in {root} (folders there: {found})\n"
                      f"{_layout()}")
  else:
    requested = {site_by_alias(s).name for s in ([sites] if isinstance(sites, str) else sites)}
    names = [s.name for s in PROSTATE_SITES if s.name in requested]
    missing = [s for s in PROSTATE_SITES if s.name in requested and s.name not in folders]
    if missing:
      raise DataError(
          f"missing site folder(s) in {root}: "
          + ", ".join(f"{s.letter} ({' or '.join(s.aliases)})" for s in missing)
          + f"; site folders found: {sorted(os.path.basename(p) for p in folders.values())}"
          + f"\n{_layout()}")
  out = {n: _load_site(n, folders[n], int(image_size),
                       None if cache_dir is None else os.fspath(cache_dir), split_file)
         for n in names}
  description = (f"six-site prostate MRI from {root}: "
                 + ", ".join(f"{n} {len(v)}" for n, v in out.items())
                 + f" volumes, z-scored, {image_size}x{image_size} in-plane")
  return DomainVolumes(out, description)


def prostate_training_slices(volume: Volume, rng: np.random.Generator,
                             other_slice_probability: float = 0.1) -> np.ndarray:
  """Slice indices for training: the prostate's z-range, plus each other slice with
  probability `other_slice_probability`.

  One uniform draw is made per slice (inside the range too), so the result depends only on
  the generator's state and the volume's number of slices.
  """
  present = np.flatnonzero(volume.mask.any(axis=(1, 2)))
  draws = rng.random(volume.num_slices)
  keep = draws < other_slice_probability
  if present.size:
    keep[present[0]:present[-1] + 1] = True
  return np.flatnonzero(keep)


def context_channels(image: np.ndarray, index: int, k: int = 3) -> np.ndarray:
  """Slice `index` of an [S, H, W] volume and its neighbours as channels: [H, W, k].

  Channel k // 2 is the slice itself; neighbours beyond the first or last slice repeat the
  end slice.
  """
  if k < 1 or k % 2 == 0:
    raise ValueError(f"k must be a positive odd number, got {k}")
  num = image.shape[0]
  if not 0 <= index < num:
    raise IndexError(f"slice {index} out of range for a volume of {num} slices")
  rows = np.clip(np.arange(index - k // 2, index + k // 2 + 1), 0, num - 1)
  return np.moveaxis(image[rows], 0, -1)
