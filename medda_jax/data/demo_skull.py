"""Embedded demo for cross-site skull stripping (brain extraction), the task of CC359.

No download needed. One real head MRI: Colin27 (`ch2`, with scalp and skull) and its
real brain mask (`ch2bet > 0`), from the small derived file in `assets/` that the
brain demo also uses (see DEMO_SKULL_CARD.md). Subjects (smooth random deformations
plus small affines of that head) and the six scanner sites (fixed intensity
signatures) are synthetic.

`build_demo_skull` returns a `DomainVolumes` with one domain per synthetic site; a
subject belongs to exactly one site, like a patient at a hospital. Images are scaled
as the CC359 preprocessing does (clip to the volume's 1st-99th percentile, min-max
to [0, 1]) and sliced axially. Results on this demo are demo results, never a
reproduction of a paper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medda_jax.data import demo_brain
from medda_jax.data import styles as styles_lib
from medda_jax.data.volumes import DomainVolumes, Volume

try:  # ships with scikit-learn (a nilearn dependency); optional here
  from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
  threadpool_limits = None

# Bump when anything that changes the built arrays changes (invalidates caches).
DEMO_VERSION = "demo_skull-1"
ASSET = demo_brain.ASSET
DESCRIPTION = (
  "Demo data: one real head MRI (Colin27 with its real brain mask from Debian's "
  "mricron-data); subjects (deformations) and scanner sites are synthetic")

VOXEL_MM = 2.0
# Head = clean T1 above this (0..1 scale); bone (~0.05-0.15) is enclosed by the scalp
# and filled in per slice.
HEAD_THRESHOLD = 0.05
# Zero voxels added around the asset's head box before warping, so that rotated or
# enlarged subjects are not cut by the grid.
PAD = 6
BOX_MARGIN = 2  # voxels of background kept around the head in-plane
MIN_HEAD_FRACTION = 0.05  # a slice is kept if the head covers this much of it
# Subject deformations: arguments of styles.random_warp (the model of styles.random_subject).
WARP = dict(max_displacement_mm=5.0, smoothing_mm=8.0, max_rotation_deg=6.0, max_scale=0.06)
# Relative half-width of the per-volume jitter of every site parameter.
JITTER = 0.1
# Absolute std of the per-volume jitter of LUT output values.
LUT_JITTER = 0.03


@dataclasses.dataclass(frozen=True)
class Site:
  """Fixed intensity signature of one synthetic scanner site.

  Applied to the clean head on the asset's 0..1 scale (ch2 scaled so its maximum is 1:
  bone ~0.05-0.15, CSF ~0.23, grey matter ~0.34, white matter ~0.44, scalp fat
  0.5-0.9), in this order: `lut`, gamma, bias field, blur and resolution loss, noise.

  Attributes:
    description: one line for data cards and logs.
    lut: (x, y) control points of a piecewise-linear intensity map, or None.
    gamma: exponent applied after the LUT.
    bias: log-amplitude of the smooth multiplicative bias field.
    blur_mm: std (mm, per axis X, Y, Z) of an extra Gaussian blur.
    acquisition_mm: voxel size (mm, per axis X, Y, Z) of the simulated acquisition;
      where it is coarser than the grid, the volume is blurred, downsampled and
      upsampled back (`styles.degrade_resolution`).
    noise: Rician noise std on the 0..1 scale (white matter sits near 0.44), per
      voxel of the delivered grid.
  """

  description: str
  lut: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  gamma: float = 1.0
  bias: float = 0.1
  blur_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
  acquisition_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
  noise: float = 0.01


# T2-like on the tissue range: rises steeply from background/bone to a peak at CSF,
# then decreases monotonically through grey matter, white matter and scalp fat.
_INVERT_LUT = ((0.0, 0.1, 0.19, 0.25, 0.34, 0.44, 0.6, 1.0),
               (0.0, 0.08, 0.85, 1.0, 0.68, 0.45, 0.32, 0.25))
# Low contrast: a raised floor and a compressed tissue range.
_FLAT_LUT = ((0.0, 0.05, 0.2, 1.0),
             (0.0, 0.2, 0.35, 0.7))

SITES: dict[str, Site] = {
  "site_a_clean": Site("clean T1: gamma 1, mild bias field (0.1), low Rician noise (0.01)",
                       gamma=1.0, bias=0.1, noise=0.01),
  "site_b_gamma_dark": Site("dark T1: gamma 1.4, bias 0.15, moderate Rician noise (0.03)",
                            gamma=1.4, bias=0.15, noise=0.03),
  "site_c_gamma_bright": Site("bright T1: gamma 0.7, strong bias field (0.5), noise 0.015",
                              gamma=0.7, bias=0.5, noise=0.015),
  "site_d_blurry": Site("blurry T1: 6 x 6 x 7 mm acquisition, extra Gaussian blur (2 mm), "
                        "bias 0.15, noise 0.015",
                        bias=0.15, blur_mm=(2.0, 2.0, 2.0), acquisition_mm=(6.0, 6.0, 7.0),
                        noise=0.015),
  "site_e_noisy": Site("noisy low-contrast T1: compressed intensity range with a raised "
                       "floor, strong Rician noise (0.06), bias 0.2",
                       lut=_FLAT_LUT, bias=0.2, noise=0.06),
  "site_f_inverted": Site("T2-like inversion: a LUT peaking at CSF and decreasing through "
                          "grey matter, white matter and fat, background kept dark; "
                          "bias 0.15, noise 0.02",
                          lut=_INVERT_LUT, bias=0.15, noise=0.02),
}
DEMO_SKULL_DOMAINS: tuple[str, ...] = tuple(SITES)


# ---------------------------------------------------------------------------
# The real head.


@functools.lru_cache(maxsize=1)
def real_head() -> tuple[np.ndarray, np.ndarray]:
  """Colin27 (ch2, with scalp and skull) on 0..1 and its cleaned brain mask; read-only.

  The mask is `ch2bet > 0` on the asset's 2 mm grid, reduced to its largest
  26-connected component: nearest-neighbour sampling of the thin cortical edge leaves
  five isolated specks of 1-7 voxels (15 of 216,993 voxels) a few millimetres off the
  brain, which are dropped. The mask has no holes; filling them in 3-D is kept as a
  guard.
  """
  a = demo_brain._load_asset()
  image = a["t1"].astype(np.float32) / 255.0
  lab, n = ndimage.label(a["t1_brain"] > 0, structure=np.ones((3, 3, 3)))
  if n == 0:
    raise ValueError(f"{ASSET} has an empty brain mask")
  largest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
  mask = ndimage.binary_fill_holes(lab == largest).astype(np.uint8)
  image.setflags(write=False)
  mask.setflags(write=False)
  return image, mask


def head_mask(image: np.ndarray) -> np.ndarray:
  """Head region of a clean [X, Y, Z] T1: largest blob above HEAD_THRESHOLD, holes
  (the dark skull, sinuses) filled per axial slice."""
  lab, n = ndimage.label(image > HEAD_THRESHOLD)
  if n == 0:
    return np.zeros(image.shape, bool)
  head = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
  # Per slice, because the head is open at the neck (the bottom of the field of view).
  return np.stack([ndimage.binary_fill_holes(head[..., z]) for z in range(head.shape[2])], -1)


@functools.lru_cache(maxsize=4)
def _source(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Padded real head (anti-aliased in-plane for `image_size`) and its label code
  (brain mask + 2 * head mask: both label maps travel through one nearest-neighbour
  sampling)."""
  t1, brain = real_head()
  head = head_mask(t1)
  lo, hi = demo_brain._bbox(head)
  side = int(max(hi[0] - lo[0], hi[1] - lo[1])) + 2 * BOX_MARGIN
  # Slices are sampled straight from the 2 mm grid; blur first where they are coarser
  # (skimage's (factor - 1) / 2 anti-aliasing rule).
  sigma = max(0.0, (side / image_size - 1.0) / 2.0)
  if sigma > 0:
    t1 = ndimage.gaussian_filter(t1, sigma=(sigma, sigma, 0.0))
  out = tuple(np.pad(v, PAD) for v in (t1, (brain + 2 * head).astype(np.uint8)))
  for v in out:
    v.setflags(write=False)
  return out


# ---------------------------------------------------------------------------
# Sites.


def _jittered(site: Site, rng: np.random.Generator) -> Site:
  """The site's parameters with a small per-volume perturbation."""
  def rel(v):
    return float(v * rng.uniform(1.0 - JITTER, 1.0 + JITTER))

  lut = None
  if site.lut is not None:
    xs, ys = site.lut
    # Background point stays at 0 so the background stays dark.
    ys = np.concatenate([[0.0], np.asarray(ys[1:]) + rng.normal(0.0, LUT_JITTER, len(ys) - 1)])
    lut = (tuple(xs), tuple(np.maximum(ys, 0.0)))
  gamma = float(site.gamma * np.exp(rng.uniform(-0.5 * JITTER, 0.5 * JITTER)))
  return dataclasses.replace(
    site, lut=lut, gamma=gamma, bias=rel(site.bias), noise=rel(site.noise),
    blur_mm=tuple(rel(b) for b in site.blur_mm),
    acquisition_mm=tuple(rel(a) for a in site.acquisition_mm))


def render_site(image: np.ndarray, site: str | Site, rng: np.random.Generator,
                spacing: Sequence[float] = (VOXEL_MM,) * 3, jitter: bool = True) -> np.ndarray:
  """Render a clean head volume (0..1 scale, [X, Y, Z], voxel `spacing` mm) as
  acquired at `site`.

  Noise covers the whole grid, background and scalp included (a scanner does not
  know the brain mask). Returns float32 on an arbitrary scale (see `scale_mri`).
  """
  if isinstance(site, str):
    if site not in SITES:
      raise ValueError(f"unknown site {site!r}; known: {list(SITES)}")
    site = SITES[site]
  if jitter:
    site = _jittered(site, rng)
  spacing = np.asarray(spacing, dtype=np.float64)
  x = np.clip(np.asarray(image, dtype=np.float32), 0.0, None)
  if site.lut is not None:
    x = np.interp(x, *site.lut).astype(np.float32)
  x = np.power(x, site.gamma, dtype=np.float32)
  if site.bias > 0:
    x = x * styles_lib.bias_field(x.shape, rng, site.bias)
  if any(b > 0 for b in site.blur_mm):
    x = ndimage.gaussian_filter(x, sigma=np.asarray(site.blur_mm) / spacing)
  x = styles_lib.degrade_resolution(x, np.asarray(site.acquisition_mm) / spacing)
  if site.noise > 0:
    # Rician: magnitude of a complex signal with Gaussian noise on both channels.
    n1 = site.noise * rng.standard_normal(x.shape, dtype=np.float32)
    n2 = site.noise * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.sqrt((x + n1) ** 2 + n2 ** 2)
  return x.astype(np.float32)


def scale_mri(x: np.ndarray, q_min: float = 1.0, q_max: float = 99.0) -> np.ndarray:
  """CC359 intensity scaling: clip to the volume's percentiles, then min-max to [0, 1]."""
  lo, hi = np.percentile(x, [q_min, q_max])
  x = np.clip(x, lo, hi) - lo
  return (x / max(float(hi - lo), 1e-8)).astype(np.float32)


# ---------------------------------------------------------------------------
# Building.


def _volume_seed(seed: int, domain: str, subject: int) -> np.random.SeedSequence:
  # Keyed by the site's fixed index, so a site's volumes do not depend on which other
  # sites are built.
  return np.random.SeedSequence(seed, spawn_key=(DEMO_SKULL_DOMAINS.index(domain), subject))


def _interp_matrix(positions: np.ndarray, n: int) -> np.ndarray:
  """[len(positions), n] linear-interpolation weights on 0..n-1, constant beyond the ends."""
  return np.stack([np.interp(positions, np.arange(n), col) for col in np.eye(n)], axis=1)


def _field_at(field: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
  """A [C, *grid] field interpolated (separably, linearly) on the lattice `axes` (grid units)."""
  out = field
  for a, pos in enumerate(axes):
    m = _interp_matrix(pos, out.shape[a + 1]).astype(np.float32)
    out = np.moveaxis(np.tensordot(m, out, axes=([1], [a + 1])), 0, a + 1)
  return out


def _axial(x: np.ndarray) -> np.ndarray:
  """[X, Y, Z] -> [Z, Y, X] slices with anterior at the top (demo_brain's orientation)."""
  return np.ascontiguousarray(np.transpose(x, (2, 1, 0))[:, ::-1, :])


def _build_volume(domain: str, subject: int, image_size: int, seed: int,
                  slice_step: int) -> Volume:
  warp_ss, site_ss = _volume_seed(seed, domain, subject).spawn(2)
  t1, code = _source(image_size)
  # The warp (styles.random_warp: smooth field + small affine) is drawn on a 4 mm grid
  # and interpolated (it is smooth) at the output pixels only: image and masks are
  # then sampled once, warped, cropped and resized in one step. Same deformation
  # model as styles.random_subject on the 2 mm grid, at a fraction of the cost.
  coarse = styles_lib.random_warp(tuple((n + 1) // 2 for n in t1.shape),
                                  np.random.default_rng(warp_ss), voxel_mm=2 * VOXEL_MM, **WARP)
  coarse = 2.0 * coarse  # source positions in 2 mm voxels; coarse voxel i sits at 2 i
  # Square in-plane box around the warped head (not the brain), from the head mask
  # warped on the coarse grid (1 coarse voxel of slack on each side).
  head_c = ndimage.map_coordinates(code, coarse, order=0, mode="constant", cval=0) >> 1
  lo, hi = demo_brain._bbox(head_c > 0)
  lo, hi = 2 * lo - 1, 2 * hi + 1
  side = int(max(hi[0] - lo[0], hi[1] - lo[1])) + 2 * BOX_MARGIN
  centre = (lo[:2] + hi[:2]) / 2.0
  step = side / image_size
  axes = [centre[a] - side / 2.0 + (np.arange(image_size) + 0.5) * step - 0.5 for a in (0, 1)]
  axes.append(np.arange(max(lo[2], 0), min(hi[2], t1.shape[2]), dtype=np.float64))
  coords = _field_at(coarse, [a / 2.0 for a in axes])
  image = ndimage.map_coordinates(t1, coords, order=1, mode="constant", cval=0.0)
  labels = ndimage.map_coordinates(code, coords, order=0, mode="constant", cval=0)
  mask, head_out = labels & 1, labels >> 1
  in_plane = VOXEL_MM * step
  # The site renders the whole box: noise lands on background and scalp as well.
  image = render_site(image, domain, np.random.default_rng(site_ss),
                      spacing=(in_plane, in_plane, VOXEL_MM))
  keep = head_out.sum(axis=(0, 1)) >= MIN_HEAD_FRACTION * image_size ** 2
  image, mask = _axial(image)[keep], _axial(mask)[keep]
  # Scale over the whole delivered volume, then subsample: kept slices do not depend
  # on slice_step.
  image = scale_mri(image)[::slice_step]
  mask = mask[::slice_step]
  return Volume(id=f"{domain}_s{subject:02d}", domain=domain,
                image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask),
                spacing=(VOXEL_MM * slice_step, in_plane, in_plane))


def _check_args(image_size: int, subjects_per_domain: int, domains,
                slice_step: int) -> tuple[str, ...]:
  """Validated arguments; returns the site names to build, in order."""
  if image_size < 16:
    raise ValueError(f"image_size must be at least 16, got {image_size}")
  if subjects_per_domain < 1:
    raise ValueError(f"subjects_per_domain must be at least 1, got {subjects_per_domain}")
  if slice_step < 1:
    raise ValueError(f"slice_step must be at least 1, got {slice_step}")
  if domains is None:
    return DEMO_SKULL_DOMAINS
  if isinstance(domains, str):
    domains = (domains,)
  domains = tuple(domains)
  if not domains:
    raise ValueError("domains must name at least one site")
  unknown = [d for d in domains if d not in SITES]
  if unknown:
    raise ValueError(f"unknown domain(s) {unknown}; known: {list(DEMO_SKULL_DOMAINS)}")
  if len(set(domains)) != len(domains):
    raise ValueError(f"domains must not repeat, got {list(domains)}")
  return domains


def _cache_path(cache_dir, image_size: int, subjects_per_domain: int, domains: tuple[str, ...],
                seed: int, slice_step: int) -> pathlib.Path:
  asset_digest = hashlib.sha1(ASSET.read_bytes()).hexdigest() if ASSET.exists() else "none"
  key = "|".join(map(str, (DEMO_VERSION, image_size, subjects_per_domain, ",".join(domains),
                           seed, slice_step, asset_digest)))
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  return pathlib.Path(cache_dir) / (
    f"demo_skull_{image_size}px_{subjects_per_domain}s_seed{seed}_step{slice_step}_{digest}.npz")


def _to_arrays(vols: list[Volume]) -> dict[str, np.ndarray]:
  return {"images": np.concatenate([v.image for v in vols]),
          "masks": np.concatenate([v.mask for v in vols]),
          "num_slices": np.asarray([v.num_slices for v in vols], np.int64),
          "ids": np.asarray([v.id for v in vols]),
          "domains": np.asarray([v.domain for v in vols]),
          "spacing": np.asarray([v.spacing for v in vols], np.float64)}


def _from_arrays(a: dict[str, np.ndarray], domains: tuple[str, ...]) -> DomainVolumes:
  out = {d: [] for d in domains}
  bounds = np.concatenate([[0], np.cumsum(a["num_slices"])])
  for i, (vid, dom) in enumerate(zip(a["ids"], a["domains"])):
    sl = slice(int(bounds[i]), int(bounds[i + 1]))
    out[str(dom)].append(Volume(id=str(vid), domain=str(dom), image=a["images"][sl],
                                mask=a["masks"][sl],
                                spacing=tuple(float(s) for s in a["spacing"][i])))
  return DomainVolumes(domains=out, description=DESCRIPTION)


def build_demo_skull(image_size: int = 64, subjects_per_domain: int = 6,
                     domains: Sequence[str] | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None,
                     slice_step: int = 1) -> DomainVolumes:
  """The skull-stripping demo: synthetic subjects of one real head at six synthetic sites.

  Args:
    image_size: side of the square axial slices (at least 16).
    subjects_per_domain: volumes per site; every volume is its own deformation of the
      real head, so no subject appears at two sites.
    domains: sites to build, in the order wanted (default: all of
      `DEMO_SKULL_DOMAINS`). A site's volumes are the same whichever other sites are
      built.
    seed: seeds deformations and per-volume site jitter and noise.
    cache_dir: if given, the built volumes are saved there (one .npz keyed by the
      arguments, DEMO_VERSION and the asset's hash) and loaded from there next time.
    slice_step: keep every `slice_step`-th slice of the head-present slices; the
      reported slice spacing is 2 mm times `slice_step`.

  Returns:
    `DomainVolumes` with one domain per site; images [Z, S, S] float32 in [0, 1],
    masks [Z, S, S] uint8 brain masks, spacing (slice, row, column) in mm.
  """
  domains = _check_args(image_size, subjects_per_domain, domains, slice_step)
  path = None
  if cache_dir is not None:
    path = _cache_path(cache_dir, image_size, subjects_per_domain, domains, seed, slice_step)
    if path.exists():
      with np.load(path) as f:
        return _from_arrays({k: f[k] for k in f.files}, domains)
  # The matrix products here are small: a multi-threaded BLAS only adds overhead
  # (up to 10x slower on a busy 2-core machine).
  limit = threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext()
  with limit:
    vols = [_build_volume(d, s, image_size, seed, slice_step)
            for d in domains for s in range(subjects_per_domain)]
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename so a concurrent reader never sees a partial file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **_to_arrays(vols))
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
  out = {d: [] for d in domains}
  for v in vols:
    out[v.domain].append(v)
  return DomainVolumes(domains=out, description=DESCRIPTION)
