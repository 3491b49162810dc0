"""When medda_jax.parallel starts JAX's distributed runtime, and with which settings."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from medda_jax import parallel
from medda_jax.parallel import LaunchError, distributed_settings

EXPLICIT = {"MEDDA_COORDINATOR": "10.0.0.1:1234", "MEDDA_NUM_PROCESSES": "4",
            "MEDDA_PROCESS_ID": "3"}


def test_one_process_without_cluster_settings():
  assert distributed_settings({}) is None
  assert distributed_settings({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "solo"}) is None


def test_explicit_settings_are_passed_as_given():
  assert distributed_settings(dict(EXPLICIT, MEDDA_INIT_TIMEOUT="42")) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
      "initialization_timeout": 42}
  assert distributed_settings(EXPLICIT)["initialization_timeout"] == 300


@pytest.mark.parametrize("env", [{"SLURM_NTASKS": "8"},
                                 {"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"},
                                 {"MEDDA_DISTRIBUTED": "1"}])
def test_clusters_use_jax_auto_detection(env):
  assert distributed_settings(env) == {"initialization_timeout": 300}


@pytest.mark.parametrize("change, message", [
    ({"MEDDA_NUM_PROCESSES": None}, "MEDDA_NUM_PROCESSES is not"),
    ({"MEDDA_PROCESS_ID": None}, "MEDDA_PROCESS_ID is not"),
    ({"MEDDA_PROCESS_ID": "4"}, r"MEDDA_PROCESS_ID=4 must lie in \[0, MEDDA_NUM_PROCESSES=4\)"),
    ({"MEDDA_NUM_PROCESSES": "four"}, "MEDDA_NUM_PROCESSES='four' is not an integer"),
    ({"MEDDA_COORDINATOR": "10.0.0.1"}, "must be host:port"),
    ({"MEDDA_INIT_TIMEOUT": "soon"}, "MEDDA_INIT_TIMEOUT='soon' is not an integer"),
])
def test_incomplete_settings_fail_with_a_clear_message(change, message):
  env = {k: v for k, v in dict(EXPLICIT, **change).items() if v is not None}
  with pytest.raises(LaunchError, match=message):
    distributed_settings(env)


def test_single_process_helpers_are_identities():
  import numpy as np
  tree = {"a": np.arange(3)}
  assert parallel.allgather(tree) is tree
  assert not parallel.host_local(np.arange(3))
  assert "on 1 process(es)" in parallel.topology()


class _Chip:
  """A stand-in device: a process index and an id, as on a TPU pod where ids follow the
  chips' physical layout and are not grouped by host."""

  def __init__(self, process_index, id):
    self.process_index, self.id = process_index, id


def test_process_major_puts_each_process_in_one_contiguous_block():
  hosts, per_host = 4, 4
  chips = [_Chip(h, h + hosts * j) for j in range(per_host) for h in range(hosts)]
  ordered = parallel.process_major(chips)
  assert [c.process_index for c in ordered] == [i // per_host for i in range(hosts * per_host)]
  for h in range(hosts):  # within a process, by id
    ids = [c.id for c in ordered if c.process_index == h]
    assert ids == sorted(ids) and len(ids) == per_host


MESH_ORDER = """
import jax
from medda_jax import parallel
shuffled = list(reversed(jax.devices()))
assert len(shuffled) == 4, shuffled
ids = sorted(d.id for d in shuffled)
assert [d.id for d in parallel.data_mesh(shuffled).devices.ravel()] == ids
assert [d.id for d in parallel.task_mesh(2, shuffled).devices.ravel()] == ids
print("OK")
"""


def test_meshes_order_devices_by_process_then_id():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", MESH_ORDER], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-3000:]


def test_padded_tasks_never_leaves_a_device_more_tasks():
  for devices in (1, 2, 3, 4, 8, 16):
    for tasks in range(1, 40):
      padded = parallel.padded_tasks(tasks, devices)
      # Plainly: tasks per device on the gcd task axis, and with padding to a multiple.
      unpadded_load = tasks // math.gcd(tasks, devices)
      padded_load = -(-tasks // devices)
      assert padded >= tasks
      if padded == tasks:
        assert unpadded_load <= padded_load
      else:
        assert padded % devices == 0 and padded // devices == padded_load < unpadded_load
  assert parallel.padded_tasks(5, 8) == 8 and parallel.padded_tasks(8, 8) == 8
  assert parallel.padded_tasks(12, 8) == 16 and parallel.padded_tasks(4, 8) == 4


def test_pad_tasks_repeats_tasks_cyclically():
  batch = {"images": np.arange(3)[:, None] * np.ones((3, 2)), "valid": np.array([1, 0, 1])}
  padded = parallel.pad_tasks(batch, 7)
  np.testing.assert_array_equal(padded["images"][:, 0], [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(padded["valid"], [1, 0, 1, 1, 0, 1, 1])
