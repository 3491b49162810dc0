"""The residual U-Net of the transfer experiments and its SpotTune (twin) form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medda_jax.models import unet2d_res as R


def expected_parameter_count(n: int, cin: int = 1, cout: int = 1) -> int:
  """Counted by hand from the layer list in the module docstring (spec §2.1)."""
  def conv(ci, co, k, bias):
    return k * k * ci * co + (co if bias else 0)

  def bn(c):
    return 2 * c

  def res(c):  # two PreAct(3x3, bias)
    return 2 * (bn(c) + conv(c, c, 3, True))

  def preact(ci, co, k, bias):
    return bn(ci) + conv(ci, co, k, bias)

  total = conv(cin, n, 3, False) + 3 * res(n)
  total += preact(n, 2 * n, 2, False) + 3 * res(2 * n)
  total += preact(2 * n, 4 * n, 2, False) + 3 * res(4 * n)
  total += preact(4 * n, 8 * n, 2, False) + 3 * res(8 * n) + conv(8 * n, 4 * n, 2, False)
  total += conv(4 * n, 4 * n, 1, True) + 3 * res(4 * n) + conv(4 * n, 2 * n, 2, False)
  total += conv(2 * n, 2 * n, 1, True) + 3 * res(2 * n) + conv(2 * n, n, 2, False)
  total += conv(n, n, 1, True) + 3 * res(n) + preact(n, cout, 1, True) + bn(cout)
  return total


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("n", [16, 4])
def test_parameter_count_matches_the_layer_list(n):
  shapes = jax.eval_shape(lambda k: R.ResUNet2D(features=n).init(k, jnp.zeros((1, 32, 32, 1))),
                          jax.random.PRNGKey(0))
  assert _count(shapes["params"]) == expected_parameter_count(n)


@pytest.fixture(scope="module")
def small():
  model = R.ResUNet2D(features=2)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 1))))(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 1))
  return model, variables, x


def test_output_shape_and_bad_input(small):
  model, variables, x = small
  out = model.apply(variables, x)
  assert out.shape == (3, 16, 16, 1) and out.dtype == jnp.float32
  with pytest.raises(ValueError, match="divisible by 8"):
    model.apply(variables, jnp.zeros((1, 12, 16, 1)))
  logits, bottleneck = model.apply(variables, x, return_bottleneck=True)
  assert bottleneck.shape == (3, 2, 2, 16)
  chex.assert_trees_all_close(logits, out)


def test_train_mode_updates_batch_statistics(small):
  model, variables, x = small
  _, mutated = model.apply(variables, x + 3.0, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["init_res0"]["PreAct_0"]["BatchNorm_0"]["mean"]
  after = mutated["batch_stats"]["init_res0"]["PreAct_0"]["BatchNorm_0"]["mean"]
  assert not np.allclose(before, after)


@pytest.mark.parametrize("gate", [0.0, 1.0])
def test_twin_network_starts_as_the_source_network(small, gate):
  """Both copies of every block start from the source weights, so at inference either
  gate gives the source network's output."""
  model, variables, x = small
  twin = R.ResUNet2D(features=2, twin=True)
  twin_vars = R.twin_variables(variables)
  gates = jnp.full((3, R.NUM_BLOCKS), gate)
  chex.assert_trees_all_close(twin.apply(twin_vars, x, gates=gates), model.apply(variables, x),
                              rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="needs gates"):
    twin.apply(twin_vars, x)


def test_twin_gate_selects_the_copy_per_sample(small):
  model, variables, x = small
  twin = R.ResUNet2D(features=2, twin=True)
  twin_vars = R.twin_variables(variables)
  # Perturb the tuned copies only: gate 1 (frozen) still reproduces the source network.
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 0.5 if any(getattr(k, "key", None) == "tuned" for k in path) else v,
      twin_vars["params"])
  twin_vars = dict(twin_vars, params=params)
  gates = jnp.array([[1.0] * R.NUM_BLOCKS, [0.0] * R.NUM_BLOCKS, [1.0] * R.NUM_BLOCKS])
  out = twin.apply(twin_vars, x, gates=gates)
  ref = model.apply(variables, x)
  chex.assert_trees_all_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(out[2], ref[2], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out[1], ref[1], atol=1e-3)
  frozen_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                  if R.is_frozen_path(tuple(k.key for k in p))]
  assert len(frozen_paths) == len(jax.tree.leaves(variables["params"]["init_res0"])) * R.NUM_BLOCKS


def test_gumbel_gates_are_hard_with_straight_through_gradients():
  logits = jnp.array([[[0.0, 3.0], [3.0, 0.0], [0.5, 0.4]]])
  hard = R.gumbel_gates(logits, None, 1.0, hard_only=True)
  np.testing.assert_array_equal(hard, [[1.0, 0.0, 0.0]])
  gates = R.gumbel_gates(logits, jax.random.PRNGKey(0), 0.5)
  assert set(np.unique(np.asarray(gates))) <= {0.0, 1.0}
  grad = jax.grad(lambda l: R.gumbel_gates(l, jax.random.PRNGKey(0), 0.5).sum())(logits)
  assert np.abs(np.asarray(grad)).sum() > 0


def test_policy_shapes():
  policy = R.PolicyNet(features=2)
  v = policy.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  assert policy.apply(v, jnp.zeros((5, 16, 16, 1))).shape == (5, R.NUM_BLOCKS, 2)
