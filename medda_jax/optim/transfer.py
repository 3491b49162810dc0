"""optax pieces for supervised transfer: the paper's two optimisers, optimizer-state
continuation (OCTL), L2-SP and freezing all but the first layers (FTF).

`transfer_optimizer` is the one optimizer of every run: `l2sp -> core -> step-decay
learning rate -> freeze mask`, with `core` = `scale_by_adam` or `trace` (PyTorch SGD with
momentum, dampening 0). The moments live in known sub-states (`ScaleByAdamState(count, mu,
nu)`, `TraceState(trace)`) that a fine-tuning run can take over from the pre-training
run's checkpoint (`continue_from`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adam")
_MOMENT_STATES = (optax.ScaleByAdamState, optax.TraceState)


def _is_moment(x) -> bool:
  return isinstance(x, _MOMENT_STATES)


def moment_states(opt_state) -> list:
  """The Adam / SGD-momentum sub-states of an optimizer state, in tree order."""
  return [x for x in jax.tree.leaves(opt_state, is_leaf=_is_moment) if _is_moment(x)]


def continue_from(tx: optax.GradientTransformation, source_state, *,
                  adam_count: int | None = 100) -> optax.GradientTransformation:
  """OCTL: `tx` whose initial state carries the moments of a pre-training state.

  `init` builds `tx`'s fresh state (so the learning-rate schedule restarts at its first
  value) and replaces each moment sub-state by the corresponding one of `source_state`
  (same type, in tree order): SGD's momentum buffer, or Adam's first and second moments
  with the step count set to `adam_count` (the paper's 100: optax increments the count
  before bias correction, so the first update uses t = 101, as the reference code does).
  `adam_count=None` keeps the source count. Only the decay rates of `tx` apply from then
  on (the paper continues with mu = 0.99, or beta1 = 0.99).
  """
  sources = moment_states(source_state)

  def init(params):
    fresh = tx.init(params)
    leaves, treedef = jax.tree.flatten(fresh, is_leaf=_is_moment)
    moments = [x for x in leaves if _is_moment(x)]
    if len(moments) != len(sources) or any(type(a) is not type(b)
                                           for a, b in zip(moments, sources)):
      raise ValueError(
          "optimizer continuation needs the same optimizer type before and after: the "
          f"fine-tuning optimizer has {[type(m).__name__ for m in moments]}, the source "
          f"state {[type(s).__name__ for s in sources]}")
    it = iter(sources)
    out = []
    for leaf in leaves:
      if not _is_moment(leaf):
        out.append(leaf)
        continue
      src = next(it)
      if jax.tree.structure(src) != jax.tree.structure(leaf):
        raise ValueError("the source optimizer state was built for other parameters")
      if isinstance(leaf, optax.ScaleByAdamState):
        count = src.count if adam_count is None else jnp.asarray(adam_count, leaf.count.dtype)
        src = optax.ScaleByAdamState(count=count, mu=src.mu, nu=src.nu)
      out.append(jax.tree.map(jnp.array, src))  # a copy: training donates its state
    return jax.tree.unflatten(treedef, out)

  return optax.GradientTransformation(init, tx.update)


class L2SPState(NamedTuple):
  alpha: jax.Array
  reference: Any


def l2sp(alpha: float, reference_params=None) -> optax.GradientTransformation:
  """L2-SP (Li et al., 2018) as a gradient transform: adds the gradient of
  alpha * sum ||theta - theta_source||^2, i.e. 2 alpha (theta - theta_source). Chain it
  before the optimizer, as a loss term would enter. Without `reference_params` the
  parameters given to `init` are the reference (fine-tuning starts from the source
  weights). alpha and the reference live in the state: they are checkpointed with the
  run, and alpha = 0 (a no-op) shares the compiled step of the other methods."""

  def init(params):
    reference = params if reference_params is None else reference_params
    return L2SPState(jnp.asarray(alpha, jnp.float32),
                     jax.tree.map(jnp.array, reference))  # a copy: training donates params

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("l2sp needs the current parameters")
    updates = jax.tree.map(
        lambda g, p, r: g + (2.0 * state.alpha * (p - r)).astype(g.dtype),
        updates, params, state.reference)
    return updates, state

  return optax.GradientTransformation(init, update)


def l2sp_penalty(params, reference_params, alpha: float):
  """The loss term L2-SP adds (for logging and for checking the transform)."""
  return alpha * sum(jnp.sum((p - r) ** 2) for p, r in
                     zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)))


class StepDecayState(NamedTuple):
  count: jax.Array
  learning_rate: jax.Array
  decay_step: jax.Array
  factor: jax.Array


def scale_by_step_decay(learning_rate: float, decay_step: int,
                        factor: float = 0.1) -> optax.GradientTransformation:
  """Multiplies updates by -lr, where lr = learning_rate until `decay_step` updates were
  made and learning_rate * factor after (the paper: 1e-3 -> 1e-4 at epoch 45 of 60).
  The numbers live in the state, so runs of different lengths share one compiled step,
  and a fresh state restarts the schedule."""

  def init(params):
    del params
    return StepDecayState(jnp.zeros((), jnp.int32), jnp.asarray(learning_rate, jnp.float32),
                          jnp.asarray(decay_step, jnp.int32), jnp.asarray(factor, jnp.float32))

  def update(updates, state, params=None):
    del params
    lr = state.learning_rate * jnp.where(state.count >= state.decay_step, state.factor, 1.0)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return updates, state._replace(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


class MaskState(NamedTuple):
  mask: Any


def mask_updates(trainable=None) -> optax.GradientTransformation:
  """Zeroes the updates of frozen parameters. `trainable` is a pytree of booleans like
  the parameters (None: all trainable); it is kept in the state as 0/1 factors."""

  def init(params):
    mask = jax.tree.map(lambda _: True, params) if trainable is None else trainable
    return MaskState(jax.tree.map(lambda m, p: jnp.full(p.shape, m, p.dtype), mask, params))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, state.mask), state

  return optax.GradientTransformation(init, update)


def transfer_optimizer(name: str, *, learning_rate: float, decay_step: int,
                       decay_factor: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       l2sp_alpha: float = 0.0, trainable=None) -> optax.GradientTransformation:
  """The optimizer of every pre-training and fine-tuning run:

    chain(l2sp(alpha), sgd-momentum | adam moments, step-decay learning rate, freeze mask)

  The methods differ only in its initial state: FTA and MMTL a fresh one, L2-SP alpha > 0,
  FTF a mask that freezes all but the first layers, OCTL (through `continue_from`) the
  pre-training moments with mu or beta1 = 0.99. Every number sits in the state
  (`optax.inject_hyperparams` for the moments' rates), so the update code depends only on
  `name` and `nesterov`, and all those runs share one compiled training step.
  """
  if name == "sgd":
    core = optax.inject_hyperparams(optax.trace, static_args=("nesterov",))(
        decay=momentum, nesterov=nesterov)
  elif name == "adam":
    core = optax.inject_hyperparams(optax.scale_by_adam)(b1=b1, b2=b2, eps=eps)
  else:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  return optax.chain(l2sp(l2sp_alpha), core,
                     scale_by_step_decay(learning_rate, decay_step, decay_factor),
                     mask_updates(trainable))


def trainable_mask(params, trainable: Callable[[tuple[str, ...]], bool]):
  """Pytree of booleans like `params`: trainable(path) for each parameter path."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: bool(trainable(k)) for k in flat})


def first_layers(prefixes: Sequence[str]) -> Callable[[tuple[str, ...]], bool]:
  """FTF's rule: parameters of top-level modules whose name starts with a prefix."""
  prefixes = tuple(prefixes)
  return lambda path: path[0].startswith(prefixes)
