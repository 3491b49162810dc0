"""engine.timing: compile seconds from JAX's events, the first training call, timing.json;
and the persistent compilation cache that makes a rerun compile nothing it compiled before."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import final_metrics
from medda_jax.engine import timing


def test_compile_time_first_call_and_cache_hits(tmp_path):
  timing.start(tmp_path)
  assert timing.summary()["compile_s"] == 0.0 and timing.summary()["first_call_s"] is None

  def step(x):  # a shape no other test compiles
    return jnp.tanh(x @ x.T).sum(axis=0) * 3.0

  x = np.arange(37 * 5, dtype=np.float32).reshape(37, 5) / 100
  expected = np.tanh(x @ x.T).sum(axis=0) * 3.0
  np.testing.assert_allclose(jax.jit(step)(x), expected, rtol=1e-5)
  first = timing.summary()
  assert first["xla_compile_s"] > 0 and first["trace_s"] > 0 and first["lower_s"] > 0
  assert first["compile_s"] == pytest.approx(
      sum(first[k] for k in ("trace_s", "lower_s", "xla_compile_s")), abs=2e-3)  # rounded to ms
  assert not (tmp_path / timing.FILE).exists()  # written at the first call, not before

  timing.first_call_done()
  written = json.loads((tmp_path / timing.FILE).read_text())
  assert 0 < written["first_call_s"] <= written["wall_s"]
  timing.first_call_done()  # a later call does not move the mark
  assert json.loads((tmp_path / timing.FILE).read_text())["first_call_s"] == \
      written["first_call_s"]

  # The same computation after the in-memory caches are dropped (as in a new process):
  # loaded from the persistent cache the suite sets up, so XLA compiles nothing.
  before = timing.summary()
  assert before["compilation_cache_misses"] >= 1  # at least `step` was compiled
  jax.clear_caches()
  np.testing.assert_allclose(jax.jit(step)(x), expected, rtol=1e-5)
  after = timing.summary()
  assert after["compilation_cache_hits"] == before["compilation_cache_hits"] + 1
  assert after["compilation_cache_misses"] == before["compilation_cache_misses"]


def test_a_run_reports_its_time(smoke_run):
  workdir, proc = smoke_run
  spent = json.loads((workdir / timing.FILE).read_text())
  assert 0 < spent["first_call_s"] < spent["wall_s"]
  assert 0 < spent["compile_s"] < spent["wall_s"]
  assert f"first training call done after {spent['first_call_s']:.1f} s" in proc.stderr
  assert final_metrics(workdir)  # the run finished: timing.json is its end-of-run copy
