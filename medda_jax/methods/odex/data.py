"""ODEx's data: a stream of stages, each a train and a test list of (image, mask) crops.

Sources (all read one item at a time: a file-backed stage reads its NIfTI files when an
item is drawn, never the whole set):

* `demo` — DEMO DATA. Real AAL hippocampus labels (37 + 38) on two real brains, Colin27 and
  the MNI152 template (`medda_jax/data/demo_brain.py`), cropped around each hippocampus
  (the right one mirrored); synthetic subjects (smooth deformations) and a synthetic
  gradual drift of the stream: the mixture shifts from Colin27 to MNI152 while the contrast
  moves from T1 towards a T2-like curve, noise grows and resolution drops.
* `msd` — the Decathlon's Task04_Hippocampus as published (`dataset.json`, `imagesTr/`,
  `labelsTr/`; labels 1 anterior + 2 posterior merged), its cases split into stages that
  are progressively transformed (the paper's "transformed" stream: contrast, noise,
  resolution).
* `config.data.user` — your own stream: each 'name=path' entry is one stage, in order, a
  CSV manifest `image,label` of NIfTI files (or a Decathlon-layout folder); the table
  carries the names.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from medda_jax.data import demo_brain, msd, styles, user_seg
from medda_jax.errors import ConfigError, DataError

HIPPOCAMPUS_AAL = (37, 38)  # Hippocampus_L, Hippocampus_R
DEMO_LABEL = ("DEMO DATA (real AAL hippocampus labels on two real brains, Colin27 and "
              "MNI152; subjects and the drift of the stream synthetic) — not a reproduction "
              "of the paper's numbers")


# --------------------------------------------------------------------------- stages
class ArrayItems:
  """Items held in memory (the small demo)."""

  def __init__(self, images: np.ndarray, masks: np.ndarray):
    self.images, self.masks = images, masks

  def __len__(self) -> int:
    return len(self.images)

  def read(self, i: int):
    return self.images[i], self.masks[i]


class FileItems:
  """Items read from NIfTI files when drawn: binary foreground, z-scored over the non-zero
  voxels, centre-cropped or padded to `shape`, then the stage's drift applied."""

  def __init__(self, cases, shape, strength: float, seed: int):
    self.cases, self.shape, self.strength, self.seed = list(cases), tuple(shape), strength, seed

  def __len__(self) -> int:
    return len(self.cases)

  def read(self, i: int):
    case = self.cases[i]
    image, label = case.read_image(), case.read_label()
    if image.ndim != 3 or image.shape != label.shape:
      raise DataError(f"case {case.stem}: image shape {image.shape} and label shape "
                      f"{label.shape} differ (3-D volumes of one grid expected)")
    mask = (label != 0).astype(np.uint8)
    image = fit(image.astype(np.float32), self.shape)
    mask = fit(mask, self.shape)
    rng = np.random.default_rng([self.seed, i, 5])
    image = drift(image, self.strength, rng)
    return zscore(image), mask


@dataclasses.dataclass
class Stage:
  name: str
  train: object  # ArrayItems or FileItems
  test: object


def fit(x: np.ndarray, shape) -> np.ndarray:
  """Centre crop or zero-pad every axis of x to `shape`."""
  out = np.zeros(shape, x.dtype)
  src, dst = [], []
  for n, m in zip(x.shape, shape):
    lo = max(0, (n - m) // 2)
    pad = max(0, (m - n) // 2)
    k = min(n, m)
    src.append(slice(lo, lo + k))
    dst.append(slice(pad, pad + k))
  out[tuple(dst)] = x[tuple(src)]
  return out


def zscore(x: np.ndarray) -> np.ndarray:
  fg = x[x != 0]
  if fg.size < 2:
    return x.astype(np.float32)
  return np.where(x != 0, (x - fg.mean()) / max(float(fg.std()), 1e-6), 0.0).astype(np.float32)


_T1 = np.array(styles._T2_CURVE[0])  # the identity's control points
_T2 = np.array(styles._T2_CURVE[1])


def drift_style(strength: float) -> styles.Style:
  """The scanner style a fraction `strength` (0..1) along the drift: the intensity curve
  moves from T1 (identity) to the T2-like curve, noise grows from 2 % to 10 % and the
  resolution drops to half in-plane."""
  t = float(strength)
  curve = (tuple(_T1), tuple((1 - t) * _T1 + t * _T2))
  return styles.Style(curve=curve, curve_jitter=0.02, gamma=(0.9, 1.1), bias=0.1,
                      resolution=(1 + t, 1 + t, 1.0), noise=0.02 + 0.08 * t)


def drift(image: np.ndarray, strength: float, rng) -> np.ndarray:
  if not np.any(image > 0):
    return image
  x = np.where(image > 0, image - image[image > 0].min() + 1e-3, 0.0)
  return styles.apply_style(x, drift_style(strength), rng) * (image > 0)


# --------------------------------------------------------------------------- demo
@functools.lru_cache(maxsize=2)
def _hippocampi(anatomy: str, margin: int):
  """[(image, mask)] of the left and the mirrored right hippocampus of a real brain,
  cropped with `margin` voxels around the label."""
  a = demo_brain._anatomy(anatomy)
  if anatomy == "colin27":
    aal = a["aal"]
  else:  # Colin27's AAL on the MNI152 grid (both in MNI space; an approximate atlas there)
    colin = demo_brain._colin27()
    aal = demo_brain._resample_nearest(colin["aal"], colin["affine"], a["image"].shape,
                                       a["affine"])
  image = np.asarray(a["image"], np.float32)
  out = []
  for value in HIPPOCAMPUS_AAL:
    mask = aal == value
    lo, hi = demo_brain._bbox(mask, margin)
    crop_img = demo_brain._crop(image, lo, hi)
    crop_mask = demo_brain._crop(mask.astype(np.uint8), lo, hi)
    if value == HIPPOCAMPUS_AAL[1]:  # right -> mirrored into the left's orientation
      crop_img, crop_mask = crop_img[::-1].copy(), crop_mask[::-1].copy()
    out.append((crop_img, crop_mask))
  return out


def demo_item(anatomy: str, side: int, strength: float, shape, seed) -> tuple:
  """One synthetic subject's hippocampus crop: the real crop warped by a smooth random
  deformation, rendered in the drift's style at `strength`, z-scored."""
  rng = np.random.default_rng(seed)
  image, mask = _hippocampi(anatomy, 6)[side]
  image, mask = styles.random_subject([image, mask], rng, max_displacement_mm=4.0,
                                      max_rotation_deg=8.0, max_scale=0.08)
  image, mask = fit(image, shape), fit(mask, shape)
  return zscore(drift(image, strength, rng)), mask


def demo_stream(n_stages: int, n_train: int, n_test: int, shape, seed: int) -> list[Stage]:
  """Stage k (strength t = k / (n - 1)): each subject is MNI152-derived with probability t
  (else Colin27), either hemisphere, rendered at drift strength t."""
  stages = []
  for k in range(n_stages):
    t = k / max(n_stages - 1, 1)
    parts = {}
    for split, n, tag in (("train", n_train, 1), ("test", n_test, 2)):
      rng = np.random.default_rng([seed, k, tag])
      items = [demo_item("mni152" if rng.random() < t else "colin27", int(rng.integers(2)),
                         t, shape, [seed, k, tag, i]) for i in range(n)]
      parts[split] = ArrayItems(np.stack([x for x, _ in items]), np.stack([m for _, m in items]))
    stages.append(Stage(f"stage{k + 1}", parts["train"], parts["test"]))
  return stages


# --------------------------------------------------------------------------- files
def split_cases(cases, n_stages: int, test_fraction: float, seed: int):
  """Cases shuffled by the seed and cut into n_stages disjoint groups, each split into
  train and test."""
  order = np.random.default_rng(seed).permutation(len(cases))
  groups = np.array_split(order, n_stages)
  out = []
  for g in groups:
    n_test = max(1, int(round(test_fraction * len(g))))
    if len(g) - n_test < 1:
      raise DataError(f"{len(cases)} cases cannot make {n_stages} stages of at least one "
                      "training and one test case")
    out.append(([cases[i] for i in g[n_test:]], [cases[i] for i in g[:n_test]]))
  return out


def msd_stream(root: str, n_stages: int, test_fraction: float, shape, seed: int):
  """Task04_Hippocampus as published, cut into progressively transformed stages."""
  import os
  task_dir = os.path.join(root, "Task04_Hippocampus")
  if not os.path.isdir(task_dir):
    raise DataError(f"{root} has no Task04_Hippocampus folder (expected "
                    "Task04_Hippocampus/dataset.json, imagesTr/, labelsTr/)")
  cases = msd._read_cases(task_dir)
  stages = []
  for k, (train, test) in enumerate(split_cases(cases, n_stages, test_fraction, seed)):
    t = k / max(n_stages - 1, 1)
    stages.append(Stage(f"stage{k + 1}", FileItems(train, shape, t, seed),
                        FileItems(test, shape, t, seed + 1)))
  return stages


def user_stream(entries, test_fraction: float, shape, seed: int) -> list[Stage]:
  """One stage per 'name=path' entry (CSV image,label or a Decathlon folder), in order,
  each read as it is (no synthetic drift)."""
  stages = []
  for source in user_seg.parse_sources(entries):
    if source.is_csv:
      sites = user_seg.read_manifest(source, modality="MR")
      cases = [c for _, site_cases in sites.values() for c in site_cases]
    else:
      cases = msd._read_cases(source.path)
    for case in cases:  # every pair is checked before training starts
      msd._check_shapes(msd.TaskInfo(source.name, None, ("MR",), (1,)), case)
    ((train, test),) = split_cases(cases, 1, test_fraction, seed)
    stages.append(Stage(source.name, FileItems(train, shape, 0.0, seed),
                        FileItems(test, shape, 0.0, seed + 1)))
  return stages


def load_stream(c) -> tuple[list[Stage], str]:
  """The configured stream and its label for the results."""
  shape = tuple(c.data.crop)
  if c.data.user:
    stages = user_stream(c.data.user, c.data.test_fraction, shape, c.data.split_seed)
    return stages, "your data: " + ", ".join(s.name for s in stages)
  if c.data.source == "msd":
    if not c.data.root:
      raise ConfigError("config.data.root must name the Decathlon root holding "
                        "Task04_Hippocampus/ when config.data.source='msd'")
    return (msd_stream(c.data.root, c.data.stages, c.data.test_fraction, shape,
                       c.data.split_seed),
            "Medical Decathlon Task04_Hippocampus, progressively transformed stages")
  return (demo_stream(c.data.stages, c.data.train_subjects, c.data.test_subjects, shape,
                      c.data.split_seed), DEMO_LABEL)


def batch(items, indices) -> dict:
  """{"images": [b, D, H, W, 1], "masks": [b, D, H, W, 1]} of the items, read one by one."""
  pairs = [items.read(int(i)) for i in indices]
  return {"images": np.stack([x for x, _ in pairs])[..., None].astype(np.float32),
          "masks": np.stack([m for _, m in pairs])[..., None].astype(np.float32)}
