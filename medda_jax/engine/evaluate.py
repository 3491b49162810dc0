"""Evaluation in padded, sharded batches: one compiled shape for any number of examples.

`batch_predictor(fn, batch_size, mesh)` returns `predict(variables, inputs)`, which runs
`fn(variables, batch)` over `inputs` (an array, or a pytree of arrays sharing the leading
axis) in batches of one fixed size: the last batch is padded with copies of the last
example and the padded rows are dropped from the result. With a mesh of several devices
every batch is sharded over its `data` axis and the variables are replicated, so each
device predicts its share; the batch size is rounded up to a multiple of that axis.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from medda_jax import parallel


def _is_placed(x, sharding) -> bool:
  return isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim)


def _local_copy(x):
  """This process's copy of a replicated array that spans several processes."""
  return x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable else x


def batch_predictor(fn: Callable[[Any, Any], Any], batch_size: int,
                    mesh: Mesh | None = None) -> Callable[[Any, Any], Any]:
  """`predict(variables, inputs) -> outputs` as numpy arrays with the leading axis of
  `inputs`. `mesh=None`: the default device. With a mesh over several processes every
  process must call `predict` with the same inputs (it is one computation); a mesh of
  this process's devices (`parallel.data_mesh(jax.local_devices())`) lets each predict on
  its own. Build the predictor once per `fn`: it holds the one compiled function."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  shards = 1 if mesh is None else mesh.shape["data"]
  size = -(-batch_size // shards) * shards
  if shards == 1:
    compiled = jax.jit(fn)
  else:
    # Replicated outputs: every process can read the whole result.
    compiled = jax.jit(fn, in_shardings=(parallel.replicated(mesh),
                                         parallel.sharded_leading(mesh, "data")),
                       out_shardings=parallel.replicated(mesh))

  # A mesh of this process's devices only: predictions without collectives, so one
  # process may predict alone (e.g. a figure made by process 0) with its own copy.
  local = mesh is not None and all(d.process_index == jax.process_index()
                                   for d in mesh.devices.flat)

  def place_variables(variables):
    if shards == 1:
      return variables
    rep = parallel.replicated(mesh)
    if local:
      return jax.device_put(jax.tree.map(_local_copy, variables), rep)
    return jax.tree.map(lambda x: x if _is_placed(x, rep) else parallel.replicate(x, mesh),
                        variables)

  def place_batch(chunk: list):
    if shards == 1:
      return chunk
    if local:
      return jax.device_put(chunk, parallel.sharded_leading(mesh, "data"))
    placed = parallel.global_batch(dict(enumerate(chunk)), mesh, "data", process_local=False)
    return [placed[i] for i in range(len(chunk))]

  def predict(variables, inputs):
    leaves, treedef = jax.tree.flatten(inputs)
    n = len(leaves[0])
    if n == 0:
      raise ValueError("batch_predictor needs at least one example")
    variables = place_variables(variables)
    out = []
    for start in range(0, n, size):
      chunk = [np.asarray(x[start:start + size]) for x in leaves]
      pad = size - len(chunk[0])
      if pad:  # copies of the last example: finite inputs whatever the model
        chunk = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in chunk]
      batch = jax.tree.unflatten(treedef, place_batch(chunk))
      out.append(jax.tree.map(lambda y, keep=size - pad: np.asarray(y)[:keep],
                              compiled(variables, batch)))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *out)

  return predict
