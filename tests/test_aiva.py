"""AIVA's algorithm against plain re-implementations: Hungarian matching, the alignment
loss (both forms), automatic lambda, the frozen decoder, the schedules and the BNS tap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import abstract_variables, fill_variables
from medda_jax.methods.aiva import paper
from medda_jax.models import unet2d_res


def loop_alignment_loss(features, ids, nu, form):
  """The loss written out: per cluster the mean of its target features, compared with nu."""
  total, weight = 0.0, 0.0
  for i in range(len(nu)):
    members = [f for f, c in zip(features, ids) if c == i]
    if not members:
      continue
    mean = np.mean(members, axis=0)
    if form == "paper":
      total += float(np.sum((mean - nu[i]) ** 2))
    else:
      total += len(members) * float(np.mean((mean - nu[i]) ** 2))
      weight += len(members)
  return total if form == "paper" else total / max(weight, 1.0)


def test_hungarian_matching_recovers_a_permutation_of_shifted_centres():
  rng = np.random.default_rng(0)
  k = 7
  source = rng.uniform(-20, 20, size=(k, 2))
  perm = rng.permutation(k)  # target cluster j is source cluster perm[j], shifted
  target = source[perm] + np.array([0.4, -0.3]) + rng.normal(scale=0.05, size=(k, 2))
  np.testing.assert_array_equal(paper.hungarian_matching(source, target), perm)


@pytest.mark.parametrize("form", paper.LOSS_FORMS)
def test_alignment_loss_is_zero_when_cluster_means_match(form):
  rng = np.random.default_rng(1)
  k, d = 4, 6
  nu = rng.normal(size=(k, d)).astype(np.float32)
  ids = np.array([0, 0, 2, 2, 3, 3, -1])  # cluster 1 absent, one slice without an id
  offsets = rng.normal(size=(3, d)).astype(np.float32)
  features = np.stack([nu[0] + offsets[0], nu[0] - offsets[0], nu[2] + offsets[1],
                       nu[2] - offsets[1], nu[3] + offsets[2], nu[3] - offsets[2],
                       rng.normal(size=d) * 100]).astype(np.float32)
  assert float(paper.alignment_loss(features, ids, nu, form)) == pytest.approx(0.0, abs=1e-5)
  shifted = features.copy()
  shifted[:2] += 1.0  # cluster 0's mean moves by 1 in every element
  expected = d if form == "paper" else 2 * 1.0 / 6
  assert float(paper.alignment_loss(shifted, ids, nu, form)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("form", paper.LOSS_FORMS)
def test_alignment_loss_equals_the_plain_loop(form):
  rng = np.random.default_rng(2)
  k, d, b = 5, 9, 12
  nu = rng.normal(size=(k, d)).astype(np.float32)
  features = rng.normal(size=(b, d)).astype(np.float32)
  ids = rng.integers(-1, k - 1, size=b)  # the last cluster never occurs
  got = float(paper.alignment_loss(features, ids, nu, form))
  assert got == pytest.approx(loop_alignment_loss(features, ids, nu, form), rel=1e-5)
  assert got > 0


def test_auto_lambda_makes_the_first_scaled_losses_average_dist_loss_lambda():
  losses = [0.0, 3.0, 5.0, 0.0, 2.0, 7.0, 1.0, 9.0, 4.0, 100.0]
  lam = paper.auto_lambda(losses, 0.9, count=6)
  first_positive = [3.0, 5.0, 2.0, 7.0, 1.0, 9.0]
  assert np.mean([lam * x for x in first_positive]) == pytest.approx(0.9)
  assert paper.auto_lambda([0.0, 0.0], 0.9) == 0.0


@pytest.fixture(scope="module")
def small_unet():
  model = unet2d_res.ResUNet2D(features=2, out_channels=2)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 16, 16, 1)), jnp.float32)
  variables = fill_variables(abstract_variables(model, x.shape))  # no slow eager init
  return model, variables, x


def test_frozen_layers_stay_and_trainable_layers_move_after_a_step(small_unet):
  _, variables, _ = small_unet
  params = variables["params"]
  tx = paper.sgd_nesterov(0.1, 10, params=params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  new = optax.apply_updates(params, updates)
  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat_new = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  trained = frozen = 0
  for path, old in flat_old.items():
    names = tuple(p.key for p in path)
    decoder = names[0].startswith(("up1_", "up2_", "skip", "bottleneck_up")) or (
        names[:2] == ("bottleneck_res2", "PreAct_1"))
    if decoder:
      np.testing.assert_array_equal(flat_new[path], old)
      frozen += 1
    else:
      assert not np.allclose(flat_new[path], old), names
      trained += 1
  assert frozen > 0 and trained > 0


def test_sgd_is_torch_nesterov_with_coupled_weight_decay():
  w = {"w": jnp.array([1.0, -2.0])}
  tx = paper.sgd_nesterov(0.1, 100, momentum=0.9, weight_decay=0.01)
  state = tx.init(w)
  buf = np.zeros(2)
  p = np.array([1.0, -2.0])
  for g in ([0.5, 0.5], [-1.0, 2.0]):
    updates, state = tx.update({"w": jnp.array(g)}, state, w)
    w = optax.apply_updates(w, updates)
    d = np.array(g) + 0.01 * p  # torch.optim.SGD(nesterov=True, weight_decay=0.01)
    buf = 0.9 * buf + d
    p = p - 0.1 * (d + 0.9 * buf)
  np.testing.assert_allclose(w["w"], p, rtol=1e-6)


def test_schedules_piecewise_constant_and_polynomial():
  tx = paper.scale_by_schedule_in_state(1.0, 10, 0.0, (3, 6), 0.1)
  state = tx.init(None)
  seen = []
  for _ in range(8):
    seen.append(float(paper.schedule_value(state)))
    _, state = tx.update({}, state)
  np.testing.assert_allclose(seen, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  poly = paper.scale_by_schedule_in_state(1e-3, 5000, 0.9, (2 ** 30, 2 ** 30), 1.0)
  state = dict(poly.init(None), count=jnp.asarray(1000, jnp.int32))
  assert float(paper.schedule_value(state)) == pytest.approx(1e-3 * (1 - 1000 / 5000) ** 0.9)


def _conv(x, conv):
  y = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + conv["bias"]


def _bn_eval(x, params, stats):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def test_bns_tap_equals_the_layer_recomputed_and_changes_nothing(small_unet):
  model, variables, x = small_unet
  # op by op: the four passes share their (small) compiled primitives
  logits, bns, stats = paper.apply_with_bns(model, variables, x, train=False)
  np.testing.assert_allclose(logits, model.apply(variables, x, train=False), rtol=1e-6)
  # the input of the 3rd bottleneck block, then its first PreAct and the 2nd PreAct's BN
  _, inter = model.apply(variables, x, train=False, mutable=["intermediates"],
                         capture_intermediates=lambda m, name: m.name == "bottleneck_res1")
  h = inter["intermediates"]["bottleneck_res1"]["__call__"][0]
  p = variables["params"]["bottleneck_res2"]
  s = variables["batch_stats"]["bottleneck_res2"]
  y = _conv(jax.nn.relu(_bn_eval(h, p["PreAct_0"]["BatchNorm_0"], s["PreAct_0"]["BatchNorm_0"])),
            p["PreAct_0"]["Conv_0"])
  want = _bn_eval(y, p["PreAct_1"]["BatchNorm_0"], s["PreAct_1"]["BatchNorm_0"])
  assert bns.shape == (3, 2 * 2 * 8 * 2)  # [B, (16/8)^2 x 8 features]
  np.testing.assert_allclose(bns, np.asarray(want).reshape(3, -1), rtol=1e-4, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])
  # train mode: the same logits and running statistics as a plain training forward pass
  logits_t, _, stats_t = paper.apply_with_bns(model, variables, x, train=True)
  plain, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits_t, plain, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), stats_t,
               mutated["batch_stats"])


def test_cluster_period_means_and_matching():
  rng = np.random.default_rng(4)
  k, d, per = 3, 8, 15
  centres = rng.normal(scale=10, size=(k, d))
  source = np.concatenate([c + rng.normal(size=(per, d)) for c in centres]).astype(np.float32)
  target = np.concatenate([c + 0.5 + rng.normal(size=(per, d)) for c in centres[::-1]]
                          ).astype(np.float32)
  clustering = paper.cluster_period(source, target, k, pca_dim=5, seed=0)
  # three well-separated blobs per site: each k-means cluster is one blob
  for ids in (clustering.source_ids, clustering.target_raw_ids):
    assert all(len(set(ids[b * per:(b + 1) * per])) == 1 for b in range(k))
  # target blob b is source blob k-1-b: matched cluster of a target slice = its blob's source
  for b in range(k):
    assert clustering.target_ids[b * per] == clustering.source_ids[(k - 1 - b) * per]
  for i in range(k):
    np.testing.assert_allclose(clustering.nu[i], source[clustering.source_ids == i].mean(0),
                               rtol=1e-5)
  assert clustering.embedding.shape == (2 * k * per, 2)
  with pytest.raises(ValueError, match="need at least"):
    paper.cluster_period(source[:2], target, k)


def test_the_adaptation_stream_carries_no_target_label():
  from medda_jax.config_utils import load_config
  from medda_jax.data.volumes import Volume
  from medda_jax.methods.aiva.experiment import AdaptationBatches, SlicePlan
  rng = np.random.default_rng(5)
  c = load_config("configs/aiva.py:smoke")

  class Unreadable:
    def __getitem__(self, index):
      raise AssertionError("a target label was read")

  def volume(i, labelled):
    image = rng.random((5 + i, 16, 16)).astype(np.float32)
    v = Volume(f"v{i}", "site", image, (image > 0.5).astype(np.uint8), (1.0, 1.0, 1.0))
    if not labelled:
      object.__setattr__(v, "mask", Unreadable())
    return v

  source = SlicePlan.of([volume(i, True) for i in range(2)])
  target = SlicePlan.of([volume(i, False) for i in range(3)])
  stream = AdaptationBatches(source, target, c, seed=0)
  b = stream.batch(3)
  assert b["target_images"].shape == (4, 16, 16, 1) and b["masks"].shape == (4, 16, 16, 1)
  assert not any("mask" in k or "label" in k for k in b if k.startswith("target"))
  for f, v, s in zip(b["target_slices"], b["target_volume_id"], b["target_slice_index"]):
    np.testing.assert_array_equal(b["target_images"][list(b["target_slices"]).index(f), ..., 0],
                                  target.volumes[v].image[s])
  for f, v, s in zip(b["source_slices"], b["source_volume_id"], b["source_slice_index"]):
    assert source.volumes[v].num_slices > s
  np.testing.assert_array_equal(stream.batch(3)["images"], b["images"])  # a function of the step
