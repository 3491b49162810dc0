"""When medda_jax.parallel starts JAX's distributed runtime, and with which settings."""

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
