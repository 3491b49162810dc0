"""Reptile's outer update as an optax transform: plain average (AW) or inverse distance
weighting (IDW) of the per-task parameter deltas, MetaMedSeg eqs. (1)-(3).

The aggregate is fed the *stacked* deltas `Δ_l = θ_l − θ` (leading task axis L) and
returns Reptile's pseudo-gradient `g = −Σ_l w_l Δ_l` (θ minus the weighted task models):
the direction a loss gradient would have, so any optax optimiser chained after it steps
toward the tasks. Plain Reptile is `sgd(β)` after it, `θ ← θ − β g = θ + β Σ_l w_l Δ_l`;
Adam, momentum, schedules and `optax.inject_hyperparams` compose the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

RULES = ("aw", "idw")
IDW_FORMS = ("inverse", "one_minus_normalised")
IDW_REFERENCES = ("meta_model", "mean_of_tasks", "mean_of_other_tasks")


class ReptileState(NamedTuple):
  weights: chex.Array  # [L] weights of the last update, for logging


def _squared_norms(stacked) -> jax.Array:
  """Σ_i x_{l,i}² per task l over every leaf of a stacked pytree -> [L]."""
  leaves = jax.tree.leaves(stacked)
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=1)
             for x in leaves)


def reptile_weights(deltas, rule: str = "aw", idw_form: str = "inverse",
                    idw_reference: str = "meta_model", invert: bool = True,
                    eps: float = 1e-12) -> jax.Array:
  """The task weights w_l (sum 1) for stacked deltas.

  rule="aw": 1/L. rule="idw", idw_form="inverse" (paper eq. 2): w_l ∝ 1/(d_l + eps) with
  d_l the squared Euclidean distance of task model l to the reference point.
  idw_form="one_minus_normalised" (reference code): v_l = (d_l + 1e-4)/(Σ d + 1e-4),
  w_l ∝ 1 − v_l. invert=False (reference code config 3) gives far tasks *more* weight
  (w ∝ d + eps, or w ∝ v). idw_reference: the meta-model θ (paper eq. 2), the mean of all
  task models, or the mean of the other task models (the paper's introduction).
  """
  num_tasks = jax.tree.leaves(deltas)[0].shape[0]
  if rule == "aw":
    return jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
  if rule != "idw":
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
  if idw_reference == "meta_model":
    offsets = deltas
  elif idw_reference == "mean_of_tasks":
    offsets = jax.tree.map(lambda d: d - d.mean(axis=0, keepdims=True), deltas)
  elif idw_reference == "mean_of_other_tasks":
    if num_tasks < 2:
      raise ValueError("idw_reference='mean_of_other_tasks' needs at least 2 tasks")
    offsets = jax.tree.map(
        lambda d: d - (d.sum(axis=0, keepdims=True) - d) / (num_tasks - 1), deltas)
  else:
    raise ValueError(f"idw_reference must be one of {IDW_REFERENCES}, got {idw_reference!r}")
  distances = _squared_norms(offsets)
  if idw_form == "inverse":
    raw = 1.0 / (distances + eps) if invert else distances + eps
  elif idw_form == "one_minus_normalised":
    v = (distances + 1e-4) / (jnp.sum(distances) + 1e-4)
    raw = 1.0 - v if invert else v
  else:
    raise ValueError(f"idw_form must be one of {IDW_FORMS}, got {idw_form!r}")
  return raw / jnp.sum(raw)


def reptile_aggregate(num_tasks: int, rule: str = "aw", idw_form: str = "inverse",
                      idw_reference: str = "meta_model", invert: bool = True,
                      legacy_sequential_product: bool = False,
                      eps: float = 1e-12) -> optax.GradientTransformation:
  """The pseudo-gradient −Σ_l w_l Δ_l from stacked task deltas (weights: `reptile_weights`);
  chain an outer optimiser after it (`reptile` does, with sgd).

  legacy_sequential_product=True reproduces the released MetaMedSeg code, which inside its
  task loop does `update += Δ_l; update *= w_l`, i.e. task l gets Π_{j≥l} w_j.
  """
  for name, value, allowed in (("rule", rule, RULES), ("idw_form", idw_form, IDW_FORMS),
                               ("idw_reference", idw_reference, IDW_REFERENCES)):
    if value not in allowed:
      raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

  def init_fn(params):
    del params
    return ReptileState(weights=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32))

  def update_fn(deltas, state, params=None):
    del params, state
    chex.assert_tree_shape_prefix(deltas, (num_tasks,))
    weights = reptile_weights(deltas, rule, idw_form, idw_reference, invert, eps)
    coefficients = weights
    if legacy_sequential_product:
      # suffix products: c_l = Π_{j>=l} w_j
      coefficients = jnp.flip(jnp.cumprod(jnp.flip(weights)))
    pseudo_gradient = jax.tree.map(
        lambda d: -jnp.tensordot(coefficients.astype(d.dtype), d, axes=1), deltas)
    return pseudo_gradient, ReptileState(weights=weights)

  return optax.GradientTransformation(init_fn, update_fn)


def reptile(meta_step_size, num_tasks: int, *,
            outer: optax.GradientTransformation | None = None,
            **aggregate_kwargs) -> optax.GradientTransformation:
  """Reptile's meta-optimiser: the aggregate, then `outer`.

  Plain Reptile (outer=None): `optax.sgd(meta_step_size)`, β a float or an optax schedule
  of the meta-iteration, i.e. θ ← θ + β Σ_l w_l Δ_l. Or pass any optax optimiser as
  `outer` (e.g. `optax.adam(1e-3)`) with meta_step_size=None.
  """
  if (outer is None) == (meta_step_size is None):
    raise ValueError("reptile() takes either meta_step_size (plain Reptile, sgd(β)) or an "
                     "outer optax optimiser, not both")
  if outer is None:
    outer = optax.sgd(meta_step_size)
  return optax.chain(reptile_aggregate(num_tasks, **aggregate_kwargs), outer)
