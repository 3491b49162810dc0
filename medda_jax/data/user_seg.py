"""Your own segmentation data, named in the config: a Decathlon-layout folder with any task
name, or a CSV manifest of NIfTI files.

  config.data.user = ("ourliver=/data/Task11_OurLiver", "clinic=/data/clinic.csv")

* A folder holds `dataset.json`, `imagesTr/` and `labelsTr/` as the Decathlon ships a
  task; its `labels`, `modality` and `training` entries are read. Every foreground label
  (and every channel of a 4-D task) becomes one binary dataset: `<name>` when there is one,
  else `<name>_<label>` (`<name>_<label>_<channel>` for several channels).
* A CSV has the columns `image,label[,subject][,site][,modality]`; paths are absolute or
  relative to the CSV's folder. The foreground is every non-zero label voxel. `subject`
  names the volume (default: the image file's stem; unique per site); `site` splits the
  rows into datasets `<name>_<site>`; `modality` (else `config.data.user_modality`) is
  CT or MR.

Intensities follow the modality (see `msd.normalise_slices`): CT through a Hounsfield
window scaled to [0, 1], MR by the method's own recipe. Every dataset of a source is in
the organ group `<name>`, so a target holds all of its source's datasets out of training.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from medda_jax import config_utils as cu
from medda_jax.data import msd
from medda_jax.data.collection import SliceCollection
from medda_jax.data.volumes import Volume, cached_volumes
from medda_jax.errors import ConfigError, DataError

# Values of dataset.json "modality" (or of a CSV's modality column) read as MR: the
# Decathlon's MR tasks name their sequences.
_MR_NAMES = {"MR", "MRI", "T1", "T1W", "T1GD", "T1C", "T1CE", "T2", "T2W", "FLAIR", "ADC",
             "DWI", "PD", "PDW", "SWI", "CINE", "BOLD"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CSV_COLUMNS = ("image", "label", "subject", "site", "modality")


def modality_of(value: str, where: str) -> str:
  """"CT" or "MR" for a modality name (case-insensitive), else a DataError naming `where`."""
  name = str(value).strip().upper()
  if name == "CT":
    return "CT"
  if name in _MR_NAMES:
    return "MR"
  raise DataError(f"{where}: unknown modality {value!r}; use CT, or MR (also read as MR: "
                  f"{', '.join(sorted(_MR_NAMES - {'MR'}))})")


@dataclasses.dataclass(frozen=True)
class UserSource:
  name: str
  path: str

  @property
  def is_csv(self) -> bool:
    return os.path.isfile(self.path)


def parse_sources(entries: Iterable[str]) -> list[UserSource]:
  """`("name=path", ...)` -> sources, each path checked to be a folder with a dataset.json
  or a CSV file."""
  sources = []
  named = cu.named_paths(entries, "data.user", "our_site=/data/Task01_site")
  for name, path in named.items():
    if os.path.isdir(path):
      if not os.path.isfile(os.path.join(path, "dataset.json")):
        raise DataError(f"{name}: folder {path} has no dataset.json (expected the Decathlon "
                        "layout: dataset.json, imagesTr/, labelsTr/)")
    elif not os.path.isfile(path):
      raise DataError(f"{name}: {path} does not exist (expected a Decathlon-layout folder or "
                      "a CSV manifest)")
    elif not path.lower().endswith(".csv"):
      raise DataError(f"{name}: {path} is neither a folder nor a .csv manifest")
    sources.append(UserSource(name, os.path.abspath(path)))
  return sources


@dataclasses.dataclass(frozen=True)
class _BinaryCase(msd._Case):
  """A case of a CSV manifest: every non-zero label value is foreground."""

  def read_label(self) -> np.ndarray:
    return (super().read_label() != 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class UserTask:
  """One task of a source: its description, binary datasets and cases."""
  info: msd.TaskInfo
  datasets: tuple[msd.MsdDataset, ...]
  cases: tuple[msd._Case, ...]
  origin: str


def _clean(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", str(label)).strip("_").lower() or "label"


def _folder_task(source: UserSource, threshold: int) -> UserTask:
  meta_path = os.path.join(source.path, "dataset.json")
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"cannot read {meta_path}: not valid JSON ({e})") from e
  missing = [k for k in ("labels", "modality", "training")
             if not isinstance(meta, dict) or k not in meta]
  if missing:
    raise DataError(f"{meta_path} lacks the key(s) {missing}; a Decathlon dataset.json has "
                    "\"labels\" ({\"0\": \"background\", \"1\": \"liver\"}), \"modality\" "
                    "({\"0\": \"CT\"}) and \"training\"")
  try:
    labels = {int(k): str(v) for k, v in meta["labels"].items()}
    channels = {int(k): str(v) for k, v in meta["modality"].items()}
  except (AttributeError, TypeError, ValueError) as e:
    raise DataError(f"{meta_path}: \"labels\" and \"modality\" must map numbers to names "
                    f"({e})") from e
  foreground = sorted(k for k in labels if k != 0)
  if not foreground or not channels or sorted(channels) != list(range(len(channels))):
    raise DataError(f"{meta_path}: needs at least one foreground label and \"modality\" "
                    "entries numbered 0, 1, ...")
  modalities = tuple(modality_of(channels[c], f"{meta_path} modality {c}")
                     for c in range(len(channels)))
  four_d = len(channels) > 1
  info = msd.TaskInfo(source.name, len(channels) if four_d else None, modalities,
                      tuple(foreground))
  datasets = []
  for k in foreground:
    for c in (range(len(channels)) if four_d else (None,)):
      parts = [source.name]
      if len(foreground) > 1:
        parts.append(_clean(labels[k]))
      if four_d:
        parts.append(_clean(channels[c]))
      datasets.append(msd.MsdDataset("_".join(parts), source.name, k, c, source.name,
                                     threshold))
  return UserTask(info, tuple(datasets), tuple(msd._read_cases(source.path)),
                  f"{source.path} ({', '.join(modalities)})")


def read_manifest(source: UserSource, modality: str) -> dict[str, tuple[str, list[msd._Case]]]:
  """{site or "": (modality, cases)} of a CSV manifest, every file checked to exist."""
  try:
    with open(source.path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.DictReader(f))
      header = [h.strip() for h in (rows[0].keys() if rows else [])]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read CSV manifest {source.path}: {e}") from e
  if not rows or not {"image", "label"} <= set(header):
    raise DataError(f"{source.path}: expected a header line image,label[,subject][,site]"
                    "[,modality] and at least one row")
  unknown = [h for h in header if h not in _CSV_COLUMNS]
  if unknown:
    raise DataError(f"{source.path}: unknown column(s) {unknown}; allowed {list(_CSV_COLUMNS)}")
  base = os.path.dirname(source.path)
  sites: dict[str, tuple[str, list[msd._Case]]] = {}
  for line, row in enumerate(rows, start=2):
    row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
    where = f"{source.path} line {line}"
    paths = {}
    for kind in ("image", "label"):
      if not row.get(kind):
        raise DataError(f"{where}: empty {kind} path")
      paths[kind] = os.path.normpath(os.path.join(base, os.path.expanduser(row[kind])))
      if not os.path.isfile(paths[kind]):
        raise DataError(f"{where}: {kind} file {paths[kind]} does not exist")
    if row.get("modality"):
      mod = modality_of(row["modality"], where)
    elif modality:
      mod = modality_of(modality, "config.data.user_modality")
    else:
      raise DataError(f"{where}: no modality; add a modality column (CT or MR) or set "
                      "config.data.user_modality")
    site = row.get("site", "")
    site_mod, cases = sites.setdefault(site, (mod, []))
    if mod != site_mod:
      raise DataError(f"{where}: modality {mod} differs from {site_mod} of earlier rows of "
                      f"site {site or source.name!r}")
    stem = row.get("subject") or msd.case_stem(paths["image"])
    if any(c.stem == stem for c in cases):
      raise DataError(f"{where}: subject {stem!r} is listed twice" +
                      (f" in site {site!r}" if site else "") + "; one volume per subject")
    cases.append(_BinaryCase(stem, paths["image"], paths["label"]))
  for site in sites:
    if site and not _NAME.match(site):
      raise DataError(f"{source.path}: site {site!r} may hold letters, digits, '_', '-' and "
                      "'.' only")
  return sites


def _site_name(source: UserSource, site: str) -> str:
  return f"{source.name}_{site}" if site else source.name


def _csv_tasks(source: UserSource, threshold: int, modality: str) -> list[UserTask]:
  tasks = []
  for site, (mod, cases) in read_manifest(source, modality).items():
    name = _site_name(source, site)
    info = msd.TaskInfo(name, None, (mod,), (1,))
    dataset = msd.MsdDataset(name, name, 1, None, source.name, threshold)
    tasks.append(UserTask(info, (dataset,), tuple(sorted(cases, key=lambda c: c.stem)),
                          f"{source.path} ({mod})"))
  return tasks


def user_tasks(source: UserSource, threshold: int = 1, modality: str = "") -> list[UserTask]:
  return (_csv_tasks(source, threshold, modality) if source.is_csv
          else [_folder_task(source, threshold)])


def load_user_collection(sources: Sequence[UserSource], *, image_size: int,
                         threshold_space: str = "native", normalisation: str = "modality",
                         ct_window=msd.DEFAULT_CT_WINDOW, threshold: int = 1,
                         modality: str = "", cache_dir: str | None = None) -> SliceCollection:
  """Binary slice datasets of the sources, preprocessed as `msd.load_msd` does."""
  options = msd.check_options(image_size, threshold_space, normalisation, ct_window)
  datasets, origins = {}, []
  for source in sources:
    for task in user_tasks(source, threshold, modality):
      loaded = msd._load_task(task.cases, task.info, task.datasets, options,
                              None if cache_dir is None else os.fspath(cache_dir))
      datasets.update(loaded)
      origins.append(f"{task.info.name}: {task.origin}, {len(task.cases)} volumes")
  description = (f"your data ({'; '.join(origins)}): {image_size}x{image_size} slices, "
                 f"normalisation={normalisation}")
  return SliceCollection(datasets, description)


# --------------------------------------------------------------------------- sites (3-D)
def _volume(case: msd._Case, site: str, modality: str, ct_window,
            keep_labels: bool = False) -> Volume:
  """A case as a `Volume` [z, x, y]: channel 0 of a 4-D image, foreground = label != 0
  (`keep_labels`: the label values as they are, for multi-class methods)."""
  from medda_jax.data.cc359 import scale_mri  # the gradient-transfer sites' MR recipe
  image = case.read_image()
  if image.ndim == 4:
    image = image[..., 0]
  label = case.read_label()
  label = np.rint(label) if keep_labels else label != 0
  zooms = msd.nib.load(case.image).header.get_zooms()[:3]
  image = (msd.ct_window(image, ct_window) if modality == "CT" else scale_mri(image))
  return Volume(id=case.stem, domain=site,
                image=np.ascontiguousarray(image.transpose(2, 0, 1)),
                mask=np.ascontiguousarray(label.transpose(2, 0, 1)).astype(np.uint8),
                spacing=(float(zooms[2]), float(zooms[0]), float(zooms[1])))


def load_user_sites(sources: Sequence[UserSource], *, modality: str = "",
                    ct_window=msd.DEFAULT_CT_WINDOW,
                    cache_dir: str | None = None,
                    keep_labels: bool = False) -> dict[str, tuple[list[Volume], str]]:
  """{site: (volumes, origin)}: a folder is one site named as its source, a CSV one site per
  value of its site column (`<name>_<site>`), or one named as the source without it.
  CT volumes go through `ct_window`; MR volumes are scaled as the CC359 sites are.
  `keep_labels`: masks keep the label values (0..255) instead of label != 0."""
  window = msd.check_options(16, "native", "modality", ct_window).ct_window
  sites = {}
  for source in sources:
    for task in user_tasks(source, 1, modality):
      info = task.info
      path = None
      if cache_dir is not None:
        key = json.dumps({"site": info.name, "modalities": info.modalities, "window": window,
                          "cases": [c.fingerprint() for c in task.cases]}, sort_keys=True)
        if keep_labels:  # its own cache; the binary caches keep their keys
          key += "|labels"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = os.path.join(os.fspath(cache_dir), f"user_{info.name}_{digest}")

      def make(task=task, info=info):
        for case in task.cases:
          case.check(info)
        return (_volume(c, info.name, info.modalities[0], window, keep_labels)
                for c in task.cases)

      volumes = cached_volumes(path, info.name, make)
      sites[info.name] = (volumes, task.origin)
  return sites


# --------------------------------------------------------------------------- config fields
# The volume-site methods (gradient transfer, FDA, CateNorm, AvaGrad, AIVA) share the config
# fields data.source / data.user / data.user_modality / data.ct_window; these two read them.
def check_site_fields(c) -> None:
  """Config errors in the shared site fields, before anything is loaded."""
  if c.data.source == "none" and not c.data.user:
    raise ConfigError("config.data.source='none' needs your sites in config.data.user, e.g. "
                      "\"('mysite=/path/to/TaskXX_Folder',)\"")
  if c.data.user:
    parse_sources(c.data.user)
  if c.data.user_modality:
    modality_of(c.data.user_modality, "config.data.user_modality")
  window = tuple(c.data.ct_window)
  if len(window) != 2 or not all(isinstance(w, (int, float)) for w in window) or not (
      window[0] < window[1]):
    raise ConfigError(f"config.data.ct_window={window!r} must be (low, high) in Hounsfield "
                      "units with low < high")


def config_sites(c, cache_dir, taken, keep_labels: bool = False
                 ) -> dict[str, tuple[list[Volume], str]]:
  """{site: (volumes, one-line description)} of config.data.user; a site named like one of
  `taken` (the built-in source's sites) is a ConfigError."""
  sites = load_user_sites(parse_sources(c.data.user), modality=c.data.user_modality,
                          ct_window=tuple(c.data.ct_window), cache_dir=cache_dir,
                          keep_labels=keep_labels)
  out = {}
  for site, (volumes, origin) in sites.items():
    if site in taken:
      raise ConfigError(f"your site {site!r} (config.data.user) has the name of a site of "
                        f"config.data.source={c.data.source!r}; choose another name")
    out[site] = (volumes, f"your site {site}: {origin}, {len(volumes)} volumes")
  return out
