"""What the paper defines: the three optimisers with nnU-Net's schedule, the deep-supervision
loss, and the per-layer update sizes of its Fig. 2.

Every number of an optimiser (learning rate, schedule length and power, weight decay,
momentum, eps) lives in its state (`optax.inject_hyperparams`), so all runs of one
optimiser, whatever their learning rate or epoch budget, share one compiled step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.models import nnunet2d
from medda_jax.optim.avagrad import avagrad

OPTIMIZERS = ("sgd", "adam", "avagrad")
SCHEDULES = ("poly", "constant")
POLY_POWER = 0.9  # nnU-Net: lr * (1 - epoch / E)^0.9


def poly_factor(count, total_steps, power):
  """(1 - min(count, T) / T)^power: `optax.polynomial_schedule(1, 0, power, T)` with T and
  the power as (traceable) numbers; power 0 is a constant rate."""
  done = jnp.minimum(count, total_steps) / total_steps
  return jnp.power(1.0 - done, power)


def _rate(learning_rate, total_steps, power):
  return lambda count: learning_rate * poly_factor(count, total_steps, power)


def _sgd(learning_rate, total_steps, power, weight_decay, momentum, nesterov=True):
  """torch SGD(momentum, nesterov, weight_decay) as nnU-Net uses it: d = g + wd w,
  buf = mu buf + d, step = d + mu buf."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.trace(decay=momentum, nesterov=nesterov),
                     optax.scale_by_learning_rate(_rate(learning_rate, total_steps, power)))


def _adam(learning_rate, total_steps, power, weight_decay, b1, b2, eps):
  """torch Adam with coupled L2 weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(_rate(learning_rate, total_steps, power)))


def _avagrad(learning_rate, total_steps, power, weight_decay, b1, b2, eps, decoupled=False,
             normalizer="reference"):
  return avagrad(_rate(learning_rate, total_steps, power), b1=b1, b2=b2, eps=eps,
                 weight_decay=weight_decay, decoupled=decoupled, normalizer=normalizer)


class UpdateSizeState(NamedTuple):
  abs_sums: optax.Updates  # per leaf: sum over steps of sum |update|


def track_update_sizes() -> optax.GradientTransformation:
  """Passes updates through and adds sum |update| of every leaf to its state (Fig. 2)."""

  def init_fn(params):
    return UpdateSizeState(jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params))

  def update_fn(updates, state, params=None):
    del params
    sums = jax.tree.map(lambda s, u: s + jnp.sum(jnp.abs(u)).astype(jnp.float32),
                        state.abs_sums, updates)
    return updates, UpdateSizeState(sums)

  return optax.GradientTransformation(init_fn, update_fn)


def optimizer(name: str, *, learning_rate: float, total_steps: int, schedule: str,
              weight_decay: float, settings) -> optax.GradientTransformation:
  """The run's optimiser: `name` with `settings` (config.optim.<name>), the learning rate
  decayed by nnU-Net's poly schedule over `total_steps` (or constant), then the update-size
  tracker. Structure depends only on the name and its static flags (Nesterov; AvaGrad's
  decoupled decay and normaliser)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  power = POLY_POWER if schedule == "poly" else 0.0
  common = dict(learning_rate=learning_rate, total_steps=total_steps, power=power,
                weight_decay=weight_decay)
  if name == "sgd":
    inner = optax.inject_hyperparams(_sgd, static_args=("nesterov",))(
        momentum=settings.momentum, nesterov=settings.nesterov, **common)
  elif name == "adam":
    inner = optax.inject_hyperparams(_adam)(b1=settings.b1, b2=settings.b2, eps=settings.eps,
                                            **common)
  else:
    inner = optax.inject_hyperparams(_avagrad, static_args=("decoupled", "normalizer"))(
        b1=settings.b1, b2=settings.b2, eps=settings.eps, decoupled=settings.decoupled,
        normalizer=settings.normalizer, **common)
  return optax.chain(inner, track_update_sizes())


def update_sums(opt_state) -> optax.Updates:
  """The tracker's per-leaf sums in an `optimizer(...)` state."""
  return opt_state[1].abs_sums


def layer_update_sums(sums, params) -> dict[str, tuple[float, int]]:
  """Per top-level layer (module): (sum |update| so far, number of weights)."""
  sums, params = jax.device_get(sums), jax.device_get(params)
  out: dict[str, tuple[float, int]] = {}
  for layer in params:
    total = sum(float(s) for s in jax.tree.leaves(sums[layer]))
    size = sum(int(np.size(p)) for p in jax.tree.leaves(params[layer]))
    out[layer] = (total, size)
  return out


class EpochUpdateSizes:
  """A `run_loop` hook: at the end of every epoch, the mean |delta w| per weight and step of
  every layer over that epoch. Its record is JSON (checkpointed with the run)."""

  def __init__(self, steps_per_epoch: int, steps_per_call: int):
    self.steps_per_epoch, self.steps_per_call = steps_per_epoch, steps_per_call
    self.previous: dict[str, float] = {}
    self.epochs: list[dict[str, float]] = []

  def after_call(self, state, calls: int):
    steps = calls * self.steps_per_call
    if steps % self.steps_per_epoch == 0:
      now = layer_update_sums(update_sums(state.opt_state), state.params)
      self.epochs.append({layer: (total - self.previous.get(layer, 0.0)) /
                          (size * self.steps_per_epoch) for layer, (total, size) in now.items()})
      self.previous = {layer: total for layer, (total, _) in now.items()}
    return state, False

  def get_state(self) -> dict:
    return {"previous": self.previous, "epochs": self.epochs}

  def set_state(self, saved: dict) -> None:
    self.previous, self.epochs = dict(saved["previous"]), list(saved["epochs"])


def group_update_sizes(epochs: list[dict[str, float]]) -> dict[str, list[float]]:
  """Fig. 2's curves: per layer group, the mean over its layers of each epoch's size."""
  out = {}
  for group in nnunet2d.LAYER_GROUPS:
    per_epoch = [[v for k, v in e.items() if nnunet2d.layer_group(k) == group] for e in epochs]
    if per_epoch and per_epoch[0]:
      out[group] = [float(np.mean(v)) for v in per_epoch]
  return out


def training_loss(model: nnunet2d.NnUNet2D):
  """The train-step loss (engine contract): deep-supervision Dice + CE of the batch."""

  def loss_fn(params, model_state, batch, rng):
    del rng
    outputs = model.apply({"params": params}, batch["images"])
    return nnunet2d.deep_supervision_loss(outputs, batch["masks"]), (model_state, {})

  return loss_fn
