"""The transfer optimizer, OCTL continuation, L2-SP and the freeze mask against plain
NumPy transcriptions of PyTorch's SGD / Adam and of the paper's Table 1."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medda_jax.engine.checkpoint import Checkpointer
from medda_jax.engine.supervised import TrainState, build_train_chunk
from medda_jax.optim import transfer as T


def _params():
  rng = np.random.default_rng(0)
  return {"init_conv": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
          "down1": {"bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


def _grads(k):
  rng = np.random.default_rng(100 + k)
  return {"init_conv": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
          "down1": {"bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _run(tx, params, steps, state=None):
  state = tx.init(params) if state is None else state
  for k in range(steps):
    updates, state = tx.update(_grads(k), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def torch_sgd(params, steps, lr, momentum, nesterov, decay_step, factor, buf=None):
  """torch.optim.SGD(momentum, dampening=0, nesterov) with the step decay, in NumPy."""
  p = _np(params)
  buf = jax.tree.map(np.zeros_like, p) if buf is None else _np(buf)
  for k in range(steps):
    g = _np(_grads(k))
    lr_k = lr * (factor if k >= decay_step else 1.0)
    buf = jax.tree.map(lambda b, gi: momentum * b + gi, buf, g)
    d = jax.tree.map(lambda gi, b: gi + momentum * b, g, buf) if nesterov else buf
    p = jax.tree.map(lambda x, di: x - lr_k * di, p, d)
  return p, buf


def torch_adam(params, steps, lr, b1, b2, eps, decay_step, factor, m=None, v=None, t0=0):
  """torch.optim.Adam with bias correction from step t0 + 1 on, in NumPy."""
  p = _np(params)
  m = jax.tree.map(np.zeros_like, p) if m is None else _np(m)
  v = jax.tree.map(np.zeros_like, p) if v is None else _np(v)
  for k in range(steps):
    g = _np(_grads(k))
    t = t0 + k + 1
    lr_k = lr * (factor if k >= decay_step else 1.0)
    m = jax.tree.map(lambda a, gi: b1 * a + (1 - b1) * gi, m, g)
    v = jax.tree.map(lambda a, gi: b2 * a + (1 - b2) * gi * gi, v, g)
    p = jax.tree.map(lambda x, a, b: x - lr_k * (a / (1 - b1 ** t)) / (np.sqrt(b / (1 - b2 ** t)) + eps),
                     p, m, v)
  return p, m, v


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_matches_torch_semantics_with_step_decay(nesterov):
  tx = T.transfer_optimizer("sgd", learning_rate=0.1, decay_step=3, decay_factor=0.1,
                            momentum=0.9, nesterov=nesterov)
  got, _ = _run(tx, _params(), 6)
  want, _ = torch_sgd(_params(), 6, 0.1, 0.9, nesterov, 3, 0.1)
  chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-6)


def test_adam_matches_torch_semantics_with_step_decay():
  tx = T.transfer_optimizer("adam", learning_rate=0.01, decay_step=2, decay_factor=0.5,
                            b1=0.9, b2=0.999, eps=1e-8)
  got, _ = _run(tx, _params(), 5)
  want, _, _ = torch_adam(_params(), 5, 0.01, 0.9, 0.999, 1e-8, 2, 0.5)
  chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-6)


def test_l2sp_transform_is_the_gradient_of_the_penalty():
  p0 = _params()
  params = jax.tree.map(lambda x: x + 0.5, p0)
  tx = T.l2sp(0.3, p0)
  state = tx.init(params)
  g = _grads(0)
  got, _ = tx.update(g, state, params)
  penalty_grad = jax.grad(lambda p: T.l2sp_penalty(p, p0, 0.3))(params)
  want = jax.tree.map(lambda a, b: a + b, g, penalty_grad)
  chex.assert_trees_all_close(got, want, rtol=1e-6)
  # Written out: 2 * alpha * (theta - theta0) = 2 * 0.3 * 0.5 added to every entry.
  chex.assert_trees_all_close(jax.tree.map(lambda a, b: a - b, got, g),
                              jax.tree.map(lambda x: jnp.full_like(x, 0.3), g), rtol=1e-6)


def test_l2sp_reference_defaults_to_the_initial_parameters():
  params = _params()
  state = T.l2sp(1.0).init(params)
  chex.assert_trees_all_equal(state.reference, params)
  moved = jax.tree.map(lambda x: x + 1.0, params)
  updates, _ = T.l2sp(1.0).update(jax.tree.map(jnp.zeros_like, params), state, moved)
  chex.assert_trees_all_close(updates, jax.tree.map(lambda x: jnp.full_like(x, 2.0), params))


def test_mask_freezes_all_but_the_first_layers():
  params = _params()
  trainable = T.trainable_mask(params, T.first_layers(("init_",)))
  assert trainable == {"init_conv": {"kernel": True}, "down1": {"bias": False}}
  tx = T.transfer_optimizer("adam", learning_rate=0.1, decay_step=100, trainable=trainable)
  got, _ = _run(tx, params, 3)
  chex.assert_trees_all_equal(got["down1"], params["down1"])
  assert not np.allclose(got["init_conv"]["kernel"], params["init_conv"]["kernel"])
  # The trainable part moves exactly as without a mask.
  free, _ = _run(T.transfer_optimizer("adam", learning_rate=0.1, decay_step=100), params, 3)
  chex.assert_trees_all_close(got["init_conv"], free["init_conv"], rtol=1e-6)


def test_octl_adam_continues_the_moments_with_count_100():
  params = _params()
  source_tx = T.transfer_optimizer("adam", learning_rate=0.01, decay_step=100, b1=0.9)
  _, source_state = _run(source_tx, params, 4)
  (src_moments,) = T.moment_states(source_state)
  tx = T.continue_from(T.transfer_optimizer("adam", learning_rate=0.001, decay_step=2, b1=0.99),
                       source_state, adam_count=100)
  state = tx.init(params)
  (moments,) = T.moment_states(state)
  assert int(moments.count) == 100
  chex.assert_trees_all_equal(moments.mu, src_moments.mu)
  chex.assert_trees_all_equal(moments.nu, src_moments.nu)
  got, _ = _run(tx, params, 3, state)
  # Paper Table 1: M, V start from pre-training, bias correction with t + 100, beta1 0.99,
  # and the learning-rate schedule restarts (decay after 2 fine-tuning steps).
  want, _, _ = torch_adam(params, 3, 0.001, 0.99, 0.999, 1e-8, 2, 0.1, m=src_moments.mu,
                          v=src_moments.nu, t0=100)
  chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-7)


def test_octl_sgd_continues_the_nesterov_buffer_with_plain_momentum():
  params = _params()
  source_tx = T.transfer_optimizer("sgd", learning_rate=0.1, decay_step=100, momentum=0.9,
                                   nesterov=True)
  _, source_state = _run(source_tx, params, 3)
  (src_trace,) = T.moment_states(source_state)
  tx = T.continue_from(T.transfer_optimizer("sgd", learning_rate=0.05, decay_step=100,
                                            momentum=0.99, nesterov=False), source_state)
  got, _ = _run(tx, params, 2)
  want, _ = torch_sgd(params, 2, 0.05, 0.99, False, 100, 0.1, buf=src_trace.trace)
  chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-7)


def test_octl_refuses_a_state_of_another_optimizer():
  params = _params()
  _, sgd_state = _run(T.transfer_optimizer("sgd", learning_rate=0.1, decay_step=9), params, 1)
  tx = T.continue_from(T.transfer_optimizer("adam", learning_rate=0.1, decay_step=9), sgd_state)
  with pytest.raises(ValueError, match="same optimizer type"):
    tx.init(params)


def test_octl_restores_exactly_the_saved_moments_from_a_checkpoint(tmp_path):
  """Pre-training state saved with orbax; the optimizer state alone read back by a
  partial restore; continuation starts from exactly those moments with count 100."""
  params = _params()
  tx = T.transfer_optimizer("adam", learning_rate=0.01, decay_step=100)
  _, opt_state = _run(tx, params, 5)
  state = TrainState(params=params, model_state={"mean": jnp.ones(3)}, opt_state=opt_state,
                     rng=jax.random.PRNGKey(1), step=jnp.asarray(5))
  ckpt = Checkpointer(tmp_path / "pretrain")
  ckpt.save(5, state, {"note": "pre-training"})
  ckpt.close()
  reader = Checkpointer(tmp_path / "pretrain")
  restored = reader.restore_field("opt_state", tx.init(params))
  reader.close()
  chex.assert_trees_all_equal(restored, opt_state)
  fine = T.continue_from(T.transfer_optimizer("adam", learning_rate=0.001, decay_step=100,
                                              b1=0.99), restored, adam_count=100)
  init = fine.init(params)
  (m_saved,), (m_init,) = T.moment_states(opt_state), T.moment_states(init)
  chex.assert_trees_all_equal(m_init.mu, m_saved.mu)
  chex.assert_trees_all_equal(m_init.nu, m_saved.nu)
  assert int(m_init.count) == 100 and int(m_saved.count) == 5
  # The fine-tuning schedule restarts: its own count is 0, its rate the new one.
  decay = [s for s in init if isinstance(s, T.StepDecayState)][0]
  assert int(decay.count) == 0 and np.isclose(float(decay.learning_rate), 0.001)
  # And the new beta1 applies.
  inject = [s for s in init if isinstance(s, optax.InjectStatefulHyperparamsState)][0]
  assert np.isclose(float(inject.hyperparams["b1"]), 0.99)


def _np_adam_chunk(params, batches, lr, b1=0.9, b2=0.999, eps=1e-8, l2sp_alpha=0.0,
                   trainable=None, decay_step=1, factor=0.1):
  """Adam over the chunk's batches for pred = x @ K + b[0] + b[1], mean squared error, with
  the gradients written out, L2-SP's 2·alpha·(theta − theta0), the step decay and a freeze
  mask: what each fine-tuning method's optimizer must do, in NumPy."""
  p = _np(params)
  p0 = _np(params)
  m = jax.tree.map(np.zeros_like, p)
  v = jax.tree.map(np.zeros_like, p)
  keep = jax.tree.map(lambda x: 1.0, p) if trainable is None else jax.tree.map(float, trainable)
  for k in range(batches["x"].shape[0]):
    x, y = np.asarray(batches["x"][k], np.float64), np.asarray(batches["y"][k], np.float64)
    residual = x @ p["init_conv"]["kernel"] + p["down1"]["bias"][:2].sum() - y
    grad_bias = np.zeros(4)
    grad_bias[:2] = 2.0 * residual.mean()
    g = {"init_conv": {"kernel": 2.0 * x.T @ residual / residual.size},
         "down1": {"bias": grad_bias}}
    g = jax.tree.map(lambda gi, pi, ri: gi + 2.0 * l2sp_alpha * (pi - ri), g, p, p0)
    t = k + 1
    lr_k = lr * (factor if k >= decay_step else 1.0)
    m = jax.tree.map(lambda a, gi: b1 * a + (1 - b1) * gi, m, g)
    v = jax.tree.map(lambda a, gi: b2 * a + (1 - b2) * gi * gi, v, g)
    p = jax.tree.map(lambda x_, a, b, f: x_ - f * lr_k * (a / (1 - b1 ** t))
                     / (np.sqrt(b / (1 - b2 ** t)) + eps), p, m, v, keep)
  return p


def test_one_compiled_step_serves_every_method():
  """The update code depends only on the optimizer name (and Nesterov): one chunk built with
  the plain optimizer, fed the states made for L2-SP, FTF or OCTL's beta1, gives each
  method's own update (a NumPy transcription), and those differ from the plain one's."""
  params = _params()

  def loss_fn(p, model_state, batch, rng):
    del rng
    pred = batch["x"] @ p["init_conv"]["kernel"] + p["down1"]["bias"][:2].sum()
    return jnp.mean((pred - batch["y"]) ** 2), (model_state, {})

  rng = np.random.default_rng(3)
  batches = {"x": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(2, 5, 2)), jnp.float32)}
  plain = T.transfer_optimizer("adam", learning_rate=0.1, decay_step=1)
  shared = build_train_chunk(loss_fn, plain, "host")
  trainable = T.trainable_mask(params, T.first_layers(("init_",)))
  cases = {"plain": (plain, {}),
           "l2sp": (T.transfer_optimizer("adam", learning_rate=0.1, decay_step=1,
                                         l2sp_alpha=0.7), {"l2sp_alpha": 0.7}),
           "ftf": (T.transfer_optimizer("adam", learning_rate=0.1, decay_step=1,
                                        trainable=trainable), {"trainable": trainable}),
           "beta1": (T.transfer_optimizer("adam", learning_rate=0.05, decay_step=1, b1=0.99),
                     {"lr": 0.05, "b1": 0.99})}
  want = {}
  for name, (tx, settings) in cases.items():
    state = TrainState.create(jax.tree.map(jnp.array, params), tx, rng=jax.random.PRNGKey(0))
    got, _ = shared(state, batches)
    settings = {"lr": 0.1, **settings}
    want[name] = _np_adam_chunk(params, batches, **settings)
    chex.assert_trees_all_close(_np(got.params), want[name], rtol=2e-5, atol=1e-6)
  for name in ("l2sp", "ftf", "beta1"):  # each method's update is not the plain one
    assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(want[name]),
                                                    jax.tree.leaves(want["plain"]))) > 2e-4

