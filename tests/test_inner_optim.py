"""The inner optimiser: torch.optim.Adam(weight_decay=wd) (coupled L2) and torch StepLR,
both written out by hand in NumPy / plain Python."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from medda_jax.optim import coupled_adam, set_learning_rate, step_decay

SHAPES = {"kernel": (3, 4), "bias": (5,)}
TARGET = {k: np.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _grad_np(theta):
  """∇ of Σ ¼(θ − c)⁴ + ½θ²: depends on θ, so coupled and decoupled decay diverge."""
  return {k: (theta[k] - TARGET[k]) ** 3 + theta[k] for k in theta}


def _grad_jax(theta):
  return {k: (theta[k] - jnp.asarray(TARGET[k], jnp.float32)) ** 3 + theta[k] for k in theta}


def _torch_adam_np(theta, lrs, wd, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam with weight_decay, one step per entry of `lrs` (float64)."""
  theta = {k: v.astype(np.float64).copy() for k, v in theta.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  for t, lr in enumerate(lrs, start=1):
    grads = _grad_np(theta)
    for k in theta:
      g = grads[k] + wd * theta[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** t)
      v_hat = v[k] / (1 - b2 ** t)
      theta[k] = theta[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return theta


def _init_theta(seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s) for k, s in SHAPES.items()}


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


class CoupledAdamTest(chex.TestCase):

  def _run(self, tx, theta, lrs, set_lr=True):
    def step(params, opt_state, lr):
      if set_lr:
        opt_state = set_learning_rate(opt_state, lr)
      updates, opt_state = tx.update(_grad_jax(params), opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    step = self.variant(step)
    params = _f32(theta)
    state = tx.init(params)
    for lr in lrs:
      params, state = step(params, state, jnp.asarray(lr, jnp.float32))
    return params, state

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.0, 0.003, 0.5)
  def test_matches_torch_adam_constant_lr(self, wd):
    theta = _init_theta(1)
    lrs = [0.05] * 5
    expected = _torch_adam_np(theta, lrs, wd)
    params, _ = self._run(coupled_adam(0.05, wd), theta, lrs, set_lr=False)
    chex.assert_trees_all_close(params, _f32(expected), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_torch_adam_with_changing_lr(self):
    theta = _init_theta(2)
    wd = 0.2
    lrs = [0.1, 0.1, 0.07, 0.07, 0.049, 0.01]
    expected = _torch_adam_np(theta, lrs, wd)
    params, state = self._run(coupled_adam(0.1, wd), theta, lrs)
    # float32 vs float64: m̂/√v̂ is sensitive where a gradient passes near zero
    chex.assert_trees_all_close(params, _f32(expected), rtol=1e-5, atol=1e-5)
    # a constant lr of 0.1 would have been elsewhere: the set rate was used
    constant = _torch_adam_np(theta, [0.1] * len(lrs), wd)
    self.assertGreater(np.abs(constant["kernel"] - expected["kernel"]).max(), 1e-2)
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 0.01, rtol=1e-6)

  def test_set_learning_rate_leaves_other_state_alone(self):
    tx = coupled_adam(0.1, 0.01)
    params = _f32(_init_theta(3))
    state = tx.init(params)
    _, state = tx.update(_grad_jax(params), state, params)
    new = set_learning_rate(state, 0.02)
    chex.assert_type(new.hyperparams["learning_rate"], jnp.float32)
    np.testing.assert_allclose(float(new.hyperparams["learning_rate"]), 0.02, rtol=1e-7)
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 0.1, rtol=1e-7)
    chex.assert_trees_all_equal(new.inner_state, state.inner_state)

  @parameterized.parameters(0.01, 0.5)
  def test_differs_from_decoupled_adamw(self, wd):
    theta = _init_theta(4)
    lrs = [0.05] * 5
    coupled = _torch_adam_np(theta, lrs, wd)
    tx = optax.adamw(0.05, weight_decay=wd)
    params = _f32(theta)
    state = tx.init(params)
    for _ in lrs:
      updates, state = tx.update(_grad_jax(params), state, params)
      params = optax.apply_updates(params, updates)
    diff = max(np.abs(np.asarray(params[k]) - coupled[k]).max() for k in SHAPES)
    self.assertGreater(diff, 1e-4)
    # and coupled_adam agrees with torch, not with adamw
    tx = coupled_adam(0.05, wd)
    mine = _f32(theta)
    state = tx.init(mine)
    for _ in lrs:
      updates, state = tx.update(_grad_jax(mine), state, mine)
      mine = optax.apply_updates(mine, updates)
    self.assertGreater(max(np.abs(np.asarray(mine[k]) - np.asarray(params[k])).max()
                           for k in SHAPES), 1e-4)

  def test_zero_weight_decay_equals_optax_adam(self):
    theta = _init_theta(5)
    outs = []
    for tx in (coupled_adam(0.03, 0.0), optax.adam(0.03)):
      params = _f32(theta)
      state = tx.init(params)
      for _ in range(4):
        updates, state = tx.update(_grad_jax(params), state, params)
        params = optax.apply_updates(params, updates)
      outs.append(params)
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6, atol=1e-7)


def _torch_steplr(base_lr, gamma, step_size, epochs):
  """torch.optim.lr_scheduler.StepLR stepped once per epoch (its recursive form)."""
  lrs, lr = [], base_lr
  for epoch in range(epochs):
    if epoch > 0 and epoch % step_size == 0:
      lr = lr * gamma
    lrs.append(lr)
  return lrs


class StepDecayTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0.01, 0.7, 2), (0.005, 0.8, 3), (0.1, 0.5, 1))
  def test_matches_torch_steplr(self, base_lr, gamma, every):
    expected = _torch_steplr(base_lr, gamma, every, 10)
    fn = self.variant(lambda e: step_decay(base_lr, e, gamma, every))
    got = [float(fn(jnp.asarray(e))) for e in range(10)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # closed form lr·γ^(epoch // every), with a Python int epoch too
    for e in range(10):
      np.testing.assert_allclose(float(step_decay(base_lr, e, gamma, every)),
                                 base_lr * gamma ** (e // every), rtol=1e-6)

  def test_paper_schedule_values(self):
    # MetaMedSeg fine-tuning: α = 0.005, ×0.7 every other epoch
    got = [float(step_decay(0.005, e, 0.7, 2)) for e in range(6)]
    np.testing.assert_allclose(got, [0.005, 0.005, 0.0035, 0.0035, 0.00245, 0.00245], rtol=1e-6)

  @parameterized.parameters((0.7, 0), (1.0, 2), (0.7, -1))
  def test_constant(self, gamma, every):
    for e in range(5):
      out = step_decay(0.01, e, gamma, every)
      np.testing.assert_allclose(float(out), 0.01, rtol=1e-7)
      self.assertEqual(jnp.asarray(out).dtype, jnp.float32)


if __name__ == "__main__":
  absltest.main()
