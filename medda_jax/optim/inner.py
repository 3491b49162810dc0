"""The inner-loop optimiser of MetaMedSeg and its fine-tuning: Adam with coupled L2."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def coupled_adam(learning_rate: float, weight_decay: float = 0.0, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """torch.optim.Adam(weight_decay=wd): the decay is added to the gradient *before* the
  moments (not AdamW). The learning rate is an injected hyperparameter so that a loop can
  set it per epoch with `set_learning_rate`."""

  def make(learning_rate):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))

  return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def set_learning_rate(opt_state, learning_rate):
  """Returns `opt_state` of `coupled_adam` (or any inject_hyperparams state) with a new rate."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
  return opt_state._replace(hyperparams=hyperparams)


def step_decay(base_lr: float, epoch, gamma: float, every: int):
  """torch StepLR indexed by epoch: base_lr * gamma ** (epoch // every); every=0 is constant."""
  if every <= 0 or gamma == 1.0:
    return jnp.asarray(base_lr, jnp.float32)
  return base_lr * jnp.asarray(gamma, jnp.float32) ** (epoch // every)
