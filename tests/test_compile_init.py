"""`engine.compile.compile_init` compiles initialisations at LLVM -O1 on the CPU: the
parameters must be the very ones XLA's default level (3) makes, for every initialiser the
models use (normal and truncated normal through erfinv, uniform, orthogonal through a QR).
The suite itself runs at level 0 (XLA_FLAGS, tests/conftest.py), which compile_init keeps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medda_jax.engine import compile as compile_lib


class EveryInitialiser(nn.Module):
  @nn.compact
  def __call__(self, x):
    init = nn.initializers
    h = nn.Conv(3, (3, 3))(x)  # lecun normal (truncated), zero bias
    h = nn.Conv(4, (3, 3), kernel_init=init.he_normal())(h)
    h = nn.ConvTranspose(2, (3, 3), strides=(2, 2), kernel_init=init.glorot_uniform())(h)
    h = nn.BatchNorm(use_running_average=True)(h)
    h = nn.GroupNorm(num_groups=1)(h).reshape(h.shape[0], -1)
    h = nn.Dense(5, kernel_init=init.normal(0.02), bias_init=init.uniform(0.1))(h)
    h = nn.Dense(6, kernel_init=init.truncated_normal(0.01))(h)
    h = nn.Dense(6, kernel_init=init.orthogonal())(h)
    pos = self.param("position", init.variance_scaling(1.0, "fan_avg", "uniform"), (7, 6))
    return h + pos.sum(0)


def test_init_at_o1_gives_the_default_levels_parameters_bit_for_bit():
  model = EveryInitialiser()
  x = jnp.zeros((1, 6, 6, 2))
  default = jax.jit(model.init, compiler_options={"xla_backend_optimization_level": 3})
  fast = jax.jit(model.init, compiler_options=compile_lib.INIT_OPTIONS)
  for seed in (0, 7):
    want = default(jax.random.PRNGKey(seed), x)
    got = fast(jax.random.PRNGKey(seed), x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  leaves = [np.asarray(v) for v in jax.tree.leaves(want)]
  assert len(leaves) >= 14 and sum(float(np.std(v)) > 0 for v in leaves) >= 7  # drawn


def test_init_options_leave_a_set_level_and_other_backends_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert compile_lib.init_options() is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert compile_lib.init_options() == compile_lib.INIT_OPTIONS
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert compile_lib.init_options() is None
