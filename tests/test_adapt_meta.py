"""The inner loop (`engine.adapt`) and one meta-iteration (`engine.meta`) against plain loops.

A tiny U-Net (features 4, two levels, 8x8 images) keeps every compilation short; the
meta-step tests, which compile one program per executor, use its one-level version (the
executors' equivalence does not depend on the network, and the inner loop on the two-level
U-Net is covered by `AdaptTest`). Parameters are drawn in NumPy (kernels N(0, 1) like the
library's init, biases N(0, 0.5)) rather than by `init`, whose threefry draws XLA compiles
slowly on CPU. The biases of a convolution followed by instance norm get an analytically
zero gradient; with a zero bias Adam would turn float rounding noise into ±lr steps, a
non-zero bias makes the coupled weight decay dominate that noise so that two correct
implementations agree.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from medda_jax import losses
from medda_jax.engine.adapt import AdaptConfig, adapt, adapt_chunked, schedule
from medda_jax.engine.meta import MetaState, build_meta_step
from medda_jax.models.unet import UNet
from medda_jax.optim import coupled_adam, maml, reptile, set_learning_rate

S = 8
MODEL = UNet(features=4, levels=2)
APPLY = MODEL.apply
META_MODEL = UNet(features=4, levels=1)
META_APPLY = META_MODEL.apply
CFG = AdaptConfig(learning_rate=0.01, weight_decay=0.003, epochs=2, lr_decay_gamma=0.7,
                  lr_decay_every=1)
TOL = dict(rtol=1e-5, atol=1e-5)


def _params(seed: int = 0, model=MODEL):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, S, S, 1)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    scale = 1.0 if path[-1].key == "kernel" else 0.5
    return jnp.asarray(rng.normal(scale=scale, size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _task(seed: int, k: int):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(k, S, S, 1)).astype(np.float32)
  masks = (images + 0.5 * rng.normal(size=images.shape) > 0.3).astype(np.float32)
  return images, masks


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@functools.lru_cache(maxsize=None)
def _ref_train_step(loss_fn, lr, wd, apply_fn=APPLY):
  """One plain step: grad, coupled Adam update, apply."""
  opt = coupled_adam(lr, wd)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(apply_fn(p, x), y))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates), opt_state

  return opt, step


def reference_adapt(params, images, masks, valid, rng, cfg, loss_fn, apply_fn=APPLY):
  """The inner loop written out: a fresh permutation of the K shots per epoch (one key per
  epoch, split from `rng`), StepLR by epoch, invalid shots skipped."""
  opt, step = _ref_train_step(loss_fn, cfg.learning_rate, cfg.weight_decay, apply_fn)
  opt_state = opt.init(params)
  k = images.shape[0]
  epoch_keys = jax.random.split(rng, cfg.epochs)
  step_losses, visited = [], []
  for epoch in range(cfg.epochs):
    order = [int(i) for i in jax.random.permutation(epoch_keys[epoch], k)]
    if cfg.lr_decay_every > 0:
      lr = cfg.learning_rate * cfg.lr_decay_gamma ** (epoch // cfg.lr_decay_every)
    else:
      lr = cfg.learning_rate
    for shot in order:
      visited.append(shot)
      if not valid[shot]:
        continue
      opt_state = set_learning_rate(opt_state, lr)
      loss, params, opt_state = step(params, opt_state, images[shot][None], masks[shot][None])
      step_losses.append(float(loss))
  return params, float(np.mean(step_losses)), visited, int(opt_state.inner_state[1].count)


@functools.lru_cache(maxsize=None)
def _jit_adapt(loss_fn, cfg, apply_fn=APPLY):
  return jax.jit(functools.partial(adapt, apply_fn=apply_fn, loss_fn=loss_fn, cfg=cfg))


class AdaptTest(chex.TestCase):
  """Every test uses CFG (2 epochs, lr × 0.7 each epoch) and the BCE loss, so that the
  scan over K = 3 and K = 5 shots is compiled once and shared."""

  def test_schedule_is_a_fresh_permutation_per_epoch(self):
    rng = jax.random.key(3)
    shots, epochs = schedule(rng, 5, 3)
    keys = jax.random.split(rng, 3)
    expected = np.concatenate([np.asarray(jax.random.permutation(keys[e], 5)) for e in range(3)])
    np.testing.assert_array_equal(np.asarray(shots), expected)
    np.testing.assert_array_equal(np.asarray(epochs), np.repeat(np.arange(3), 5))
    for e in range(3):
      self.assertEqual(sorted(np.asarray(shots)[5 * e:5 * e + 5].tolist()), list(range(5)))

  def _check_all_valid(self, fn):
    params = _params(1)
    images, masks = _task(1, 3)  # NumPy arrays, as a data pipeline hands them over
    valid = np.ones(3, bool)
    rng = jax.random.key(11)
    ref, ref_loss, _, count = reference_adapt(params, images, masks, valid, rng, CFG,
                                              losses.bce)
    self.assertEqual(count, 6)
    out, loss = fn(params, images, masks, valid, rng)
    chex.assert_trees_all_close(out, ref, **TOL)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    # the adaptation really moved the parameters (by more than the tolerance)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out),
                                                              jax.tree.leaves(params)))
    self.assertGreater(moved, 1e-2)
    # the decayed lr matters: a constant-lr loop lands elsewhere
    flat = AdaptConfig(CFG.learning_rate, CFG.weight_decay, epochs=CFG.epochs)
    other, _, _, _ = reference_adapt(params, images, masks, valid, rng, flat, losses.bce)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(other),
                                                            jax.tree.leaves(ref)))
    self.assertGreater(gap, 1e-3)

  def test_all_valid_equals_plain_loop(self):
    # jitted (compiled once, shared with the tests below)
    self._check_all_valid(_jit_adapt(losses.bce, CFG))

  def test_all_valid_equals_plain_loop_eager_numpy_inputs(self):
    # called outside jit with the NumPy arrays a data pipeline produces
    self._check_all_valid(functools.partial(adapt, apply_fn=APPLY, loss_fn=losses.bce, cfg=CFG))

  @parameterized.named_parameters(("tail", [True, True, True, False, False]),
                                  ("interleaved", [True, False, True, False, True]))
  def test_padded_shots_are_no_ops(self, valid):
    valid = np.array(valid)
    params = _params(2)
    images, masks = _task(2, 5)
    garbage = np.random.default_rng(0).normal(scale=50.0, size=images.shape).astype(np.float32)
    images = np.where(valid[:, None, None, None], images, garbage)
    masks = np.where(valid[:, None, None, None], masks, 1.0 - masks)
    rng = jax.random.key(12)
    ref, ref_loss, _, count = reference_adapt(params, images, masks, valid, rng, CFG,
                                              losses.bce)
    self.assertEqual(count, CFG.epochs * 3)  # Adam counted only the valid steps
    out, loss = _jit_adapt(losses.bce, CFG)(params, images, masks, valid, rng)
    chex.assert_trees_all_close(out, ref, **TOL)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)

  def test_padded_task_equals_unpadded_task_with_same_visit_order(self):
    """3 valid shots padded to K = 5 against the unpadded 3-shot task.

    The orders differ with K, so equal rngs would not give equal runs. Per epoch e, the
    padded order restricted to its valid shots is a sequence s_e of the 3 shots and the
    unpadded order is o_e (slots). Lay the 3-shot task out as slot o_e[i] ← shot s_e[i];
    this is one layout for every epoch iff s_e ∘ o_e⁻¹ is the same map for all e, so
    search the unpadded rng until it is. Then the two library runs must agree.
    """
    params = _params(3)
    images3, masks3 = _task(3, 3)
    valid5 = np.array([True, True, True, False, False])
    pad = np.random.default_rng(1).normal(scale=50.0, size=(2, S, S, 1)).astype(np.float32)
    images5 = np.concatenate([images3, pad])
    masks5 = np.concatenate([masks3, np.ones_like(pad)])
    rng5 = jax.random.key(21)
    shots5 = np.asarray(schedule(rng5, 5, CFG.epochs)[0]).reshape(CFG.epochs, 5)
    seqs = [[int(i) for i in row if valid5[i]] for row in shots5]
    layout = None
    for seed in range(100):
      rng3 = jax.random.key(1000 + seed)
      orders = np.asarray(schedule(rng3, 3, CFG.epochs)[0]).reshape(CFG.epochs, 3)
      maps = [{int(slot): shot for slot, shot in zip(o, s)} for o, s in zip(orders, seqs)]
      if all(m == maps[0] for m in maps) and list(orders[0]) != seqs[0]:
        layout = maps[0]
        break
    self.assertIsNotNone(layout)
    perm_images = np.stack([images5[layout[slot]] for slot in range(3)])
    perm_masks = np.stack([masks5[layout[slot]] for slot in range(3)])
    out5, loss5 = _jit_adapt(losses.bce, CFG)(params, images5, masks5, valid5, rng5)
    out3, loss3 = _jit_adapt(losses.bce, CFG)(params, perm_images, perm_masks, np.ones(3, bool),
                                              rng3)
    chex.assert_trees_all_close(out5, out3, **TOL)
    np.testing.assert_allclose(float(loss5), float(loss3), rtol=1e-5)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(out3),
                                                              jax.tree.leaves(params)))
    self.assertGreater(moved, 1e-3)
    # with the rngs swapped in, the unpadded run differs: the layout mattered
    other, _ = _jit_adapt(losses.bce, CFG)(params, images3, masks3, np.ones(3, bool), rng3)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(other),
                                                            jax.tree.leaves(out5)))
    self.assertGreater(gap, 1e-4)

  def test_chunked_equals_scan(self):
    params = _params(4)
    images, masks = _task(4, 3)
    valid = np.array([True, True, False])
    rng = jax.random.key(13)
    want, want_loss = _jit_adapt(losses.bce, CFG)(params, images, masks, valid, rng)
    for steps_per_call in (1, 2):  # 6 steps = 6 chunks of 1 or 3 chunks of 2
      got, got_loss = adapt_chunked(params, images, masks, valid, rng, apply_fn=APPLY,
                                    loss_fn=losses.bce, cfg=CFG, steps_per_call=steps_per_call)
      chex.assert_trees_all_close(got, want, **TOL)
      np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    with self.assertRaises(ValueError):
      adapt_chunked(params, images, masks, valid, rng, apply_fn=APPLY, loss_fn=losses.bce,
                    cfg=CFG, steps_per_call=4)


# --------------------------------------------------------------------------------------
# One meta-iteration

L, K = 3, 3
BETA = 0.5
MAML_STEPS, MAML_LR = 2, 0.1


def _batch(seed: int = 0):
  images = np.zeros((L, K, S, S, 1), np.float32)
  masks = np.zeros_like(images)
  for t in range(L):
    images[t], masks[t] = _task(100 * seed + t, K)
  valid = np.ones((L, K), bool)
  valid[1, 2] = False
  valid[2, 1:] = False
  return {"images": images, "masks": masks, "valid": valid}


def _meta_step(task_parallelism="vmap", inner_loop="scan", algorithm="reptile", rule="aw",
               huge=False):
  return _cached_meta_step(task_parallelism, inner_loop, algorithm, rule, huge)


@functools.lru_cache(maxsize=None)
def _cached_meta_step(task_parallelism, inner_loop, algorithm, rule, huge):
  if algorithm == "reptile":
    tx = reptile(BETA, L, rule=rule)
  else:
    tx = maml(optax.sgd(BETA))
  if huge:  # overflow to inf in the meta update
    tx = optax.chain(tx, optax.scale(1e30), optax.scale(1e30))
  step = build_meta_step(META_APPLY, losses.bce, CFG, tx, algorithm=algorithm,
                         task_parallelism=task_parallelism, inner_loop=inner_loop,
                         steps_per_call=1, maml_inner_steps=MAML_STEPS,
                         maml_inner_lr=MAML_LR, donate=False)
  return tx, step


def _state(tx, seed=5):
  return MetaState.create(_params(seed, META_MODEL), tx, jax.random.key(seed))


def reference_meta_step(state, batch, rule="aw"):
  """For each task adapt, then θ + β Σ w_l Δ_l (NumPy, float64)."""
  rng, key = jax.random.split(state.rng)
  keys = jax.random.split(key, L)
  theta = _np(state.params)
  deltas, task_losses = [], []
  for t in range(L):
    adapt_fn = _jit_adapt(losses.bce, CFG, META_APPLY)
    adapted, loss = adapt_fn(state.params, batch["images"][t], batch["masks"][t],
                             batch["valid"][t], keys[t])
    deltas.append(jax.tree.map(lambda a, b: a - b, _np(adapted), theta))
    task_losses.append(float(loss))
  if rule == "aw":
    w = [1.0 / L] * L
  else:
    d = [sum(float(np.sum(x ** 2)) for x in jax.tree.leaves(delta)) for delta in deltas]
    raw = [1.0 / (x + 1e-12) for x in d]
    w = [r / sum(raw) for r in raw]
  new = theta
  for t in range(L):
    new = jax.tree.map(lambda n, dt, wt=w[t]: n + BETA * wt * dt, new, deltas[t])
  return new, np.array(task_losses), rng


class MetaStepTest(chex.TestCase):

  def test_all_executors_equal_plain_reference(self):
    batch = _batch()
    tx, _ = _meta_step()
    state = _state(tx)
    want, want_losses, want_rng = reference_meta_step(state, batch)
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(_np(state.params))))
    self.assertGreater(moved, 1e-3)
    for parallelism, inner_loop in (("vmap", "scan"), ("map", "scan"), ("unroll", "scan"),
                                    ("vmap", "host")):
      with self.subTest(parallelism=parallelism, inner_loop=inner_loop):
        _, step = _meta_step(parallelism, inner_loop)
        new_state, metrics = step(_state(tx), batch)
        chex.assert_trees_all_close(_np(new_state.params), want, **TOL)
        np.testing.assert_allclose(np.asarray(metrics["task_losses"]), want_losses, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["loss"]), want_losses.mean(), rtol=1e-5)
        self.assertTrue(bool(metrics["finite"]))
        self.assertEqual(int(new_state.step), 1)
        np.testing.assert_array_equal(jax.random.key_data(new_state.rng),
                                      jax.random.key_data(want_rng))
        self.assertFalse(np.array_equal(jax.random.key_data(new_state.rng),
                                        jax.random.key_data(state.rng)))

  def test_idw_host_path_equals_reference(self):
    batch = _batch(1)
    tx, step = _meta_step("vmap", "host", rule="idw")
    state = _state(tx, seed=6)
    want, _, _ = reference_meta_step(state, batch, rule="idw")
    new_state, _ = step(state, batch)
    chex.assert_trees_all_close(_np(new_state.params), want, **TOL)
    aw, _, _ = reference_meta_step(state, batch, rule="aw")
    gap = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(want),
                                                          jax.tree.leaves(aw)))
    self.assertGreater(gap, 1e-4)  # IDW is not AW on this batch

  def test_step_and_rng_advance_and_are_deterministic(self):
    batch = _batch()
    tx, step = _meta_step()
    s1, _ = step(_state(tx), batch)
    s2, m2 = step(s1, batch)
    self.assertEqual(int(s1.step), 1)
    self.assertEqual(int(s2.step), 2)
    self.assertFalse(np.array_equal(jax.random.key_data(s1.rng), jax.random.key_data(s2.rng)))
    self.assertTrue(bool(m2["finite"]))
    again, _ = step(_state(tx), batch)
    chex.assert_trees_all_equal(again.params, s1.params)

  def test_nan_in_valid_shot_is_reported(self):
    batch = _batch()
    batch["images"][0, 0, 3, 3, 0] = np.nan
    tx, step = _meta_step()
    new_state, metrics = step(_state(tx), batch)
    self.assertFalse(bool(metrics["finite"]))
    self.assertFalse(all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state.params)))

  def test_nan_in_padded_shot_is_ignored(self):
    batch = _batch()
    tx, step = _meta_step()
    clean, _ = step(_state(tx), batch)
    batch["images"][2, 2] = np.nan  # task 2 has only shot 0 valid
    dirty, metrics = step(_state(tx), batch)
    self.assertTrue(bool(metrics["finite"]))
    chex.assert_trees_all_close(dirty.params, clean.params, rtol=0, atol=0)

  def test_overflowing_meta_update_is_reported(self):
    batch = _batch()
    tx, step = _meta_step("vmap", "host", huge=True)
    _, metrics = step(_state(tx), batch)
    self.assertTrue(np.all(np.isfinite(np.asarray(metrics["task_losses"]))))
    self.assertFalse(bool(metrics["finite"]))

  def test_maml_and_fomaml_equal_hand_unrolled_reference(self):
    """θ − β mean_t g_t, g_t from the inner loop unrolled by hand (a Python loop of plain
    SGD steps on the support half, no scan, no optax): differentiated through for MAML,
    the query gradient at the adapted parameters for FOMAML."""
    batch = _batch(2)
    batch["valid"][:] = True
    half = K // 2
    results = {}
    for algorithm in ("fomaml", "maml"):
      tx, step = _meta_step(algorithm=algorithm)
      state = _state(tx)
      theta = state.params

      def loss(p, x, y):
        return losses.bce(META_APPLY(p, x), y)

      @jax.jit  # one compilation serves the three tasks
      def reference_task(p, x, y, second_order=algorithm == "maml"):
        def adapted(p):
          for _ in range(MAML_STEPS):
            grads = jax.grad(loss)(p, x[:half], y[:half])
            p = jax.tree.map(lambda w, g: w - MAML_LR * g, p, grads)
          return p

        if second_order:
          return jax.value_and_grad(lambda p: loss(adapted(p), x[half:], y[half:]))(p)
        return jax.value_and_grad(loss)(adapted(p), x[half:], y[half:])

      meta_grads, task_losses = [], []
      for t in range(L):
        task_loss, g = reference_task(theta, batch["images"][t], batch["masks"][t])
        meta_grads.append(_np(g))
        task_losses.append(float(task_loss))
      want = _np(theta)
      for g in meta_grads:
        want = jax.tree.map(lambda w, gi: w - BETA * gi / L, want, g)

      new_state, metrics = step(state, batch)
      chex.assert_trees_all_close(_np(new_state.params), want, **TOL)
      np.testing.assert_allclose(np.asarray(metrics["task_losses"]), task_losses, rtol=1e-5)
      self.assertTrue(bool(metrics["finite"]), msg=algorithm)
      self.assertEqual(int(new_state.step), 1)
      results[algorithm] = want
    # second order matters on this batch: the two references differ beyond the tolerance
    gap = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(results["maml"]),
                                                          jax.tree.leaves(results["fomaml"])))
    self.assertGreater(gap, 1e-3)

  def test_invalid_arguments(self):
    tx = reptile(BETA, L)
    with self.assertRaises(ValueError):
      build_meta_step(APPLY, losses.bce, CFG, maml(optax.sgd(0.1)), algorithm="maml",
                      inner_loop="host")
    with self.assertRaises(ValueError):
      build_meta_step(APPLY, losses.bce, CFG, tx, algorithm="reptile2")
    with self.assertRaises(ValueError):
      build_meta_step(APPLY, losses.bce, CFG, tx, inner_loop="python")
    with self.assertRaises(ValueError):  # rejected when the step is built
      build_meta_step(META_APPLY, losses.bce, CFG, tx, task_parallelism="pmap", donate=False)


# --------------------------------------------------------------------------------------
# Joint pre-training (the transfer baseline)

class TransferPretrainTest(chex.TestCase):
  """Two source datasets label the same images differently (as the demo's structures, or
  MSD's tumour sub-regions, do): each image holds a bright and a dark square, dataset 0
  marks the bright one, dataset 1 the dark one. One shared output can only learn a
  compromise; one output per dataset learns both."""

  def _train(self, per_dataset: bool):
    from medda_jax.engine.supervised import TrainState, build_train_chunk, supervised_loss
    from medda_jax.methods.metamedseg import experiment
    rng = np.random.default_rng(0)
    steps_per_call, calls = 25, 12
    shape = (calls, steps_per_call, 1, S, S, 1)
    images = (0.1 * rng.normal(size=shape)).astype(np.float32)
    masks = np.zeros(shape, np.float32)
    dataset = rng.integers(0, 2, size=shape[:3]).astype(np.int32)
    for i, j in np.ndindex(calls, steps_per_call):
      # the bright square in one random quadrant, the dark one in another
      bright, dark = rng.choice(4, 2, replace=False)
      for quadrant, value in ((bright, 2.0), (dark, -2.0)):
        r, c = 4 * (quadrant // 2) + rng.integers(0, 2), 4 * (quadrant % 2) + rng.integers(0, 2)
        images[i, j, 0, r:r + 3, c:c + 3, 0] += value
        if (value > 0) == (dataset[i, j, 0] == 0):
          masks[i, j, 0, r:r + 3, c:c + 3, 0] = 1.0
    tx = coupled_adam(0.03, 0.0)
    params = _params(0)
    if per_dataset:
      loss = experiment._per_dataset_head_loss(MODEL.clone(out_channels=2).apply, losses.iou_loss)
      params = experiment.widen_head(params, 2)
    else:
      loss = supervised_loss(APPLY, losses.iou_loss)
    chunk = build_train_chunk(loss, tx, "scan")
    state = TrainState.create(params, tx)
    curve = []
    for i in range(calls):
      state, metrics = chunk(state, {"images": images[i], "masks": masks[i],
                                     "dataset": dataset[i]})
      curve.append(float(metrics["loss"]))
    return curve, state.params

  def test_per_dataset_heads_learn_what_one_shared_head_cannot(self):
    shared, _ = self._train(per_dataset=False)
    heads, wide = self._train(per_dataset=True)
    # per-dataset heads: the loss falls to near zero; the shared head stays well above
    self.assertLess(max(heads[-3:]), 0.1, msg=f"per-dataset heads: {heads}")
    self.assertGreater(min(shared[-3:]), 0.25, msg=f"shared head: {shared}")
    # fine-tuning starts from one output: the mean of the heads, the body unchanged
    from medda_jax.methods.metamedseg import experiment
    narrow = experiment.narrow_head(wide)
    head = wide["params"]["Conv_0"]
    np.testing.assert_allclose(np.asarray(narrow["params"]["Conv_0"]["kernel"])[..., 0],
                               (np.asarray(head["kernel"])[..., 0]
                                + np.asarray(head["kernel"])[..., 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(narrow["params"]["Conv_0"]["bias"]),
                               [(float(head["bias"][0]) + float(head["bias"][1])) / 2],
                               rtol=1e-6)
    chex.assert_trees_all_equal_shapes(narrow, _params(0))
    chex.assert_trees_all_equal(narrow["params"]["DoubleConv_0"], wide["params"]["DoubleConv_0"])


def test_dawoud_loss_adds_the_mean_binary_entropy():
  from medda_jax.methods.metamedseg import experiment
  rng = np.random.default_rng(3)
  logits = rng.normal(scale=3.0, size=(2, 4, 4, 1)).astype(np.float32)
  masks = (rng.random(size=logits.shape) > 0.5).astype(np.float32)
  total = 0.0
  for z in logits.ravel().astype(np.float64):
    p = 1.0 / (1.0 + np.exp(-z))
    total += -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p))
  want = float(losses.bce(logits, masks)) + 0.5 * total / logits.size
  got = experiment._with_entropy_regulariser(losses.bce, 0.5)(jnp.asarray(logits), masks)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
