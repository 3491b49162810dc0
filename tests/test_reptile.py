"""Reptile's outer update (MetaMedSeg eqs. 1-3 and the §2.9 D4-D7 variants) against NumPy.

Every reference below is written the plain way: explicit loops over tasks in NumPy
(float64), following the formulas of the spec, never the library's own helpers. The
aggregate emits Reptile's pseudo-gradient −Σ_l w_l Δ_l, so an optax optimiser after it
steps toward the tasks.
"""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from medda_jax.optim import reptile, reptile_aggregate, reptile_weights

L = 4
SHAPES = {"kernel": (3, 2, 5), "bias": (7,)}


def _stacked_deltas(seed: int, num_tasks: int = L, scales=None):
  """A dict of two leaves with different shapes, leading task axis; task l scaled by scales[l]."""
  rng = np.random.default_rng(seed)
  if scales is None:
    scales = rng.uniform(0.2, 3.0, size=num_tasks)
  scales = np.asarray(scales, np.float64)
  out = {}
  for name, shape in SHAPES.items():
    x = rng.normal(size=(num_tasks,) + shape)
    out[name] = x * scales.reshape((-1,) + (1,) * len(shape))
  return out


def _to_jax(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _task_vector(deltas, l):
  """All parameters of task l flattened into one float64 vector (leaf order fixed by name)."""
  return np.concatenate([np.asarray(deltas[k][l], np.float64).ravel() for k in sorted(deltas)])


def _np_distances(deltas, reference: str):
  """d_l = Σ_i (θ_{l,i} − r_{l,i})² with θ_l = θ + Δ_l, written with explicit task loops."""
  num = len(next(iter(deltas.values())))
  vectors = [_task_vector(deltas, l) for l in range(num)]
  d = []
  for l in range(num):
    if reference == "meta_model":
      ref = np.zeros_like(vectors[l])  # θ itself: θ_l − θ = Δ_l
    elif reference == "mean_of_tasks":
      ref = sum(vectors) / num  # itself included
    elif reference == "mean_of_other_tasks":
      others = [vectors[j] for j in range(num) if j != l]
      ref = sum(others) / len(others)
    else:
      raise AssertionError(reference)
    diff = vectors[l] - ref
    total = 0.0
    for v in diff:
      total += v * v
    d.append(total)
  return np.array(d)


def _np_idw_weights(deltas, reference: str, invert: bool, eps: float = 1e-12):
  """Paper eq. (2): w_l ∝ 1/(d_l + ε), normalised; invert=False: w_l ∝ d_l + ε."""
  d = _np_distances(deltas, reference)
  raw = [1.0 / (x + eps) if invert else x + eps for x in d]
  total = sum(raw)
  return np.array([r / total for r in raw])


def _np_weighted_sum(deltas, coefficients):
  out = {}
  for k, v in deltas.items():
    acc = np.zeros(v.shape[1:])
    for l in range(v.shape[0]):
      acc = acc + coefficients[l] * v[l]
    out[k] = acc
  return out


class ReptileWeightsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_aw_weights_are_one_over_l(self):
    deltas = _to_jax(_stacked_deltas(0))
    w = self.variant(lambda d: reptile_weights(d, rule="aw"))(deltas)
    chex.assert_shape(w, (L,))
    chex.assert_type(w, jnp.float32)
    np.testing.assert_allclose(np.asarray(w), np.full(L, 0.25), rtol=0, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_aw_update_is_mean_of_deltas(self):
    deltas_np = _stacked_deltas(1)
    tx = reptile_aggregate(L, rule="aw")
    params = _to_jax(jax.tree.map(lambda x: x[0], deltas_np))
    update, state = self.variant(tx.update)(_to_jax(deltas_np), tx.init(params), params)
    expected = {}
    for k, v in deltas_np.items():
      acc = np.zeros(v.shape[1:])
      for l in range(L):
        acc += v[l]
      expected[k] = -acc / L  # pseudo-gradient: minus the mean delta
    chex.assert_trees_all_close(update, _to_jax(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.weights), np.full(L, 1.0 / L), atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_idw_weights_sum_to_one_and_decrease_with_distance(self):
    # task l has norm ∝ scales[l]: distances strictly increasing with l
    deltas = _to_jax(_stacked_deltas(2, scales=[0.5, 1.0, 2.0, 4.0]))
    d = _np_distances(jax.tree.map(np.asarray, deltas), "meta_model")
    order = np.argsort(d)
    w = np.asarray(self.variant(lambda x: reptile_weights(x, rule="idw"))(deltas))
    self.assertAlmostEqual(float(w.sum()), 1.0, places=6)
    self.assertTrue(np.all(w > 0))
    self.assertTrue(np.all(np.diff(w[order]) < 0), msg=f"w={w} d={d}")

  @chex.variants(with_jit=True, without_jit=True)
  def test_idw_equal_distances_give_aw(self):
    # the same vector with permuted / negated entries per task: equal norms, different deltas
    rng = np.random.default_rng(3)
    base = rng.normal(size=12)
    tasks = [base, -base, base[::-1].copy(), np.roll(base, 5)]
    deltas = {"kernel": np.stack([t[:10].reshape(2, 5) for t in tasks]),
              "bias": np.stack([t[10:] for t in tasks])}
    deltas = _to_jax(deltas)
    for form in ("inverse", "one_minus_normalised"):
      w = self.variant(lambda x, f=form: reptile_weights(x, rule="idw", idw_form=f))(deltas)
      np.testing.assert_allclose(np.asarray(w), np.full(L, 1.0 / L), rtol=1e-5, err_msg=form)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{ref}_invert{inv}", ref, inv)
      for ref, inv in itertools.product(
          ("meta_model", "mean_of_tasks", "mean_of_other_tasks"), (True, False)))
  def test_idw_inverse_matches_numpy_eq2_eq3(self, reference, invert):
    deltas_np = _stacked_deltas(10)
    expected_w = _np_idw_weights(deltas_np, reference, invert)
    expected_update = _np_weighted_sum(deltas_np, expected_w)

    w = self.variant(lambda d: reptile_weights(
        d, rule="idw", idw_reference=reference, invert=invert))(_to_jax(deltas_np))
    np.testing.assert_allclose(np.asarray(w), expected_w, rtol=2e-5, atol=1e-7)

    tx = reptile_aggregate(L, rule="idw", idw_reference=reference, invert=invert)
    params = _to_jax(jax.tree.map(lambda x: x[0], deltas_np))
    update, state = self.variant(tx.update)(_to_jax(deltas_np), tx.init(params), params)
    chex.assert_trees_all_close(update, _to_jax({k: -v for k, v in expected_update.items()}),
                                rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.weights), expected_w, rtol=2e-5, atol=1e-7)
    # the references really differ from each other (otherwise the test above is weak)
    if reference != "meta_model":
      self.assertGreater(np.abs(expected_w - _np_idw_weights(deltas_np, "meta_model",
                                                              invert)).max(), 1e-3)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_minus_normalised_hand_computation(self):
    # one scalar parameter per task: Δ = 1, 2, 3 -> d = 1, 4, 9, Σd = 14.
    # v_l = (d_l + 1e-4)/(14 + 1e-4); 1 − v_l = (14 − d_l)/(14 + 1e-4)
    # -> w = (13, 10, 5)/28 exactly; update = (13·1 + 10·2 + 5·3)/28 = 48/28.
    deltas = {"w": jnp.array([[1.0], [2.0], [3.0]])}
    tx = reptile_aggregate(3, rule="idw", idw_form="one_minus_normalised")
    params = {"w": jnp.zeros((1,))}
    update, state = self.variant(tx.update)(deltas, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(state.weights), [13 / 28, 10 / 28, 5 / 28], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(update["w"]), [-48 / 28], rtol=1e-6)
    # invert=False (reference code config 3): w_l = v_l / Σ v = (d_l + 1e-4)/(14 + 3e-4)
    w = self.variant(lambda d: reptile_weights(
        d, rule="idw", idw_form="one_minus_normalised", invert=False))(deltas)
    np.testing.assert_allclose(np.asarray(w), np.array([1.0001, 4.0001, 9.0001]) / 14.0003,
                               rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_minus_normalised_random_matches_spec_formula(self):
    deltas_np = _stacked_deltas(11)
    d = _np_distances(deltas_np, "meta_model")
    total = sum(d)
    v = [(x + 1e-4) / (total + 1e-4) for x in d]
    raw = [1.0 - x for x in v]
    expected = np.array([r / sum(raw) for r in raw])
    w = self.variant(lambda x: reptile_weights(x, rule="idw", idw_form="one_minus_normalised"))(
        _to_jax(deltas_np))
    np.testing.assert_allclose(np.asarray(w), expected, rtol=2e-5)
    # the spec's approximation (1 − d_l/Σd)/(L − 1): much closer to uniform than 1/d
    np.testing.assert_allclose(np.asarray(w), (1 - d / total) / (L - 1), rtol=1e-3)


class ReptileAggregateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("aw", "idw")
  def test_legacy_sequential_product_matches_code_loop(self, rule):
    deltas_np = _stacked_deltas(20)
    if rule == "aw":
      w = [1.0 / L] * L
    else:
      w = list(_np_idw_weights(deltas_np, "meta_model", True))
    # the released code's loop: update += Δ_l; update *= w_l
    expected = {}
    for k, v in deltas_np.items():
      update = np.zeros(v.shape[1:])
      for l in range(L):
        update = update + v[l]
        update = update * w[l]
      expected[k] = update
    tx = reptile_aggregate(L, rule=rule, legacy_sequential_product=True)
    params = _to_jax(jax.tree.map(lambda x: x[0], deltas_np))
    out, state = self.variant(tx.update)(_to_jax(deltas_np), tx.init(params), params)
    chex.assert_trees_all_close(out, _to_jax({k: -v for k, v in expected.items()}),
                                rtol=2e-5, atol=1e-7)
    # the state logs the weights themselves, not the suffix products
    np.testing.assert_allclose(np.asarray(state.weights), w, rtol=2e-5)
    # and it is not the paper's eq. (3)
    paper = _np_weighted_sum(deltas_np, w)
    self.assertGreater(np.abs(paper["kernel"] - expected["kernel"]).max(), 1e-2)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("aw", dict(rule="aw")),
      ("idw", dict(rule="idw")),
      ("idw_code", dict(rule="idw", idw_form="one_minus_normalised")),
      ("idw_other", dict(rule="idw", idw_reference="mean_of_other_tasks")),
  )
  def test_reptile_chain_applies_theta_plus_beta_weighted_mean(self, kwargs):
    beta = 0.3
    rng = np.random.default_rng(30)
    theta = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    local = {k: theta[k][None] + 0.1 * rng.normal(size=(L,) + s) * np.arange(1, L + 1).reshape(
        (-1,) + (1,) * len(s)) for k, s in SHAPES.items()}
    deltas = {k: local[k] - theta[k][None] for k in SHAPES}
    if kwargs["rule"] == "aw":
      w = np.full(L, 1.0 / L)
    elif kwargs.get("idw_form") == "one_minus_normalised":
      d = _np_distances(deltas, "meta_model")
      raw = 1.0 - (d + 1e-4) / (d.sum() + 1e-4)
      w = raw / raw.sum()
    else:
      w = _np_idw_weights(deltas, kwargs.get("idw_reference", "meta_model"), True)
    expected = {}
    for k in SHAPES:
      acc = theta[k].copy()
      for l in range(L):
        acc = acc + beta * w[l] * (local[k][l] - theta[k])
      expected[k] = acc

    tx = reptile(beta, L, **kwargs)
    theta_j = _to_jax(theta)

    def step(params, stacked_deltas, opt_state):
      updates, opt_state = tx.update(stacked_deltas, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    new_theta, _ = self.variant(step)(theta_j, _to_jax(deltas), tx.init(theta_j))
    chex.assert_trees_all_close(new_theta, _to_jax(expected), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_inject_hyperparams_meta_step_size(self):
    deltas_np = _stacked_deltas(40)
    theta = {k: np.zeros(s) for k, s in SHAPES.items()}
    w = _np_idw_weights(deltas_np, "meta_model", True)
    weighted = _np_weighted_sum(deltas_np, w)

    tx = optax.inject_hyperparams(
        lambda meta_step_size: reptile(meta_step_size, L, rule="idw"))(meta_step_size=0.5)
    theta_j = _to_jax(theta)
    state = tx.init(theta_j)
    update = self.variant(tx.update)
    out, state = update(_to_jax(deltas_np), state, theta_j)
    chex.assert_trees_all_close(out, _to_jax({k: 0.5 * v for k, v in weighted.items()}),
                                rtol=1e-5, atol=1e-6)
    state.hyperparams["meta_step_size"] = jnp.asarray(0.125)
    out, state = update(_to_jax(deltas_np), state, theta_j)
    chex.assert_trees_all_close(out, _to_jax({k: 0.125 * v for k, v in weighted.items()}),
                                rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_meta_step_size_schedule(self):
    # openai-style linear annealing β: 1.0 -> 0 over 4 meta-iterations
    deltas_np = _stacked_deltas(41)
    mean = {k: v.mean(axis=0) for k, v in deltas_np.items()}
    tx = reptile(optax.linear_schedule(1.0, 0.0, 4), L)
    theta_j = _to_jax({k: np.zeros(s) for k, s in SHAPES.items()})
    state = tx.init(theta_j)
    update = self.variant(tx.update)
    for i in range(4):
      beta = 1.0 - i / 4
      out, state = update(_to_jax(deltas_np), state, theta_j)
      chex.assert_trees_all_close(out, _to_jax({k: beta * v for k, v in mean.items()}),
                                  rtol=1e-5, atol=1e-6)

  def test_sgd_momentum_after_it_matches_hand_loop(self):
    # chain(aggregate, sgd(β, momentum)): g = −mean Δ, m_t = g_t + μ m_{t−1}, θ −= β m_t
    beta, decay = 0.1, 0.5
    tx = optax.chain(reptile_aggregate(L, rule="aw"), optax.sgd(beta, momentum=decay))
    theta = {k: np.zeros(s) for k, s in SHAPES.items()}
    theta_j = _to_jax(theta)
    state = tx.init(theta_j)
    momentum = {k: np.zeros(s) for k, s in SHAPES.items()}
    for i in range(3):
      deltas_np = _stacked_deltas(50 + i)
      updates, state = jax.jit(tx.update)(_to_jax(deltas_np), state, theta_j)
      theta_j = optax.apply_updates(theta_j, updates)
      for k in SHAPES:
        mean_delta = sum(deltas_np[k][l] for l in range(L)) / L
        momentum[k] = -mean_delta + decay * momentum[k]
        theta[k] = theta[k] - beta * momentum[k]
    chex.assert_trees_all_close(theta_j, _to_jax(theta), rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(
      ("adam", lambda: optax.adam(0.05)),
      ("sgd_momentum", lambda: optax.sgd(0.2, momentum=0.9)),
      ("reptile_outer_adam", None))
  def test_outer_optimisers_move_toward_the_tasks(self, make_outer):
    """Quadratic tasks ½‖θ − c_l‖²: each task model takes 3 plain gradient steps (lr 0.3)
    from θ; whatever optimiser follows the aggregate must bring θ near the tasks' optima."""
    rng = np.random.default_rng(80)
    centres = rng.normal(size=(L, 5)) + 3.0  # the tasks' optima, far from θ = 0
    if make_outer is None:
      tx = reptile(None, L, outer=optax.adam(0.05))
    else:
      tx = optax.chain(reptile_aggregate(L, rule="aw"), make_outer())
    theta = jnp.zeros(5)
    state = tx.init(theta)

    def distance(t):
      return float(np.mean([np.linalg.norm(np.asarray(t) - c) for c in centres]))

    start = distance(theta)
    update = jax.jit(tx.update)
    for _ in range(60):
      local = np.repeat(np.asarray(theta, np.float64)[None], L, axis=0)
      for _ in range(3):
        local = local - 0.3 * (local - centres)  # ∇½‖θ_l − c_l‖² = θ_l − c_l
      deltas = jnp.asarray(local - np.asarray(theta)[None], jnp.float32)
      updates, state = update(deltas, state, theta)
      theta = optax.apply_updates(theta, updates)
    # the closest any θ gets is the centres' mean
    floor = distance(centres.mean(axis=0))
    self.assertLess(distance(theta), floor + 0.2 * (start - floor),
                    msg=f"start {start:.3f}, end {distance(theta):.3f}, floor {floor:.3f}")

  def test_invalid_names_raise(self):
    for kwargs in (dict(rule="mean"), dict(rule="idw", idw_form="inverse_sqrt"),
                   dict(rule="idw", idw_reference="median"), dict(idw_form="bogus"),
                   dict(idw_reference="bogus")):
      with self.assertRaises(ValueError, msg=str(kwargs)):
        reptile_aggregate(L, **kwargs)
      with self.assertRaises(ValueError, msg=str(kwargs)):
        reptile(0.1, L, **kwargs)
    with self.assertRaises(ValueError):  # β and an outer optimiser: ambiguous
      reptile(0.1, L, outer=optax.adam(1e-3))
    with self.assertRaises(ValueError):
      reptile(None, L)
    deltas = _to_jax(_stacked_deltas(60))
    with self.assertRaises(ValueError):
      reptile_weights(deltas, rule="bogus")
    with self.assertRaises(ValueError):
      reptile_weights(deltas, rule="idw", idw_form="bogus")
    with self.assertRaises(ValueError):
      reptile_weights(deltas, rule="idw", idw_reference="bogus")
    with self.assertRaises(ValueError):
      reptile_weights(_to_jax(_stacked_deltas(61, num_tasks=1)), rule="idw",
                      idw_reference="mean_of_other_tasks")

  def test_wrong_number_of_tasks_is_rejected(self):
    tx = reptile_aggregate(L, rule="aw")
    deltas = _to_jax(_stacked_deltas(70, num_tasks=L + 1))
    params = jax.tree.map(lambda x: x[0], deltas)
    with self.assertRaises(AssertionError):
      tx.update(deltas, tx.init(params), params)


if __name__ == "__main__":
  absltest.main()
