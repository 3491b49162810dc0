"""MAML as optax: the inner loop is any optax transform run in a `lax.scan`; the meta-
gradient flows through it (second order) or around it (first order); the outer update is
any optax optimiser fed the mean of the per-task meta-gradients (`maml(outer)`)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax


def task_mean() -> optax.GradientTransformation:
  """Averages stacked per-task updates over their leading task axis."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u.mean(axis=0), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def maml(outer: optax.GradientTransformation) -> optax.GradientTransformation:
  """Outer MAML optimiser: `outer` applied to the task-averaged meta-gradient."""
  return optax.chain(task_mean(), outer)


def maml_meta_gradient(loss_fn: Callable[[Any, Any], jax.Array], params, support, query, *,
                       inner_tx: optax.GradientTransformation, inner_steps: int,
                       first_order: bool = False):
  """Meta-gradient of one task: ∇_θ L_query(θ'), θ' = `inner_steps` updates of `inner_tx`
  on L_support starting from θ.

  Second order differentiates through the scanned inner loop. First order (FOMAML) uses
  θ' = θ + stop_gradient(θ' − θ), so the gradient is ∇L_query evaluated at θ'.
  Returns (meta_gradient, query_loss_after_adaptation).
  """

  def adapt(theta):
    def step(carry, _):
      p, opt_state = carry
      grads = jax.grad(loss_fn)(p, support)
      updates, opt_state = inner_tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None

    (adapted, _), _ = jax.lax.scan(step, (theta, inner_tx.init(theta)), None,
                                   length=inner_steps)
    return adapted

  def outer_loss(theta):
    adapted = adapt(theta)
    if first_order:
      adapted = jax.tree.map(lambda t, a: t + jax.lax.stop_gradient(a - t), theta, adapted)
    return loss_fn(adapted, query)

  loss, grads = jax.value_and_grad(outer_loss)(params)
  return grads, loss
