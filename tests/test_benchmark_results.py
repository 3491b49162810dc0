"""Every committed benchmark result has the one schema benchmarks/common.write_json writes:
the command, device (threads, XLA flags, load before and after), versions, shapes, results,
ratio and the headline best-JAX-over-best-torch figure under one key."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
KEYS = {"benchmark", "date", "command", "device", "platform", "versions", "shapes", "results",
        "ratio", "jax_best_over_torch_best", "notes"}
NO_TORCH_PEER = {"scaling", "input_pipeline", "volume_memory", "first_step", "sissi_pipeline",
                 "simmim_pipeline"}


def test_headline_reads_each_benchmarks_ratio():
  assert common.headline({"speedup_jax_best_over_torch_best": 1.3, "goal": "x"}) == 1.3
  assert common.headline({"deep": {"jax_best_over_torch_best": 0.8, "other_over": 2.0},
                          "metamedseg": {"jax_best_over_torch_best": 0.9}}) == {
                              "deep": 0.8, "metamedseg": 0.9}
  assert common.headline({"stream_over_step_images_per_s": 120.0}) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_cpu_threads_pin_the_process_for_both_frameworks():
  """XLA:CPU sizes its thread pool by the cores it may run on, so `--cpu-threads 1` must
  pin the process (its children inherit the pin) and refuse more cores than it has."""
  script = ("import os, sys; sys.path.insert(0, 'benchmarks'); import common; "
            "common.setup_platform(True, int(sys.argv[1])); "
            "print(len(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'])")
  run = lambda n: subprocess.run([sys.executable, "-c", script, str(n)], cwd=ROOT,
                                 capture_output=True, text=True)
  assert run(1).stdout.split() == ["1", "1"]
  too_many = run(len(os.sched_getaffinity(0)) + 1)
  assert too_many.returncode != 0 and "cores" in too_many.stderr


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_result_file_schema(path):
  data = json.loads(path.read_text())
  assert KEYS <= data.keys(), sorted(KEYS - data.keys())
  assert path.name.startswith(data["benchmark"])
  device = data["device"]
  assert "load_average_at_end" in device and "cpu_cores" in device
  if data["platform"] in ("cpu", "gpu"):
    assert "xla_flags" in device or "jax_devices" in device
  threads = re.search(r"--cpu-threads[ =](\d+)", data["command"])
  if threads:  # measured on that many cores, not only with that many torch threads
    assert device["cpu_cores"] == int(threads.group(1))
  assert data["jax_best_over_torch_best"] == common.headline(data["ratio"])
  if data["benchmark"] in NO_TORCH_PEER:
    assert data["jax_best_over_torch_best"] is None
  else:
    figures = data["jax_best_over_torch_best"]
    figures = figures.values() if isinstance(figures, dict) else [figures]
    assert figures and all(isinstance(f, float) and math.isfinite(f) and f > 0 for f in figures)


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_the_command_names_no_path_of_the_machine_it_ran_on(path):
  """A result file records its command as a user would type it in the repository: an
  `--out` into a scratch folder of the measuring machine says nothing to anyone else."""
  command = json.loads(path.read_text())["command"]
  absolute = [word for word in command.split() if word.startswith(("/", "~"))]
  assert not absolute, f"{path.name}: {absolute}"
