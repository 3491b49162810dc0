"""Plain supervised training in chunks: `steps_per_call` updates per jitted call.

Used by joint multi-task pre-training (the transfer baseline) and any method that trains
one model on a stream of batches. Within a call the updates run as a `lax.scan`
(accelerators) or unrolled (CPU, see `medda_jax.engine.adapt`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medda_jax.engine.meta import all_finite


@flax.struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  step: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def build_train_chunk(apply_fn: Callable, loss_fn: Callable, tx: optax.GradientTransformation,
                      inner_loop: str = "scan"):
  """Returns jitted `chunk(state, images, masks) -> (state, metrics)`, images/masks shaped
  [steps_per_call, batch, H, W, C]."""

  def one_step(state: TrainState, batch):
    x, y = batch
    loss, grads = jax.value_and_grad(lambda p: loss_fn(apply_fn(p, x), y))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, step=state.step + 1), loss

  def chunk(state: TrainState, images, masks):
    if inner_loop == "scan":
      state, losses = jax.lax.scan(one_step, state, (images, masks))
    elif inner_loop == "host":
      losses = []
      for i in range(images.shape[0]):  # unrolled on purpose (CPU)
        state, loss = one_step(state, (images[i], masks[i]))
        losses.append(loss)
      losses = jnp.stack(losses)
    else:
      raise ValueError(f"inner_loop must be 'scan' or 'host', got {inner_loop!r}")
    metrics = {"loss": losses.mean(), "finite": all_finite(losses) & all_finite(state.params)}
    return state, metrics

  return jax.jit(chunk, donate_argnums=(0,))


@flax.struct.dataclass
class ModelTrainState:
  """Train state of a network with mutable model state (BatchNorm statistics) and its own
  RNG stream (dropout, Gumbel noise)."""

  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  step: jax.Array

  @classmethod
  def create(cls, params, model_state, tx: optax.GradientTransformation, rng) -> "ModelTrainState":
    return cls(params=params, model_state=model_state, opt_state=tx.init(params), rng=rng,
               step=jnp.zeros((), jnp.int32))


def build_model_train_chunk(loss_fn: Callable, tx: optax.GradientTransformation,
                            inner_loop: str = "scan"):
  """Returns jitted `chunk(state, batches) -> (state, metrics)`.

  `loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))`; every leaf
  of `batches` has a leading axis of `steps_per_call`. Metrics are averaged over the chunk;
  `finite` says whether every loss and the parameters stayed finite.
  """

  def one_step(state: ModelTrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          model_state=model_state, opt_state=opt_state, rng=rng,
                          step=state.step + 1)
    return state, dict(metrics, loss=loss)

  def chunk(state: ModelTrainState, batches):
    if inner_loop == "scan":
      state, metrics = jax.lax.scan(one_step, state, batches)
    elif inner_loop == "host":
      steps = jax.tree.leaves(batches)[0].shape[0]
      per_step = []
      for i in range(steps):  # unrolled on purpose (XLA:CPU, see engine.adapt)
        state, m = one_step(state, jax.tree.map(lambda x: x[i], batches))
        per_step.append(m)
      metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)
    else:
      raise ValueError(f"inner_loop must be 'scan' or 'host', got {inner_loop!r}")
    finite = all_finite(metrics["loss"]) & all_finite(state.params)
    return state, dict(jax.tree.map(jnp.mean, metrics), finite=finite)

  return jax.jit(chunk, donate_argnums=(0,))


def epoch_indices(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] example indices over consecutive shuffled epochs (each a fresh
  permutation of range(n)), a pure function of the seed."""
  epochs = math.ceil(steps * batch_size / n)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size]
  return order.reshape(steps, batch_size)
