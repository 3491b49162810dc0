"""The transformer benchmark with SimMIM pre-training: config checks, data, SimMIM
pre-training runs (each an orbax checkpoint), fine-tuning of every initialisation on every
target, and the driver (see the package's docstring).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import ndimage

from medda_jax import config_utils as cu
from medda_jax import files, parallel
from medda_jax import metrics as metrics_lib
from medda_jax.data import chestxray, cxr_sites, demo_radiographs
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.graft import graft, pretrained_params
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk, epoch_indices
from medda_jax.engine.trainer import call_batches, fit
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.simmim import figures, paper, report
from medda_jax.models import convert
from medda_jax.models import swin as swin_lib
from medda_jax.models import vit as vit_lib

RESULTS_FILE = "simmim_runs.json"
SCRATCH = "scratch"
PUBLISHED = ("chestxray14", "chexpert", "shenzhen", "vindr_cxr", "rsna_pneumonia")
DEMO = "demo"


# --------------------------------------------------------------------------- config
def _user(c) -> dict[str, str]:
  from medda_jax.methods.gradient_transfer.classification import user_datasets
  return user_datasets(c)


def known_datasets(c) -> tuple[str, ...]:
  """Dataset names a run may use: the published sets, yours, and the embedded demo sets."""
  return (*PUBLISHED, *_user(c), *demo_radiographs.CORPORA, DEMO)


def validate(c: ml_collections.ConfigDict, tasks: tuple[str, ...] = ("simmim",)) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed; `tasks` are the
  pretext tasks a pre-training run may name (SimMIM's config: SimMIM only)."""
  cu.check_subset(c, "backbones", paper.BACKBONES)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  user = _user(c)
  for name in user:
    if name in (*demo_radiographs.CORPORA, DEMO):
      raise ConfigError(f"config.data.user: the name {name!r} is taken by the embedded demo "
                        "data; choose another")
    if name in PUBLISHED:
      raise ConfigError(f"config.data.user: the name {name!r} is taken by a published dataset "
                        "(config.data.dirs); choose another")
  datasets = known_datasets(c)
  names, task_of = [], {}
  for run in c.pretrain.runs:
    if (len(run) not in (3, 4) or not all(isinstance(x, str) for x in run) or not run[0]
        or (len(run) == 3 and c.method not in tasks)):
      raise ConfigError(f"config.pretrain.runs entry {run!r} must be (name, corpus, continue "
                        "from: '' or an earlier run's name" + (", task)" if len(tasks) > 1
                                                              else ")")
                        + f", e.g. ('{c.method} CXR14', 'chestxray14', '')")
    name, corpus, start = run[:3]
    task = run_task(c, run)
    if task not in tasks:
      raise ConfigError(f"config.pretrain.runs entry {run!r}: unknown task {task!r}; known: "
                        f"{list(tasks)}")
    if name == SCRATCH or name in names:
      raise ConfigError(f"config.pretrain.runs: the name {name!r} is "
                        + ("reserved" if name == SCRATCH else "used twice"))
    if corpus not in datasets:
      raise ConfigError(f"config.pretrain.runs entry {run!r}: unknown corpus {corpus!r}; "
                        f"known: {list(datasets)}")
    if start and start not in names:
      raise ConfigError(f"config.pretrain.runs entry {run!r} continues from {start!r}, which "
                        "is not an earlier run's name")
    if start and task_of[start] != task:
      raise ConfigError(f"config.pretrain.runs entry {run!r} continues {start!r}, a "
                        f"{task_of[start]} run, with {task}: a run continues its own task")
    names.append(name)
    task_of[name] = task
  for backbone, name, path in weight_entries(c):
    if name == SCRATCH or name in names:
      raise ConfigError(f"config.transfer.weights: the name {name!r} is "
                        + ("reserved" if name == SCRATCH else "used twice"))
    if not pathlib.Path(path).expanduser().is_file():
      raise ConfigError(f"config.transfer.weights: {path!r} ({name}) is not a file")
    names.append(name)
  if not c.transfer.targets:
    raise ConfigError("config.transfer.targets must name at least one target dataset")
  for target in c.transfer.targets:
    if target not in datasets or target in demo_radiographs.CORPORA:
      raise ConfigError(f"config.transfer.targets has unknown target {target!r}; known: "
                        f"{[d for d in datasets if d not in demo_radiographs.CORPORA]}")
  for name in {*(r[1] for r in c.pretrain.runs), *c.transfer.targets} & set(PUBLISHED):
    if name in user:
      continue
    folder = c.data.dirs[name]
    if not folder:
      raise ConfigError(f"config.data.dirs.{name} must name the {name} folder (or drop "
                        f"{name} from the runs and targets)")
    if not pathlib.Path(folder).expanduser().is_dir():
      raise ConfigError(f"config.data.dirs.{name}={folder!r} does not exist")
  cu.check_choice(c, "data.uncertain", chestxray.UNCERTAIN_POLICIES)
  cu.check_choice(c, "data.vindr_aggregate", chestxray.VINDR_AGGREGATES)
  for field in ("test_fraction", "val_fraction"):
    cu.check_range(c, f"data.{field}", 0.0, 0.9, low_inclusive=False)
  cu.check_range(c, "data.max_test_images", 0, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "data.threads", 1, 256, integer=True)
  for field in ("corpus_images", "train_images", "val_images", "test_images"):
    cu.check_range(c, f"data.demo_{field}", 1, integer=True)
  m = c.model
  cu.check_range(c, "model.vit.patch", 1, 64, integer=True)
  cu.check_range(c, "model.swin.patch", 1, 64, integer=True)
  for backbone in c.backbones:
    stride = encoder_stride(c, backbone)
    for stage, size in (("pretrain", c.pretrain.image_size[backbone]),
                        ("transfer", c.transfer.image_size[backbone])):
      if not isinstance(size, int) or size < stride or size % stride:
        raise ConfigError(f"config.{stage}.image_size.{backbone}={size!r} must be a multiple "
                          f"of the {backbone} encoder's stride {stride}")
    patch = m[backbone].patch
    mp = c.pretrain.mask_patch
    if not isinstance(mp, int) or mp < 1 or mp % patch:
      raise ConfigError(f"config.pretrain.mask_patch={mp!r} must be a multiple of the "
                        f"{backbone} patch size {patch}")
    if c.pretrain.image_size[backbone] % mp:
      raise ConfigError(f"config.pretrain.image_size.{backbone}="
                        f"{c.pretrain.image_size[backbone]} must be a multiple of "
                        f"config.pretrain.mask_patch={mp}")
  if "swin" in c.backbones:
    for stage, window in (("pretrain", m.swin.pretrain_window), ("transfer", m.swin.window)):
      _check_windows(c, c[stage].image_size.swin, window, stage)
  cu.check_range(c, "pretrain.mask_ratio", 0.0, 1.0, low_inclusive=False)
  for stage in ("pretrain", "transfer"):
    s = c[stage]
    cu.check_range(c, f"{stage}.epochs", 1, integer=True)
    cu.check_range(c, f"{stage}.warmup_epochs", 0, integer=True)
    cu.check_range(c, f"{stage}.batch_size", 1, integer=True)
    cu.check_range(c, f"{stage}.base_lr", 0.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.lr_batch", 1, integer=True)
    cu.check_range(c, f"{stage}.weight_decay", 0.0)
    cu.check_range(c, f"{stage}.b1", 0.0, 0.999999)
    cu.check_range(c, f"{stage}.b2", 0.0, 0.999999)
    cu.check_range(c, f"{stage}.clip_norm", 0.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.min_lr", 0.0)
    if s.warmup_epochs >= s.epochs:
      raise ConfigError(f"config.{stage}.warmup_epochs={s.warmup_epochs} must be below "
                        f"config.{stage}.epochs={s.epochs}")
  cu.check_range(c, "transfer.layer_decay", 0.0, 1.0, low_inclusive=False)
  cu.check_range(c, "transfer.patience", 1, integer=True)
  cu.check_range(c, "transfer.checkpoint_epochs", 1, integer=True)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  cu.validate_shared(c)


def _check_windows(c, image_size: int, window: int, stage: str) -> None:
  grid = image_size // c.model.swin.patch
  for s in range(len(c.model.swin.depths)):
    side = grid // 2 ** s
    if side > window and side % window:
      raise ConfigError(f"config.model.swin window {window} ({stage}) does not divide the "
                        f"{side}x{side} token grid of stage {s} at image size {image_size}")


def weight_entries(c) -> list[tuple[str, str, str]]:
  """(backbone, name, path) of `transfer.weights` entries 'backbone:name=path'."""
  out = []
  for entry in c.transfer.weights:
    head, sep, path = entry.partition("=")
    backbone, colon, name = head.partition(":")
    if not sep or not colon or not name.strip() or not path.strip():
      raise ConfigError(f"config.transfer.weights entry {entry!r} must be "
                        "'backbone:name=path', e.g. 'swin:supervised IN-1K=/w/swin_base.pth'")
    if backbone not in paper.BACKBONES:
      raise ConfigError(f"config.transfer.weights entry {entry!r}: unknown backbone "
                        f"{backbone!r}; known: {list(paper.BACKBONES)}")
    out.append((backbone, name.strip(), path.strip()))
  return out


def encoder_stride(c, backbone: str) -> int:
  if backbone == "vit":
    return c.model.vit.patch
  return c.model.swin.patch * 2 ** (len(c.model.swin.depths) - 1)


def build_encoder(c, backbone: str, image_size: int, stage: str, window: int | None = None):
  """The backbone as configured; `stage` "pretrain" uses Swin's pre-training window unless
  `window` is given."""
  m = c.model[backbone]
  dtype = cu.compute_dtype(c)
  if backbone == "vit":
    return vit_lib.VisionTransformer(
        image_size=image_size, patch_size=m.patch, width=m.width, depth=m.depth,
        num_heads=m.heads, mlp_dim=m.mlp_dim, dropout=m.dropout, num_classes=1, dtype=dtype)
  return swin_lib.SwinTransformer(
      image_size=image_size, patch_size=m.patch, embed_dim=m.embed_dim, depths=tuple(m.depths),
      num_heads=tuple(m.heads),
      window_size=window or (m.pretrain_window if stage == "pretrain" else m.window),
      drop_path_rate=m.drop_path if stage == "transfer" else m.pretrain_drop_path,
      num_classes=1, dtype=dtype)


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class ImageRows:
  """Images by row: demo arrays in memory, or a table's files read per batch."""
  name: str
  images: np.ndarray | None = None           # float32 [N, S, S, 1] (demo)
  table: chestxray.ImageLabelTable | None = None
  labels: np.ndarray | None = None           # float32 [N, K] or None (unlabelled)
  label_names: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.images) if self.images is not None else len(self.table)

  def read(self, indices, size: int) -> np.ndarray:
    """float32 [n, size, size, 1] in [0, 1]."""
    if self.images is not None:
      out = self.images[np.asarray(indices)]
      if out.shape[1] != size:
        out = np.stack([_resize(x[..., 0], size) for x in out])[..., None]
      return out
    return chestxray.read_images(self.table, indices, size)

  def take(self, indices) -> "ImageRows":
    idx = np.asarray(indices)
    return ImageRows(self.name, None if self.images is None else self.images[idx],
                     None if self.table is None else self.table.subset(idx),
                     None if self.labels is None else self.labels[idx], self.label_names)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  zoom = size / image.shape[0]
  return ndimage.zoom(image, zoom, order=1, grid_mode=True, mode="nearest")[:size, :size]


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """SimMIM's augmentation: torchvision's RandomResizedCrop(scale, ratio) + horizontal flip,
  on one [H, W] image (bilinear)."""
  h, w = image.shape
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    ch, cw, top, left = h, w, 0, 0
  crop = image[top:top + ch, left:left + cw]
  out = ndimage.zoom(crop, (size / ch, size / cw), order=1, grid_mode=True, mode="nearest")
  out = out[:size, :size]
  return out[:, ::-1] if rng.random() < 0.5 else out


def load_rows(c, name: str, size: int) -> ImageRows:
  """A dataset by name: demo corpora and task, a published dataset, or a user's."""
  if name in demo_radiographs.CORPORA:
    return ImageRows(name, demo_radiographs.corpus(name, c.data.demo_corpus_images, size,
                                                   c.data.split_seed))
  if name == DEMO:
    n = c.data.demo_train_images + c.data.demo_val_images + c.data.demo_test_images
    images, labels = demo_radiographs.findings_task(n, size, c.data.split_seed)
    return ImageRows(name, images, labels=labels, label_names=demo_radiographs.FINDINGS)
  if name in PUBLISHED[2:]:
    table = _load_published(c, name)
  else:
    from medda_jax.methods.gradient_transfer.classification import load_dataset
    table = load_dataset(c, name)
  return ImageRows(name, table=table, labels=table.labels, label_names=table.label_names)


def _load_published(c, name: str) -> chestxray.ImageLabelTable:
  """Shenzhen, VinDr-CXR (train + test CSVs, radiologists by `data.vindr_aggregate`) or RSNA
  Pneumonia from `data.dirs.<name>`, in their published layouts (data/chestxray.py)."""
  root = pathlib.Path(c.data.dirs[name]).expanduser()
  if name == "shenzhen":
    table = chestxray.load_shenzhen(root)
  elif name == "rsna_pneumonia":
    table = chestxray.load_rsna_pneumonia(root)
  else:
    tables = [chestxray.load_vindr_cxr(root, s, aggregate=c.data.vindr_aggregate)
              for s in chestxray.VINDR_SPLITS]
    # The test CSV's columns are matched to the train CSV's by name, ignoring case and a
    # plural s (the release spells "Other diseases" / "Other disease").
    key = lambda name: name.lower().rstrip("s")  # noqa: E731
    test_at = {key(n): k for k, n in enumerate(tables[1].label_names)}
    names = tables[0].label_names
    if sorted(test_at) != sorted(key(n) for n in names):
      raise DataError(f"VinDr-CXR folder {root}: image_labels_train.csv and "
                      f"image_labels_test.csv have different label columns "
                      f"({list(names)} vs {list(tables[1].label_names)})")
    tables[1] = dataclasses.replace(
        tables[1], label_names=names,
        labels=tables[1].labels[:, [test_at[key(n)] for n in names]])
    table = chestxray.ImageLabelTable.concatenate(tables)
  if len(table) == 0:
    raise DataError(f"{name} folder {root} lists no images (config.data.dirs.{name})")
  return table


def split_rows(c, rows: ImageRows) -> tuple[ImageRows, ImageRows, ImageRows]:
  """(train, val, test): the demo task in its drawn order; datasets by patient."""
  if rows.name == DEMO:
    a = c.data.demo_train_images
    b = a + c.data.demo_val_images
    n = len(rows)
    return rows.take(np.arange(a)), rows.take(np.arange(a, b)), rows.take(np.arange(b, n))
  f_test, f_val = c.data.test_fraction, c.data.val_fraction
  parts = cxr_sites.patient_split(rows.table, (1 - f_test - f_val, f_val, f_test),
                                  c.data.split_seed)
  if any(len(p) == 0 for p in parts):
    raise DataError(f"{rows.name} has {len(rows)} images of {len(set(rows.table.patient_ids))} "
                    f"patients: too few for config.data.val_fraction={f_val} and "
                    f"test_fraction={f_test}")
  out = []
  for part in parts:
    out.append(ImageRows(rows.name, table=part, labels=part.labels,
                         label_names=rows.label_names))
  test = out[2]
  if c.data.max_test_images and len(test) > c.data.max_test_images:
    keep = np.random.default_rng([c.data.split_seed, 3]).permutation(len(test))
    test = test.take(np.sort(keep[:c.data.max_test_images]))
  return out[0], out[1], test


# --------------------------------------------------------------------------- pretexts
def run_task(c, run) -> str:
  """A pre-training run's pretext task: its fourth entry, or the method's own."""
  return run[3] if len(run) == 4 else c.method


class SimMIMPretext:
  """SimMIM pre-training of one backbone (settings in `config.pretrain`): random resized
  crops and flips, masks per (seed, sample), masked L1, AdamW."""

  label = "SimMIM"

  def __init__(self, c, backbone: str):
    self.c, self.backbone, self.settings = c, backbone, c.pretrain
    self.size = c.pretrain.image_size[backbone]
    self.epochs, self.batch_size = c.pretrain.epochs, c.pretrain.batch_size
    self.patch = c.model[backbone].patch
    self.model = paper.SimMIM(build_encoder(c, backbone, self.size, "pretrain"),
                              stride=encoder_stride(c, backbone), channels=1)

  def init(self, seed: int):
    x = jnp.zeros((1, self.size, self.size, 1))
    g = self.size // self.patch
    return compile_init(lambda k: self.model.init(k, x, jnp.zeros((1, g, g), bool)))(
        jax.random.PRNGKey(seed))["params"]

  def optimizer(self, total_steps: int, steps_per_epoch: int):
    """(cache key, optimiser factory)."""
    p = self.settings
    settings = dict(learning_rate=paper.scaled_lr(p.base_lr, p.batch_size, p.lr_batch),
                    total_steps=total_steps, warmup_steps=p.warmup_epochs * steps_per_epoch,
                    weight_decay=p.weight_decay, b1=p.b1, b2=p.b2, clip_norm=p.clip_norm,
                    min_lr=p.min_lr)
    return ("simmim", *sorted(settings.items())), lambda: paper.pretrain_optimizer(**settings)

  def loss(self):
    return paper.pretrain_loss(self.model, self.patch)

  def batch(self, images: np.ndarray, sample_ids: np.ndarray, seed: int) -> dict:
    """The pre-training inputs of [n, S, S, 1] corpus images, each a function of
    (seed, sample id) alone."""
    size = self.size
    crops = np.stack([random_resized_crop(x[..., 0], size, np.random.default_rng([seed, int(j)]))
                      for x, j in zip(images, sample_ids)])[..., None]
    masks = paper.batch_masks(seed, sample_ids, size, self.settings.mask_patch, self.patch,
                              self.settings.mask_ratio)
    return {"image": crops.astype(np.float32), "mask": masks}

  def reconstruct(self, params, images: np.ndarray, seed: int = 0):
    """(masked inputs, reconstructions) of float32 [n, S, S, 1] images at pre-training size."""
    p = self.settings
    masks = paper.batch_masks(seed, np.arange(len(images)), self.size, p.mask_patch,
                              self.patch, p.mask_ratio)
    rec = jax.jit(lambda v, x, m: self.model.apply(v, x, m))({"params": params}, images, masks)
    pixel = paper.upsample_mask(masks, self.patch)[..., None]
    return images * ~pixel, np.where(pixel, np.clip(np.asarray(rec), 0, 1), images)

  def figure_rows(self, name: str, params, images: np.ndarray) -> dict[str, np.ndarray]:
    masked, rec = self.reconstruct(params, images)
    return {f"{name}: masked": masked, f"{name}: reconstruction": rec}


# --------------------------------------------------------------------------- study
class Study:
  """Data, networks and compiled steps shared by the runs of one backbone.

  `pretexts` maps each pretext task a run may name to its class (`SimMIMPretext` and,
  from methods/popar, POPAR's); each is built once, when a run first uses it."""

  def __init__(self, c, workdir: pathlib.Path, backbone: str, pretexts: dict | None = None):
    self.c, self.workdir, self.backbone = c, workdir, backbone
    self.mesh = parallel.data_mesh()
    self.inner_loop = cu.inner_loop(c)
    self.writer = MetricWriter(workdir)
    self.fine_size = c.transfer.image_size[backbone]
    self._pretext_classes = pretexts or {"simmim": SimMIMPretext}
    self._pretexts: dict[str, object] = {}
    self._chunks: dict[tuple, object] = {}  # compiled steps and predictors

  # ------------------------------------------------------------------ pre-training
  def pretext(self, task: str):
    if task not in self._pretexts:
      self._pretexts[task] = self._pretext_classes[task](self.c, self.backbone)
    return self._pretexts[task]

  def run_task(self, name: str) -> str:
    """The task of the pre-training run called `name`."""
    return run_task(self.c, next(r for r in self.c.pretrain.runs if r[0] == name))

  def run_pretext(self, name: str):
    """The pretext of the pre-training run called `name`."""
    return self.pretext(self.run_task(name))

  def pretrain_dir(self, name: str) -> pathlib.Path:
    return self.workdir / "pretrain" / f"{self.backbone}_{slug(name)}"

  def pretrain(self, name: str, corpus: ImageRows, start_params, seed: int):
    """One pre-training run over `corpus` from `start_params` (None: random init); its
    checkpoint directory is the product. Returns (params, loss curve)."""
    c = self.c
    task = self.run_task(name)
    pretext = self.pretext(task)
    batch = pretext.batch_size
    steps_per_epoch = max(1, len(corpus) // batch)
    spc = c.engine.steps_per_call
    total_calls = max(1, pretext.epochs * steps_per_epoch // spc)
    key, make_tx = pretext.optimizer(total_calls * spc, steps_per_epoch)
    # tasks may share an optimiser but not a loss: one compiled step per (task, optimiser)
    tx, chunk = self._chunk((task, *key), make_tx, lambda tx: pretext.loss())
    params = pretext.init(seed) if start_params is None else start_params
    state = parallel.replicate(TrainState.create(params, tx, rng=jax.random.PRNGKey(seed + 1)),
                               self.mesh)

    @functools.lru_cache(maxsize=2)
    def order(epoch):
      return np.random.default_rng([seed, 17, epoch]).permutation(len(corpus))

    def make_batch(k):
      ids = []
      for s in range(k * spc, (k + 1) * spc):
        e, i = divmod(s, steps_per_epoch)
        ids.append(order(e)[i * batch:(i + 1) * batch])
      sample = np.arange(k * spc * batch, (k + 1) * spc * batch)
      inputs = pretext.batch(corpus.read(np.concatenate(ids), pretext.size), sample, seed)
      return {k: v.reshape(spc, batch, *v.shape[1:]) for k, v in inputs.items()}

    ckpt = Checkpointer(self.pretrain_dir(name))
    try:
      result = run_loop(
          f"pretrain/{self.backbone}/{slug(name)}", state, chunk,
          call_batches(total_calls, make_batch), total_calls=total_calls, steps_per_call=spc,
          checkpointer=ckpt, writer=self.writer, checkpoint_every=c.engine.checkpoint_every,
          prepare=lambda b: parallel.global_batch(b, self.mesh, "data", batch_dim=1,
                                                  process_local=False),
          description=f"{pretext.label} {self.backbone} on {corpus.name} ({name})")
    finally:
      ckpt.close()
    return jax.device_get(result.state.params), result.curve

  def saved_pretraining(self, name: str):
    """The finished pre-training run's parameters, read back from its checkpoint."""
    like = self.run_pretext(name).init(0)
    return pretrained_params(self.pretrain_dir(name), like,
                             hint=f" (pre-training {name!r} of {self.backbone})")

  # ------------------------------------------------------------------ fine-tuning
  def classifier(self, num_labels: int):
    net = build_encoder(self.c, self.backbone, self.fine_size, "transfer")
    return net.clone(num_classes=num_labels)

  def transfer_init(self, net, init: str, pretrained: dict | None, seed: int):
    """Classifier parameters: random, or the pre-trained encoder grafted under a new head
    (mask token and decoder dropped; Swin's relative-position tables and ViT's position
    embeddings interpolated when the fine-tuning grid differs)."""
    x = jnp.zeros((1, self.fine_size, self.fine_size, 1))
    params = jax.device_get(compile_init(net.init)(jax.random.PRNGKey(seed), x)["params"])
    if init == SCRATCH:
      return params
    weights = {name: path for b, name, path in weight_entries(self.c) if b == self.backbone}
    if init in weights:  # published weights: every tensor converted and checked by name
      converted, _ = convert.load_pretrained(weights[init], self.backbone, params)
      grafted, _ = graft(params, converted, skip=("mask_token",), where=weights[init])
      return grafted
    grafted, _ = graft(params, pretrained, prefix="encoder", skip=("mask_token",),
                       resize=self._resize_rule, where=f"pre-training {init!r}")
    return grafted

  def _resize_rule(self, path: str, value: np.ndarray, wanted: tuple):
    if path.endswith("relative_position_bias_table"):
      old, new = int(math.isqrt(value.shape[0]) + 1) // 2, int(math.isqrt(wanted[0]) + 1) // 2
      return np.asarray(swin_lib.interpolate_relative_position_bias(value, old, new))
    if path.endswith("pos_embedding") and value.shape[-1] == wanted[-1]:
      return interpolate_position_embedding(value, wanted[1])
    return None

  def finetune(self, net, params, train: ImageRows, val: ImageRows, seed: int,
               checkpoint_dir: pathlib.Path):
    """Fine-tunes every layer; keeps the weights of the best validation mean AUC. Returns
    (variables, best validation AUC, epochs run)."""
    c, t = self.c, self.c.transfer
    spc = c.engine.steps_per_call
    batch = min(t.batch_size, len(train))
    calls_per_epoch = max(1, math.ceil(len(train) / batch / spc))
    steps_per_epoch = calls_per_epoch * spc
    total = t.epochs * steps_per_epoch
    lr = paper.scaled_lr(t.base_lr, batch, t.lr_batch)
    depths = (tuple(c.model.swin.depths) if self.backbone == "swin"
              else (c.model.vit.depth,))
    settings = dict(learning_rate=lr, total_steps=total,
                    warmup_steps=t.warmup_epochs * steps_per_epoch, weight_decay=t.weight_decay,
                    b1=t.b1, b2=t.b2, clip_norm=t.clip_norm, min_lr=t.min_lr,
                    layer_decay=t.layer_decay, backbone=self.backbone, depths=depths)
    tx, chunk = self._chunk(("finetune", id(net), *sorted(settings.items())),
                            lambda: paper.finetune_optimizer(**settings, params=params),
                            lambda tx: paper.finetune_loss(net))
    state = TrainState.create(params, tx, rng=jax.random.PRNGKey(seed + 1))
    size = self.fine_size

    @functools.lru_cache(maxsize=1)
    def order(epoch):  # [steps_per_epoch, batch]: every image once, then a fresh shuffle
      return epoch_indices(len(train), steps_per_epoch, batch, seed * 1000 + epoch)

    def make_batch(k):
      rows = np.stack([order(s // steps_per_epoch)[s % steps_per_epoch]
                       for s in range(k * spc, (k + 1) * spc)])
      images = train.read(rows.reshape(-1), size)
      return {"image": images.reshape(spc, batch, size, size, 1),
              "label": train.labels[rows].astype(np.float32)}

    val_images = val.read(np.arange(len(val)), size)
    predict = self.predictor(net)

    def evaluate(variables):
      auc, _ = metrics_lib.mean_auc(val.labels, predict(variables, val_images))
      return -1.0 if np.isnan(auc) else auc

    result = fit(f"finetune {checkpoint_dir.name}", state, chunk, make_batch,
                 total_calls=t.epochs * calls_per_epoch, steps_per_call=spc, evaluate=evaluate,
                 every=calls_per_epoch, patience=t.patience, floor=-2.0, mesh=self.mesh,
                 checkpoint_dir=checkpoint_dir,
                 checkpoint_every=calls_per_epoch * t.checkpoint_epochs)
    return result.best, result.best_score, result.evaluations

  def _chunk(self, key, make_tx, make_loss):
    """(optimiser, compiled chunk), built once per optimiser setting: every run of a backbone
    with the same settings reuses one compiled step."""
    if key not in self._chunks:
      tx = make_tx()
      self._chunks[key] = tx, build_train_chunk(make_loss(tx), tx, self.inner_loop,
                                                mesh=self.mesh)
    return self._chunks[key]

  def predictor(self, net):
    key = ("predict", id(net))
    if key not in self._chunks:
      self._chunks[key] = batch_predictor(
          lambda v, x: jax.nn.sigmoid(net.apply(v, x)), self.c.engine.eval_batch_size,
          self.mesh)
    return self._chunks[key]


def interpolate_position_embedding(value: np.ndarray, tokens: int) -> np.ndarray:
  """ViT position embeddings (1, 1 + g^2, D) -> (1, tokens, D): the class token's kept, the
  g x g grid resized bicubically, as timm's resize_pos_embed does, but with
  `jax.image.resize`'s cubic kernel (a = -0.5), not torch's `F.interpolate` (a = -0.75) that
  Swin's tables use (`swin.interpolate_relative_position_bias`), so the values differ a little
  from timm's."""
  g_old = math.isqrt(value.shape[1] - 1)
  g_new = math.isqrt(tokens - 1)
  if g_old ** 2 + 1 != value.shape[1] or g_new ** 2 + 1 != tokens:
    return None
  grid = value[0, 1:].reshape(g_old, g_old, -1)
  grid = jax.image.resize(jnp.asarray(grid), (g_new, g_new, grid.shape[-1]), "bicubic")
  return np.concatenate([value[:, :1], np.asarray(grid).reshape(1, g_new ** 2, -1)], axis=1)


# --------------------------------------------------------------------------- driver
def inits(c, backbone: str | None = None) -> list[str]:
  """Initialisations: scratch, each pre-training run, then the published weights (of
  `backbone`, or of any backbone when None)."""
  return [SCRATCH, *(r[0] for r in c.pretrain.runs),
          *(name for b, name, _ in weight_entries(c) if backbone in (None, b))]


def data_label(c) -> str:
  parts = []
  used = {*(r[1] for r in c.pretrain.runs), *c.transfer.targets}
  if used & {DEMO, *demo_radiographs.CORPORA}:
    parts.append(demo_radiographs.DESCRIPTION + " — not a reproduction of the paper's numbers")
  if used & set(PUBLISHED):
    parts.append(", ".join(sorted(used & set(PUBLISHED))))
  user = sorted(used & set(_user(c)))
  if user:
    parts.append("your datasets: " + ", ".join(user))
  weights = weight_entries(c)
  if weights:
    parts.append("published weights: " + ", ".join(f"{name} ({b}, {pathlib.Path(path).name})"
                                                     for b, name, path in weights)
                 + "; every other initialisation starts from random weights")
  else:
    parts.append("every initialisation starts from random weights (no published weights "
                 "loaded)")
  return "; ".join(parts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  return run_study(config, workdir, {"simmim": SimMIMPretext}, report.SIMMIM)


def run_study(c: ml_collections.ConfigDict, workdir, pretexts: dict, paper_ref: report.Paper
              ) -> dict:
  """Every pre-training run, then every initialisation fine-tuned on every target, for each
  backbone; `pretexts` maps task names to pretext classes (a validated config's runs name
  only those). Writes the tables and figures; returns the table's means by key."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runs = RunTable(workdir / RESULTS_FILE)
  label = data_label(c)
  if parallel.is_main_process():
    print(f"data: {label}\nbackbones {list(c.backbones)}; pre-training "
          f"{[r[0] for r in c.pretrain.runs]}; targets {list(c.transfer.targets)}; seeds "
          f"{list(c.seeds)}", file=sys.stderr)
  total = sum(len(c.pretrain.runs) + len(inits(c, b)) * len(c.transfer.targets) * len(c.seeds)
              for b in c.backbones)
  done = sum(runs.done(k) for k in runs.runs)
  rows_cache: dict[tuple, ImageRows] = {}

  def rows(name, size):
    key = (name, size if name in (*demo_radiographs.CORPORA, DEMO) else None)  # files: any size
    if key not in rows_cache:
      rows_cache[key] = load_rows(c, name, size)
    return rows_cache[key]

  for name in dict.fromkeys([*(r[1] for r in c.pretrain.runs), *c.transfer.targets]):
    if name not in (*demo_radiographs.CORPORA, DEMO):
      rows(name, None)  # every table read (and its files checked) before any training

  recon = {}
  with Progress("runs", total, done) as progress:
    for backbone in c.backbones:
      study = Study(c, workdir, backbone, pretexts)
      pretrained = {}
      for name, corpus, start, *_ in c.pretrain.runs:
        key = report.pretrain_key(backbone, name)
        if runs.done(key):
          pretrained[name] = study.saved_pretraining(name)
          continue
        images = rows(corpus, study.run_pretext(name).size)
        if corpus in c.transfer.targets:  # no pre-training on a target's test images
          images = split_rows(c, images)[0]
        params, curve = study.pretrain(name, images, pretrained[start] if start else None,
                                       seed=0)
        pretrained[name] = params
        runs.record(key, {"corpus": corpus, "continued_from": start, "curve": curve,
                          "final_loss": curve[-1]})
        progress.update(1)
      recon[backbone] = {}
      for name in pretrained:
        pretext = study.run_pretext(name)
        probe = _probe_images(c, rows, pretext.size)
        recon[backbone].setdefault(f"input ({pretext.size} px)", probe)
        recon[backbone].update(pretext.figure_rows(name, pretrained[name], probe))
      for target in c.transfer.targets:
        train, val, test = split_rows(c, rows(target, study.fine_size))
        net = study.classifier(len(train.label_names))
        test_images = None
        for init in inits(c, backbone):
          for seed in c.seeds:
            key = report.finetune_key(backbone, init, target, seed)
            if runs.done(key):
              continue
            ckpt_dir = workdir / "finetune" / slug(key)
            params = study.transfer_init(net, init, pretrained.get(init), seed)
            best, val_auc, epochs = study.finetune(net, params, train, val, seed, ckpt_dir)
            if test_images is None:
              test_images = test.read(np.arange(len(test)), study.fine_size)
            auc, per_label = metrics_lib.mean_auc(test.labels,
                                                  study.predictor(net)(best, test_images))
            runs.record(key, {"test_auc": auc, "per_label": per_label.tolist(),
                              "labels": list(train.label_names), "val_auc": val_auc,
                              "epochs": epochs, "train_images": len(train)})
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
            progress.update(1)
      study.writer.close()

  table = report.summarise(runs.runs, c, {b: inits(c, b) for b in c.backbones})
  final = {f"auc/{backbone}/{init}/{target}": cell[0]
           for backbone, rows_ in table.items() for init, cols in rows_.items()
           for target, cell in cols.items()}
  if parallel.is_main_process():
    labels = {task: cls.label for task, cls in pretexts.items()}
    files.write_text(workdir / "results.md",
                     report.tables_markdown(table, c, label, paper_ref, labels))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "metric": "mean AUC over labels (test split)",
         "backbones": list(c.backbones),
         "pretraining": [[*r[:3], run_task(c, r)] for r in c.pretrain.runs],
         "targets": list(c.transfer.targets), "seeds": list(c.seeds), "table": table},
        indent=1))
    demo = " (demo data)" if "DEMO DATA" in label else ""
    for backbone, images in recon.items():
      if images:
        figures.reconstructions(
            workdir / f"reconstructions_{backbone}.png", images,
            f"{paper_ref.method} {backbone}: pretext inputs and reconstructions{demo}")
    figures.transfer_bars(workdir / "transfer.png", table,
                          f"fine-tuned mean AUC, mean ± std over seeds{demo}")
  return final


def _probe_images(c, rows, size: int) -> np.ndarray:
  """Six images of the last pre-training run's corpus, for the reconstruction figure."""
  corpus = rows(c.pretrain.runs[-1][1], size)
  return corpus.read(np.arange(min(6, len(corpus))), size)
