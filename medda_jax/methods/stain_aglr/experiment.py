"""The Stain-AgLr experiment: config checks, the per-lab data, one training run per
(variant, seed) with the plateau schedule and lowest-validation-loss selection, patch-level
ROC-AUC on every unseen lab, and the driver with its resumable run table.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medda_jax import config_utils as cu
from medda_jax import files, metrics as metrics_lib
from medda_jax.data.images import parse_domain
from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.classifier import balanced_indices
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.loop import run_loop
from medda_jax.engine.runtable import RunTable
from medda_jax.engine.supervised import TrainState, build_train_chunk, epoch_indices
from medda_jax.engine.trainer import call_batches
from medda_jax.engine.writers import MetricWriter
from medda_jax.errors import ConfigError
from medda_jax.methods.stain_aglr import data as data_lib
from medda_jax.methods.stain_aglr import hed, paper
from medda_jax.methods.stain_aglr.report import summarise, table_markdown

RESULTS_FILE = "stain_aglr_runs.json"
SOURCES = ("demo", "camelyon17", "tupac", "none")


# --------------------------------------------------------------------------- config
def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  cu.check_choice(c, "data.source", SOURCES)
  if c.data.source in ("camelyon17", "tupac") and not c.data.root:
    raise ConfigError(f"config.data.root must name the {c.data.source} folder when "
                      f"config.data.source={c.data.source!r}")
  if c.data.source == "none":
    if len(c.data.user) != 1:
      raise ConfigError("config.data.source='none' needs exactly one config.data.user entry "
                        "'name=path' (a folder of lab folders with labels.csv)")
  elif c.data.user:
    raise ConfigError("config.data.user is read only with config.data.source='none'")
  for entry in c.data.user:
    if parse_domain(entry)[1] is None:
      raise ConfigError(f"config.data.user entry {entry!r} must be 'name=path'")
  if not c.data.train_lab:
    raise ConfigError("config.data.train_lab must name the lab to train on")
  if c.data.train_lab in tuple(c.data.test_labs):
    raise ConfigError(f"config.data.test_labs must not hold the training lab "
                      f"{c.data.train_lab!r} (the labs are unseen)")
  cu.check_range(c, "data.patch", 32, 1024, integer=True)
  stages = len(c.model.features)
  if c.data.patch % (2 ** stages):
    raise ConfigError(f"config.data.patch={c.data.patch} must be divisible by "
                      f"{2 ** stages} ({stages} max-pooling stages of config.model.features)")
  cu.check_range(c, "data.demo_stride", 1, integer=True)
  cu.check_range(c, "data.val_fraction", 0.0, 0.9, low_inclusive=False)
  cu.check_range(c, "data.split_seed", 0, integer=True)
  if len(c.seeds) < 1:
    raise ConfigError("config.seeds must list at least one seed")
  if not c.variants:
    raise ConfigError(f"config.variants must list at least one of {list(paper.VARIANTS)}")
  for v in c.variants:
    if v not in paper.VARIANTS:
      raise ConfigError(f"config.variants entry {v!r} is not allowed; choose from "
                        f"{list(paper.VARIANTS)}")
  if len(c.model.decoder) != stages:
    raise ConfigError(f"config.model.decoder has {len(c.model.decoder)} stages; it must have "
                      f"{stages} (one per config.model.features stage, back to the patch size)")
  cu.check_range(c, "model.hidden", 1, integer=True)
  for field in ("train.batch_size", "train.max_epochs", "train.patience"):
    cu.check_range(c, field, 1, integer=True)
  cu.check_range(c, "engine.checkpoint_every", 1, integer=True)
  cu.check_range(c, "train.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "train.factor", 0.0, 1.0, low_inclusive=False)
  cu.check_range(c, "train.min_lr", 0.0, low_inclusive=False)
  for field in ("loss.lambda_reg", "loss.lambda_cons"):
    cu.check_range(c, field, 0.0)
  for field in ("sigma", "bias", "brightness", "contrast", "noise", "scale"):
    cu.check_range(c, f"hed.{field}", 0.0, 1.0)
  cu.check_range(c, "hed.blur", 0.0, 8.0)
  for field in ("elastic_alpha", "elastic_sigma"):
    value = c.hed[field]
    if (not isinstance(value, (tuple, list)) or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] <= value[1]):
      raise ConfigError(f"config.hed.{field}={value!r} must be a range (low, high) with "
                        "0 <= low <= high")
  cu.validate_shared(c)


# --------------------------------------------------------------------------- data
def load_data(c, workdir: pathlib.Path) -> data_lib.PatchTable:
  if c.data.source == "demo":
    cache = files.data_cache_dir(c.data.cache_dir, workdir)
    root = data_lib.build_demo(cache / f"stain_aglr_ihc_density_p{c.data.patch}_s{c.data.demo_stride}",
                               c.data.patch, c.data.demo_stride)
    return data_lib.load(root, "folders", "demo")
  if c.data.source == "none":
    name, path = parse_domain(c.data.user[0])
    return data_lib.load(path, "folders", name)
  return data_lib.load(c.data.root, c.data.source, c.data.source)


def geometric(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Rotations by multiples of 90 degrees and horizontal / vertical flips, per patch
  (x and its stain-altered twin share them: the twin is made from the result)."""
  out = np.empty_like(images)
  for i, x in enumerate(images):
    x = np.rot90(x, rng.integers(4))
    if rng.random() < 0.5:
      x = x[:, ::-1]
    if rng.random() < 0.5:
      x = x[::-1]
    out[i] = x
  return out


# --------------------------------------------------------------------------- experiment
class Experiment:
  """What the runs share: the patches, the network, the compiled step and predictors."""

  def __init__(self, c, workdir: pathlib.Path):
    self.c, self.workdir = c, workdir
    self.table = load_data(c, workdir)
    labs = sorted(set(self.table.labs.tolist()))
    self.train_idx, self.val_idx = data_lib.split(self.table.of_lab(c.data.train_lab),
                                                  c.data.val_fraction, c.data.split_seed)
    self.test_labs = list(c.data.test_labs) or [lab for lab in labs if lab != c.data.train_lab]
    if not self.test_labs:
      raise ConfigError(f"no unseen lab to test on: the data holds only {labs}")
    self.test_idx = {lab: self.table.of_lab(lab) for lab in self.test_labs}
    self.source = data_lib.PatchSource(self.table, c.data.patch)
    self.ranges = hed.JitterRanges.of(c.hed)
    self.morphology = hed.MorphologyRanges.of(c.hed)
    self.net = paper.StainAgLrNet(tuple(c.model.features), tuple(c.model.decoder),
                                  c.model.hidden, c.model.gen_skips, cu.compute_dtype(c))
    example = jnp.zeros((1, c.data.patch, c.data.patch, 3))
    self._init = compile_init(lambda k: self.net.init(k, example, example, False,
                                                 method=paper.StainAgLrNet.train_outputs))
    self.tx = paper.adam(c.train.learning_rate)
    self.chunk = build_train_chunk(
        paper.stain_aglr_loss(self.net, self.ranges, c.loss.detach_raw_in_kl), self.tx,
        cu.inner_loop(c))
    self.probs = batch_predictor(
        lambda v, x: jax.nn.softmax(self.net.apply(v, x, train=False)), c.engine.eval_batch_size)
    self.regenerate = batch_predictor(
        lambda v, x: self.net.apply(v, x, False, method=paper.StainAgLrNet.regenerate),
        c.engine.eval_batch_size)
    self.writer = MetricWriter(workdir)
    self.spc = c.engine.steps_per_call
    self.calls_per_epoch = max(1, math.ceil(len(self.train_idx) / c.train.batch_size / self.spc))

  def predict(self, variables, indices) -> tuple[np.ndarray, np.ndarray]:
    """(p(class 1), labels) of the patches at `indices`, read in evaluation batches."""
    probs = []
    step = 4 * self.c.engine.eval_batch_size
    for start in range(0, len(indices), step):
      probs.append(self.probs(variables, self.source.images(indices[start:start + step])[:]))
    return np.concatenate(probs)[:, 1], self.table.labels[indices]

  def val_loss(self, variables) -> float:
    """Cross-entropy of the classifier on the training lab's validation patches."""
    p1, y = self.predict(variables, self.val_idx)
    p = np.clip(np.where(y == 1, p1, 1.0 - p1), 1e-7, 1.0)
    return float(-np.mean(np.log(p)))

  def batches(self, seed: int, stain_aug: bool):
    """HED-light's geometric part (zoom, elastic) joins the flips and rotations for the
    variants with stain augmentation; the twin is made from the result in the step."""
    c, spc, cpe = self.c, self.spc, self.calls_per_epoch
    labels = self.table.labels[self.train_idx]

    def epoch_order(epoch):  # [steps, batch] positions in train_idx, a function of the seed
      steps = cpe * spc
      if c.train.balanced:
        return balanced_indices(labels, steps, c.train.batch_size, seed * 1000 + epoch)
      return epoch_indices(len(labels), steps, c.train.batch_size, seed * 1000 + epoch)

    def make(k):  # a pure function of (seed, k): a resumed run redraws it
      part = epoch_order(k // cpe)[(k % cpe) * spc:][:spc]
      idx = self.train_idx[part]
      images = self.source.images(idx.reshape(-1))[:]
      if c.train.geometric:
        images = geometric(images, np.random.default_rng((seed, k, 7)))
      if stain_aug:
        images = hed.morphology_np(images, np.random.default_rng((seed, k, 8)), self.morphology)
      return {"image": images.reshape(idx.shape + images.shape[1:]),
              "label": self.table.labels[idx]}

    return make

  def train(self, variant: paper.Variant, seed: int, run: str):
    """One run; returns (best variables, plateau state)."""
    c = self.c
    variables = self._init(jax.random.PRNGKey(seed))
    weights = paper.weights_of(variant, c.loss.lambda_reg, c.loss.lambda_cons)
    state = TrainState.create(variables["params"], self.tx,
                              {"batch_stats": variables["batch_stats"], "weights": weights},
                              jax.random.PRNGKey(seed + 10_000))
    best = jax.device_get(variables)
    hook = PlateauHook(self, run, self.calls_per_epoch,
                       paper.Plateau(c.train.learning_rate, c.train.patience, c.train.factor,
                                     c.train.min_lr))
    ckpt_dir = self.workdir / "checkpoints" / run.replace("/", "_")
    total = c.train.max_epochs * self.calls_per_epoch
    every = c.engine.checkpoint_every * self.calls_per_epoch
    # A run no longer than one checkpoint interval keeps none: it would only be saved at its
    # end, just before its result is recorded and the checkpoint deleted.
    ckpt = Checkpointer(ckpt_dir) if total > every else None
    try:
      result = run_loop(run, (state, best), lambda s, b: self._step(s, b),
                        call_batches(total, self.batches(seed, variant.stain_aug)), total_calls=total,
                        steps_per_call=self.spc, checkpointer=ckpt, writer=self.writer,
                        checkpoint_every=every, hook=hook,
                        log_keys=("loss", "ce", "reg", "cons"), show_progress=False)
    finally:
      if ckpt is not None:
        ckpt.close()
    return jax.device_get(result.state[1]), hook.plateau, ckpt_dir

  def _step(self, s, batch):
    train, metrics = self.chunk(s[0], batch)
    return (train, s[1]), metrics

  def evaluate(self, variables) -> dict:
    out = {}
    for lab, idx in self.test_idx.items():
      p1, y = self.predict(variables, idx)
      out[lab] = metrics_lib.roc_auc(y, p1)
    p1, y = self.predict(variables, self.val_idx)
    out["_val_same_lab"] = metrics_lib.roc_auc(y, p1)
    return out


class PlateauHook:
  """run_loop hook: at the end of every epoch the validation loss drives the plateau
  schedule (the new learning rate goes into the optimizer state, so checkpoints carry it)
  and the best epoch's variables are kept; a drop to min_lr stops the run."""

  def __init__(self, exp: Experiment, run: str, every: int, plateau: paper.Plateau):
    self.exp, self.run, self.every, self.plateau = exp, run, every, plateau

  def after_call(self, state, calls: int):
    train, best = state
    if calls % self.every:
      return state, False
    current = {"params": train.params, "batch_stats": train.model_state["batch_stats"]}
    loss = self.exp.val_loss(current)
    if not np.isfinite(loss):
      loss = float("inf")  # never the best; the schedule still counts the epoch
    improved, stop = self.plateau.update(loss)
    if improved:
      best = jax.device_get(current)  # a copy: the next call donates the train state
    opt = train.opt_state
    lr = opt.hyperparams["learning_rate"]
    opt = opt._replace(hyperparams=dict(opt.hyperparams, learning_rate=jnp.asarray(
        self.plateau.lr, lr.dtype)))
    self.exp.writer.write(f"{self.run}/epoch", calls // self.every,
                          {"val_loss": loss, "lr": self.plateau.lr})
    return (train.replace(opt_state=opt), best), stop

  def get_state(self) -> dict:
    return self.plateau.state()

  def set_state(self, saved: dict) -> None:
    self.plateau = paper.Plateau(**saved)


# --------------------------------------------------------------------------- driver
def run_key(variant: str, seed: int) -> str:
  return f"{variant}/{seed}"


def label_of(c) -> str:
  if c.data.source == "demo":
    return data_lib.DEMO_LABEL
  if c.data.source == "none":
    return f"your data: {parse_domain(c.data.user[0])[0]}"
  return {"camelyon17": "Camelyon17 (WILDS patches)", "tupac": "TUPAC16 mitosis"}[c.data.source]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  c = config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = Experiment(c, workdir)
  label = label_of(c)
  print(f"data: {label}\ntrain lab {c.data.train_lab} ({len(exp.train_idx)} train, "
        f"{len(exp.val_idx)} val patches); unseen labs {exp.test_labs}; variants "
        f"{list(c.variants)}; seeds {list(c.seeds)}", file=sys.stderr)
  runs = RunTable(workdir / RESULTS_FILE)
  figure = workdir / "stain_aglr_regeneration.png"
  for seed in c.seeds:
    for name in c.variants:
      key = run_key(name, seed)
      if runs.done(key):
        continue
      best, plateau, ckpt_dir = exp.train(paper.VARIANTS[name], seed, key)
      result = {"auc": exp.evaluate(best), "best_val_loss": plateau.best,
                "epochs": plateau.epochs, "final_lr": plateau.lr}
      if name == "stain_aglr" and seed == c.seeds[0]:
        from medda_jax.methods.stain_aglr import figures
        figures.regeneration_figure(figure, exp, best, seed,
                                    demo=c.data.source == "demo")
      runs.record(key, result)
      shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run's result is recorded
      print(f"{key}: " + ", ".join(f"{lab} {auc:.4f}" for lab, auc in result["auc"].items())
            + f" ({plateau.epochs} epochs)", file=sys.stderr)

  table = summarise(runs.runs, c, exp.test_labs)
  final = {f"auc/{v}/{lab}": cell[0] for v, row in table.items() for lab, cell in row.items()}
  files.write_text(workdir / "results.md", table_markdown(table, c, exp.test_labs, label))
  files.write_text(workdir / "results.json", json.dumps(
      {"label": label, "variant": c.variant, "train_lab": c.data.train_lab,
       "test_labs": exp.test_labs, "seeds": list(c.seeds), "variants": list(c.variants),
       "lambda_reg": c.loss.lambda_reg, "lambda_cons": c.loss.lambda_cons,
       "compute_dtype": str(np.dtype(cu.compute_dtype(c))), "table": table}, indent=1))
  exp.writer.write("final", 0, final)
  exp.writer.close()
  return final
