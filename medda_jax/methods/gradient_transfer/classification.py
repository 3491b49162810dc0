"""Gradient transfer on chest X-rays (Goodman et al., DART 2022, §3.3 and Table 5):
multi-label transfer between CheXpert and ChestX-ray14, mean AUC.

The label sets of the two datasets differ, so the target task gets a new classification
head. One DenseNet-121 backbone carries two linear heads, `source_head` (the source
dataset's labels) and `target_head` (the target's):

  1. Pre-train backbone + source head on the source dataset's training images (Adam,
     lr 1e-4, multi-label BCE). The target head exists from the start but gets no
     gradient and no update, so it enters fine-tuning as initialised: a new head.
  2. For each target budget (128, 256, 512, 1024 images drawn per seed from the target
     training split), fine-tune the source model with
       fta   all layers on the target images, fresh optimizer;
       ftf   the first layers of the backbone (`ftf.trainable_prefixes`) and the new head;
       l2sp  all layers plus alpha ||theta - theta_source||^2 on the pre-trained ones;
       octl  the backbone (and source head) continue the pre-training Adam moments with
             beta1 = 0.99 and the step count at 100, while the new head starts a fresh
             Adam state (count 0): `optax.multi_transform` keeps one state per group;
       mmtl  batches mixing n_t target and B - n_t source images (Algorithm 1); source
             images are scored by the source head against source labels, target images
             by the target head against target labels, the batch loss is the mean over
             all its images; fresh optimizer.
  3. Score the target head on the target test split: ROC-AUC per label, mean over labels.
Table: mean +- std over seeds of the mean AUC, per direction, budget and method.

Every run uses the same optimizer structure, `multi_transform({backbone: adam, head:
adam})` from `medda_jax.optim.transfer` with every number in its state, and the same
loss, so pre-training and all fine-tuning methods share one compiled training step.
Images are streamed from their files through grain (a batch per step, drawn by a per-step
generator, so a resumed run draws the batches an uninterrupted one would); the test
images are decoded once into a uint8 cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medda_jax import config_utils as cu
from medda_jax import files, parallel
from medda_jax import metrics as metrics_lib
from medda_jax.data import chestxray, cxr_sites, mixed
from medda_jax.data.mixed import target_count
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError
from medda_jax.methods.gradient_transfer import experiment as gt
from medda_jax.methods.gradient_transfer import report_cls
from medda_jax.methods.gradient_transfer.report import run_key
from medda_jax.models.densenet import MultiHeadDenseNet
from medda_jax.optim import transfer as transfer_opt

METHODS = ("fta", "ftf", "l2sp", "octl", "mmtl")
DATASETS = ("chexpert", "chestxray14")
RESULTS_FILE = "transfer_cls_results.json"
HEADS = ("source_head", "target_head")
_SCHEDULES = ("code", "paper_linear")


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  if not c.data.pairs:
    raise ConfigError("config.data.pairs must list at least one (source, target) dataset pair")
  user = user_datasets(c)
  known = list(DATASETS) + list(user)
  for pair in c.data.pairs:
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(known):
      raise ConfigError(f"config.data.pairs entry {tuple(pair)!r} must be two different "
                        f"datasets of {known}")
  for name in sorted({s for pair in c.data.pairs for s in pair}):
    if name in user:
      if not pathlib.Path(user[name]).expanduser().exists():
        raise ConfigError(f"config.data.user entry {name}={user[name]} names no file or folder")
      continue
    root = c.data.dirs[name]
    if not root:
      raise ConfigError(f"config.data.dirs.{name} must name the {name} release folder "
                        f"(config.data.pairs uses {name})")
    if not pathlib.Path(root).expanduser().is_dir():
      raise ConfigError(f"config.data.dirs.{name}={root!r} is not a folder")
  cu.check_choice(c, "data.uncertain", chestxray.UNCERTAIN_POLICIES)
  cu.check_range(c, "data.test_fraction", 0.0, 1.0, low_inclusive=False)
  if c.data.test_fraction >= 1.0:
    raise ConfigError(f"config.data.test_fraction={c.data.test_fraction} leaves no training "
                      "images; allowed (0, 1)")
  cu.check_range(c, "data.max_test_images", 0, integer=True)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "data.read_threads", 1, 256, integer=True)
  if not c.budgets:
    raise ConfigError("config.budgets must list at least one number of target images")
  for budget in c.budgets:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
      raise ConfigError(f"config.budgets entry {budget!r} must be a number of target "
                        "images >= 1")
  cu.check_subset(c, "methods", METHODS)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  if not c.model.block_sizes or any(not isinstance(b, int) or b < 1
                                    for b in c.model.block_sizes):
    raise ConfigError(f"config.model.block_sizes={tuple(c.model.block_sizes)!r} must be "
                      "layers per dense block, each >= 1")
  for field in ("growth_rate", "bn_size", "init_features"):
    cu.check_range(c, f"model.{field}", 1, 1024, integer=True)
  smallest = 4 * 2 ** (len(c.model.block_sizes) - 1)  # stem /4, one /2 per transition
  cu.check_range(c, "data.image_size", smallest, 4096, integer=True)
  cu.check_range(c, "batch_size", 1, integer=True)
  gt.check_stage_schedules(c)
  cu.check_range(c, "optim.adam_b1", 0.0, 0.999999)
  cu.check_range(c, "optim.adam_b2", 0.0, 0.999999)
  cu.check_range(c, "optim.adam_eps", 0.0, low_inclusive=False)
  cu.check_range(c, "octl.adam_b1", 0.0, 0.999999)
  cu.check_range(c, "octl.adam_count", 0, integer=True)
  cu.check_choice(c, "mmtl.schedule", _SCHEDULES)
  cu.check_range(c, "l2sp.alpha", 0.0)
  if not c.ftf.trainable_prefixes:
    raise ConfigError("config.ftf.trainable_prefixes must name at least one backbone layer "
                      "prefix (e.g. 'conv0')")
  cu.validate_shared(c)
  gt.check_stage_steps(c)


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DatasetSplit:
  """One dataset's patient-level random split (the paper splits each dataset at random)."""

  train: chestxray.ImageLabelTable
  test: chestxray.ImageLabelTable


def user_datasets(c) -> dict[str, str]:
  """{name: path} of the config's `data.user` entries ('name=path')."""
  return cu.named_paths(c.data.user, "data.user", "our_cxr=/data/cxr.csv", DATASETS)


def load_dataset(c, name: str) -> chestxray.ImageLabelTable:
  """All labelled images of a dataset: a user's (`data.user`, see chestxray.load_user), or
  a published one in its layout: ChestX-ray14's two official lists, or CheXpert's
  train.csv + valid.csv (frontal views if `data.frontal_only`; uncertain labels by
  `data.uncertain`)."""
  user = user_datasets(c)
  if name in user:
    table = chestxray.load_user(name, user[name], uncertain=c.data.uncertain)
    if len(table) == 0:
      raise DataError(f"dataset {name} ({user[name]}) lists no images (config.data.user)")
    return table
  root = pathlib.Path(c.data.dirs[name]).expanduser()
  if name == "chestxray14":
    tables = [chestxray.load_chestxray14(root, s) for s in chestxray.CHESTXRAY14_SPLITS]
  else:
    tables = [chestxray.load_chexpert(root, s, uncertain=c.data.uncertain,
                                      frontal_only=c.data.frontal_only)
              for s in chestxray.CHEXPERT_SPLITS]
  table = chestxray.ImageLabelTable.concatenate(tables)
  if len(table) == 0:
    raise DataError(f"{name} folder {root} lists no images (config.data.dirs.{name})")
  return table


def split_dataset(table: chestxray.ImageLabelTable, test_fraction: float, seed: int,
                  max_test_images: int, name: str) -> DatasetSplit:
  train, test = cxr_sites.patient_split(table, (1.0 - test_fraction, test_fraction), seed)
  if len(train) == 0 or len(test) == 0:
    raise DataError(f"{name} has {len(table)} images of {len(set(table.patient_ids))} "
                    f"patients; config.data.test_fraction={test_fraction} leaves "
                    f"{len(train)} for training and {len(test)} for testing")
  if max_test_images and len(test) > max_test_images:
    keep = np.random.default_rng([seed, 3]).permutation(len(test))[:max_test_images]
    test = test.subset(np.sort(keep))
  return DatasetSplit(train, test)


def budget_images(train: chestxray.ImageLabelTable, n: int, seed: int, name: str) -> np.ndarray:
  """The seed's draw of `n` target training images (without replacement), sorted."""
  if n > len(train):
    raise ConfigError(f"config.budgets asks for {n} target images but {name} has "
                      f"{len(train)} training images")
  return np.sort(np.random.default_rng([seed, 7]).permutation(len(train))[:n])


@dataclasses.dataclass(frozen=True)
class BatchConfig:
  batch_size: int
  steps_per_epoch: int
  num_epochs: int
  schedule: str  # mixed.SCHEDULES: "code", "paper_linear", "source_only", "target_only"
  image_size: int
  seed: int = 0

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs


@dataclasses.dataclass(frozen=True)
class Pool:
  """Images a sampler may draw: rows `indices` of `table`."""

  table: chestxray.ImageLabelTable
  indices: np.ndarray


def mixed_batch(step: int, source: Pool | None, target: Pool | None, cfg: BatchConfig,
                label_widths: tuple[int, int], process_index: int = 0,
                process_count: int = 1) -> dict:
  """The batch of one step (Algorithm 1): n_t = schedule(epoch) target images first, then
  B - n_t source images, each drawn uniformly with replacement from its pool by the
  generator `default_rng([seed, step])`. Returns images [b, S, S, 1] float32 in [0, 1],
  source_labels [b, Ks] (NaN on target rows), target_labels [b, Kt] (NaN on source rows)
  and is_target [b]; `label_widths` is (Ks, Kt). With several processes each draws the
  whole batch's random numbers and reads only its contiguous share."""
  n_target = target_count(cfg.schedule, step // cfg.steps_per_epoch, cfg.num_epochs,
                          cfg.batch_size)
  if n_target and target is None:
    raise ValueError("the schedule asks for target images but there is no target pool")
  if n_target < cfg.batch_size and source is None:
    raise ValueError("the schedule asks for source images but there is no source pool")
  rng = np.random.default_rng([cfg.seed, step])
  draws = []  # (pool, table row, is_target) of every image, target images first
  for pool, n, is_target in ((target, n_target, True),
                             (source, cfg.batch_size - n_target, False)):
    if n:
      rows = pool.indices[rng.integers(len(pool.indices), size=n)]
      draws += [(pool, int(r), is_target) for r in rows]
  share = cfg.batch_size // process_count
  mine = draws[process_index * share:(process_index + 1) * share]
  images = np.concatenate([chestxray.read_images(pool.table, [r], cfg.image_size)
                           for pool, r, _ in mine])
  source_labels = np.full((len(mine), label_widths[0]), np.nan, np.float32)
  target_labels = np.full((len(mine), label_widths[1]), np.nan, np.float32)
  for i, (pool, r, is_target) in enumerate(mine):
    (target_labels if is_target else source_labels)[i] = pool.table.labels[r]
  return {"images": images, "source_labels": source_labels, "target_labels": target_labels,
          "is_target": np.array([t for _, _, t in mine], bool)}


def mixed_batches(source: Pool | None, target: Pool | None, cfg: BatchConfig,
                  label_widths: tuple[int, int], steps_per_call: int = 1,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """grain dataset of chunks: element k stacks the batches of steps
  [k * steps_per_call, (k + 1) * steps_per_call) along a new leading axis."""
  return mixed.step_chunks(lambda s: mixed_batch(s, source, target, cfg, label_widths,
                                                 process_index, process_count),
                           cfg.total_steps, cfg.batch_size, steps_per_call, process_count)


def test_images(table: chestxray.ImageLabelTable, size: int, cache: pathlib.Path,
                threads: int) -> np.ndarray:
  """All images of a test table as a read-only uint8 [N, S, S, 1] array, decoded once
  (grain threads) into `cache` and memory-mapped after that."""
  digest = hashlib.sha1("\n".join([str(table.root), *table.paths]).encode()).hexdigest()[:12]
  path = cache / f"cxr_test_{size}_{len(table)}_{digest}.npy"
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    block = 64
    ds = grain.MapDataset.range(-(-len(table) // block)).map(
        lambda b: np.round(255.0 * chestxray.read_images(
            table, np.arange(b * block, min((b + 1) * block, len(table))), size)
        ).astype(np.uint8))
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(table), size, size, 1))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(4, threads)))
    for b, decoded in enumerate(it):
      out[b * block:b * block + len(decoded)] = decoded
    out.flush()
    del out
    os.replace(tmp, path)
  return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- model, loss, optimizer
def masked_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[b] multi-label BCE of each image, the mean over its labels that are not NaN (0 for
  an image without any: the other head's rows of a mixed batch)."""
  valid = ~jnp.isnan(labels)
  per_label = optax.sigmoid_binary_cross_entropy(logits, jnp.where(valid, labels, 0.0))
  return jnp.sum(per_label * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1)


def group_labels(params) -> dict:
  """`multi_transform` labels: the new target head is "head", everything the source model
  had (backbone, source head) is "backbone"."""
  return {k: jax.tree.map(lambda _, k=k: "head" if k == "target_head" else "backbone", v)
          for k, v in params.items()}


def _only_group(tree, params, group: str):
  """`tree` (like params) with the leaves of the other group replaced by optax's
  MaskedNode, as `multi_transform` hands params to the group's transform."""
  labels = group_labels(params)
  return jax.tree.map(lambda x, lab: x if lab == group else optax.MaskedNode(), tree, labels)


def first_layers_mask(params, prefixes) -> dict:
  """FTF: trainable backbone layers (`features/<name>` with name starting with a prefix);
  the source head and all later layers frozen."""
  prefixes = tuple(prefixes)
  return transfer_opt.trainable_mask(
      params, lambda path: path[0] == "features" and path[1].startswith(prefixes))


def optimizer(c, params, stage: str, *, continuation: bool = False,
              l2sp_alpha: float = 0.0, backbone_trainable=None, train_head: bool = True,
              source_state=None) -> optax.GradientTransformation:
  """`multi_transform({backbone: adam, head: adam})`, the stage's step-decay schedule
  restarted in both. `continuation` (OCTL): the backbone group continues
  `source_state`'s backbone moments with beta1 = octl.adam_b1 and the count at
  octl.adam_count; the head group is fresh either way."""
  s = c[stage]
  common = dict(learning_rate=s.learning_rate, decay_step=s.decay_epoch * s.steps_per_epoch,
                decay_factor=s.decay_factor, b2=c.optim.adam_b2, eps=c.optim.adam_eps)
  b1 = c.octl.adam_b1 if continuation else c.optim.adam_b1
  backbone = transfer_opt.transfer_optimizer(
      "adam", b1=b1, l2sp_alpha=l2sp_alpha, **common,
      trainable=None if backbone_trainable is None else _only_group(
          backbone_trainable, params, "backbone"))
  head_mask = jax.tree.map(lambda _: train_head, params)
  head = transfer_opt.transfer_optimizer("adam", b1=c.optim.adam_b1, **common,
                                         trainable=_only_group(head_mask, params, "head"))
  if continuation:
    backbone = transfer_opt.continue_from(
        backbone, source_state.inner_states["backbone"], adam_count=c.octl.adam_count)
  return optax.multi_transform({"backbone": backbone, "head": head}, group_labels)


class Experiment:
  """What the runs share: datasets, the model per direction, the compiled steps."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c = c
    self.workdir = workdir
    names = sorted({s for pair in c.data.pairs for s in pair})
    self.splits = {n: split_dataset(load_dataset(c, n), c.data.test_fraction,
                                    c.data.split_seed, c.data.max_test_images, n)
                   for n in names}
    for _, target in c.data.pairs:
      for budget in c.budgets:
        budget_images(self.splits[target].train, budget, 0, target)  # fails early if too big
    self.cache = files.data_cache_dir(c.data.cache_dir, workdir)
    self.inner_loop = cu.inner_loop(c)
    self.dtype = cu.compute_dtype(c)
    self.mesh = parallel.data_mesh()
    self.writer = MetricWriter(workdir)
    self._models: dict[tuple[str, str], MultiHeadDenseNet] = {}
    self._steps: dict[tuple[int, int], object] = {}
    self._predictors: dict[tuple[int, int], object] = {}
    self._inits: dict[tuple, object] = {}

  def model(self, source: str, target: str) -> MultiHeadDenseNet:
    key = (source, target)
    if key not in self._models:
      m = self.c.model
      self._models[key] = MultiHeadDenseNet(
          heads=(("source_head", len(self.splits[source].train.label_names)),
                 ("target_head", len(self.splits[target].train.label_names))),
          block_sizes=tuple(m.block_sizes), growth_rate=m.growth_rate, bn_size=m.bn_size,
          init_features=m.init_features, dtype=self.dtype)
    return self._models[key]

  def init_variables(self, model: MultiHeadDenseNet, seed: int):
    # jitted once per model: op-by-op initialisation compiles every random draw separately
    key = tuple(model.heads)
    if key not in self._inits:
      size = self.c.data.image_size
      self._inits[key] = compile_init(
          lambda k: model.init(k, jnp.zeros((1, size, size, 1)), train=False))
    return self._inits[key](jax.random.PRNGKey(seed))

  def loss_fn(self, model: MultiHeadDenseNet):
    def loss(params, model_state, batch, rng):
      del rng
      logits, mutated = model.apply({"params": params, "batch_stats": model_state},
                                    batch["images"], train=True, mutable=["batch_stats"])
      per_image = jnp.where(batch["is_target"],
                            masked_bce(logits["target_head"], batch["target_labels"]),
                            masked_bce(logits["source_head"], batch["source_labels"]))
      return per_image.mean(), (mutated["batch_stats"], {})
    return loss

  def optimizer(self, params, stage: str, **kw) -> optax.GradientTransformation:
    return optimizer(self.c, params, stage, **kw)

  def step_fn(self, model: MultiHeadDenseNet, tx):
    """One compiled chunk per pair of label-set sizes: every optimizer above has the same
    update code and keeps its numbers in its state."""
    key = tuple(n for _, n in model.heads)
    if key not in self._steps:
      self._steps[key] = build_train_chunk(self.loss_fn(model), tx, self.inner_loop,
                                           mesh=self.mesh)
    return self._steps[key]

  def batches(self, source: Pool | None, target: Pool | None, widths, stage: str,
              schedule: str, seed: int):
    s = self.c[stage]
    cfg = BatchConfig(self.c.batch_size, s.steps_per_epoch, s.epochs, schedule,
                      self.c.data.image_size, seed)
    spc = self.c.engine.steps_per_call
    ds = mixed_batches(source, target, cfg, widths, spc, jax.process_index(),
                       jax.process_count())
    threads = self.c.data.read_threads  # a buffer smaller than the threads idles them
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                   prefetch_buffer_size=max(2, threads))))
    return it, cfg.total_steps // spc

  def train(self, name: str, ckpt_dir, state, step, it, calls, show_progress):
    state = parallel.replicate(state, self.mesh)
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    keys = ("images", "source_labels", "target_labels", "is_target")
    try:
      return run_loop(
          name, state, step, it, total_calls=calls, steps_per_call=self.c.engine.steps_per_call,
          checkpointer=ckpt, writer=self.writer, checkpoint_every=self.c.engine.checkpoint_every,
          prepare=lambda b: parallel.global_batch({k: b[k] for k in keys}, self.mesh, "data",
                                                  batch_dim=1),
          show_progress=show_progress)
    finally:
      if ckpt is not None:
        ckpt.close()

  def widths(self, source: str, target: str) -> tuple[int, int]:
    return tuple(n for _, n in self.model(source, target).heads)

  def pretrain(self, source: str, target: str, seed: int) -> TrainState:
    """The source model of this direction and seed (trained, or restored from its
    finished checkpoint): backbone + source head on the source training images."""
    model = self.model(source, target)
    variables = self.init_variables(model, seed)
    params = variables["params"]
    tx = self.optimizer(params, "pretrain", train_head=False)
    state = TrainState.create(params, tx, variables["batch_stats"], jax.random.PRNGKey(seed))
    train = self.splits[source].train
    pool = Pool(train, np.arange(len(train)))
    it, calls = self.batches(pool, None, self.widths(source, target), "pretrain",
                             "source_only", seed)
    name = f"pretrain_{source}_to_{target}_seed{seed}"
    return self.train(name, self.workdir / "checkpoints" / name, state,
                      self.step_fn(model, tx), it, calls, True).state

  def finetune(self, method: str, source_state: TrainState, source: str, target: str,
               target_pool: Pool, seed: int, run_name: str):
    """Returns (variables {"params", "batch_stats"}, loss curve, checkpoint dir or None)."""
    c = self.c
    model = self.model(source, target)
    # Copies: the training step donates its state, and the source model serves every run.
    params, batch_stats = jax.tree.map(jnp.array, (source_state.params, source_state.model_state))
    source_pool, schedule, kw = None, "target_only", {}
    if method == "mmtl":
      train = self.splits[source].train
      source_pool, schedule = Pool(train, np.arange(len(train))), c.mmtl.schedule
    elif method == "octl":
      kw = dict(continuation=True, source_state=source_state.opt_state)
    elif method == "ftf":
      kw = dict(backbone_trainable=first_layers_mask(params, c.ftf.trainable_prefixes))
    elif method == "l2sp":
      kw = dict(l2sp_alpha=c.l2sp.alpha)
    elif method != "fta":
      raise ConfigError(f"unknown transfer method {method!r}; known: {list(METHODS)}")
    tx = self.optimizer(params, "finetune", **kw)
    step = self.step_fn(model, tx)
    state = TrainState.create(params, tx, batch_stats, jax.random.PRNGKey(seed + 1000))
    it, calls = self.batches(source_pool, target_pool, self.widths(source, target), "finetune",
                             schedule, seed)
    ckpt_dir = (self.workdir / "checkpoints" / "runs" / run_name.replace("/", "_")
                if calls > c.engine.checkpoint_every else None)
    result = self.train(run_name, ckpt_dir, state, step, it, calls, False)
    return ({"params": result.state.params, "batch_stats": result.state.model_state},
            result.curve, ckpt_dir)

  def evaluate(self, variables, source: str, target: str) -> dict:
    """Mean ROC-AUC (x100) of the target head over the target labels on the target test
    split; labels with one class in the test split are left out of the mean."""
    model = self.model(source, target)
    key = self.widths(source, target)
    if key not in self._predictors:
      self._predictors[key] = batch_predictor(
          lambda v, x: model.apply(v, x.astype(jnp.float32) / 255.0, train=False)["target_head"],
          self.c.engine.eval_batch_size, self.mesh)
    test = self.splits[target].test
    images = test_images(test, self.c.data.image_size, self.cache, self.c.data.read_threads)
    mean, per_label = metrics_lib.mean_auc(test.labels, self._predictors[key](variables, images))
    return {"auc": 100.0 * mean,
            "per_label": [None if np.isnan(a) else 100.0 * float(a) for a in per_label]}


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  if parallel.is_main_process():
    sizes = {n: f"{len(s.train)} train / {len(s.test)} test" for n, s in exp.splits.items()}
    print(f"data: {sizes}; pairs {list(map(tuple, c.data.pairs))}; budgets {list(c.budgets)}; "
          f"methods {list(c.methods)}; seeds {list(c.seeds)}; inner loop: {exp.inner_loop}",
          file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  results, record = runs.runs, runs.record
  for source, target in c.data.pairs:
    for seed in c.seeds:
      source_state = exp.pretrain(source, target, seed)
      with Progress(f"fine-tuning {source}->{target} seed {seed}",
                    len(c.budgets) * len(c.methods)) as progress:
        for budget in c.budgets:
          train = exp.splits[target].train
          pool = Pool(train, budget_images(train, budget, seed, target))
          for method in c.methods:
            key = run_key("adam", source, target, budget, method, seed)
            if key not in results:
              variables, curve, ckpt_dir = exp.finetune(method, source_state, source, target,
                                                        pool, seed, key)
              record(key, {"target": exp.evaluate(variables, source, target),
                           "target_images": len(pool.indices), "final_loss": curve[-1]})
              if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
            progress.update(1, auc=results[key]["target"]["auc"])

  table = report_cls.summarise(results, c)
  label = report_cls.label(c, user_datasets(c))
  final = {f"target_auc/{direction}/{budget}/{method}": cell[0]
           for direction, rows in table.items() for budget, row in rows.items()
           for method, cell in row.items()}
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", report_cls.tables_markdown(table, c, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "pairs": [list(p) for p in c.data.pairs],
         "seeds": list(c.seeds), "budgets": list(c.budgets),
         "test_images": {n: len(s.test) for n, s in exp.splits.items()}, "table": table},
        indent=1))
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
