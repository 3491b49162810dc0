"""Supervised training in chunks: `steps_per_call` updates per jitted call.

One train state and one chunk builder for every method that trains one network on a
stream of batches (joint pre-training, classifiers, fine-tuning with BatchNorm). Within a
call the updates run as a `lax.scan` (accelerators) or unrolled (CPU, see
`medda_jax.engine.adapt`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from medda_jax.engine.compile import compile_step
from medda_jax.engine.meta import all_finite, run_steps


@flax.struct.dataclass
class TrainState:
  """Train state of one network: parameters, optimizer state, update count, and the
  network's mutable model state (BatchNorm statistics; {} for none) and RNG stream
  (dropout, Gumbel noise; a fixed key when the loss draws nothing)."""

  params: Any
  opt_state: Any
  step: jax.Array
  model_state: Any
  rng: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, model_state=None,
             rng=None) -> "TrainState":
    return cls(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
               model_state={} if model_state is None else model_state,
               rng=jax.random.PRNGKey(0) if rng is None else rng)


def supervised_loss(apply_fn: Callable, loss_fn: Callable, inputs: str = "images",
                    targets: str = "masks") -> Callable:
  """The train-step loss contract for a network without model state or randomness:
  `loss_fn(apply_fn(params, batch[inputs]), batch[targets])`."""

  def fn(params, model_state, batch, rng):
    del rng
    return loss_fn(apply_fn(params, batch[inputs]), batch[targets]), (model_state, {})

  return fn


def build_train_chunk(loss_fn: Callable, tx: optax.GradientTransformation,
                      inner_loop: str = "scan", *, mesh: Mesh | None = None,
                      batch_dim: int = 1):
  """Returns the compiled `chunk(state, batches) -> (state, metrics)` (state donated on
  accelerators; with a mesh, state replicated and batches sharded over `data` on
  `batch_dim`).

  `loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))` (see
  `supervised_loss` for a plain network); every leaf of `batches` has a leading axis of
  `steps_per_call`. Metrics are averaged over the chunk; `finite` says whether every loss
  and the parameters stayed finite.
  """

  def one_step(state: TrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          model_state=model_state, opt_state=opt_state, rng=rng,
                          step=state.step + 1)
    return state, dict(metrics, loss=loss)

  def chunk(state: TrainState, batches):
    state, metrics = run_steps(one_step, state, batches, inner_loop)
    finite = all_finite(metrics["loss"]) & all_finite(state.params)
    return state, dict(jax.tree.map(jnp.mean, metrics), finite=finite)

  return compile_step(chunk, mesh, batch_dim=batch_dim)


def epoch_indices(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] example indices over consecutive shuffled epochs (each a fresh
  permutation of range(n)), a pure function of the seed."""
  epochs = math.ceil(steps * batch_size / n)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size]
  return order.reshape(steps, batch_size)
