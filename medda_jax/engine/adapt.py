"""Few-shot adaptation: the inner loop of Reptile and the fine-tuning of every
initialisation share it.

Shots are visited one at a time (batch 1), in a fresh random order every epoch, with
Adam + coupled L2 whose learning rate follows a per-epoch StepLR. A task may hold fewer
valid shots than the padded size K; padded steps leave parameters *and* optimiser state
untouched, so Adam's step count and bias correction match the unpadded run.

Two executors run the same steps:
* `adapt` — the whole loop as one `lax.scan` inside the caller's jit (accelerators).
* `adapt_chunked` — the host loops over chunks of `steps_per_call` steps, each chunk one
  jitted call with its steps unrolled (`engine.inner_loop="host"`). It was the CPU
  default while XLA:CPU ran the gradients' convolutions inside a while loop several
  times slower; models/conv.py removed that gap (docs/platform.md), so the scan is the
  default everywhere and this executor stays for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from medda_jax.optim.inner import coupled_adam, set_learning_rate, step_decay


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
  learning_rate: float
  weight_decay: float
  epochs: int
  lr_decay_gamma: float = 1.0  # StepLR gamma; 1.0 = constant
  lr_decay_every: int = 0      # StepLR step_size in epochs; 0 = constant

  @classmethod
  def from_config(cls, c) -> "AdaptConfig":
    return cls(c.learning_rate, c.weight_decay, c.epochs, c.lr_decay_gamma, c.lr_decay_every)

  def optimizer(self) -> optax.GradientTransformation:
    return coupled_adam(self.learning_rate, self.weight_decay)


def schedule(rng, num_shots: int, epochs: int):
  """Shot visited and epoch index of every step: ([E*K], [E*K]), a fresh order per epoch."""
  orders = jax.vmap(lambda k: jax.random.permutation(k, num_shots))(jax.random.split(rng, epochs))
  return orders.reshape(-1), jnp.repeat(jnp.arange(epochs), num_shots)


def init_carry(params, cfg: AdaptConfig):
  return (params, cfg.optimizer().init(params), jnp.zeros((), jnp.float32),
          jnp.zeros((), jnp.float32))


def _select(flag, new, old):
  return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


def adapt_step(carry, xs, *, images, masks, valid, apply_fn: Callable, loss_fn: Callable,
               cfg: AdaptConfig):
  """One inner step on shot `xs[0]` during epoch `xs[1]`; a no-op for a padded shot."""
  p, opt_state, loss_sum, count = carry
  shot, epoch = xs
  x, y, ok = images[shot][None], masks[shot][None], valid[shot]
  lr = step_decay(cfg.learning_rate, epoch, cfg.lr_decay_gamma, cfg.lr_decay_every)
  opt_state = set_learning_rate(opt_state, lr)
  loss, grads = jax.value_and_grad(lambda q: loss_fn(apply_fn(q, x), y))(p)
  updates, new_opt_state = cfg.optimizer().update(grads, opt_state, p)
  new_p = optax.apply_updates(p, updates)
  return (_select(ok, new_p, p), _select(ok, new_opt_state, opt_state),
          loss_sum + jnp.where(ok, loss, 0.0), count + ok.astype(jnp.float32)), None


def finish(carry):
  params, _, loss_sum, count = carry
  return params, loss_sum / jnp.maximum(count, 1.0)


def adapt(params, images, masks, valid, rng, *, apply_fn: Callable, loss_fn: Callable,
          cfg: AdaptConfig):
  """Trains `params` on the valid shots of one task, as one scan.

  Args:
    images, masks: [K, H, W, C] shots (padded to K); valid: [K] bool; rng: shot orders.
  Returns:
    (adapted params, mean training loss over the valid steps).
  """
  # Host arrays must become jax arrays before the scan indexes them with a traced shot.
  images, masks, valid = jnp.asarray(images), jnp.asarray(masks), jnp.asarray(valid)
  step = functools.partial(adapt_step, images=images, masks=masks, valid=valid,
                           apply_fn=apply_fn, loss_fn=loss_fn, cfg=cfg)
  carry, _ = jax.lax.scan(step, init_carry(params, cfg), schedule(rng, images.shape[0],
                                                                  cfg.epochs))
  return finish(carry)


@functools.partial(jax.jit, static_argnames=("apply_fn", "loss_fn", "cfg"))
def _run_chunk(carry, xs, images, masks, valid, *, apply_fn, loss_fn, cfg):
  step = functools.partial(adapt_step, images=images, masks=masks, valid=valid,
                           apply_fn=apply_fn, loss_fn=loss_fn, cfg=cfg)
  for i in range(xs[0].shape[0]):  # unrolled on purpose: see the module docstring
    carry, _ = step(carry, (xs[0][i], xs[1][i]))
  return carry


def adapt_chunked(params, images, masks, valid, rng, *, apply_fn: Callable, loss_fn: Callable,
                  cfg: AdaptConfig, steps_per_call: int):
  """Same result as `adapt`, run as host-side chunks of `steps_per_call` unrolled steps.

  `steps_per_call` must divide epochs * K so that every chunk has the same shape (one
  compilation)."""
  shots, epochs = schedule(rng, images.shape[0], cfg.epochs)
  total = shots.shape[0]
  if total % steps_per_call:
    raise ValueError(f"steps_per_call={steps_per_call} must divide the {total} inner steps "
                     f"(epochs x shots)")
  carry = jax.jit(init_carry, static_argnums=1)(params, cfg)
  for start in range(0, total, steps_per_call):
    xs = (shots[start:start + steps_per_call], epochs[start:start + steps_per_call])
    carry = _run_chunk(carry, xs, images, masks, valid, apply_fn=apply_fn, loss_fn=loss_fn,
                       cfg=cfg)
  return finish(carry)
