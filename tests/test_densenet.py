"""DenseNet-121 in the torchvision layout (spec gradient_transfer §2.5): size, shapes, BN, heads."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from medda_jax.models import densenet
from medda_jax.models.densenet import DenseNet, MultiHeadDenseNet, densenet121
from conftest import abstract_variables as _shapes, fill_variables as _fill, param_count as _count

# A small variant keeps XLA compilation on CPU short; the layout code is the same.
SMALL = dict(block_sizes=(2, 3), growth_rate=8, bn_size=2, init_features=16)
SMALL_FEATURES = (16 + 2 * 8) // 2 + 3 * 8  # stem, block 1, transition (x0.5), block 2


class DenseNetTest(absltest.TestCase):

  def test_densenet121_parameter_count_matches_torchvision(self):
    # torchvision.models.densenet121(): 7,978,856 parameters (conv kernels, BN weight and
    # bias, classifier weight and bias; running statistics are buffers, not parameters).
    v = _shapes(densenet121(num_classes=1000), (1, 32, 32, 3))
    self.assertEqual(_count(v["params"]), 7_978_856)
    feats = v["params"]["features"]
    self.assertEqual(sorted(feats), ["conv0", "denseblock1", "denseblock2", "denseblock3",
                                     "denseblock4", "norm0", "norm5", "transition1",
                                     "transition2", "transition3"])
    self.assertLen(feats["denseblock3"], 24)
    self.assertEqual(feats["denseblock1"]["denselayer1"]["conv1"]["kernel"].shape,
                     (1, 1, 64, 128))
    self.assertEqual(feats["denseblock4"]["denselayer16"]["conv2"]["kernel"].shape,
                     (3, 3, 128, 32))
    self.assertEqual(feats["transition3"]["conv"]["kernel"].shape, (1, 1, 1024, 512))
    self.assertEqual(v["params"]["classifier"]["kernel"].shape, (1024, 1000))
    self.assertEqual(sorted(v), ["batch_stats", "params"])
    # Every BN has running mean and variance, all under "features".
    self.assertEqual(sorted(v["batch_stats"]), ["features"])

  def test_densenet121_forward(self):
    model = densenet121(num_classes=14)
    v = _fill(_shapes(model, (1, 32, 32, 1)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 1)), jnp.float32)
    logits = jax.jit(functools.partial(model.apply, train=False))(v, x)
    chex.assert_shape(logits, (2, 14))
    chex.assert_tree_all_finite(logits)

  def test_small_variant_shapes(self):
    model = DenseNet(num_classes=3, **SMALL)
    v = _fill(_shapes(model, (1, 64, 64, 1)))
    x = jnp.ones((1, 64, 64, 1))
    logits, feats = jax.jit(functools.partial(model.apply, train=False,
                                              return_features=True))(v, x)
    chex.assert_shape(logits, (1, 3))
    chex.assert_shape(feats, (1, SMALL_FEATURES))
    self.assertEqual(logits.dtype, jnp.float32)
    # The head is a plain Dense on the pooled features.
    head = v["params"]["classifier"]
    np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5,
                               atol=1e-5)

  def test_features_only_mode(self):
    backbone = DenseNet(num_classes=0, **SMALL)
    v = _shapes(backbone, (1, 64, 64, 1))
    self.assertEqual(sorted(v["params"]), ["features"])
    out = jax.eval_shape(functools.partial(backbone.apply, train=False), v,
                         jax.ShapeDtypeStruct((2, 64, 64, 1), jnp.float32))
    self.assertEqual(out.shape, (2, SMALL_FEATURES))

  def test_train_updates_batch_stats_and_eval_does_not(self):
    model = DenseNet(num_classes=3, **SMALL)
    v = _fill(_shapes(model, (1, 64, 64, 1)))
    x = jnp.asarray(np.random.default_rng(2).normal(2.0, 3.0, size=(4, 64, 64, 1)),
                    jnp.float32)
    step = jax.jit(functools.partial(model.apply, mutable=["batch_stats"]),
                   static_argnames="train")

    _, new = step(v, x, train=True)
    old_leaves = jax.tree.leaves(v["batch_stats"])
    new_leaves = jax.tree.leaves(new["batch_stats"])
    self.assertLen(new_leaves, len(old_leaves))
    for a, b in zip(old_leaves, new_leaves):
      self.assertFalse(np.allclose(a, b))
    # Running average with momentum 0.9: new = 0.9 * old + 0.1 * batch mean of the stem's
    # BN input, checked on the first BN (its input is the stem conv's output).
    stem = jax.lax.conv_general_dilated(
        x, v["params"]["features"]["conv0"]["kernel"], (2, 2), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(
        new["batch_stats"]["features"]["norm0"]["mean"],
        0.9 * v["batch_stats"]["features"]["norm0"]["mean"] + 0.1 * stem.mean(axis=(0, 1, 2)),
        rtol=1e-4, atol=1e-5)

    out_eval, same = step(v, x, train=False)
    chex.assert_trees_all_equal(same["batch_stats"], v["batch_stats"])
    # Eval mode uses running statistics: a sample's output ignores the rest of the batch
    # (same batch shape, so no second compilation).
    other = step(v, x.at[1:].set(0.0), train=False)[0]
    np.testing.assert_allclose(out_eval[:1], other[:1], rtol=1e-5, atol=1e-5)
    # Train mode normalises with batch statistics, so there it does not.
    out_train = step(v, x, train=True)[0]
    other_train = step(v, x.at[1:].set(0.0), train=True)[0]
    self.assertFalse(np.allclose(out_train[:1], other_train[:1], rtol=1e-3, atol=1e-3))

  def test_heads_share_the_backbone_subtree(self):
    src = DenseNet(num_classes=5, head_name="source_head", **SMALL)
    tgt = DenseNet(num_classes=2, head_name="target_head", **SMALL)
    both = MultiHeadDenseNet(heads=(("source_head", 5), ("target_head", 2)), **SMALL)
    shape = (1, 64, 64, 1)
    vs, vt, vb = _shapes(src, shape), _shapes(tgt, shape), _shapes(both, shape)
    self.assertEqual(sorted(vb["params"]), ["features", "source_head", "target_head"])
    chex.assert_trees_all_equal_shapes_and_dtypes(vs["params"]["features"],
                                                  vb["params"]["features"])
    chex.assert_trees_all_equal_shapes_and_dtypes(vs["batch_stats"], vb["batch_stats"])
    chex.assert_trees_all_equal_shapes_and_dtypes(vt["params"]["target_head"],
                                                  vb["params"]["target_head"])

    # The two-head model built from a pre-trained single-head model plus a new head gives
    # the single-head model's logits on its head.
    v_src = _fill(vs, seed=3)
    v_both = {"params": {**v_src["params"],
                         "target_head": _fill(vb["params"]["target_head"], seed=4)},
              "batch_stats": v_src["batch_stats"]}
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 64, 64, 1)), jnp.float32)
    out = jax.jit(functools.partial(both.apply, train=False))(v_both, x)
    self.assertEqual(sorted(out), ["source_head", "target_head"])
    chex.assert_shape(out["target_head"], (2, 2))
    ref = jax.jit(functools.partial(src.apply, train=False))(v_src, x)
    np.testing.assert_allclose(out["source_head"], ref, rtol=1e-5, atol=1e-5)

  def test_conv_initialiser_is_he_normal(self):
    w = np.asarray(densenet._CONV_INIT(jax.random.key(0), (3, 3, 128, 64), jnp.float32))
    self.assertAlmostEqual(w.std(), np.sqrt(2.0 / (3 * 3 * 128)), delta=0.002)
    # Untruncated, as torch.nn.init.kaiming_normal_: tails beyond 2 std exist.
    self.assertGreater(np.mean(np.abs(w) > 2 * np.sqrt(2.0 / (3 * 3 * 128))), 0.03)


if __name__ == "__main__":
  absltest.main()
