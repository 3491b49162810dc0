"""models/dense.py: the flattening Dense computes what nn.Dense computes, gradients included,
with the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medda_jax.models.dense import Dense


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 3), (2, 7, 3)])
def test_same_parameters_outputs_and_gradients_as_nn_dense(shape):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  ours, plain = Dense(4, name="d"), nn.Dense(4, name="d")
  v = plain.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, v)
  np.testing.assert_allclose(ours.apply(v, x), plain.apply(v, x), rtol=1e-6, atol=1e-6)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
  for got, want in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(v, x)),
                       jax.tree.leaves(jax.grad(loss(plain), argnums=(0, 1))(v, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
