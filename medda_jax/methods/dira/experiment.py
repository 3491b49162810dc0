"""DiRA's stepwise pre-training study: config checks, the corpus, the stage runs of every
pretext task (`pretrain.py`), transfer of every (task, strategy) and of random weights to
every target, and the driver.

Transfer (spec section c): a classification target takes the pre-trained encoder under a
new head (global pool + linear); a segmentation target takes encoder + decoder as a U-Net
with a new output layer, the decoder pre-trained where the strategy trained one ((D)+R and
later; D leaves it random: the paper's Table 3 contrast).
"""

from __future__ import annotations

import functools
import itertools
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
import optax

from medda_jax import config_utils as cu
from medda_jax import files, losses, parallel
from medda_jax import metrics as metrics_lib
from medda_jax.data import demo_subvolumes
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.graft import graft
from medda_jax.engine.progress import Progress
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk, epoch_indices
from medda_jax.engine.trainer import fit
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods.dira import figures, paper, report, targets, volumes
from medda_jax.methods.dira.targets import Split
from medda_jax.methods.dira.pretrain import CHAINS, Pretrainer, Settings, stage_runs
from medda_jax.methods.dira.visual_words import VisualWords
from medda_jax.models.united3d import United

RESULTS_FILE = "dira_runs.json"
RANDOM = "random"
DEMO = "demo"
# demo targets: name -> kind; crops of the real hippocampus on the demo sub-volumes
DEMO_TARGETS = {"hippocampus_cls": "classification", "hippocampus_seg": "segmentation"}
# the paper's targets (NCC: LUNA16 nodule false-positive reduction, LCS: LiTS liver, BMS:
# BraTS whole tumour) -> (data.dirs field, crop generator)
PAPER_SOURCES = {"ncc": ("luna16", targets.luna16_ncc), "lcs": ("lits", targets.lits_lcs),
                 "bms": ("brats", targets.brats_bms)}
# demo subjects (demo_subvolumes: 0-3 MNI152, 4-7 Colin27; 0 and 4 the real volumes)
DEMO_SPLITS = {"train": (1, 2, 5, 6), "val": (3, 7), "test": (0, 4)}


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_subset(c, "tasks", paper.TASKS)
  cu.check_subset(c, "strategies", tuple(CHAINS))
  if not c.tasks or not c.strategies:
    raise ConfigError("config.tasks and config.strategies must each name at least one")
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  user = user_corpora(c)
  cu.check_choice(c, "data.corpus", (DEMO, "luna16", *user))
  cu.check_choice(c, "data.intensity", volumes.INTENSITIES)
  cu.check_range(c, "data.crops_per_volume", 1, integer=True)
  if c.data.corpus == "luna16":
    _check_dir(c, "luna16", "data.corpus='luna16'")
  elif c.data.corpus in user and not pathlib.Path(user[c.data.corpus]).expanduser().exists():
    raise ConfigError(f"config.data.user: {user[c.data.corpus]!r} ({c.data.corpus}) does not "
                      "exist")
  if not c.targets:
    raise ConfigError("config.targets must name at least one target")
  cu.check_subset(c, "targets", (*DEMO_TARGETS, *PAPER_SOURCES, *user_targets(c)))
  for target in c.targets:
    if target in PAPER_SOURCES:
      _check_dir(c, PAPER_SOURCES[target][0], f"target {target!r}")
    elif target in user_targets(c) and not pathlib.Path(user_targets(c)[target]).is_file():
      raise ConfigError(f"config.data.user_targets: {user_targets(c)[target]!r} ({target}) is "
                        "not a file (a CSV with image and mask, or image and label, columns)")
  for split in targets.SPLITS:
    cu.check_range(c, f"data.target_crops.{split}", 1, integer=True)
  cu.check_range(c, "model.features", 1, 512, integer=True)
  cu.check_range(c, "model.levels", 2, 6, integer=True)
  cu.check_choice(c, "model.head_pool", ("mean", "flatten"))
  cu.check_range(c, "data.demo_coarsen", 1, 4, integer=True)
  size = c.pretrain.size
  if not isinstance(size, int) or size % (2 * 2 ** (c.model.levels - 1)):
    raise ConfigError(f"config.pretrain.size={size!r} must be a multiple of "
                      f"{2 * 2 ** (c.model.levels - 1)} (the encoder's {c.model.levels - 1} "
                      "poolings, and Jigsaw's halves of each side)")
  cu.check_range(c, "pretrain.steps", 1, integer=True)
  cu.check_range(c, "pretrain.batch_size", 1, integer=True)
  cu.check_range(c, "pretrain.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "pretrain.permutations", 2, 40320, integer=True)
  cu.check_range(c, "pretrain.clusters", 2, integer=True)
  cu.check_range(c, "pretrain.cluster_pool", c.pretrain.clusters, integer=True)
  vw = "pretrain.transvw"
  for field in ("words", "instances", "grid", "dims"):
    cu.check_range(c, f"{vw}.{field}", 1 if field != "grid" else 2, integer=True)
  cu.check_range(c, f"{vw}.border", 0.0, 0.45)
  cu.check_range(c, f"{vw}.tissue_level", 0.0, 1.0)
  cu.check_range(c, f"{vw}.min_tissue", 0.0, 1.0)
  for field in ("lambda_d", "lambda_r", "lambda_a"):
    cu.check_range(c, f"pretrain.{field}", 0.0)
  cu.check_range(c, "transfer.batch_size", 1, integer=True)
  for kind in ("classification", "segmentation"):
    cu.check_range(c, f"transfer.{kind}.epochs", 1, integer=True)
    cu.check_range(c, f"transfer.{kind}.learning_rate", 0.0, low_inclusive=False)
    cu.check_range(c, f"transfer.{kind}.patience", 1, integer=True)
  cu.check_choice(c, "transfer.segmentation.loss", SEGMENTATION_LOSSES)
  cu.check_range(c, "transfer.checkpoint_epochs", 1, integer=True)
  shares = list(c.transfer.label_fractions)
  if (1.0 not in shares or len(set(shares)) != len(shares)
      or not all(isinstance(f, (int, float)) and 0.0 < f <= 1.0 for f in shares)):
    raise ConfigError(f"config.transfer.label_fractions={tuple(shares)!r} must be distinct "
                      "shares in (0, 1] that include 1.0 (the whole training split)")
  for field in ("corpus_crops", "train_crops", "val_crops", "test_crops"):
    cu.check_range(c, f"data.demo_{field}", 2, integer=True)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  cu.validate_shared(c)


def settings(c) -> Settings:
  p = c.pretrain
  return Settings(
      features=c.model.features, levels=c.model.levels, size=p.size, batch_size=p.batch_size,
      steps=p.steps, learning_rate=p.learning_rate,
      weights=paper.LossWeights(p.lambda_d, p.lambda_r, p.lambda_a),
      permutations=p.permutations, seed=0, steps_per_call=c.engine.steps_per_call,
      checkpoint_every=c.engine.checkpoint_every, inner_loop=cu.inner_loop(c),
      head_pool=c.model.head_pool, clusters=c.pretrain.clusters,
      cluster_pool=c.pretrain.cluster_pool, words=c.pretrain.transvw.words)


# --------------------------------------------------------------------------- data
DIR_HINTS = {"luna16": "subset0/ ... subset9/ of .mhd / .raw scans and the candidate CSVs",
             "lits": "volume-*.nii / segmentation-*.nii", "brats": "one folder per case"}


def _check_dir(c, field: str, needed_for: str) -> None:
  folder = c.data.dirs[field]
  if not folder or not pathlib.Path(folder).expanduser().is_dir():
    raise ConfigError(f"config.data.dirs.{field}={folder!r} must name the {field} folder "
                      f"({DIR_HINTS[field]}) for {needed_for}")


def user_corpora(c) -> dict[str, str]:
  """`data.user` entries 'name=path' (a folder of volumes or a CSV with a path column)."""
  return cu.named_paths(c.data.user, "data.user", "our_ct=/data/ct_volumes", (DEMO, "luna16"))


def user_targets(c) -> dict[str, str]:
  """`data.user_targets` entries 'name=path': a CSV with `image` and `mask` columns (a
  segmentation target) or `image` and `label` (classification), optional `split`."""
  return cu.named_paths(c.data.user_targets, "data.user_targets",
                      "our_nodules=/data/nodules.csv", (*DEMO_TARGETS, *PAPER_SOURCES))


def corpus(c):
  """(cubes by sample id, description) of `data.corpus`: the demo's cubes, LUNA16's scans,
  or your volumes, the last two streamed volume by volume (`volumes.VolumeCorpus`)."""
  if c.data.corpus == DEMO:
    return demo_corpus(c), "demo sub-volumes"
  if c.data.corpus == "luna16":
    paths, intensity = volumes.luna16_volumes(c.data.dirs.luna16), "ct"
  else:
    paths, intensity = volumes.list_volumes(user_corpora(c)[c.data.corpus]), c.data.intensity
  stream = volumes.VolumeCorpus(paths, c.pretrain.size, intensity, c.data.crops_per_volume)
  return stream, f"{c.data.corpus} ({len(paths)} volumes)"


def demo_corpus(c):
  """The demo corpus (train and validation subjects only): cubes by sample id."""
  cubes = demo_subvolumes.corpus(c.data.demo_corpus_crops, c.pretrain.size, seed=1,
                                 subject_ids=DEMO_SPLITS["train"] + DEMO_SPLITS["val"],
                                 coarsen=c.data.demo_coarsen)
  return lambda ids: cubes[np.asarray(ids) % len(cubes)]


def patients(c, stream=None):
  """(volume(p) in [0, 1], count) of the corpus's whole volumes: the demo's training and
  validation subjects, or LUNA16's / your volumes read one at a time (from `stream`, what
  `corpus(c)` gave, when the caller has it; the demo's needs none)."""
  if c.data.corpus == DEMO:
    pool = demo_subvolumes.subjects(coarsen=c.data.demo_coarsen)
    chosen = [pool[i].image for i in DEMO_SPLITS["train"] + DEMO_SPLITS["val"]]
    return (lambda p: chosen[p]), len(chosen)
  stream = stream if stream is not None else corpus(c)[0]
  return stream.volume, len(stream.paths)


def visual_words(c, workdir: pathlib.Path, stream=None) -> VisualWords:
  """TransVW's visual words of the corpus (`visual_words.py`; `stream` as in `patients`).
  The patients' codes, one read of every volume, are kept in
  workdir/pretrain/transvw_codes.npy for a rerun."""
  volume, count = patients(c, stream)
  vw = c.pretrain.transvw
  path = workdir / "pretrain" / "transvw_codes.npy"
  codes = np.load(path) if path.is_file() else None
  if codes is not None and len(codes) != count:
    codes = None  # another corpus
  words = VisualWords(volume, count, size=c.pretrain.size, words=vw.words,
                      instances=vw.instances, grid=vw.grid, dims=vw.dims, border=vw.border,
                      tissue_level=vw.tissue_level, min_tissue=vw.min_tissue,
                      crops_per_volume=c.data.crops_per_volume, codes=codes)
  if codes is None and parallel.is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:
      np.save(tmp, words.codes)
  return words


def target_splits(c, target: str, workdir: pathlib.Path) -> dict[str, Split]:
  """The target's train / val / test crops: the demo's in memory; the paper's and yours cut
  volume by volume into .npy files under workdir/targets (read back memory-mapped; a rerun
  reuses them)."""
  if target in DEMO_TARGETS:
    return {split: demo_target(c, split) for split in targets.SPLITS}
  size, out = c.pretrain.size, {}
  for k, split in enumerate(targets.SPLITS):
    count = c.data.target_crops[split]
    if target in PAPER_SOURCES:
      field, generator = PAPER_SOURCES[target]
      if target == "ncc":
        crops = generator(c.data.dirs[field], split, size, count, seed=k)
      else:
        crops = generator(c.data.dirs[field], split, size, count, seed=k,
                          crops_per_volume=c.data.crops_per_volume)
    else:
      crops = targets.manifest_crops(user_targets(c)[target], split, size, count, seed=k,
                                     intensity=c.data.intensity,
                                     crops_per_volume=c.data.crops_per_volume)
    out[split] = targets.materialise(workdir / "targets", target, split, count, size, crops)
  return out


def demo_target(c, split: str) -> Split:
  count = c.data[f"demo_{split}_crops"]
  crops = demo_subvolumes.hippocampus_task(count, c.pretrain.size, seed=2 + len(split),
                                           subject_ids=DEMO_SPLITS[split],
                                           coarsen=c.data.demo_coarsen)
  return Split(crops.images[..., None], crops.masks[..., None],
               crops.labels.astype(np.float32))


# --------------------------------------------------------------------------- transfer
def target_kind(c, target: str) -> str:
  if target in DEMO_TARGETS:
    return DEMO_TARGETS[target]
  if target in PAPER_SOURCES:
    return targets.PAPER_TARGETS[target]
  return targets.manifest_target(user_targets(c)[target])


def target_net(c, kind: str) -> United:
  if kind == "classification":
    return United(c.model.features, c.model.levels, 1, restore=False)
  return United(c.model.features, c.model.levels, 1, restore=True, segment=True)


def transfer_init(c, net: United, kind: str, pretrained: dict | None, decoder: bool,
                  seed: int):
  """Random parameters, or the pre-trained encoder (and decoder, when `decoder`) grafted
  under a new head / output layer."""
  x = jnp.zeros((1,) + (c.pretrain.size,) * 3 + (1,))
  params = jax.device_get(compile_init(net.init)(jax.random.PRNGKey(seed), x)["params"])
  if pretrained is None:
    return params
  source = {"encoder": pretrained["encoder"]}  # the pretext head is dropped
  if decoder:  # all but its output layer, which the target replaces
    source["decoder"] = {k: v for k, v in pretrained["decoder"].items() if k != "output"}
  grafted, _ = graft(params, source, where="the pre-trained United model")
  return grafted


SEGMENTATION_LOSSES = ("dice", "bce+dice")


def target_loss(net: United, kind: str, segmentation_loss: str = "dice"):
  """Classification: binary cross-entropy. Segmentation: soft Dice, or BCE + Dice (the
  Models Genesis targets'; on a structure filling ~5% of a crop its BCE term holds the
  prediction at background for hundreds of steps, so the demo's short schedules use Dice)."""
  def fn(params, model_state, batch, rng):
    del rng
    logits, seg = net.apply({"params": params}, batch["image"], train=True)
    if kind == "classification":
      loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], batch["label"]))
    else:
      loss = losses.dice_loss(seg, batch["mask"])
      if segmentation_loss == "bce+dice":
        loss = loss + losses.bce(seg, batch["mask"])
    return loss, (model_state, {})

  return fn


def score(kind: str, outputs: np.ndarray, split: Split) -> float:
  """Classification: AUC. Segmentation: mean IoU over the crops where the truth or the
  prediction holds any voxel (sigmoid > 0.5)."""
  if kind == "classification":
    return float(metrics_lib.roc_auc(split.labels, outputs))
  pred = outputs > 0.0
  truth = split.masks > 0
  inter = np.sum(pred & truth, axis=(1, 2, 3, 4))
  union = np.sum(pred | truth, axis=(1, 2, 3, 4))
  return float(np.mean(inter[union > 0] / union[union > 0])) if np.any(union > 0) else 0.0


class Transfer:
  """Compiled steps and predictors per target kind, shared by every initialisation."""

  def __init__(self, c):
    self.c = c
    self.mesh = parallel.data_mesh()
    self._cache: dict = {}

  def chunk(self, net, kind, steps: int):
    key = ("chunk", kind, steps)
    if key not in self._cache:
      t = self.c.transfer[kind]
      tx = optax.adam(optax.cosine_decay_schedule(t.learning_rate, max(steps, 1)))
      loss = target_loss(net, kind, self.c.transfer.segmentation.loss)
      self._cache[key] = tx, build_train_chunk(loss, tx, cu.inner_loop(self.c), mesh=self.mesh)
    return self._cache[key]

  def predictor(self, net, kind):
    key = ("predict", kind)
    if key not in self._cache:
      if kind == "classification":
        fn = lambda v, x: net.apply(v, x)[0][:, 0]  # noqa: E731
      else:
        fn = lambda v, x: net.apply(v, x)[1]  # noqa: E731
      self._cache[key] = batch_predictor(fn, self.c.engine.eval_batch_size, self.mesh)
    return self._cache[key]

  def finetune(self, net, kind: str, params, train: Split, val: Split, seed: int,
               checkpoint_dir: pathlib.Path):
    """Every layer fine-tuned with Adam (cosine; `transfer.<kind>`'s epochs, learning rate
    and patience), the best validation score's weights kept: (variables, best validation
    score, evaluations)."""
    c, t = self.c, self.c.transfer[kind]
    spc = c.engine.steps_per_call
    batch = min(c.transfer.batch_size, len(train.images))
    calls_per_epoch = max(1, math.ceil(len(train.images) / batch / spc))
    steps_per_epoch = calls_per_epoch * spc
    tx, chunk = self.chunk(net, kind, t.epochs * steps_per_epoch)
    state = TrainState.create(params, tx, rng=jax.random.PRNGKey(seed + 1))

    @functools.lru_cache(maxsize=1)
    def order(epoch):
      return epoch_indices(len(train.images), steps_per_epoch, batch, seed * 1000 + epoch)

    def make_batch(k):
      rows = np.stack([order(s // steps_per_epoch)[s % steps_per_epoch]
                       for s in range(k * spc, (k + 1) * spc)])
      return {"image": train.images[rows], "mask": train.masks[rows].astype(np.float32),
              "label": train.labels[rows]}

    predict = self.predictor(net, kind)
    result = fit(f"finetune {checkpoint_dir.name}", state, chunk, make_batch,
                 total_calls=t.epochs * calls_per_epoch, steps_per_call=spc,
                 evaluate=lambda v: score(kind, predict(v, val.images), val),
                 every=calls_per_epoch, patience=t.patience, floor=-1.0, mesh=self.mesh,
                 checkpoint_dir=checkpoint_dir,
                 checkpoint_every=calls_per_epoch * c.transfer.checkpoint_epochs)
    return result.best, result.best_score, result.evaluations


# --------------------------------------------------------------------------- driver
def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def fractions(c) -> list[float]:
  """`transfer.label_fractions`, the whole training split first."""
  return sorted((float(f) for f in c.transfer.label_fractions), reverse=True)


def inits(c) -> list[str]:
  """Rows of the table: random weights, then every (task, strategy)."""
  return [RANDOM, *(f"{task} {strategy}" for task in c.tasks for strategy in c.strategies)]


def uses_demo_data(c) -> bool:
  return c.data.corpus == DEMO or any(t in DEMO_TARGETS for t in c.targets)


def data_label(c) -> str:
  """What the table was measured on: the corpus and the targets by name, and the demo's
  description when any of it is demo data."""
  corpus_name = "demo sub-volumes" if c.data.corpus == DEMO else c.data.corpus
  text = f"pre-training corpus: {corpus_name}; targets: {', '.join(c.targets)}"
  if uses_demo_data(c):
    text += f" — {demo_subvolumes.DESCRIPTION} — not a reproduction of the paper's numbers"
  return text + "; every initialisation is pre-trained here from random weights"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runs = RunTable(workdir / RESULTS_FILE)
  label = data_label(c)
  if parallel.is_main_process():
    print(f"data: {label}\ntasks {list(c.tasks)}; strategies {list(c.strategies)}; targets "
          f"{list(c.targets)}; seeds {list(c.seeds)}", file=sys.stderr)
  chains = stage_runs(c.strategies)
  total = len(c.tasks) * len(chains) + (len(inits(c)) * len(c.targets) * len(c.seeds)
                                        * len(fractions(c)))
  writer = MetricWriter(workdir)
  cubes, corpus_name = corpus(c)
  words = visual_words(c, workdir, cubes) if "transvw" in c.tasks else None
  pre = Pretrainer(settings(c), cubes, corpus_name, workdir, writer, words)
  transfer = Transfer(c)
  pretrained: dict[tuple, dict] = {}
  with Progress("runs", total, sum(runs.done(k) for k in runs.runs)) as progress:
    for task in c.tasks:
      for chain in chains:
        key = report.pretrain_key(task, chain)
        previous = pretrained[(task, chain[:-1])] if len(chain) > 1 else None
        if runs.done(key):
          pretrained[(task, chain)] = pre.saved(task, chain)
          continue
        params, curve = pre.run(task, chain, previous)
        pretrained[(task, chain)] = params
        runs.record(key, {"curve": curve, "final_loss": curve[-1]})
        progress.update(1)
    figure_cubes = None
    for target in c.targets:
      kind = target_kind(c, target)
      net = target_net(c, kind)
      splits = target_splits(c, target, workdir)
      if figure_cubes is None:
        figure_cubes = np.asarray(splits["test"].images[:6])
      for init, seed, fraction in itertools.product(inits(c), c.seeds, fractions(c)):
        key = report.finetune_key(init, target, seed, fraction)
        if runs.done(key):
          continue
        if init == RANDOM:
          params = transfer_init(c, net, kind, None, False, seed)
        else:
          task, strategy = init.split(" ", 1)
          chain = CHAINS[strategy]
          params = transfer_init(c, net, kind, pretrained[(task, chain)], "DR" in chain
                                 or "DRA" in chain, seed)
        share = "" if fraction == 1.0 else f"_{fraction:.0%}"
        ckpt_dir = workdir / "finetune" / _slug(f"{target}_{init}_{seed}{share}")
        train = targets.label_subset(splits["train"], fraction, seed,
                                     stratify=kind == "classification")
        best, val_score, evaluations = transfer.finetune(net, kind, params, train,
                                                         splits["val"], seed, ckpt_dir)
        test = splits["test"]
        test_score = score(kind, transfer.predictor(net, kind)(best, test.images), test)
        runs.record(key, {"test": test_score, "val": val_score, "epochs": evaluations})
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # its result is recorded
        progress.update(1)
  writer.close()

  table = report.summarise(runs.runs, c, inits(c))
  kinds = {t: target_kind(c, t) for t in c.targets}
  curves = report.efficiency(runs.runs, c, inits(c)) if len(fractions(c)) > 1 else None
  if parallel.is_main_process():
    text = report.tables_markdown(table, c, label, kinds)
    if curves:
      text += "\n" + report.efficiency_markdown(curves, c, kinds)
    files.write_text(workdir / "results.md", text)
    files.write_text(workdir / "results.json", json.dumps(
        {"label": label, "variant": c.variant, "tasks": list(c.tasks),
         "strategies": list(c.strategies), "targets": list(c.targets),
         "metrics": {t: report.METRIC[target_kind(c, t)] for t in c.targets},
         "seeds": list(c.seeds), "table": table,
         "label_fractions": fractions(c), "efficiency": curves}, indent=1))
    demo = " (demo data)" if uses_demo_data(c) else ""
    figures.restorations(workdir / "restorations.png", pre, pretrained, c, figure_cubes,
                         f"DiRA: pretext inputs and restorations{demo}")
    figures.transfer_bars(workdir / "transfer.png", table, c,
                          f"fine-tuned, mean ± std over seeds{demo}")
    if curves:
      figures.efficiency_curves(workdir / "annotation_efficiency.png", curves, kinds,
                                f"share of the target's training labels{demo}")
  return {f"{report.METRIC[target_kind(c, t)]}/{init}/{t}": cells[t][0]
          for init, cells in table.items() for t in c.targets}
