"""POPAR's pre-training as a pretext of the shared pre-train-then-transfer study
(`methods/simmim/experiment.py`): config checks, the per-sample distortions, the pretext's
model, loss, optimiser and figure rows, and the driver.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medda_jax import config_utils as cu
from medda_jax.engine.compile import compile_init
from medda_jax.errors import ConfigError
from medda_jax.methods.popar import paper
from medda_jax.methods.simmim import experiment as study_lib
from medda_jax.methods.simmim import report

POPAR_PAPER = report.Paper("POPAR", "paper Tables 2-4 and 5 (sub-tasks) shape")
TASKS = (*paper.TASKS, "simmim")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first wrong field and what is allowed."""
  study_lib.validate(c, TASKS)
  p = c.popar
  for backbone in c.backbones:
    stride = study_lib.encoder_stride(c, backbone)
    size = p.image_size[backbone]
    if not isinstance(size, int) or size < stride or size % stride:
      raise ConfigError(f"config.popar.image_size.{backbone}={size!r} must be a multiple of "
                        f"the {backbone} encoder's stride {stride} (POPAR's patch)")
    cu.check_range(c, f"popar.epochs.{backbone}", 1, integer=True)
    if p.warmup_epochs >= p.epochs[backbone]:
      raise ConfigError(f"config.popar.warmup_epochs={p.warmup_epochs} must be below "
                        f"config.popar.epochs.{backbone}={p.epochs[backbone]}")
  if "swin" in c.backbones:
    study_lib._check_windows(c, p.image_size.swin, p.swin_window, "popar")
  cu.check_choice(c, "popar.optimizer", paper.OPTIMIZERS)
  cu.check_range(c, "popar.warmup_epochs", 0, integer=True)
  cu.check_range(c, "popar.batch_size", 1, integer=True)
  cu.check_range(c, "popar.learning_rate", 0.0, low_inclusive=False)
  cu.check_range(c, "popar.min_lr", 0.0)
  cu.check_range(c, "popar.momentum", 0.0, 0.999999)
  cu.check_range(c, "popar.weight_decay", 0.0)
  cu.check_range(c, "popar.clip_norm", 0.0)
  cu.check_range(c, "popar.order_weight", 0.0, 1.0)
  cu.check_range(c, "popar.shuffle_probability", 0.0, 1.0)
  for field in ("nonlinear_rate", "local_rate", "paint_rate", "outpaint_rate"):
    cu.check_range(c, f"popar.genesis.{field}", 0.0, 1.0)


class PopARPretext:
  """One POPAR task (`paper.TASKS`) for one backbone; settings in `config.popar`."""

  def __init__(self, c, backbone: str, task: str = "popar"):
    p = c.popar
    self.c, self.backbone, self.settings = c, backbone, p
    self.task_name, self.task = task, paper.TASKS[task]
    self.label = self.task.label
    self.size = p.image_size[backbone]
    self.epochs, self.batch_size = p.epochs[backbone], p.batch_size
    self.patch = study_lib.encoder_stride(c, backbone)  # one output token per patch
    self.shuffle_probability = (p.shuffle_probability if self.task.shuffle_probability is None
                                else self.task.shuffle_probability)
    self.order_weight = (p.order_weight if self.task.order_weight is None
                         else self.task.order_weight)
    encoder = study_lib.build_encoder(c, backbone, self.size, "pretrain",
                                      window=p.swin_window)
    self.model = paper.PopAR(encoder, patch=self.patch, channels=1)

  def init(self, seed: int):
    x = jnp.zeros((1, self.size, self.size, 1))
    return compile_init(lambda k: self.model.init(k, x))(jax.random.PRNGKey(seed))["params"]

  def optimizer(self, total_steps: int, steps_per_epoch: int):
    """(cache key, optimiser factory)."""
    p = self.settings
    settings = dict(kind=p.optimizer, learning_rate=p.learning_rate, momentum=p.momentum,
                    total_steps=total_steps, warmup_steps=p.warmup_epochs * steps_per_epoch,
                    weight_decay=p.weight_decay, clip_norm=p.clip_norm, min_lr=p.min_lr)
    return ("popar", *sorted(settings.items())), lambda: paper.pretrain_optimizer(**settings)

  def loss(self):
    return paper.pretrain_loss(self.model, self.order_weight)

  def distort(self, images: np.ndarray, sample_ids: np.ndarray, seed: int,
              shuffle_probability: float | None = None):
    """(images, order, target) stacked over [n, S, S, 1] images, each element a function of
    (seed, sample id) alone."""
    p = self.shuffle_probability if shuffle_probability is None else shuffle_probability
    genesis = dict(self.settings.genesis)
    out = [paper.distort(x, self.patch, np.random.default_rng([seed, 29, int(j)]), p, genesis)
           for x, j in zip(images, sample_ids)]
    return tuple(np.stack(parts) for parts in zip(*out))

  def batch(self, images: np.ndarray, sample_ids: np.ndarray, seed: int) -> dict:
    shown, order, target = self.distort(images, sample_ids, seed)
    return {"image": shown, "order": order, "target": target}

  def figure_rows(self, name: str, params, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per distortion the task trains on: its inputs, the order restored by the predicted
    positions (shuffled inputs) and the recovered appearance (where the task trains it)."""
    apply = jax.jit(self.model.apply)  # the parameters as an argument, not as constants
    grid = (self.size // self.patch,) * 2
    rows = {}
    for kind, probability in (("shuffled", 1.0), ("Models Genesis", 0.0)):
      if probability and not self.shuffle_probability:
        continue
      if not probability and self.shuffle_probability == 1.0:
        continue
      shown, _, _ = self.distort(images, np.arange(len(images)), 0, probability)
      logits, appearance = (np.asarray(a) for a in apply({"params": params}, shown))
      rows[f"{name}: {kind}"] = shown
      if probability:
        rows[f"{name}: order restored"] = np.stack(
            [paper.restore_order(x, lg, self.patch) for x, lg in zip(shown, logits)])
      if self.order_weight < 1.0:
        rows[f"{name}: recovered from {kind}"] = np.clip(
            paper.unpatchify(appearance, self.patch, grid), 0, 1)
    return rows


def _pretext_for(task: str):
  make = functools.partial(PopARPretext, task=task)
  make.label = paper.TASKS[task].label  # the tables name each run's task
  return make


PRETEXTS = {**{task: _pretext_for(task) for task in paper.TASKS},
            "simmim": study_lib.SimMIMPretext}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  validate(config)
  return study_lib.run_study(config, workdir, PRETEXTS, POPAR_PAPER)
