"""Device meshes, shardings and multi-process start-up.

The mesh has named axes `task` (the tasks of a meta-batch, one group per device) and
`data` (batch elements). Parameters are replicated; batches are sharded on their leading
axis. The same code runs on 1 CPU, on simulated CPU devices, on one GPU and on a pod.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medda_jax.errors import MeddaError

_INITIALISED = False


class LaunchError(MeddaError):
  """The launch environment is incomplete or inconsistent."""


def _int_setting(env, name: str) -> int:
  value = env.get(name)
  if value is None:
    raise LaunchError(f"MEDDA_COORDINATOR is set but {name} is not: set MEDDA_COORDINATOR, "
                      "MEDDA_NUM_PROCESSES and MEDDA_PROCESS_ID together (launch/local.sh does)")
  try:
    return int(value)
  except ValueError:
    raise LaunchError(f"{name}={value!r} is not an integer") from None


def distributed_settings(env=None) -> dict | None:
  """The keyword arguments for `jax.distributed.initialize`, or None for one process.

  Explicit settings win: MEDDA_COORDINATOR=host:port, MEDDA_NUM_PROCESSES, MEDDA_PROCESS_ID.
  Otherwise JAX's own cluster detection is used when SLURM runs several tasks, when a Cloud
  TPU slice has several workers, or when MEDDA_DISTRIBUTED=1 asks for it. MEDDA_INIT_TIMEOUT
  (seconds, default 300) bounds the wait for every process to join.
  """
  env = os.environ if env is None else env
  timeout = _int_setting(env, "MEDDA_INIT_TIMEOUT") if "MEDDA_INIT_TIMEOUT" in env else 300
  if env.get("MEDDA_COORDINATOR"):
    num = _int_setting(env, "MEDDA_NUM_PROCESSES")
    pid = _int_setting(env, "MEDDA_PROCESS_ID")
    if num < 1 or not 0 <= pid < num:
      raise LaunchError(f"MEDDA_PROCESS_ID={pid} must lie in [0, MEDDA_NUM_PROCESSES={num})")
    if ":" not in env["MEDDA_COORDINATOR"]:
      raise LaunchError(f"MEDDA_COORDINATOR={env['MEDDA_COORDINATOR']!r} must be host:port")
    return {"coordinator_address": env["MEDDA_COORDINATOR"], "num_processes": num,
            "process_id": pid, "initialization_timeout": timeout}
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "")
  if slurm or tpu_pod or env.get("MEDDA_DISTRIBUTED") == "1":
    return {"initialization_timeout": timeout}  # cluster auto-detection fills in the rest
  return None


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` once when the environment says there are several
  processes (see `distributed_settings`), then reports the topology once, from process 0."""
  global _INITIALISED
  if _INITIALISED:
    return
  settings = distributed_settings()
  if settings is not None:
    jax.distributed.initialize(**settings)
    # The processes' first collective sets up their communicators, and on the CPU gloo gives
    # that rendezvous only 30 s: a process that reaches its first collective later (busy
    # compiling, or building a data cache) would fail its peers. Meeting here, while the
    # processes stand together, sets them up once; later collectives wait without that limit.
    multihost_utils.sync_global_devices("medda_jax: collectives ready")
  _INITIALISED = True
  if is_main_process() and (jax.process_count() > 1 or jax.device_count() > 1):
    print(topology(), file=sys.stderr)


def topology() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"devices: {len(devices)} x {'/'.join(kinds)} ({devices[0].platform}) on "
          f"{jax.process_count()} process(es), {jax.local_device_count()} local to process "
          f"{jax.process_index()}")


def task_mesh(num_tasks: int, devices=None) -> Mesh:
  """A ('task', 'data') mesh: the task axis takes the largest share of the devices that
  divides the number of tasks, the data axis the rest."""
  devices = process_major(jax.devices() if devices is None else devices)
  n = len(devices)
  task = math.gcd(num_tasks, n)
  return Mesh(np.array(devices).reshape(task, n // task), ("task", "data"))


def padded_tasks(num_tasks: int, num_devices: int) -> int:
  """The meta-batch size to run L tasks on n devices: L itself when the task axis of
  `task_mesh(L)` (gcd(L, n) devices) leaves each device no more tasks than padding would,
  else L rounded up to a multiple of n. With L = 5 on 8 devices, gcd = 1 puts all five
  tasks on every device; padded to 8, each device adapts one (three copies are dropped
  before the aggregation, see `engine.meta.build_meta_step`)."""
  per_device = -(-num_tasks // num_devices)
  if num_tasks // math.gcd(num_tasks, num_devices) <= per_device:
    return num_tasks
  return per_device * num_devices


def pad_tasks(batch: dict, num_tasks: int) -> dict:
  """Repeats the tasks of a host meta-batch (task axis first) cyclically up to `num_tasks`."""
  order = np.arange(num_tasks) % len(next(iter(batch.values())))
  return {k: np.take(np.asarray(v), order, axis=0) for k, v in batch.items()}


def data_mesh(devices=None) -> Mesh:
  return Mesh(np.array(process_major(jax.devices() if devices is None else devices)), ("data",))


def process_major(devices) -> list:
  """The devices ordered by process, then id, so that each process's devices form one
  contiguous block of every mesh axis: the data pipelines load process p's block
  (`[p * n / P, (p + 1) * n / P)` of the batch or the tasks), and
  `make_array_from_process_local_data` needs the block to be where they put it. Device ids
  need not be grouped by host (on TPU pods they follow the chips' physical layout)."""
  return sorted(devices, key=lambda d: (d.process_index, d.id))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_leading(mesh: Mesh, axis: str) -> NamedSharding:
  return NamedSharding(mesh, P(axis))


def is_main_process() -> bool:
  return jax.process_index() == 0


def global_batch(batch: dict, mesh: Mesh | None, axis: str, batch_dim: int = 0,
                 process_local: bool = True):
  """Places a host batch on the mesh, sharded on dimension `batch_dim` (0; 1 for a chunk
  of steps [steps_per_call, batch, ...], so every device takes its share of every step).

  With several processes and `process_local`, each passes only its own slice of that
  dimension (the data pipelines shard by `jax.process_index()`) and the global array is
  assembled with `jax.make_array_from_process_local_data`; with `process_local=False` every
  process passes the whole batch and keeps the shards its devices hold. Without a mesh the
  batch stays on the host and the jitted step transfers it."""
  if mesh is None:
    return batch
  sharding = NamedSharding(mesh, P(*([None] * batch_dim), axis))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  if not process_local:
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def host_local(x) -> bool:
  """True for a jax.Array that lives on this process's devices only, while other processes
  exist: a value each process computed for itself (a replicated run of a serial stage)."""
  return isinstance(x, jax.Array) and jax.process_count() > 1 and x.is_fully_addressable


def replicate(tree, mesh: Mesh | None = None):
  """The same values as global arrays replicated over every device of every process (each
  process passes identical values). With one process: a device_put onto the mesh."""
  mesh = data_mesh() if mesh is None else mesh
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def to_local(tree):
  """This process's copy of replicated global arrays, as arrays on its first device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def allgather(tree):
  """Concatenates every process's leaves along their leading axis, in process order; the
  same numpy result on every process. With one process: the tree, unchanged."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.process_allgather(tree, tiled=True)


def allgather_json(obj) -> list:
  """Every process's JSON-serialisable `obj`, in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = allgather(np.array([data.size]))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = allgather(padded[None])
  return [json.loads(bytes(row[:n])) for row, n in zip(gathered, lengths)]
