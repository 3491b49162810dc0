import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# One XLA compilation cache for every trainer process of a test session: the second and
# later runs of a config (resume, rerun) load their executables instead of recompiling.
_XLA_CACHE = tempfile.mkdtemp(prefix="medda_xla_cache_")
_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": _XLA_CACHE,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_train(workdir, *overrides, config="configs/metamedseg.py:smoke", env=None, timeout=600,
              background=False):
  """Runs the command-line trainer as a user would, from the repository root."""
  cmd = [sys.executable, "-m", "medda_jax.train", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  full_env = dict(os.environ, **_CACHE_ENV, **(env or {}))
  if background:
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
  """One shared cache directory so the smoke collection is built once per test session."""
  return tmp_path_factory.mktemp("demo_cache")


def kill_after_results(child, results_file, min_entries: int, timeout: float = 400) -> None:
  """SIGKILLs a background trainer once its JSON file of finished runs holds at least
  `min_entries` entries; fails if the run ends first."""
  deadline = time.time() + timeout
  while time.time() < deadline and child.poll() is None:
    if results_file.exists():
      try:
        if len(json.loads(results_file.read_text())) >= min_entries:
          break
      except json.JSONDecodeError:  # caught mid-write
        pass
    time.sleep(0.05)
  assert child.poll() is None, "the run finished before it could be interrupted"
  child.send_signal(signal.SIGKILL)
  child.communicate()
