"""MAML meta-gradients against references written without autodiff.

Linear least squares: for L(θ) = ½‖Aθ − b‖², one SGD step is affine: θ ← (I − αAᵀA)θ +
αAᵀb, so the Jacobian of n steps is Π (I − αAᵀA) and the second-order meta-gradient is
Jᵀ ∇L_q(θ') with ∇L_q(θ') = A_qᵀ(A_qθ' − b_q); first order is ∇L_q(θ') alone.

A quadratic loss has a constant Hessian, so a tanh network is checked too: its inner loop
unrolled by hand in NumPy (hand-derived gradients), the meta-gradient by central finite
differences of that, all in float64 (the library in float64 via jax.enable_x64).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from medda_jax.optim import maml, maml_meta_gradient, task_mean

ALPHA = 0.1


def _problem(seed: int, rows: int = 6, dim: int = 4):
  rng = np.random.default_rng(seed)
  a_s = rng.normal(size=(rows, dim)) / np.sqrt(rows)
  b_s = rng.normal(size=rows)
  a_q = rng.normal(size=(rows, dim)) / np.sqrt(rows)
  b_q = rng.normal(size=rows)
  theta = rng.normal(size=dim)
  return theta, (a_s, b_s), (a_q, b_q)


def _vector_loss(theta, batch):
  a, b = batch
  r = a @ theta - b
  return 0.5 * jnp.sum(r * r)


def _np_reference(theta, support, query, alpha, steps):
  """(second-order meta-gradient, first-order meta-gradient, query loss), float64."""
  a_s, b_s = support
  a_q, b_q = query
  n = theta.shape[0]
  m = np.eye(n) - alpha * a_s.T @ a_s
  jac = np.eye(n)
  t = theta.copy()
  for _ in range(steps):
    t = m @ t + alpha * a_s.T @ b_s
    jac = m @ jac
  residual = a_q @ t - b_q
  g_q = a_q.T @ residual
  return jac.T @ g_q, g_q, 0.5 * residual @ residual


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


class MamlVectorTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 3)
  def test_second_and_first_order_match_numpy(self, steps):
    theta, support, query = _problem(steps)
    second, first, q_loss = _np_reference(theta, support, query, ALPHA, steps)

    def run(first_order):
      fn = lambda th, s, q: maml_meta_gradient(
          _vector_loss, th, s, q, inner_tx=optax.sgd(ALPHA), inner_steps=steps,
          first_order=first_order)
      return self.variant(fn)(_f32(theta), _f32(support), _f32(query))

    g2, loss2 = run(False)
    g1, loss1 = run(True)
    np.testing.assert_allclose(np.asarray(g2), second, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g1), first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss2), q_loss, rtol=1e-5)
    np.testing.assert_allclose(float(loss1), q_loss, rtol=1e-5)
    # with α > 0 the Jacobian is not the identity: the two meta-gradients differ
    self.assertGreater(np.abs(second - first).max(), 1e-2)
    self.assertGreater(np.abs(np.asarray(g2) - np.asarray(g1)).max(), 1e-2)

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_inner_lr_gives_plain_gradient(self):
    theta, support, query = _problem(7)
    a_q, b_q = query
    plain = a_q.T @ (a_q @ theta - b_q)
    for first_order in (False, True):
      g, _ = self.variant(lambda th, s, q, fo=first_order: maml_meta_gradient(
          _vector_loss, th, s, q, inner_tx=optax.sgd(0.0), inner_steps=2,
          first_order=fo))(_f32(theta), _f32(support), _f32(query))
      np.testing.assert_allclose(np.asarray(g), plain, rtol=1e-5, atol=1e-6)


def _dict_loss(params, batch):
  x, y = batch
  r = x @ params["w"] + params["b"] - y
  return 0.5 * jnp.sum(r * r)


class MamlDictTest(chex.TestCase):
  """Weight matrix W [d_in, d_out] and bias b [d_out]: each output column is its own
  least-squares problem with design X̃ = [X, 1] and parameters Θ = [W; bᵀ]."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 3)
  def test_dict_params_match_numpy(self, steps):
    rng = np.random.default_rng(100 + steps)
    d_in, d_out, rows = 3, 2, 8
    xs, ys = rng.normal(size=(rows, d_in)) / 2, rng.normal(size=(rows, d_out))
    xq, yq = rng.normal(size=(rows, d_in)) / 2, rng.normal(size=(rows, d_out))
    params = {"w": rng.normal(size=(d_in, d_out)), "b": rng.normal(size=d_out)}

    xs1 = np.concatenate([xs, np.ones((rows, 1))], axis=1)
    xq1 = np.concatenate([xq, np.ones((rows, 1))], axis=1)
    big_theta = np.concatenate([params["w"], params["b"][None]], axis=0)  # [d_in+1, d_out]
    second = np.zeros_like(big_theta)
    first = np.zeros_like(big_theta)
    for k in range(d_out):
      s2, s1, _ = _np_reference(big_theta[:, k], (xs1, ys[:, k]), (xq1, yq[:, k]), ALPHA, steps)
      second[:, k], first[:, k] = s2, s1

    out = {}
    for first_order in (False, True):
      g, _ = self.variant(lambda p, s, q, fo=first_order: maml_meta_gradient(
          _dict_loss, p, s, q, inner_tx=optax.sgd(ALPHA), inner_steps=steps,
          first_order=fo))(_f32(params), _f32((xs, ys)), _f32((xq, yq)))
      out[first_order] = g
    for first_order, ref in ((False, second), (True, first)):
      chex.assert_trees_all_close(
          out[first_order], _f32({"w": ref[:d_in], "b": ref[d_in]}), rtol=1e-4, atol=1e-5)
    self.assertGreater(np.abs(np.asarray(out[False]["w"]) - np.asarray(out[True]["w"])).max(),
                       1e-2)


def _np_mlp_grads(p, x, y):
  """Loss ½Σ(f(x) − y)² of f(x) = tanh(x W1 + b1) w2 + b2 and its gradient, by hand."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  r = h @ p["w2"] + p["b2"] - y
  dh = np.outer(r, p["w2"]) * (1.0 - h * h)
  grads = {"w1": x.T @ dh, "b1": dh.sum(axis=0), "w2": h.T @ r, "b2": r.sum()}
  return 0.5 * float(r @ r), grads


def _np_mlp_outer_loss(p, support, query, alpha, steps):
  for _ in range(steps):
    _, g = _np_mlp_grads(p, *support)
    p = {k: p[k] - alpha * g[k] for k in p}
  return _np_mlp_grads(p, *query)[0], p


def _mlp_loss(p, batch):
  x, y = batch
  r = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y
  return 0.5 * jnp.sum(r * r)


class MamlNonlinearTest(chex.TestCase):

  def _problem(self):
    rng = np.random.default_rng(300)
    d_in, hidden, rows = 3, 4, 6
    params = {"w1": rng.normal(size=(d_in, hidden)), "b1": rng.normal(size=hidden) * 0.5,
              "w2": rng.normal(size=hidden), "b2": np.array(0.3)}
    support = (rng.normal(size=(rows, d_in)), rng.normal(size=rows))
    query = (rng.normal(size=(rows, d_in)), rng.normal(size=rows))
    return params, support, query

  def test_second_order_matches_finite_differences_float64(self):
    alpha, steps, h = 0.2, 3, 1e-5
    params, support, query = self._problem()
    # central differences of the hand-unrolled outer loss, one coordinate at a time
    reference = {}
    for name, value in params.items():
      grad = np.zeros(np.shape(value))
      for index in np.ndindex(np.shape(value)):
        plus = {k: np.array(v, np.float64, copy=True) for k, v in params.items()}
        minus = {k: np.array(v, np.float64, copy=True) for k, v in params.items()}
        plus[name][index] += h
        minus[name][index] -= h
        grad[index] = (_np_mlp_outer_loss(plus, support, query, alpha, steps)[0]
                       - _np_mlp_outer_loss(minus, support, query, alpha, steps)[0]) / (2 * h)
      reference[name] = grad
    q_loss, adapted = _np_mlp_outer_loss(params, support, query, alpha, steps)
    first_order = _np_mlp_grads(adapted, *query)[1]  # ∇L_q at θ', by hand

    with jax.enable_x64(True):
      f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
      out = {}
      for fo in (False, True):
        g, loss = jax.jit(lambda p, s, q, fo=fo: maml_meta_gradient(
            _mlp_loss, p, s, q, inner_tx=optax.sgd(alpha), inner_steps=steps,
            first_order=fo))(f64(params), f64(support), f64(query))
        out[fo] = jax.tree.map(np.asarray, g)
        np.testing.assert_allclose(float(loss), q_loss, rtol=1e-10)
    for name in params:
      np.testing.assert_allclose(out[False][name], reference[name], rtol=1e-6, atol=1e-8,
                                 err_msg=name)
      np.testing.assert_allclose(out[True][name], first_order[name], rtol=1e-10, atol=1e-12,
                                 err_msg=name)
    # the second-order terms matter here: the two meta-gradients differ well beyond tolerance
    gap = max(np.abs(reference[k] - first_order[k]).max() for k in params)
    self.assertGreater(gap, 1e-2)


class MamlOuterTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_task_mean(self):
    rng = np.random.default_rng(5)
    stacked = {"w": rng.normal(size=(3, 2, 4)), "b": rng.normal(size=(3, 4))}
    tx = task_mean()
    out, _ = self.variant(tx.update)(_f32(stacked), tx.init(None))
    expected = {k: (v[0] + v[1] + v[2]) / 3 for k, v in stacked.items()}
    chex.assert_trees_all_close(out, _f32(expected), rtol=1e-6, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_maml_outer_sgd_momentum_matches_numpy(self):
    lr, momentum, tasks = 0.05, 0.9, 3
    rng = np.random.default_rng(6)
    theta = {"w": rng.normal(size=(2, 4)), "b": rng.normal(size=4)}
    tx = maml(optax.sgd(lr, momentum=momentum))
    params = _f32(theta)
    state = tx.init(params)
    trace = {k: np.zeros_like(v) for k, v in theta.items()}

    def step(p, g, s):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    step = self.variant(step)
    for _ in range(3):
      grads = {"w": rng.normal(size=(tasks, 2, 4)), "b": rng.normal(size=(tasks, 4))}
      params, state = step(params, _f32(grads), state)
      for k in theta:
        mean = sum(grads[k][t] for t in range(tasks)) / tasks
        trace[k] = mean + momentum * trace[k]
        theta[k] = theta[k] - lr * trace[k]
    chex.assert_trees_all_close(params, _f32(theta), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_full_meta_step_over_tasks(self):
    """vmap of per-task meta-gradients, then maml(sgd): θ − β · mean_t g_t."""
    steps, beta, tasks = 2, 0.5, 3
    problems = [_problem(200 + t) for t in range(tasks)]
    theta = problems[0][0]
    refs = [_np_reference(theta, s, q, ALPHA, steps)[0] for _, s, q in problems]
    expected = theta - beta * sum(refs) / tasks

    supports = _f32(tuple(np.stack([p[1][i] for p in problems]) for i in range(2)))
    queries = _f32(tuple(np.stack([p[2][i] for p in problems]) for i in range(2)))
    tx = maml(optax.sgd(beta))

    def meta_step(th, s, q):
      grads, _ = jax.vmap(lambda si, qi: maml_meta_gradient(
          _vector_loss, th, si, qi, inner_tx=optax.sgd(ALPHA), inner_steps=steps))(s, q)
      updates, _ = tx.update(grads, tx.init(th), th)
      return optax.apply_updates(th, updates)

    out = self.variant(meta_step)(_f32(theta), supports, queries)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
  absltest.main()
