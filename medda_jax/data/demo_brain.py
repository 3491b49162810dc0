"""Embedded demo collection: few-shot brain-structure segmentation from real anatomy.

No download needed. Anatomy comes from two real brain volumes: the MNI152 2009
T1 template with its grey/white-matter maps (shipped inside nilearn) and Colin27
with the AAL atlas (a small derived file in `assets/`, see DEMO_BRAIN_CARD.md).
Subjects (random smooth deformations) and scanner styles are synthetic.

Datasets are (structure x style): `thalamus_t2w_like` is the thalamus seen through
the T2-like style, in group `thalamus`, so a structure seen through three styles
forms a group of z = 3 (like the sub-datasets of MSD's brain tumour task). The
tissue datasets `brain`, `grey_matter`, `white_matter` are groups of their own.
`DEMO_TARGETS` are held out for few-shot fine-tuning.

Results on this collection are demo results, never a reproduction of a paper.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pathlib
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage import filters as sk_filters
from skimage import transform as sk_transform

from medda_jax.data import styles as styles_lib
from medda_jax.data.collection import SliceCollection, SliceDataset

# Bump when anything that changes the built arrays changes (invalidates caches).
DEMO_VERSION = "demo_brain-1"
ASSET = pathlib.Path(__file__).parent / "assets" / "colin27_aal_2mm.npz"
DESCRIPTION = (
  "Demo data: anatomy from two real brain volumes (MNI152 2009 template, Colin27 with AAL); "
  "subjects and scanner styles are synthetic variations. Results on it are demo results, "
  "not paper results.")

VOXEL_MM = 2.0
ANATOMIES = ("mni152", "colin27")
DEMO_STYLES = ("t1w", "t2w_like", "lowres_noisy")

# Merged AAL groups: structure -> AAL label values (aal.nii.txt of MRIcron). The
# lobes follow AAL's own codes (2xxx frontal, 5xxx occipital incl. fusiform,
# 6xxx parietal, 8xxx temporal incl. Heschl); hippocampus includes the
# parahippocampal gyrus; cerebellum includes the vermis.
STRUCTURES: dict[str, tuple[int, ...]] = {
  "frontal": tuple(range(1, 29)),
  "insula": (29, 30),
  "cingulate": tuple(range(31, 37)),
  "hippocampus": (37, 38, 39, 40),
  "amygdala": (41, 42),
  "occipital": tuple(range(43, 57)),
  "parietal": tuple(range(57, 71)),
  "caudate": (71, 72),
  "putamen": (73, 74),
  "pallidum": (75, 76),
  "thalamus": (77, 78),
  "temporal": tuple(range(79, 91)),
  "cerebellum": tuple(range(91, 117)),
}
# Value of each structure in the structures label bank (0 = none).
STRUCTURE_VALUE = {name: i + 1 for i, name in enumerate(STRUCTURES)}

# Tissue label bank: 0 background, 1 other brain (CSF, unclassified), 2 GM, 3 WM.
TISSUES: dict[str, tuple[int, ...]] = {
  "brain": (1, 2, 3),
  "grey_matter": (2,),
  "white_matter": (3,),
}

# Held-out few-shot targets: deep grey nuclei of ~2 cm^3 per side or more.
DEMO_TARGETS = ("thalamus", "caudate", "putamen")


def min_foreground(image_size: int) -> int:
  """Fewest foreground pixels a slice needs to enter a dataset: 0.4 % of the image, at least 4."""
  return max(4, int(round(0.004 * image_size ** 2)))


def dataset_name(group: str, style: str) -> str:
  """Dataset key of a group (structure or tissue) seen through a style."""
  return f"{group}_{style}"


def target_dataset(target: str, style: str) -> str:
  """Name of the dataset of a held-out target structure seen through a style."""
  if target not in STRUCTURES:
    raise KeyError(f"unknown structure {target!r}; known: {list(STRUCTURES)}")
  if style not in styles_lib.STYLES:
    raise KeyError(f"unknown style {style!r}; known: {list(styles_lib.STYLES)}")
  return dataset_name(target, style)


def source_datasets(collection: SliceCollection, targets: Sequence[str] = DEMO_TARGETS) -> list[str]:
  """All dataset names whose structure (group) is not one of `targets`."""
  targets = set(targets)
  return [n for n, d in collection.datasets.items() if d.group not in targets]


# ---------------------------------------------------------------------------
# Real anatomy: loaded once per process, read-only.


def _load_asset() -> dict[str, np.ndarray]:
  """The derived Colin27 + AAL arrays, with a helpful error if the file is missing."""
  if not ASSET.exists():
    raise FileNotFoundError(
      f"{ASSET} is missing; regenerate it with scripts/derive_colin27.py from Debian's "
      "mricron-data package (see DEMO_BRAIN_CARD.md)")
  with np.load(ASSET) as f:
    return {k: f[k] for k in f.files}


def _aal_to_structures(aal: np.ndarray) -> np.ndarray:
  """AAL label map -> structures label map (values of STRUCTURE_VALUE)."""
  lut = np.zeros(256, np.uint8)
  for name, values in STRUCTURES.items():
    lut[list(values)] = STRUCTURE_VALUE[name]
  return lut[aal]


def _resample_nearest(src: np.ndarray, src_affine: np.ndarray, shape, dst_affine: np.ndarray) -> np.ndarray:
  """Nearest-neighbour resampling of src onto a grid through the two voxel->world affines."""
  vox = np.linalg.solve(src_affine, dst_affine)  # destination voxel -> source voxel
  return ndimage.affine_transform(src, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(shape),
                                  order=0, mode="constant", cval=0)


def _read_only(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  for v in d.values():
    v.setflags(write=False)
  return d


@functools.lru_cache(maxsize=1)
def _colin27() -> dict[str, np.ndarray]:
  """Colin27: skull-stripped T1, AAL structures, tissue classes by 3-class Otsu."""
  a = _load_asset()
  t1 = a["t1_brain"].astype(np.float32) / 255.0
  brain = t1 > 0
  # CSF / GM / WM by multi-Otsu on the skull-stripped T1 (Colin27 is a 27-scan
  # average, so its histogram separates cleanly without bias correction).
  lo, hi = sk_filters.threshold_multiotsu(t1[brain], classes=3)
  tissue = np.where(brain, 1 + (t1 > lo) + (t1 > hi), 0).astype(np.uint8)
  structures = np.where(brain, _aal_to_structures(a["aal"]), 0).astype(np.uint8)
  return _read_only({"image": t1, "structures": structures, "tissue": tissue,
                     "aal": a["aal"], "affine": a["affine"]})


@functools.lru_cache(maxsize=1)
def _mni152() -> dict[str, np.ndarray]:
  """MNI152 2009 (nilearn, 2 mm): T1, GM/WM maps, and Colin27's AAL moved onto its grid."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nilearn's resampling notices are not actionable here
    from nilearn import datasets as nl_datasets
    t1_img = nl_datasets.load_mni152_template(resolution=2)
    gm = np.asarray(nl_datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32)
    wm = np.asarray(nl_datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32)
    brain = np.asarray(nl_datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0
  t1 = np.where(brain, np.asarray(t1_img.get_fdata(), np.float32), 0.0).astype(np.float32)
  other = np.clip(1.0 - gm - wm, 0.0, 1.0)
  tissue = np.where(brain, 1 + np.argmax(np.stack([other, gm, wm]), axis=0), 0).astype(np.uint8)
  colin = _colin27()
  # Both volumes are in MNI space but are different brains: the atlas is approximate here.
  aal = _resample_nearest(colin["aal"], colin["affine"], t1.shape, t1_img.affine)
  structures = np.where(brain, _aal_to_structures(aal), 0).astype(np.uint8)
  return _read_only({"image": t1, "structures": structures, "tissue": tissue,
                     "affine": np.asarray(t1_img.affine)})


def _anatomy(name: str) -> dict[str, np.ndarray]:
  return {"mni152": _mni152, "colin27": _colin27}[name]()


# ---------------------------------------------------------------------------
# Building the banks.


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
  nz = np.argwhere(mask)
  return nz.min(0) - margin, nz.max(0) + 1 + margin


def _crop(x: np.ndarray, lo, hi) -> np.ndarray:
  """x[lo:hi] per axis, zero-padded where the box leaves the array."""
  lo, hi = np.asarray(lo), np.asarray(hi)
  pad = [(max(0, -l), max(0, h - n)) for l, h, n in zip(lo, hi, x.shape)]
  x = np.pad(x, pad)
  return x[tuple(slice(l + p[0], h + p[0]) for l, h, p in zip(lo, hi, pad))]


def _to_slices(vol: np.ndarray, image_size: int, label: bool) -> np.ndarray:
  """[X, Y, Z] -> [Z, S, S] axial slices, anterior up, resized in-plane."""
  out_shape = (image_size, image_size, vol.shape[2])
  if label:
    r = sk_transform.resize(vol, out_shape, order=0, anti_aliasing=False, preserve_range=True)
    r = r.astype(np.uint8)
  else:
    r = sk_transform.resize(vol, out_shape, order=1, anti_aliasing=True, preserve_range=True)
    r = r.astype(np.float32)
  # Array axes are RAS (x right, y anterior): put y on rows, anterior at the top.
  return np.ascontiguousarray(np.transpose(r, (2, 1, 0))[:, ::-1, :])


def _build_banks(image_size: int, subjects_per_anatomy: int, seed: int) -> dict[str, np.ndarray]:
  """All banks plus per-row volume/slice indices, as a flat dict of arrays."""
  ss = np.random.SeedSequence(seed)
  anat_seeds = ss.spawn(len(ANATOMIES))
  images = {s: [] for s in DEMO_STYLES}
  structures, tissue, row_volume, row_slice, names = [], [], [], [], []
  for a_i, anatomy in enumerate(ANATOMIES):
    base = _anatomy(anatomy)
    # Room around the brain so that deformed subjects are not cut by the grid.
    lo, hi = _bbox(base["tissue"] > 0, margin=8)
    vols = [_crop(base[k], lo, hi) for k in ("image", "structures", "tissue")]
    # Per subject: one stream for the warp, one per style.
    subj_seeds = [q.spawn(1 + len(DEMO_STYLES)) for q in anat_seeds[a_i].spawn(subjects_per_anatomy)]
    subjects = [vols]  # subject 0 is the real volume itself
    # Both label maps travel as one code (structure * 4 + tissue): one nearest-neighbour
    # warp instead of two, and the two maps stay consistent voxel by voxel.
    code = (vols[1] * 4 + vols[2]).astype(np.uint8)
    for s in range(1, subjects_per_anatomy):
      rng = np.random.default_rng(subj_seeds[s][0])
      img, c = styles_lib.random_subject([vols[0], code], rng, max_displacement_mm=4.0,
                                         voxel_mm=VOXEL_MM)
      subjects.append([img, c // 4, c % 4])
    # Common box of this anatomy: all subjects' brains, square in-plane.
    union = np.any([s[2] > 0 for s in subjects], axis=0)
    blo, bhi = _bbox(union, margin=2)
    side = int(max(bhi[0] - blo[0], bhi[1] - blo[1]))
    centre = (blo[:2] + bhi[:2]) // 2
    blo[:2], bhi[:2] = centre - side // 2, centre - side // 2 + side
    for s_i, (img, struct, tis) in enumerate(subjects):
      img, struct, tis = (_crop(v, blo, bhi) for v in (img, struct, tis))
      nz = img > 0
      for st_i, style in enumerate(DEMO_STYLES):
        rng = np.random.default_rng(subj_seeds[s_i][1 + st_i])
        styled = styles_lib.apply_style(img, style, rng)
        # z-normalise over the head (the nonzero voxels of the noise-free volume):
        # the background noise the styles add would otherwise enter the statistics.
        v = styled[nz]
        styled = (styled - v.mean()) / max(float(v.std()), 1e-6)
        images[style].append(_to_slices(styled, image_size, label=False))
      structures.append(_to_slices(struct, image_size, label=True))
      tissue.append(_to_slices(tis, image_size, label=True))
      n_slices = struct.shape[2]
      row_volume.append(np.full(n_slices, len(names), np.int32))
      row_slice.append(np.arange(n_slices, dtype=np.int32))
      names.append(f"{anatomy}_s{s_i}")
  out = {f"images_{s}": np.concatenate(images[s]) for s in DEMO_STYLES}
  out.update(structures=np.concatenate(structures), tissue=np.concatenate(tissue),
             row_volume=np.concatenate(row_volume), row_slice=np.concatenate(row_slice),
             volume_names=np.asarray(names))
  return out


def _collection_from_banks(banks: dict[str, np.ndarray], image_size: int) -> SliceCollection:
  threshold = min_foreground(image_size)
  volume_names = tuple(str(n) for n in banks["volume_names"])
  row_volume, row_slice = banks["row_volume"], banks["row_slice"]

  def rows_for(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    count = np.isin(labels, values).sum(axis=(1, 2))
    rows = np.flatnonzero(count >= threshold)
    # Banks are laid out by (volume, slice) already; keep that order explicit.
    return rows[np.lexsort((row_slice[rows], row_volume[rows]))]

  datasets = {}
  groups = [(name, banks["structures"], (STRUCTURE_VALUE[name],)) for name in STRUCTURES]
  groups += [(name, banks["tissue"], values) for name, values in TISSUES.items()]
  for group, labels, values in groups:
    rows = rows_for(labels, values)
    for style in DEMO_STYLES:
      name = dataset_name(group, style)
      datasets[name] = SliceDataset(
        name=name, group=group, images=banks[f"images_{style}"], labels=labels,
        label_values=tuple(int(v) for v in values), rows=rows, volume=row_volume[rows],
        slice_index=row_slice[rows], volume_names=volume_names)
  return SliceCollection(datasets=datasets, description=DESCRIPTION)


def _cache_path(cache_dir, image_size: int, subjects_per_anatomy: int, seed: int) -> pathlib.Path:
  try:
    nilearn_version = importlib.metadata.version("nilearn")
  except importlib.metadata.PackageNotFoundError:
    nilearn_version = "none"
  asset_digest = hashlib.sha1(ASSET.read_bytes()).hexdigest() if ASSET.exists() else "none"
  key = "|".join(map(str, (DEMO_VERSION, image_size, subjects_per_anatomy, seed,
                           nilearn_version, asset_digest)))
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  return pathlib.Path(cache_dir) / f"demo_brain_{image_size}px_{subjects_per_anatomy}s_seed{seed}_{digest}.npz"


def build_demo_brain(image_size: int = 64, subjects_per_anatomy: int = 4, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None) -> SliceCollection:
  """The demo collection: (structure x style) and tissue datasets over shared banks.

  Args:
    image_size: side of the square slices.
    subjects_per_anatomy: volumes per real anatomy: the real volume plus
      `subjects_per_anatomy - 1` seeded random deformations of it.
    seed: seeds deformations and styles.
    cache_dir: if given, the built banks are saved there (one .npz keyed by the
      arguments and DEMO_VERSION) and loaded from there next time.
  """
  if image_size < 8:
    raise ValueError(f"image_size must be at least 8, got {image_size}")
  if subjects_per_anatomy < 1:
    raise ValueError(f"subjects_per_anatomy must be at least 1, got {subjects_per_anatomy}")
  path = None
  if cache_dir is not None:
    path = _cache_path(cache_dir, image_size, subjects_per_anatomy, seed)
    if path.exists():
      with np.load(path) as f:
        banks = {k: f[k] for k in f.files}
      return _collection_from_banks(banks, image_size)
  banks = _build_banks(image_size, subjects_per_anatomy, seed)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename so a concurrent reader never sees a partial file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **banks)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
  return _collection_from_banks(banks, image_size)
