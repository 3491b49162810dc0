"""The padded batch predictor against a plain loop over single examples, on one device and
on 4 simulated CPU devices (batches sharded over `data`)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medda_jax.engine.evaluate import batch_predictor

SCRIPT_BODY = """
def model(v, batch):
  h = jnp.tanh(batch["x"].reshape(batch["x"].shape[0], -1) @ v["w"]) + v["b"]
  return {"h": h, "label": jnp.argmax(h, -1) + batch["k"]}

def fn(v, batch):  # what the predictor compiles: records every trace
  TRACES.append(batch["x"].shape)
  return model(v, batch)

def plain(v, inputs):  # one example at a time, the obvious way
  outs = [model(v, {"x": inputs["x"][i:i + 1], "k": inputs["k"][i:i + 1]})
          for i in range(len(inputs["k"]))]
  return {key: np.concatenate([np.asarray(o[key]) for o in outs]) for key in outs[0]}

rng = np.random.default_rng(0)
v = {"w": jnp.asarray(rng.normal(size=(12, 5)), jnp.float32), "b": jnp.arange(5.0)}

def check(mesh, batch_size, sizes):
  predict = batch_predictor(fn, batch_size, mesh)
  for n in sizes:
    inputs = {"x": rng.normal(size=(n, 2, 3, 2)).astype(np.float32),
              "k": rng.integers(0, 3, n).astype(np.int32)}
    got = predict(v, inputs)
    want = plain(v, inputs)
    assert got["h"].shape == (n, 5) and got["label"].shape == (n,)
    np.testing.assert_allclose(got["h"], want["h"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["label"], want["label"])
"""


@pytest.mark.parametrize("batch_size, sizes", [(8, (8, 16, 1, 7, 17)), (1, (3,))])
def test_matches_a_loop_over_single_examples_with_one_compiled_shape(batch_size, sizes):
  scope = {"jnp": jnp, "np": np, "batch_predictor": batch_predictor, "TRACES": []}
  exec(SCRIPT_BODY, scope)
  scope["check"](None, batch_size, sizes)
  assert scope["TRACES"] == [(batch_size, 2, 3, 2)]  # traced once: one compiled shape


def test_rejects_an_empty_input():
  predict = batch_predictor(lambda v, x: x, 4)
  with pytest.raises(ValueError):
    predict({}, np.zeros((0, 3)))


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from medda_jax import parallel
    from medda_jax.engine.evaluate import batch_predictor
    assert jax.device_count() == 4, jax.devices()
    TRACES, SPECS = [], []
""") + SCRIPT_BODY + textwrap.dedent("""
    traced = fn
    def fn(v, batch):  # records how the batch reaches the compiled function
      jax.debug.inspect_array_sharding(batch["x"], callback=lambda s: SPECS.append(s))
      return traced(v, batch)
    check(parallel.data_mesh(), 6, (8, 3, 13))  # 6 rounds up to 8: two rows per device
    assert TRACES == [(8, 2, 3, 2)], TRACES
    assert SPECS and all(s.spec[0] == "data" for s in SPECS), SPECS
    print("OK")
""")


def test_shards_batches_over_four_devices():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                        text=True, timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]
