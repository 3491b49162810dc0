"""Stepwise incremental pre-training (methods/dira/paper.py) and the United model
(models/united3d.py) on tiny cubes."""

from __future__ import annotations

import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medda_jax.errors import ConfigError, DataError
from medda_jax.engine.gan import GANState, build_gan_chunk
from medda_jax.methods.dira import paper
from medda_jax.models.united3d import Adversary3D, United

SIDE = 16
TINY = dict(features=4, levels=3)


def _cube(seed=0, side=4):
  return np.random.default_rng(seed).random((side,) * 3, np.float32)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _same(a, b):
  fa, fb = _flat(a), _flat(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _close(a, b):
  return jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda u, v: np.allclose(u, v, atol=1e-6), a, b))


def _init(model, seed):
  x = jnp.zeros((1, SIDE, SIDE, SIDE, 1))
  return flax.core.unfreeze(model.init(jax.random.PRNGKey(seed), x)["params"])


# ------------------------------------------------------------------------------- rotations
def test_rotations_distinct_pure_and_invertible():
  x = _cube()
  outs = [paper.rotate(x, k) for k in range(len(paper.ROTATIONS))]
  assert len(paper.ROTATIONS) == 10
  np.testing.assert_array_equal(outs[0], x)
  assert len({o.tobytes() for o in outs}) == 10
  for k, o in enumerate(outs):
    assert o.shape == x.shape
    np.testing.assert_array_equal(np.sort(o, axis=None), np.sort(x, axis=None))
    np.testing.assert_array_equal(paper.unrotate(o, k), x)
  # a 90-degree turn about axis 0 moves voxel (d, h, w) within its D-slice
  axes, k = paper.ROTATIONS[1]
  assert k == 1 and 0 not in axes
  np.testing.assert_array_equal(outs[1][2], np.rot90(x[2]))


def test_rotation_needs_a_cube():
  with pytest.raises(DataError, match="equal sides"):
    paper.rotate(np.zeros((4, 4, 6)), 1)
  with pytest.raises(DataError, match="outside"):
    paper.rotate(_cube(), 10)


# ------------------------------------------------------------------------------- jigsaw
def _min_hamming(table):
  return min(int(np.sum(a != b)) for a, b in itertools.combinations(table, 2))


def test_permutation_table_deterministic_and_greedy():
  table = paper.permutation_table(30, seed=3)
  assert table.shape == (30, 8) and table.dtype == np.int32
  np.testing.assert_array_equal(table, paper.permutation_table(30, seed=3))
  assert not np.array_equal(table, paper.permutation_table(30, seed=4))
  assert all(sorted(row) == list(range(8)) for row in table)
  assert len({row.tobytes() for row in table}) == 30
  rng = np.random.default_rng(3)
  random_table = np.stack([rng.permutation(8) for _ in range(30)])
  assert _min_hamming(table) >= _min_hamming(random_table)
  # the greedy criterion directly, on 4 elements: each row maximises the minimum distance
  small = paper.permutation_table(6, cubes=4, seed=1)
  every = np.array(list(itertools.permutations(range(4))))
  for i in range(1, len(small)):
    best = max(min(np.sum(p != q) for q in small[:i]) for p in every
               if not any(np.array_equal(p, q) for q in small[:i]))
    assert min(np.sum(small[i] != q) for q in small[:i]) == best


def test_permutation_table_limits():
  with pytest.raises(ConfigError):
    paper.permutation_table(25, cubes=4)
  with pytest.raises(ConfigError):
    paper.permutation_table(0)


def test_jigsaw_moves_sub_cubes_as_a_loop_says():
  x = _cube(1, side=6)
  table = paper.permutation_table(5, seed=0)
  for label in range(5):
    y = paper.jigsaw(x, table, label)
    perm = table[label]
    for p, (i, j, l) in enumerate(itertools.product(range(2), repeat=3)):
      k = perm[p]
      si, sj, sl = k // 4, (k // 2) % 2, k % 2
      np.testing.assert_array_equal(y[3 * i:3 * i + 3, 3 * j:3 * j + 3, 3 * l:3 * l + 3],
                                    x[3 * si:3 * si + 3, 3 * sj:3 * sj + 3, 3 * sl:3 * sl + 3])
    np.testing.assert_array_equal(paper.unjigsaw(y, table, label), x)
  with pytest.raises(DataError, match="even"):
    paper.jigsaw(np.zeros((4, 4, 5)), table, 0)


def test_rubik_moves_then_turns_sub_cubes_as_a_loop_says():
  x = _cube(3, side=6)
  table = paper.permutation_table(5, seed=1)
  rng = np.random.default_rng(0)
  for order in range(5):
    turns = rng.integers(4, size=8)
    y = paper.rubik(x, table, order, turns)
    for p, (i, j, l) in enumerate(itertools.product(range(2), repeat=3)):
      k = table[order][p]
      si, sj, sl = k // 4, (k // 2) % 2, k % 2
      part = x[3 * si:3 * si + 3, 3 * sj:3 * sj + 3, 3 * sl:3 * sl + 3]
      want = np.empty_like(part)  # 180 degrees about an axis: the other two run backwards
      for a, b, c in itertools.product(range(3), repeat=3):
        flip = {0: (a, b, c), 1: (a, 2 - b, 2 - c), 2: (2 - a, b, 2 - c),
                3: (2 - a, 2 - b, c)}[int(turns[p])]
        want[a, b, c] = part[flip]
      np.testing.assert_array_equal(y[3 * i:3 * i + 3, 3 * j:3 * j + 3, 3 * l:3 * l + 3],
                                    want, err_msg=f"order {order} position {p}")
    np.testing.assert_array_equal(paper.unrubik(y, table, order, turns), x)
  assert paper.classes("rubik", 5) == (5,) + (4,) * 8
  with pytest.raises(DataError, match="8 turn labels"):
    paper.rubik(x, table, 0, [0] * 7)


def test_make_sample_and_batch():
  x = _cube(2, side=8)
  table = paper.permutation_table(4, seed=0)
  for task in paper.TASKS:
    s = paper.make_sample(x, task, np.random.default_rng(5), table)
    assert s["image"].shape == s["target"].shape == (8, 8, 8, 1)
    np.testing.assert_array_equal(s["target"][..., 0], x)
    if task in ("deep_clustering", "transvw"):  # Models Genesis input; the label looked up
      from medda_jax.data import models_genesis       # (clusters) or given (visual words)
      want = models_genesis.distort(x, np.random.default_rng(5))
      np.testing.assert_array_equal(s["image"][..., 0], want)
      assert s["label"] == paper.UNASSIGNED
      if task == "transvw":
        given = paper.make_sample(x, task, np.random.default_rng(5), table, label=3)
        np.testing.assert_array_equal(given["image"], s["image"])
        assert given["label"] == 3 and given["label"].dtype == np.int32
        batch = paper.make_batch([x, x], task, 7, [0, 1], labels=[4, 1])
        assert batch["label"].tolist() == [4, 1]
      continue
    undo = {"rotation": paper.unrotate,
            "jigsaw": lambda v, k: paper.unjigsaw(v, table, k),
            "rubik": lambda v, k: paper.unrubik(v, table, k[0], k[1:])}[task]
    np.testing.assert_array_equal(undo(s["image"][..., 0], s["label"]), x)
    assert np.shape(s["label"]) == np.shape(paper.classes(task, 4))
  b1 = paper.make_batch([x, x], "rotation", 7, [0, 1])
  b2 = paper.make_batch([x, x], "rotation", 7, [0, 1])
  assert b1["image"].shape == (2, 8, 8, 8, 1) and b1["label"].shape == (2,)
  np.testing.assert_array_equal(b1["label"], b2["label"])
  with pytest.raises(ConfigError):
    paper.make_sample(x, "jigsaw", np.random.default_rng(0))
  distorted, original = paper.genesis_pair(x, np.random.default_rng(0))
  assert distorted.shape == x.shape and distorted.dtype == np.float32
  np.testing.assert_array_equal(original, x)


# ------------------------------------------------------------------------------- losses
def test_losses_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5)).astype(np.float32)
  labels = np.array([0, 4, 2])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  ce = -np.mean(np.log(p[np.arange(3), labels]))
  np.testing.assert_allclose(paper.discriminative_loss(logits, labels), ce, rtol=1e-5)
  np.testing.assert_allclose(
      paper.discriminative_loss((logits, logits[:, :2]), np.stack([labels, [1, 0, 1]], 1)),
      ce + -np.mean(np.log((np.exp(logits[:, :2]) / np.exp(logits[:, :2]).sum(1, keepdims=True))
                           [np.arange(3), [1, 0, 1]])), rtol=1e-5)
  a, b = rng.random((2, 2, 4, 4, 4, 1))
  sums = [np.sum((a[n] - b[n]) ** 2) for n in range(2)]
  np.testing.assert_allclose(paper.restorative_loss(a, b), np.mean(sums), rtol=1e-5)
  real, fake = rng.normal(size=(2, 4))
  sig = lambda z: 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(paper.adversary_loss(real, fake),
                             -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(fake))),
                             rtol=1e-5)
  np.testing.assert_allclose(paper.generator_adversarial_loss(fake),
                             -np.mean(np.log(sig(fake))), rtol=1e-5)


def test_stage_weights():
  assert paper.stage_loss_weights("D") == paper.LossWeights(1.0, 0.0, 0.0)
  assert paper.stage_loss_weights("DR") == paper.LossWeights(1.0, 1.0, 0.0)
  assert paper.stage_loss_weights("DRA") == paper.LossWeights(1.0, 1.0, 1e-3)
  with pytest.raises(ConfigError):
    paper.stage_loss_weights("R")


# ------------------------------------------------------------------------------- models
def test_united_trees_and_outputs():
  x = jnp.asarray(np.random.default_rng(0).random((2, SIDE, SIDE, SIDE, 1), np.float32))
  d_model = United(**TINY, num_classes=10, restore=False)
  d_params = _init(d_model, 0)
  assert set(d_params) == {"encoder", "head"}
  logits, restored = d_model.apply({"params": d_params}, x)
  assert logits.shape == (2, 10) and restored is None
  dr_model = United(**TINY, num_classes=10, restore=True)
  dr_params = _init(dr_model, 0)
  assert set(dr_params) == {"encoder", "head", "decoder"}
  assert dr_params["encoder"]["level2_conv1"]["kernel"].shape == (3, 3, 3, 16, 16)
  logits, restored = dr_model.apply({"params": dr_params}, x)
  assert logits.shape == (2, 10) and restored.shape == x.shape
  assert float(restored.min()) >= 0.0 and float(restored.max()) <= 1.0
  multi = United(**TINY, num_classes=(4, 3), restore=False)
  heads, _ = multi.apply({"params": _init(multi, 0)}, x)
  assert [h.shape for h in heads] == [(2, 4), (2, 3)]
  adversary = Adversary3D(features=4, levels=3)
  a_params = adversary.init(jax.random.PRNGKey(1), x, x)["params"]
  assert adversary.apply({"params": a_params}, x, restored).shape == (2,)


def test_graft_stage():
  d_model = United(**TINY, restore=False)
  dr_model = United(**TINY, restore=True)
  ckpt_d = _init(d_model, 0)
  fresh_dr = _init(dr_model, 1)
  dr = paper.graft_stage(ckpt_d, fresh_dr)
  assert set(dr) == {"encoder", "head", "decoder"}
  assert _same(dr["encoder"], ckpt_d["encoder"]) and _same(dr["head"], ckpt_d["head"])
  assert _same(dr["decoder"], fresh_dr["decoder"])
  assert not _same(fresh_dr["encoder"], ckpt_d["encoder"])
  ckpt_dr = jax.tree_util.tree_map(lambda v: v + 1.0, dr)  # "trained"
  dra = paper.graft_stage(ckpt_dr, _init(dr_model, 2))
  assert _same(dra, ckpt_dr)
  wider = _init(United(features=8, levels=3, restore=True), 3)
  with pytest.raises(DataError) as info:
    paper.graft_stage(ckpt_d, wider)
  assert "\n" not in str(info.value) and "shape" in str(info.value)
  deeper = _init(United(features=4, levels=2, restore=True), 3)
  with pytest.raises(DataError) as info:
    paper.graft_stage(ckpt_d, deeper)
  assert "\n" not in str(info.value)


def test_stage_loss():
  batch = paper.make_batch([_cube(i, SIDE) for i in range(2)], "rotation", 0, [0, 1])
  dr_model = United(**TINY, restore=True)
  params = _init(dr_model, 0)
  loss, metrics = paper.stage_loss(params, batch, dr_model, "DR", paper.LossWeights(1.0, 0.5))
  np.testing.assert_allclose(loss, metrics["disc_loss"] + 0.5 * metrics["rest_loss"], rtol=1e-6)
  d_model = United(**TINY, restore=False)
  loss, (model_state, metrics) = paper.stage_loss_fn(d_model, "D", paper.stage_loss_weights("D"))(
      _init(d_model, 0), {}, batch, None)
  assert np.isfinite(loss) and model_state == {} and set(metrics) == {"disc_loss", "loss"}
  with pytest.raises(ConfigError):
    paper.stage_loss(params, batch, dr_model, "D", paper.stage_loss_weights("D"))


# ------------------------------------------------------------------------------- DRA
def test_adversarial_stage_on_the_engine_gan_step():
  """critic_loss and generator_loss on engine/gan.py: the adversary's update leaves the
  generator untouched and reads a detached fake; the generator's update leaves the adversary
  untouched and weighs its terms as configured; the adversary learns on a fixed batch."""
  batch = {k: jnp.asarray(v) for k, v in paper.make_batch(
      [_cube(i, SIDE) for i in range(2)], "rotation", 0, [0, 1]).items()}
  model = United(**TINY, restore=True)
  adversary = Adversary3D(features=4, levels=3)
  params = {"g": _init(model, 0),
            "d": adversary.init(jax.random.PRNGKey(1), batch["image"], batch["image"])["params"]}
  weights = paper.stage_loss_weights("DRA", a=0.1)
  critic = paper.critic_loss(model, adversary)
  generator = paper.generator_loss(model, adversary, weights)
  rng = jax.random.PRNGKey(0)

  # the adversary's loss does not reach the generator through the fake pair
  grads = jax.grad(lambda p: critic(p, {}, batch, rng)[0])(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["g"]))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads["d"]))
  _, (_, metrics) = generator(params, {}, batch, rng)
  np.testing.assert_allclose(
      metrics["gen_loss"], metrics["disc_loss"] + metrics["rest_loss"]
      + 0.1 * metrics["gen_adv_loss"], rtol=1e-5)

  tx_g, tx_d = optax.adam(1e-3), optax.adam(1e-3)
  chunk = build_gan_chunk(critic, generator, tx_g, tx_d, inner_loop="host")
  state = GANState.create(params, {"g": {}, "d": {}}, tx_g, tx_d, jax.random.PRNGKey(2))
  stacked = jax.tree.map(lambda v: v[None, None], batch)  # [steps, n_critic, batch, ...]
  after, metrics = chunk(jax.tree.map(jnp.copy, state), stacked)
  assert bool(metrics["finite"])
  # each side moved; the critic's update used the generator's old parameters, so a
  # critic-only update from the same start gives the same adversary
  assert not _same(after.params["g"], state.params["g"])
  critic_only = jax.grad(lambda d: critic({"g": params["g"], "d": d}, {}, batch, rng)[0])(
      params["d"])
  updates, _ = tx_d.update(critic_only, tx_d.init(params["d"]), params["d"])
  assert _close(after.params["d"], optax.apply_updates(params["d"], updates))
  losses = []
  for _ in range(6):
    after, metrics = chunk(after, stacked)
    losses.append(float(np.mean(metrics["d_adv_loss"])))
  assert losses[-1] < losses[0], losses


def test_segmenting_united_gives_the_logits_of_the_restoring_one():
  x = jnp.asarray(_cube(3, SIDE))[None, ..., None]
  restoring, segmenting = United(**TINY, restore=True), United(**TINY, restore=True, segment=True)
  params = _init(restoring, 0)
  _, probability = restoring.apply({"params": params}, x)
  _, logits = segmenting.apply({"params": params}, x)
  np.testing.assert_allclose(jax.nn.sigmoid(logits), probability, rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits, probability)


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_head_pools_the_bottleneck_as_a_loop_says(pool):
  """"mean": each channel's average over space; "flatten": every (voxel, channel) value in
  row-major order; then one linear layer."""
  from medda_jax.models.united3d import DiscriminativeHead
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 3, 2, 4))
  head = DiscriminativeHead(5, pool)
  params = head.init(jax.random.PRNGKey(1), x)["params"]
  got = np.asarray(head.apply({"params": params}, x))
  xs = np.asarray(x)
  kernel, bias = np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])
  for n in range(2):
    if pool == "mean":
      feats = [xs[n, ..., c].mean() for c in range(4)]
    else:
      feats = [xs[n, d, h, w, c] for d in range(2) for h in range(3) for w in range(2)
               for c in range(4)]
    np.testing.assert_allclose(got[n], np.asarray(feats) @ kernel + bias, rtol=1e-5, atol=1e-6)
