"""Adversarial training: the one engine under WGAN augmentation, StarGAN, CycleGAN and SIFA.

State. `GANState` holds both sides of the game in one pytree: `params`, `model_state`
(Flax collections other than params: BatchNorm statistics, spectral-norm vectors) and
`opt_state` are dicts with the keys "g" (generator side) and "d" (critic side), plus the
RNG and the generator-step counter. A side may itself be a dict of networks: CycleGAN's
"g" holds both translators and its "d" both discriminators, so one engine step updates
everything a method's paper updates in one iteration.

Step. One engine step = `n_critic` critic updates, each on its own batch, then one
generator update on the last of those batches (as StarGAN's reference loop does; a WGAN
generator ignores the batch). With `generator_first` (CycleGAN, SIFA) the generator update
comes first, on the first batch, and the critic updates follow: whatever the generator
loss leaves in `model_state` (the fakes it made, for the critics to judge through an image
pool, `engine.image_pool`) is what the critic losses read. Then any `SideUpdate`s on the
step's last batch: further networks the
method trains in the same iteration (CyCADA's task classifiers), each on its own loss and
optimiser, every `every` generator steps. Their parameters sit in the same state under
their own key, so the critic and generator losses can read them (frozen there: each loss
is differentiated with respect to its own side only). Weight clipping of the critic after
each of its updates is optional (`clip_value`, the original WGAN). A method supplies its
losses with one contract:

    loss_fn(params, model_state, batch, rng) -> (loss, (model_state, metrics))

`critic_loss` is differentiated with respect to `params["d"]` only and `generator_loss`
with respect to `params["g"]` only; each may update any part of `model_state` (the
generator's BatchNorm statistics move while it makes fakes for the critic, as in PyTorch).

Call. `build_gan_chunk` returns one jitted call that runs `steps_per_call` engine steps:
every leaf of `batches` is shaped [steps_per_call, n_critic, batch, ...]. The steps are a
`lax.scan` (and the critic updates a nested scan; a single step or update is not wrapped in
a loop, which XLA compiles faster); `inner_loop="host"` unrolls the same steps into
straight-line code instead (it compiles `steps_per_call` copies of the step;
models/conv.py made the scan as fast on the CPU). Metrics come back once per call, stacked over the
steps ([steps_per_call]; critic metrics averaged over the n_critic updates of a step),
with `finite` saying whether every loss and parameter stayed finite. The state is donated
on accelerators (`compile.donates_by_default`).

Sharding. Parameters are replicated; batches are sharded over the `data` mesh axis on
their batch dimension (`shard_batches`), so the step is data-parallel under jit with the
gradient all-reduce inserted by XLA.
"""

from __future__ import annotations

from typing import Any, Callable

import dataclasses

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from medda_jax import parallel
from medda_jax.engine.compile import compile_step
from medda_jax.engine.meta import INNER_LOOPS, all_finite, run_steps

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[Any, dict]]]
BATCH_DIM = 2  # [steps_per_call, n_critic, batch, ...]


@flax.struct.dataclass
class GANState:
  params: dict       # {"g": ..., "d": ..., plus one key per SideUpdate}
  model_state: dict  # the same keys: batch_stats, spectral-norm u and sigma
  opt_state: dict    # the same keys
  rng: jax.Array
  step: jax.Array    # generator updates done

  @classmethod
  def create(cls, params: dict, model_state: dict, g_tx: optax.GradientTransformation,
             d_tx: optax.GradientTransformation, rng: jax.Array,
             side_txs: dict[str, optax.GradientTransformation] | None = None) -> "GANState":
    """`side_txs` names the optimiser of every extra side (`SideUpdate.side`)."""
    txs = {"g": g_tx, "d": d_tx, **(side_txs or {})}
    if set(params) != set(txs) or set(model_state) != set(txs):
      raise ValueError(f"params and model_state must be dicts with exactly the keys "
                       f"{sorted(txs)} (g, d and the sides of side_txs); got {sorted(params)} "
                       f"and {sorted(model_state)}")
    return cls(params=params, model_state=model_state,
               opt_state={k: tx.init(params[k]) for k, tx in txs.items()},
               rng=rng, step=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class SideUpdate:
  """A further network trained after each generator update (every `every` of them), on the
  step's last batch: `params[side] <- tx(grad loss_fn)`. Metrics get the prefix `side_`."""
  side: str
  loss_fn: LossFn
  tx: optax.GradientTransformation
  every: int = 1


def clip_params(params, clip_value: float):
  """The original WGAN's weight clipping: every critic parameter into [-c, c]."""
  return jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params)


def _update_side(side: str, loss_fn: LossFn, tx: optax.GradientTransformation,
                 state: GANState, batch, rng, clip_value: float | None = None):
  """One optimiser update of `params[side]` on `loss_fn`; returns (state, metrics)."""

  def side_loss(side_params):
    return loss_fn({**state.params, side: side_params}, state.model_state, batch, rng)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(side_loss, has_aux=True)(
      state.params[side])
  updates, side_opt = tx.update(grads, state.opt_state[side], state.params[side])
  side_params = optax.apply_updates(state.params[side], updates)
  if clip_value is not None:
    side_params = clip_params(side_params, clip_value)
  state = state.replace(params={**state.params, side: side_params}, model_state=model_state,
                        opt_state={**state.opt_state, side: side_opt})
  return state, dict(metrics, loss=loss)


def build_gan_step(critic_loss: LossFn, generator_loss: LossFn,
                   g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, *,
                   n_critic: int = 1, clip_value: float | None = None,
                   inner_loop: str = "scan", side_updates: tuple[SideUpdate, ...] = (),
                   generator_first: bool = False) -> Callable:
  """One engine step, not jitted: `step(state, batches) -> (state, metrics)` with every
  leaf of `batches` shaped [n_critic, batch, ...]. Metric names get a `d_` / `g_` prefix
  (`<side>_` for side updates; zeros at the steps a side skips)."""
  if n_critic < 1:
    raise ValueError(f"n_critic must be >= 1, got {n_critic}")
  for side in side_updates:
    if side.side in ("g", "d") or side.every < 1:
      raise ValueError(f"a side update needs its own key (not 'g' or 'd') and every >= 1; "
                       f"got side={side.side!r}, every={side.every}")
  if inner_loop not in INNER_LOOPS:
    raise ValueError(f"inner_loop must be one of {INNER_LOOPS}, got {inner_loop!r}")

  def critic_update(state, xs):
    batch, rng = xs
    return _update_side("d", critic_loss, d_tx, state, batch, rng, clip_value)

  def generator_update(state, batch, step_rng):
    return _update_side("g", generator_loss, g_tx, state, batch,
                        jax.random.fold_in(step_rng, 1))

  def step(state: GANState, batches):
    rng, step_rng = jax.random.split(state.rng)
    critic_rngs = jax.random.split(jax.random.fold_in(step_rng, 0), n_critic)
    if generator_first:
      state, g_metrics = generator_update(state, jax.tree.map(lambda x: x[0], batches),
                                          step_rng)
    state, d_metrics = run_steps(critic_update, state, (batches, critic_rngs), inner_loop)
    last_batch = jax.tree.map(lambda x: x[n_critic - 1], batches)
    if not generator_first:
      state, g_metrics = generator_update(state, last_batch, step_rng)
    metrics = {**{f"d_{k}": jnp.mean(v) for k, v in d_metrics.items()},
               **{f"g_{k}": v for k, v in g_metrics.items()}}
    for i, side in enumerate(side_updates):
      side_rng = jax.random.fold_in(step_rng, 2 + i)
      update = lambda s, side=side, side_rng=side_rng: _update_side(
          side.side, side.loss_fn, side.tx, s, last_batch, side_rng)
      if side.every == 1:
        state, s_metrics = update(state)
      else:
        skipped = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                               jax.eval_shape(update, state)[1])
        state, s_metrics = jax.lax.cond(state.step % side.every == 0, update,
                                        lambda s: (s, skipped), state)
      metrics.update({f"{side.side}_{k}": v for k, v in s_metrics.items()})
    return state.replace(rng=rng, step=state.step + 1), metrics

  return step


def build_gan_chunk(critic_loss: LossFn, generator_loss: LossFn,
                    g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, *,
                    n_critic: int = 1, clip_value: float | None = None,
                    inner_loop: str = "scan", side_updates: tuple[SideUpdate, ...] = (),
                    generator_first: bool = False, jit: bool = True,
                    mesh: Mesh | None = None) -> Callable:
  """`chunk(state, batches) -> (state, metrics)`: `steps_per_call` engine steps in one
  jitted call (state donated on accelerators; with a mesh, state replicated and batches sharded as
  `shard_batches` places them). Every leaf of `batches` is [steps_per_call, n_critic,
  batch, ...]; every metric comes back stacked to [steps_per_call], plus a scalar `finite`.
  `jit=False` returns the plain function (to vmap over several GANs, or to inspect)."""
  step = build_gan_step(critic_loss, generator_loss, g_tx, d_tx, n_critic=n_critic,
                        clip_value=clip_value, inner_loop=inner_loop,
                        side_updates=side_updates, generator_first=generator_first)

  def chunk(state: GANState, batches):
    state, metrics = run_steps(step, state, batches, inner_loop)
    finite = all_finite({k: v for k, v in metrics.items() if k.endswith("loss")}) & all_finite(
        state.params)
    return state, dict(metrics, finite=finite)

  return compile_step(chunk, mesh, batch_dim=BATCH_DIM) if jit else chunk


def shard_batches(batches: dict, mesh: Mesh | None):
  """Places a chunk of batches [steps_per_call, n_critic, batch, ...] on the mesh, sharded
  over `data` on the batch dimension. With several processes each passes the whole chunk
  and keeps its devices' shards."""
  return parallel.global_batch(batches, mesh, "data", batch_dim=BATCH_DIM,
                               process_local=False)
