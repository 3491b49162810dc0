"""Image classifiers trained with early stopping on validation AUC: the baselines, task
networks and fine-tuned models of the classification methods (StarGAN + CyCADA, CycleGAN
UDA).

`ClassifierTrainer` owns one network, its optimiser and the compiled train chunk and
predictor, so every classifier of a run with the same network and input shape compiles
once. Training runs through `engine.trainer.fit` (chunks of `steps_per_call` updates,
checkpointed, resumable); the kept weights are those of the best validation AUC.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax import files, metrics, parallel
from medda_jax.data.images import ImageSet
from medda_jax.engine.compile import compile_init
from medda_jax.engine.evaluate import batch_predictor
from medda_jax.engine.supervised import TrainState, build_train_chunk, epoch_indices
from medda_jax.engine.trainer import fit


def apply_task(net, params, model_state, x, train: bool, rng=None):
  """Logits and the (updated, in training) model state of a classifier: BatchNorm
  statistics move in training, dropout draws from `rng`."""
  variables = {"params": params, **model_state}
  if not train:
    return net.apply(variables, x, train=False), model_state
  if model_state:  # BatchNorm statistics (DenseNet, ResNet); LeNet and AlexNet have none
    return net.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=list(model_state))
  return net.apply(variables, x, train=True, rngs={"dropout": rng}), model_state


def adam_l2(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam with PyTorch's coupled L2 weight decay (`weight_decay` added to the gradient)."""
  adam = optax.adam(learning_rate)
  return optax.chain(optax.add_decayed_weights(weight_decay), adam) if weight_decay else adam


def balanced_indices(labels: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] indices with every class equally represented per batch (drawn
  with replacement within each class)."""
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  by_class = [np.flatnonzero(labels == k) for k in classes]
  per = [batch_size // len(classes) + (i < batch_size % len(classes))
         for i in range(len(classes))]
  idx = np.concatenate([rng.choice(members, (steps, n)) for members, n in zip(by_class, per)],
                       axis=1)
  return rng.permuted(idx, axis=1)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How a classifier trains: batch size, epochs, early stopping, batching."""
  batch_size: int
  max_epochs: int
  patience: int  # epochs without a better validation AUC before stopping
  balanced: bool = False  # label-balanced batches
  steps_per_call: int = 1
  eval_batch_size: int = 256
  augment: callable = None  # numpy (images, rng) -> images, per batch (None: none)


class ClassifierTrainer:
  """Trains a classifier with early stopping on validation AUC; predicts probabilities."""

  def __init__(self, net, tx: optax.GradientTransformation, input_shape, schedule: Schedule,
               mesh, inner_loop: str):
    self.net, self.tx, self.schedule, self.mesh = net, tx, schedule, mesh

    def loss_fn(params, model_state, batch, rng):
      logits, model_state = apply_task(net, params, model_state, batch["image"], True, rng)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, (model_state, {})

    self.chunk = build_train_chunk(loss_fn, tx, inner_loop, mesh=mesh)
    x = jnp.zeros((1, *input_shape))
    self._init = compile_init(lambda k: net.init(k, x, train=False))
    self._probs = batch_predictor(
        lambda v, images: jax.nn.softmax(net.apply(v, images, train=False)),
        schedule.eval_batch_size, mesh)

  def init(self, seed: int) -> dict:
    return self._init(jax.random.PRNGKey(seed))

  def probs(self, variables, images) -> np.ndarray:
    """Class probabilities [N, K]."""
    return self._probs(variables, images)

  def auc(self, variables, data: ImageSet) -> float:
    return metrics.multiclass_auc(data.labels, self.probs(variables, data.images))

  def train(self, data: ImageSet, val: ImageSet, seed: int, variables=None, name: str = "",
            checkpoint_dir: pathlib.Path | None = None):
    """Trains from `variables` (default: a fresh initialisation) for at most `max_epochs`
    epochs, validating after every epoch; stops after `patience` epochs without a better
    validation AUC. Returns (best variables, best validation AUC, epochs run). Checkpointed
    once per epoch in `checkpoint_dir` (None: not at all)."""
    t = self.schedule
    spc = t.steps_per_call
    calls_per_epoch = max(1, math.ceil(len(data) / t.batch_size / spc))
    steps = calls_per_epoch * spc
    variables = dict(self.init(seed) if variables is None else variables)
    params = variables.pop("params")
    state = TrainState.create(params, self.tx, variables, jax.random.PRNGKey(seed + 1))

    @functools.lru_cache(maxsize=1)
    def epoch_order(epoch):  # [steps, batch] indices of one epoch, a function of the seed
      draw = balanced_indices if t.balanced else (
          lambda labels, *a: epoch_indices(len(labels), *a))
      return draw(data.labels, steps, t.batch_size, seed * 1000 + epoch)

    def batch(k):
      part = epoch_order(k // calls_per_epoch)[(k % calls_per_epoch) * spc:][:spc]
      images = data.images[part]
      if t.augment is not None:  # a pure function of (seed, k): a resumed run redraws it
        images = t.augment(images, np.random.default_rng((seed, k)))
      return {"image": images, "label": data.labels[part]}

    def evaluate(v):
      auc = self.auc(v, val)
      return -1.0 if np.isnan(auc) else auc  # a validation set of one class scores nothing

    result = fit(f"classifier {name} (seed {seed})", state, self.chunk, batch,
                 total_calls=t.max_epochs * calls_per_epoch, steps_per_call=spc,
                 evaluate=evaluate, every=calls_per_epoch, patience=t.patience, floor=-2.0,
                 mesh=self.mesh, checkpoint_dir=checkpoint_dir)
    return result.best, result.best_score, result.evaluations


def saved_classifier(path: pathlib.Path, trainer: ClassifierTrainer, train_fn):
  """Loads a classifier saved by an earlier (interrupted) run, or trains and saves it.
  Returns (variables, {"val_auc", "epochs"})."""
  template = jax.device_get(trainer.init(0))
  if path.exists():
    saved = json.loads(path.with_suffix(".json").read_text())
    return flax.serialization.from_bytes(template, path.read_bytes()), saved
  variables, val_auc, epochs = train_fn()
  info = {"val_auc": val_auc, "epochs": epochs}
  if parallel.is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)
    # The info first: the weights' file is what marks the classifier done.
    files.write_text(path.with_suffix(".json"), json.dumps(info))
    files.write_bytes(path, flax.serialization.to_bytes(variables))
  return variables, info
