"""The MetaMedSeg experiment: config, data, the transfer baseline, meta-training, fine-tuning
of every initialisation on every target, and the driver (see the package's docstring).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from medda_jax import config_utils as cu
from medda_jax import losses as losses_lib
from medda_jax import metrics as metrics_lib
from medda_jax import files, parallel, plots
from medda_jax.data import demo_brain, msd, prepared, tasks, user_seg
from medda_jax.data.collection import SliceCollection, split_volumes
from medda_jax.engine.adapt import AdaptConfig, adapt, adapt_chunked
from medda_jax.engine.checkpoint import Checkpointer, restore_params
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.meta import MetaState, build_meta_step
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk, supervised_loss
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError, DataError, NonFiniteLossError
from medda_jax.methods.metamedseg.report import results_table, table_markdown
from medda_jax.models.unet import UNet
from medda_jax.optim import coupled_adam, maml, reptile


DEMO_TARGETS = ("thalamus_t1w", "caudate_t2w_like", "putamen_lowres_noisy")
RESULTS_FILE = "finetune_results.json"
PREDICTIONS_DIR = "predictions"  # <init>_<target>.npz: test masks of the first selection


def save_predictions(path: pathlib.Path, predicted: np.ndarray, truth: np.ndarray) -> None:
  """Bit-packed predicted and ground-truth test masks [N, H, W, 1] of one fine-tuning run."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, predicted=np.packbits(predicted), truth=np.packbits(truth),
                          shape=np.array(predicted.shape))


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.validate_shared(c)
  cu.check_choice(c, "data.source", ("demo_brain", "msd", "none"))
  if c.data.source == "none" and not c.data.user:
    raise ConfigError("config.data.source='none' needs your datasets in config.data.user, "
                      "e.g. \"('mydata=/path/to/TaskXX_Folder',)\"")
  if c.data.user_modality:
    user_seg.modality_of(c.data.user_modality, "config.data.user_modality")
  cu.check_range(c, "data.user_threshold", 1, integer=True)
  if c.init_from and not pathlib.Path(c.init_from).expanduser().exists():
    raise ConfigError(f"config.init_from={c.init_from!r} does not exist (expected the workdir "
                      "of an earlier run, or one stage's checkpoint folder)")
  try:
    msd.check_options(c.data.image_size, c.data.threshold_space, c.data.normalisation,
                      c.data.ct_window)
  except ConfigError as e:
    raise ConfigError(f"config.data.{e}") from e
  cu.check_choice(c, "data.layout", prepared.LAYOUTS)
  if c.data.source == "msd" and not c.data.root:
    raise ConfigError("config.data.root must name the Medical Segmentation Decathlon folder "
                      "(holding TaskXX_Name/dataset.json), or with config.data.layout='tfds' "
                      "the TFDS data dir, when config.data.source='msd'")
  cu.check_range(c, "data.image_size", 16, 1024, integer=True)
  if c.data.image_size % 2 ** (c.model.levels - 1):
    raise ConfigError(f"config.data.image_size={c.data.image_size} must be divisible by "
                      f"2**(model.levels-1)={2 ** (c.model.levels - 1)}")
  cu.check_range(c, "data.subjects_per_anatomy", 1, 64, integer=True)
  cu.check_choice(c, "data.threshold_space", msd.THRESHOLD_SPACES)
  cu.check_choice(c, "data.normalisation", msd.NORMALISATIONS)
  cu.check_range(c, "data.test_fraction", 0.0, 0.9, low_inclusive=False)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  cu.check_range(c, "model.features", 1, 512, integer=True)
  cu.check_range(c, "model.levels", 2, 7, integer=True)
  cu.check_choice(c, "meta.algorithm", ("reptile", "maml", "fomaml"))
  if c.meta.meta_iterations > 0:
    cu.check_subset(c, "meta.rules", ("aw", "idw", "dawoud"))
  cu.check_range(c, "meta.dawoud_entropy_weight", 0.0)
  cu.check_choice(c, "finetune.regime", ("few_shot", "full"))
  cu.check_choice(c, "meta.task_definition", tasks.TASK_DEFINITIONS)
  cu.check_range(c, "meta.meta_iterations", 0, integer=True)
  cu.check_range(c, "meta.tasks_per_batch", 1, 1024, integer=True)
  cu.check_range(c, "meta.shots", 1, 1024, integer=True)
  cu.check_range(c, "meta.meta_step_size", 0.0, low_inclusive=False)
  cu.check_choice(c, "meta.loss", losses_lib.SEGMENTATION_LOSSES)
  cu.check_choice(c, "meta.idw_form", ("inverse", "one_minus_normalised"))
  cu.check_choice(c, "meta.idw_reference", ("meta_model", "mean_of_tasks", "mean_of_other_tasks"))
  cu.check_range(c, "meta.maml_inner_steps", 1, integer=True)
  cu.check_range(c, "meta.maml_inner_lr", 0.0, low_inclusive=False)
  for stage in ("meta.inner", "finetune"):
    cu.check_range(c, f"{stage}.learning_rate", 0.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.weight_decay", 0.0)
    cu.check_range(c, f"{stage}.epochs", 1, integer=True)
    cu.check_range(c, f"{stage}.lr_decay_gamma", 0.0, 1.0, low_inclusive=False)
    cu.check_range(c, f"{stage}.lr_decay_every", 0, integer=True)
  cu.check_range(c, "transfer.epochs", 1, integer=True)
  cu.check_range(c, "transfer.max_steps", 0, integer=True)
  cu.check_range(c, "transfer.batch_size", 1, integer=True)
  cu.check_range(c, "transfer.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "transfer.weight_decay", 0.0)
  cu.check_range(c, "transfer.lr_decay_gamma", 0.0, 1.0, low_inclusive=False)
  cu.check_choice(c, "transfer.loss", losses_lib.SEGMENTATION_LOSSES)
  cu.check_choice(c, "transfer.heads", ("per_dataset", "shared"))
  cu.check_choice(c, "transfer.sampling", ("balanced", "epochs"))
  cu.check_choice(c, "finetune.loss", losses_lib.SEGMENTATION_LOSSES)
  cu.check_range(c, "finetune.shots", 1, 1024, integer=True)
  if len(c.finetune.seeds) < 1:
    raise ConfigError("config.finetune.seeds must list at least one shot-selection seed")
  cu.check_choice(c, "engine.task_parallelism", ("vmap", "map", "unroll"))
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  if c.meta.algorithm != "reptile" and cu.inner_loop(c) == "host":
    raise ConfigError("config.meta.algorithm='maml'/'fomaml' needs config.engine.inner_loop="
                      "'scan' (the meta-gradient flows through the scanned inner loop)")


# --------------------------------------------------------------------------- data
def _user_names(c) -> set[str]:
  return {entry.partition("=")[0].strip() for entry in c.data.user}


def _of_user(c, name: str) -> bool:
  """Whether a dataset name belongs to one of the data.user sources."""
  return any(name == u or name.startswith(f"{u}_") for u in _user_names(c))


def load_collection(c, workdir: pathlib.Path) -> SliceCollection:
  cache = files.data_cache_dir(c.data.cache_dir, workdir)
  parts = []
  # Fine-tuning only your own targets needs no built-in data.
  builtin = c.data.source != "none" and not (
      c.init_from and c.data.targets and all(_of_user(c, t) for t in c.data.targets))
  if builtin and c.data.source == "msd":
    named = list(c.data.targets) + list(c.data.exclude)
    parts.append(msd.load_msd(c.data.root, image_size=c.data.image_size,
                              threshold_space=c.data.threshold_space,
                              normalisation=c.data.normalisation, cache_dir=cache,
                              layout=c.data.layout, ct_window=tuple(c.data.ct_window),
                              include=[n for n in named if n in msd.EXTRA_DATASETS]))
  elif builtin:
    parts.append(demo_brain.build_demo_brain(image_size=c.data.image_size,
                                             subjects_per_anatomy=c.data.subjects_per_anatomy,
                                             seed=c.data.split_seed,
                                             cache_dir=files.demo_cache_dir(c.data.cache_dir)))
  if c.data.user:
    parts.append(user_seg.load_user_collection(
        user_seg.parse_sources(c.data.user), image_size=c.data.image_size,
        threshold_space=c.data.threshold_space, normalisation=c.data.normalisation,
        ct_window=tuple(c.data.ct_window), threshold=c.data.user_threshold,
        modality=c.data.user_modality, cache_dir=cache))
  if len(parts) == 1:
    return parts[0]
  datasets = dict(parts[0].datasets)
  groups = {d.group for d in datasets.values()}
  for name, dataset in parts[1].datasets.items():
    if name in datasets or dataset.group in groups:
      raise ConfigError(f"your dataset {dataset.group!r} (config.data.user) has the name of a "
                        f"dataset or organ group of config.data.source={c.data.source!r}; "
                        "choose another name")
    datasets[name] = dataset
  return SliceCollection(datasets, "; ".join(p.description for p in parts))


def _expand(c, names, collection: SliceCollection) -> list[str]:
  """A data.user source's name stands for all of its datasets."""
  out = []
  for name in names:
    if name not in collection.datasets and name in _user_names(c):
      out += [n for n in collection.names() if collection[n].group == name]
    else:
      out.append(name)
  return out


def targets_and_sources(c, collection: SliceCollection) -> tuple[list[str], list[str]]:
  default_targets = msd.TARGETS if c.data.source == "msd" else DEMO_TARGETS
  targets = (_expand(c, c.data.targets, collection)
             or [t for t in default_targets if t in collection.datasets])
  exclude = _expand(c, c.data.exclude, collection)
  for name in targets + exclude:
    if name not in collection.datasets:
      raise ConfigError(f"dataset {name!r} (config.data.targets / data.exclude) is not in the "
                        f"data; available: {sorted(collection.datasets)}")
  if not targets:
    raise ConfigError("no fine-tuning target found in the data; set config.data.targets")
  if c.init_from:
    return targets, []  # fine-tune only: nothing is trained on sources
  if not c.data.exclude and c.data.source == "msd" and "colon" in collection.datasets:
    exclude = ["colon"]  # the default, when the colon task is there (reference code)
  held_out_groups = {collection[t].group for t in targets}
  sources = [n for n in collection.names()
             if collection[n].group not in held_out_groups and n not in exclude]
  if not sources:
    raise ConfigError("no source dataset is left for meta-training after holding out "
                      f"the targets {targets} and their organ groups")
  return targets, sources


_STAGE_ORDER = ("transfer", "meta_aw", "meta_idw", "meta_dawoud", "maml", "fomaml")


def load_initialisations(path, like) -> dict[str, Any]:
  """config.init_from: {stage: params} of every checkpointed stage of an earlier run's
  workdir (checkpoints/<stage>/<step>/), or of one stage's checkpoint folder."""
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise ConfigError(f"config.init_from={str(path)!r} is not a folder (expected the workdir "
                      "of an earlier run, or one stage's checkpoint folder)")

  def is_stage(d: pathlib.Path) -> bool:
    return d.is_dir() and any(p.name.isdigit() and p.is_dir() for p in d.iterdir())

  if is_stage(root):
    stages = [root]
  else:
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    stages = sorted((d for d in base.iterdir() if is_stage(d)),
                    key=lambda d: (_STAGE_ORDER.index(d.name) if d.name in _STAGE_ORDER
                                   else len(_STAGE_ORDER), d.name))
  if not stages:
    raise DataError(f"config.init_from={str(path)!r} holds no checkpoint (expected the workdir "
                    "of an earlier run, with checkpoints/<stage>/<step>/, or one stage's "
                    "checkpoint folder)")
  hint = " (config.model.features / model.levels differ from the run that saved it?)"
  out = {}
  for d in stages:
    heads = _saved_head_width(d)
    if heads > 1:  # joint pre-training with one output per source dataset
      out[d.name] = narrow_head(restore_params(d, widen_head(like, heads), hint=hint))
    else:
      out[d.name] = restore_params(d, like, hint=hint)
  return out


def _saved_head_width(directory: pathlib.Path) -> int:
  """Output channels of the U-Net saved in a stage's latest checkpoint (0 if unreadable:
  `restore_params` then names the problem)."""
  try:
    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory.absolute(), item_names=("state", "extra"),
                               item_handlers=handlers) as r:
      step = r.latest_step()
      kernel = r.item_metadata(step)["state"]["params"]["params"][HEAD]["kernel"]
      return int(kernel.shape[-1])
  except Exception:  # noqa: BLE001 - any unreadable layout is reported by restore_params
    return 0


def _with_entropy_regulariser(loss_fn, weight: float):
  """loss + weight x mean binary entropy of the predicted probabilities: Dawoud et al.'s
  entropy regularisation, which pushes predictions away from the decision boundary
  (their version scores images of other tasks; here the task's own shots)."""

  def fn(logits, targets):
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    entropy = -(p * jax.nn.log_sigmoid(logits) + (1.0 - p) * jax.nn.log_sigmoid(-logits))
    return loss_fn(logits, targets) + weight * jnp.mean(entropy)

  return fn


# --------------------------------------------------------------------------- transfer heads
# The source datasets of joint pre-training can share their images: the demo's structures
# are labels of the same brain slices, MSD's brain-tumour sub-regions and its hippocampus,
# pancreas and vessel pairs are labels of the same scans. One output channel for all of
# them is asked for different masks of one image and can only learn their average, so
# pre-training gives every source dataset its own 1x1 output convolution (the U-Net's
# last layer, `Conv_0`) on the shared network; fine-tuning starts from their mean.
HEAD = "Conv_0"


def _tile(x, reps):
  """jnp.tile, also for shapes alone (`jax.eval_shape` results describe checkpoints)."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(n * r for n, r in zip(x.shape, reps)), x.dtype)
  return jnp.tile(x, reps)


def widen_head(params, num_heads: int):
  """The single-output parameters with the output convolution copied into `num_heads`."""
  head = params["params"][HEAD]
  wide = {"kernel": _tile(head["kernel"], (1, 1, 1, num_heads)),
          "bias": _tile(head["bias"], (num_heads,))}
  return {**params, "params": {**params["params"], HEAD: wide}}


def narrow_head(params):
  """One output channel: the mean of the per-dataset output convolutions."""
  head = params["params"][HEAD]
  narrow = {"kernel": head["kernel"].mean(axis=-1, keepdims=True),
            "bias": head["bias"].mean(keepdims=True)}
  return {**params, "params": {**params["params"], HEAD: narrow}}


def _per_dataset_head_loss(apply_fn, loss_fn):
  """The train-step loss of joint pre-training: each slice is scored on its own dataset's
  output channel (batch["dataset"], [B]); `apply_fn` is the widened U-Net's."""

  def fn(params, model_state, batch, rng):
    del rng
    logits = apply_fn(params, batch["images"])  # [B, H, W, num_heads]
    own = jnp.take_along_axis(logits, batch["dataset"][:, None, None, None], axis=-1)
    return loss_fn(own, batch["masks"]), (model_state, {})

  return fn


# --------------------------------------------------------------------------- experiment
class Experiment:
  """Holds what the stages share: data, model, loop choices, writers."""

  def __init__(self, c, workdir):
    self.c = c
    self.workdir = pathlib.Path(workdir)
    self.collection = load_collection(c, self.workdir)
    self.targets, self.sources = targets_and_sources(c, self.collection)
    # Datasets of data.user sources: their results carry the user's names, no demo label.
    self.user_groups = sorted({self.collection[t].group for t in self.targets
                               if self.collection[t].group in _user_names(c)})
    self.model = UNet(features=c.model.features, levels=c.model.levels,
                      dtype=cu.compute_dtype(c))
    self.inner_loop = cu.inner_loop(c)
    self.writer = MetricWriter(self.workdir)
    size = c.data.image_size
    # jitted: op-by-op initialisation compiles every random draw separately
    self.init_params = compile_init(self.model.init)(jax.random.PRNGKey(c.seed),
                                                jnp.zeros((1, size, size, 1)))
    self.curves: dict[str, list[float]] = {}
    # Fine-tuning runs are dealt out per process: each predicts with its own parameters
    # on its own devices.
    self._predict = batch_predictor(self.model.apply, c.engine.eval_batch_size,
                                    parallel.data_mesh(jax.local_devices()))

  def is_demo(self, dataset: str) -> bool:
    return (self.c.data.source == "demo_brain"
            and self.collection[dataset].group not in _user_names(self.c))

  def checkpointer(self, name: str) -> Checkpointer:
    return Checkpointer(self.workdir / "checkpoints" / name)

  # ---- stage: joint multi-task pre-training (transfer baseline)
  @functools.cached_property
  def source_slices(self) -> np.ndarray:
    """[n, 2] (source dataset index, slice position) of every source slice."""
    return np.array([(d, p) for d, name in enumerate(self.sources)
                     for p in range(len(self.collection[name]))], dtype=np.int64)

  def pretrain(self):
    c = self.c.transfer
    table = self.source_slices
    steps_per_epoch = max(1, len(table) // c.batch_size)
    total = steps_per_epoch * c.epochs
    if c.max_steps:
      total = min(total, c.max_steps)
    spc = self.c.engine.steps_per_call
    total -= total % spc
    if total == 0:
      raise ConfigError(f"config.transfer.max_steps={c.max_steps} is below "
                        f"config.engine.steps_per_call={spc}")
    schedule = optax.exponential_decay(c.learning_rate, steps_per_epoch, c.lr_decay_gamma,
                                       staircase=True)
    tx = coupled_adam(schedule, c.weight_decay)
    per_dataset = c.heads == "per_dataset"
    loss_fn = losses_lib.SEGMENTATION_LOSSES[c.loss]
    chunk_fn = build_train_chunk(
        _per_dataset_head_loss(self.model.clone(out_channels=len(self.sources)).apply, loss_fn)
        if per_dataset
        else supervised_loss(self.model.apply, loss_fn), tx, self.inner_loop)
    ds = self.pretrain_batches(total, spc)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    params = jax.tree.map(jnp.array, self.init_params)
    if per_dataset:
      params = widen_head(params, len(self.sources))
    state = TrainState.create(params, tx)
    result = self.run("transfer", state, chunk_fn, it, total_calls=total // spc,
                      steps_per_call=spc, description="transfer pre-training")
    params = result.state.params
    return narrow_head(params) if per_dataset else params

  def pretrain_batches(self, total: int, spc: int) -> grain.MapDataset:
    """Joint pre-training's inputs: `total` steps of `transfer.batch_size` source slices
    (with their dataset index), `spc` steps per element ([spc, batch, ...] arrays)."""
    c = self.c.transfer
    table = self.source_slices
    sources = [self.collection[n] for n in self.sources]
    bs = c.batch_size

    def load(rows):  # spc * bs rows -> [spc, bs, ...]: one step per row of bs slices
      pairs = [sources[d].batch([p]) for d, p in rows]
      images = np.concatenate([x for x, _ in pairs]).reshape(spc, bs, *pairs[0][0].shape[1:])
      masks = np.concatenate([y for _, y in pairs]).reshape(images.shape)
      return {"images": images, "masks": masks,
              "dataset": np.asarray(rows[:, 0], np.int32).reshape(spc, bs)}

    if c.sampling == "balanced":
      # Every slice: a dataset drawn with the 1/z organ-group weights of meta-training, then
      # one of its slices: each structure is seen, not mostly the largest masks.
      rng = np.random.default_rng([self.c.seed, 7])
      datasets = tasks.sample_datasets(rng, self.sources,
                                       self.collection.group_weights(self.sources),
                                       total * bs)
      rows = np.array([(d, rng.integers(len(sources[d]))) for d in datasets], np.int64)
      return grain.MapDataset.source(rows).batch(spc * bs).map(load)
    # epochs over the union of the source slices
    epochs_needed = -(-total * bs // len(table))
    return (grain.MapDataset.source(table).shuffle(seed=self.c.seed).repeat(epochs_needed)
            .batch(spc * bs, drop_remainder=True).map(load))

  def run(self, name: str, state, step_fn, it, **kwargs):
    """One stage on the engine loop, checkpointed under checkpoints/<name>."""
    ckpt = self.checkpointer(name)
    try:
      result = run_loop(name, state, step_fn, it, checkpointer=ckpt, writer=self.writer,
                        checkpoint_every=self.c.engine.checkpoint_every, **kwargs)
    finally:
      ckpt.close()
    self.curves[name] = result.curve
    return result

  # ---- stage: meta-training
  def meta_train(self, rule: str):
    c = self.c.meta
    L = c.tasks_per_batch
    loss_fn = losses_lib.SEGMENTATION_LOSSES[c.loss]
    if rule == "dawoud":  # Dawoud et al.: AW Reptile, the loss plus an entropy regulariser
      loss_fn = _with_entropy_regulariser(loss_fn, c.dawoud_entropy_weight)
    if c.algorithm == "reptile":
      meta_tx = reptile(c.meta_step_size, L, rule="idw" if rule == "idw" else "aw",
                        idw_form=c.idw_form,
                        idw_reference=c.idw_reference, invert=c.idw_invert,
                        legacy_sequential_product=c.legacy_sequential_product)
    else:  # MAML: the aggregate is the task mean, the outer optimiser SGD(beta)
      meta_tx = maml(optax.sgd(c.meta_step_size))
    adapt_cfg = AdaptConfig.from_config(c.inner)
    steps = adapt_cfg.epochs * c.shots
    spc = self.c.engine.steps_per_call
    if self.inner_loop == "host" and steps % spc:
      raise ConfigError(f"config.engine.steps_per_call={spc} must divide the inner steps "
                        f"meta.inner.epochs x meta.shots = {steps}")
    # Several processes split the task axis when it divides evenly; otherwise every process
    # loads the whole meta-batch and keeps the tasks its devices hold. One process, or
    # processes holding the whole meta-batch, pad it so that every device adapts tasks.
    split = L % jax.process_count() == 0
    padded = L
    if self.inner_loop == "scan" and not (split and jax.process_count() > 1):
      padded = parallel.padded_tasks(L, jax.device_count())
    mesh = parallel.task_mesh(padded) if self.inner_loop == "scan" else None
    if padded != L and parallel.is_main_process():
      print(f"meta-batch of {L} tasks padded to {padded} (one task axis over "
            f"{jax.device_count()} devices); the copies are dropped before the update",
            flush=True)
    step_fn = build_meta_step(self.model.apply, loss_fn, adapt_cfg, meta_tx, algorithm=c.algorithm,
                              maml_inner_steps=c.maml_inner_steps, maml_inner_lr=c.maml_inner_lr,
                              mesh=mesh, task_parallelism=self.c.engine.task_parallelism,
                              inner_loop=self.inner_loop, steps_per_call=spc,
                              gather_tasks=split and jax.process_count() > 1, num_tasks=L)
    ds = tasks.meta_batch_dataset(
        self.collection, self.sources, seed=self.c.seed, tasks_per_batch=L, shots=c.shots,
        task_definition=c.task_definition, num_batches=c.meta_iterations,
        process_index=jax.process_index() if split else 0,
        process_count=jax.process_count() if split else 1)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    state = MetaState.create(jax.tree.map(jnp.array, self.init_params), meta_tx,
                             jax.random.PRNGKey(self.c.seed + 1))
    if mesh is not None:
      state = parallel.replicate(state, mesh)
    name = f"meta_{rule}" if c.algorithm == "reptile" else c.algorithm

    def prepare(batch):
      batch = {k: batch[k] for k in ("images", "masks", "valid")}
      if padded != L:
        batch = parallel.pad_tasks(batch, padded)
      return parallel.global_batch(batch, mesh, "task", process_local=split)

    result = self.run(name, state, step_fn, it, total_calls=c.meta_iterations,
                      steps_per_call=1, prepare=prepare, log_keys=("loss", "update_norm"),
                      description=f"meta-training ({name})", unit="meta-iteration")
    return parallel.to_local(result.state.params)

  # ---- stage: fine-tuning and evaluation
  def target_split(self, target: str):
    dataset = self.collection[target]
    train_v, test_v = split_volumes(dataset.volumes(), self.c.data.test_fraction,
                                    self.c.data.split_seed)
    return dataset.restrict(train_v), dataset.restrict(test_v)

  def build_finetune(self):
    c = self.c.finetune
    cfg = AdaptConfig.from_config(c)
    loss_fn = losses_lib.SEGMENTATION_LOSSES[c.loss]
    if self.inner_loop == "scan":
      fn = jax.jit(lambda p, x, y, v, k: adapt(p, x, y, v, k, apply_fn=self.model.apply,
                                               loss_fn=loss_fn, cfg=cfg))
      return fn

    def chunked(p, x, y, v, k):
      steps = cfg.epochs * len(x)  # the shots, or every training slice (full regime)
      spc = next(s for s in range(min(self.c.engine.steps_per_call, steps), 0, -1)
                 if steps % s == 0)
      return adapt_chunked(p, x, y, v, k, apply_fn=self.model.apply, loss_fn=loss_fn,
                           cfg=cfg, steps_per_call=spc)

    return chunked

  def predict(self, params, images: np.ndarray) -> np.ndarray:
    return self._predict(params, images)

  def finetune_all(self, inits: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """IoU x100 per (init, target) and seed; finished runs are read back, not redone.

    With several processes the runs are dealt out in rounds, one per process, and their
    results all-gathered, so every process ends with the same table."""
    table = RunTable(self.workdir / RESULTS_FILE)
    finetune = self.build_finetune()
    c = self.c.finetune
    splits = {}
    for target in self.targets:
      train, test = self.target_split(target)
      if c.regime == "few_shot" and len(train) < c.shots:
        raise ConfigError(f"target {target} has {len(train)} training slices, fewer than "
                          f"config.finetune.shots={c.shots}")
      test_x, test_y = test.batch(np.arange(len(test)))
      picks = np.linspace(0, len(test) - 1, min(4, len(test))).astype(int)  # shown slices
      splits[target] = (train, test_x, test_y, picks)

    def run(target, init_name, seed):
      train, test_x, test_y, picks = splits[target]
      # few-shot: the seeded shot selection; full: every training slice, the seed orders them
      positions = (np.arange(len(train)) if c.regime == "full"
                   else tasks.fixed_shots(train, c.shots, seed))
      x, y = train.batch(positions)
      tuned, loss = finetune(inits[init_name], x, y, np.ones(len(x), bool),
                             jax.random.PRNGKey(seed))
      logits = self.predict(tuned, test_x)
      iou = np.asarray(metrics_lib.binary_iou_per_slice(logits, test_y))
      if seed == c.seeds[0]:  # the test predictions of one selection, kept for analysis
        save_predictions(self.workdir / PREDICTIONS_DIR / f"{init_name}_{target}.npz",
                         logits > 0, test_y > 0.5)
      return np.array([iou.mean() * 100, float(loss)]), logits[picks] > 0

    runs = [(t, i, s) for t in self.targets for i in inits for s in c.seeds]
    pending = [(t, i, s) for t, i, s in runs if not table.done(f"{i}/{t}/{s}")]
    count, me = jax.process_count(), jax.process_index()
    previews = {}
    with Progress("fine-tuning", len(runs), len(runs) - len(pending)) as progress:
      for start in range(0, len(pending), count):
        batch = pending[start:start + count]
        mine = batch[me] if me < len(batch) else batch[0]  # spare processes repeat a run
        values, preview = run(*mine)
        values, preview = parallel.allgather((values[None], preview[None]))
        for (target, init_name, seed), v, p in zip(batch, values, preview):
          key = f"{init_name}/{target}/{seed}"
          if not np.isfinite(v[1]):
            raise NonFiniteLossError(f"non-finite loss while fine-tuning {key}")
          table.record(key, {"iou": float(v[0]), "train_loss": float(v[1])})
          if seed == c.seeds[0]:
            previews[(init_name, target)] = p
          progress.update(1, iou=v[0])
    # Only when every initialisation was fine-tuned in this run (a resumed run keeps the
    # figure of the run that made it).
    for target in self.targets:
      if parallel.is_main_process() and all((i, target) in previews for i in inits):
        _, test_x, test_y, picks = splits[target]
        plots.overlays(self.workdir / f"overlay_{target}.png", test_x[picks], test_y[picks],
                       {i: previews[(i, target)].astype(np.float32) * 2 - 1 for i in inits},
                       title=f"{target}: held-out test slices (demo data)"
                       if self.is_demo(target) else target)
    return table.runs


# --------------------------------------------------------------------------- driver
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(config, workdir)
  if parallel.is_main_process():
    print(f"data: {exp.collection.description}\n{len(exp.sources)} source datasets; "
          f"targets {exp.targets}; inner loop: {exp.inner_loop}", file=sys.stderr)
  inits: dict[str, Any] = {}
  if config.finetune.scratch:
    inits["scratch"] = exp.init_params
  if config.init_from:  # fine-tune only
    inits.update(load_initialisations(config.init_from, exp.init_params))
  elif config.transfer.enabled:
    inits["transfer"] = exp.pretrain()
  if config.meta.meta_iterations > 0 and not config.init_from:
    rules = config.meta.rules if config.meta.algorithm == "reptile" else (config.meta.algorithm,)
    for rule in rules:
      name = f"meta_{rule}" if config.meta.algorithm == "reptile" else rule
      inits[name] = exp.meta_train(rule)
  results = exp.finetune_all(inits)
  table = results_table(results, inits, exp.targets, config.finetune.seeds)
  demo = any(exp.is_demo(t) for t in exp.targets)
  parts = []
  if demo:
    parts.append("DEMO DATA (real brain anatomy, synthetic subjects and scanner styles) — "
                 "not a reproduction of the paper's numbers")
  elif config.data.source == "msd" and any(
      exp.collection[t].group not in exp.user_groups for t in exp.targets):
    parts.append("Medical Segmentation Decathlon")
  if exp.user_groups:
    parts.append(", ".join(exp.user_groups))
  if config.init_from:
    parts.append(f"initialisations from {config.init_from}")
  label = "; ".join(parts)
  final = {f"iou/{i}/{t}": v[0] for i, row in table.items() for t, v in row.items()}
  final.update({f"iou_std/{i}/{t}": v[1] for i, row in table.items() for t, v in row.items()})
  if parallel.is_main_process():
    files.write_text(workdir / "results.md", table_markdown(table, exp.targets, label))
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": config.variant, "targets": exp.targets,
         "seeds": list(config.finetune.seeds), "init_from": config.init_from,
         "table": table}, indent=1))
    plots.learning_curves(workdir / "learning_curves.png", exp.curves,
                          title="training loss" + (" (demo data)" if exp.sources and any(
                              exp.is_demo(s) for s in exp.sources) else ""))
    exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
