"""AvaGrad (Savarese et al.) as an optax transformation, matching `lolemacs/avagrad`.

AvaGrad is Adam with its per-parameter step sizes eta = 1 / (sqrt(v) + eps) rescaled to
unit root-mean-square over *all* parameters, so that the learning rate sets the size of
the step and eps only its adaptivity. The rescaling factor gamma is one scalar for the
whole parameter tree: the transform reduces over every leaf and must not be wrapped per
leaf (optax.masked / multi_transform over parts of the tree would change the optimiser).

Reference step (class `AvaGrad`; t counts from 1, v is still v_{t-1} where used):

    m <- b1 m + (1 - b1) g
    if t > 1:  w <- w - gamma * lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^(t-1))) + eps)
    v <- b2 v + (1 - b2) g^2
    gamma <- 1 / sqrt(mean(eta'^2)),  eta' = 1 / (sqrt(v_{t-1}) / sqrt(1 - b2^t) + eps)

The first step moves nothing; gamma computed at step t is used at step t + 1, from the
previous second moment with step t's bias correction. `normalizer="paper"` takes gamma
from the same eta the step uses (the paper's equation, no lag).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

NORMALIZERS = ("reference", "paper")


class ScaleByAvaGradState(NamedTuple):
  count: chex.Array  # steps taken (int32)
  mu: optax.Updates  # first moment m
  nu: optax.Updates  # second moment v
  gamma: chex.Array  # the global step-size normaliser (reference: for the next step)


def _global_gamma(etas) -> jax.Array:
  """1 / sqrt(mean(eta^2)) over every element of every leaf."""
  leaves = jax.tree.leaves(etas)
  total = sum(jnp.sum(jnp.square(e)) for e in leaves)
  size = sum(e.size for e in leaves)
  return 1.0 / jnp.sqrt(total / size)


def scale_by_avagrad(b1: float = 0.9, b2: float = 0.999, eps: float = 0.1,
                     normalizer: str = "reference") -> optax.GradientTransformation:
  """The AvaGrad direction `gamma / (1 - b1^t) * m / (sqrt(v_hat) + eps)` (zero at t = 1),
  to be followed by a (negative) learning-rate scaling."""
  if normalizer not in NORMALIZERS:
    raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return ScaleByAvaGradState(count=jnp.zeros((), jnp.int32),
                               mu=jax.tree.map(jnp.zeros_like, params),
                               nu=jax.tree.map(jnp.zeros_like, params),
                               gamma=jnp.ones((), dtype))

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    t = count.astype(state.gamma.dtype)
    bias1 = 1.0 - b1**t
    bias2 = 1.0 - b2**t
    prev_bias2 = 1.0 - b2**(t - 1.0)
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
    sqrt_nu = jax.tree.map(jnp.sqrt, state.nu)  # of v_{t-1}
    # At t = 1 v_{t-1} = 0 and its bias correction is 0: the step is skipped, so any
    # finite stand-in for the correction does.
    safe_prev = jnp.where(count > 1, prev_bias2, 1.0)
    eta = jax.tree.map(lambda s: 1.0 / (s / jnp.sqrt(safe_prev) + eps), sqrt_nu)
    if normalizer == "reference":
      gamma_now = state.gamma
      gamma_next = _global_gamma(jax.tree.map(lambda s: 1.0 / (s / jnp.sqrt(bias2) + eps),
                                              sqrt_nu))
    else:
      gamma_now = gamma_next = _global_gamma(eta)
    scale = jnp.where(count > 1, gamma_now / bias1, 0.0)
    direction = jax.tree.map(lambda m, e: (scale * m * e).astype(m.dtype), mu, eta)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, updates)
    return direction, ScaleByAvaGradState(count=count, mu=mu, nu=nu,
                                          gamma=gamma_next.astype(state.gamma.dtype))

  return optax.GradientTransformation(init_fn, update_fn)


class DecoupledDecayState(NamedTuple):
  count: chex.Array


def add_decoupled_weight_decay(weight_decay: float) -> optax.GradientTransformation:
  """AvaGradW's decay: `+ wd * w` to the direction from the second step on (the reference
  decays only where it steps), so that after the learning-rate scaling
  w <- w (1 - lr wd) - lr * direction."""

  def init_fn(params):
    del params
    return DecoupledDecayState(jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("decoupled weight decay needs the parameters (optax update(..., params))")
    count = state.count + 1
    on = (count > 1).astype(jnp.result_type(*jax.tree.leaves(updates)))
    updates = jax.tree.map(lambda u, p: u + on * weight_decay * p, updates, params)
    return updates, DecoupledDecayState(count)

  return optax.GradientTransformation(init_fn, update_fn)


def avagrad(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 0.1, weight_decay: float = 0.0, decoupled: bool = False,
            normalizer: str = "reference") -> optax.GradientTransformation:
  """AvaGrad (`decoupled=False`: weight decay added to the gradient, class `AvaGrad`) or
  AvaGradW (`decoupled=True`: w <- w (1 - lr wd) before the step). The learning rate may
  be a schedule."""
  # A Python zero adds nothing; a traced value (optax.inject_hyperparams) always adds.
  decay = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)
  parts = []
  if decay and not decoupled:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(scale_by_avagrad(b1, b2, eps, normalizer))
  if decay and decoupled:
    parts.append(add_decoupled_weight_decay(weight_decay))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
