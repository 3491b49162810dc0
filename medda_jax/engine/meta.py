"""One meta-iteration as one jitted call.

The L tasks of a meta-batch are adapted side by side — `vmap` over the task axis, or
`lax.map`, or unrolled inside the jit (measured per backend in benchmarks/) — and, when
the mesh has a `task` axis of several devices, each device adapts its own tasks under
`shard_map`. The per-task deltas are then aggregated by the optax meta-optimiser
(`medda_jax.optim.reptile`): no Python loop over tasks and no host transfer in the step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from medda_jax import parallel
from medda_jax.engine.adapt import AdaptConfig, adapt, adapt_chunked
from medda_jax.engine.compile import compile_step
from medda_jax.optim.maml import maml_meta_gradient

TASK_PARALLELISM = ("vmap", "map", "unroll")
INNER_LOOPS = ("scan", "host")


@flax.struct.dataclass
class MetaState:
  params: Any
  opt_state: Any
  rng: jax.Array
  step: jax.Array

  @classmethod
  def create(cls, params, meta_tx: optax.GradientTransformation, rng) -> "MetaState":
    return cls(params=params, opt_state=meta_tx.init(params), rng=rng,
               step=jnp.zeros((), jnp.int32))


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def run_steps(step: Callable, state, xs, inner_loop: str):
  """`step(state, x) -> (state, metrics)` over the leading axis of `xs`, metrics stacked:
  a `lax.scan` (inner_loop "scan"; a single step is not wrapped in a loop, which XLA
  compiles faster) or unrolled into straight-line code ("host")."""
  if inner_loop not in INNER_LOOPS:
    raise ValueError(f"inner_loop must be one of {INNER_LOOPS}, got {inner_loop!r}")
  steps = jax.tree.leaves(xs)[0].shape[0]
  if inner_loop == "scan" and steps > 1:
    return jax.lax.scan(step, state, xs)
  per_step = []
  for i in range(steps):
    state, m = step(state, jax.tree.map(lambda x, i=i: x[i], xs))
    per_step.append(m)
  return state, jax.tree.map(lambda *ms: jnp.stack(ms), *per_step)


def _map_tasks(fn: Callable, parallelism: str, *args):
  """Applies fn to each task (leading axis of every arg) and stacks the results."""
  if parallelism == "vmap":
    return jax.vmap(fn)(*args)
  if parallelism == "map":
    return jax.lax.map(lambda a: fn(*a), args)
  if parallelism == "unroll":
    num = jax.tree.leaves(args)[0].shape[0]
    outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(num)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  raise ValueError(f"task_parallelism must be one of {TASK_PARALLELISM}, got {parallelism!r}")


def build_meta_step(apply_fn: Callable, loss_fn: Callable, adapt_cfg: AdaptConfig,
                    meta_tx: optax.GradientTransformation, *, algorithm: str = "reptile",
                    maml_inner_steps: int = 5, maml_inner_lr: float = 0.01,
                    mesh: Mesh | None = None, task_parallelism: str = "vmap",
                    inner_loop: str = "scan", steps_per_call: int = 1,
                    gather_tasks: bool = False, num_tasks: int | None = None,
                    donate: bool | None = None):
  """Returns `step(state, batch) -> (state, metrics)`.

  inner_loop="scan": the whole meta-iteration is one jitted call (tasks side by side as
  `task_parallelism` says, inner steps in a `lax.scan`). inner_loop="host" (Reptile only,
  the CPU default): tasks one after another, each inner loop run by
  `adapt_chunked` in chunks of `steps_per_call` unrolled steps, then one jitted
  aggregation; same numbers, see `medda_jax.engine.adapt` for why. With `gather_tasks`
  (several processes, host loop) each process adapts only its own slice of the task axis
  and the deltas of all processes are all-gathered, in process order, before the update.
  With `num_tasks` (scan loop) the batch may hold more tasks than that, padded with
  copies (`parallel.pad_tasks`) so that the task axis spans every device: the first
  `num_tasks` tasks keep the keys they have unpadded, and the copies are dropped before
  the aggregation, so the update is that of the unpadded batch.

  batch: images/masks [L, K, H, W, C] float32, valid [L, K] bool.
  algorithm: "reptile" — meta_tx receives the stacked deltas θ_l − θ (use
  `medda_jax.optim.reptile`); "maml"/"fomaml" — meta_tx receives the stacked per-task
  meta-gradients (use `medda_jax.optim.maml.maml(outer)`), each task's shots split in two
  halves: support (full-batch inner SGD steps) and query (meta-loss).
  """
  if algorithm not in ("reptile", "maml", "fomaml"):
    raise ValueError(f"algorithm must be reptile, maml or fomaml, got {algorithm!r}")
  if task_parallelism not in TASK_PARALLELISM:
    raise ValueError(f"task_parallelism must be one of {TASK_PARALLELISM}, "
                     f"got {task_parallelism!r}")
  if inner_loop not in INNER_LOOPS:
    raise ValueError(f"inner_loop must be one of {INNER_LOOPS}, got {inner_loop!r}")
  if inner_loop == "host" and algorithm != "reptile":
    raise ValueError("inner_loop='host' runs Reptile only; MAML differentiates through a scan")

  def task_fn(params, images, masks, valid, key):
    if algorithm == "reptile":
      adapted, loss = adapt(params, images, masks, valid, key, apply_fn=apply_fn,
                            loss_fn=loss_fn, cfg=adapt_cfg)
      return jax.tree.map(jnp.subtract, adapted, params), loss
    # MAML: full-batch inner steps on the support half, meta-loss on the query half.
    half = images.shape[0] // 2
    weight = valid.astype(jnp.float32)[:, None, None, None]

    def masked_loss(p, batch):
      x, y, w = batch
      logits = apply_fn(p, x)
      # A padded shot gets logit -1e4 and target 0: zero BCE and no IoU contribution.
      return loss_fn(logits * w + (w - 1.0) * 1e4, y * w)

    support = (images[:half], masks[:half], weight[:half])
    query = (images[half:], masks[half:], weight[half:])
    grads, loss = maml_meta_gradient(masked_loss, params, support, query,
                                     inner_tx=optax.sgd(maml_inner_lr),
                                     inner_steps=maml_inner_steps,
                                     first_order=algorithm == "fomaml")
    return grads, loss

  def tasks_fn(params, images, masks, valid, keys):
    return _map_tasks(functools.partial(task_fn, params), task_parallelism,
                      images, masks, valid, keys)

  if mesh is not None and mesh.shape.get("task", 1) > 1:
    # Each device adapts its own tasks from the replicated θ; nothing crosses devices
    # until the aggregation outside. check_vma=False: the scanned inner loop starts from
    # replicated values and becomes per-device, which the varying-axes check rejects.
    tasks_fn = jax.shard_map(tasks_fn, mesh=mesh,
                             in_specs=(P(), P("task"), P("task"), P("task"), P("task")),
                             out_specs=(P("task"), P("task")), check_vma=False)

  def apply_meta_update(state: MetaState, per_task, task_losses, rng):
    updates, opt_state = meta_tx.update(per_task, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": jnp.mean(task_losses),
        "task_losses": task_losses,
        "update_norm": optax.tree.norm(updates),
        "finite": all_finite(task_losses) & all_finite(params),
    }
    return state.replace(params=params, opt_state=opt_state, rng=rng,
                         step=state.step + 1), metrics

  def split_keys(state, num_tasks):
    rng, key = jax.random.split(state.rng)
    return rng, jax.random.split(key, num_tasks)

  if inner_loop == "host":
    jit_update = compile_step(apply_meta_update, donate=donate)

    def host_step(state: MetaState, batch):
      num_tasks = batch["images"].shape[0]
      rng, keys = split_keys(state, num_tasks * (jax.process_count() if gather_tasks else 1))
      if gather_tasks:  # this process's tasks keep the keys they have in one process
        keys = keys[jax.process_index() * num_tasks:][:num_tasks]
      deltas, losses = [], []
      for t in range(num_tasks):
        adapted, loss = adapt_chunked(state.params, batch["images"][t], batch["masks"][t],
                                      batch["valid"][t], keys[t], apply_fn=apply_fn,
                                      loss_fn=loss_fn, cfg=adapt_cfg,
                                      steps_per_call=steps_per_call)
        deltas.append(_subtract(adapted, state.params))
        losses.append(loss)
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *deltas)
      losses = jnp.stack(losses)
      if gather_tasks:
        stacked, losses = parallel.allgather((stacked, losses))
      return jit_update(state, stacked, losses, rng)

    return host_step

  def step(state: MetaState, batch):
    padded = batch["images"].shape[0]
    real = padded if num_tasks is None else num_tasks
    rng, keys = split_keys(state, real)
    if padded != real:
      keys = keys[jnp.arange(padded) % real]
    per_task, task_losses = tasks_fn(state.params, batch["images"], batch["masks"],
                                     batch["valid"], keys)
    if padded != real:
      per_task, task_losses = jax.tree.map(lambda x: x[:real], (per_task, task_losses))
    return apply_meta_update(state, per_task, task_losses, rng)

  batch_axis = "task" if mesh is not None and "task" in mesh.axis_names else None
  return compile_step(step, mesh, batch_axis=batch_axis, donate=donate)


_subtract = jax.jit(lambda a, b: jax.tree.map(jnp.subtract, a, b))
