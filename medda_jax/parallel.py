"""Device meshes, shardings and multi-process start-up.

The mesh has named axes `task` (the tasks of a meta-batch, one group per device) and
`data` (batch elements). Parameters are replicated; batches are sharded on their leading
axis. The same code runs on 1 CPU, on simulated CPU devices, on one GPU and on a pod.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_INITIALISED = False


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` once when the environment says there are several
  processes (explicit MEDDA_* settings, SLURM, or a TPU pod's own metadata)."""
  global _INITIALISED
  if _INITIALISED:
    return
  env = os.environ
  if "MEDDA_COORDINATOR" in env:
    jax.distributed.initialize(coordinator_address=env["MEDDA_COORDINATOR"],
                               num_processes=int(env["MEDDA_NUM_PROCESSES"]),
                               process_id=int(env["MEDDA_PROCESS_ID"]),
                               initialization_timeout=int(env.get("MEDDA_INIT_TIMEOUT", "300")))
  elif int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env and "," in env[
      "TPU_WORKER_HOSTNAMES"]:
    jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)
  _INITIALISED = True
  if jax.process_count() > 1 or jax.device_count() > 1:
    logging.info("devices: %d total, %d local, process %d of %d, platform %s",
                 jax.device_count(), jax.local_device_count(), jax.process_index(),
                 jax.process_count(), jax.devices()[0].platform)


def task_mesh(num_tasks: int, devices=None) -> Mesh:
  """A ('task', 'data') mesh: the task axis takes the largest share of the devices that
  divides the number of tasks, the data axis the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  task = math.gcd(num_tasks, n)
  return Mesh(np.array(devices).reshape(task, n // task), ("task", "data"))


def data_mesh(devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_leading(mesh: Mesh, axis: str) -> NamedSharding:
  return NamedSharding(mesh, P(axis))


def is_main_process() -> bool:
  return jax.process_index() == 0


def global_batch(batch: dict, mesh: Mesh | None, axis: str, batch_dim: int = 0):
  """Places a host batch on the mesh, sharded on dimension `batch_dim` (0; 1 for a chunk
  of steps [steps_per_call, batch, ...], so every device takes its share of every step).

  With several processes each passes only its own slice of that dimension (the data
  pipelines shard by `jax.process_index()`), and the global array is assembled with
  `jax.make_array_from_process_local_data`. Without a mesh the batch stays on the host and
  the jitted step transfers it."""
  if mesh is None:
    return batch
  sharding = NamedSharding(mesh, P(*([None] * batch_dim), axis))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

