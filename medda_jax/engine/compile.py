"""The one place a step is compiled: donation of the state, explicit shardings.

Every step builder (supervised, GAN, meta) hands its `step(state, batch) -> (state,
metrics)` to `compile_step`. Without a mesh the step is jitted with the state donated and
placement left to JAX (one device, or a serial stage each process runs for itself). With
a mesh the state and the metrics are replicated and the batch is sharded over
`batch_axis` on dimension `batch_dim` (1 for a chunk of steps [steps_per_call, batch, ...],
2 for the GAN engine's [steps_per_call, n_critic, batch, ...]); inputs must already sit
that way (`parallel.replicate`, `parallel.global_batch`).
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medda_jax import parallel


def batch_sharding(mesh: Mesh, batch_axis: str | None = "data", batch_dim: int = 0):
  """Leading dimensions before `batch_dim` unsharded, `batch_dim` over `batch_axis`
  (None: replicated)."""
  return NamedSharding(mesh, P(*([None] * batch_dim), batch_axis))


def compile_step(step: Callable, mesh: Mesh | None = None, *, batch_axis: str | None = "data",
                 batch_dim: int = 0, donate: bool = True) -> Callable:
  """`jax.jit(step)` with the state (argument 0) donated and, given a mesh, explicit
  in/out shardings: state replicated, batch sharded, metrics replicated."""
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=donate_argnums,
                 in_shardings=(replicated, batch_sharding(mesh, batch_axis, batch_dim)),
                 out_shardings=(replicated, replicated))
