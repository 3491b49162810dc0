"""ResNet-50, ViT-B/16 and the CNN-Transformer hybrid (spec wgan_synth_aug §b, Classifiers)."""

from __future__ import annotations

import functools
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from medda_jax.models import resnet
from medda_jax.models.cnn_transformer import CNNTransformer, build_classifier
from medda_jax.models.resnet import ResNet, load_torchvision_resnet, resnet50
from medda_jax.models.vit import VisionTransformer, vit_b16
from conftest import abstract_variables as _shapes, fill_variables as _fill, param_count as _count

# Tiny configurations keep XLA compilation on CPU short; the layout code is the same.
TINY_RESNET = dict(stage_sizes=(1, 1), width=4)
TINY_VIT = dict(image_size=32, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32)
TINY_HYBRID = dict(conv_widths=(4, 8, 8), channels=16, embed_dim=16, depth=1, num_heads=2,
                   mlp_dim=32)
TINY = {"resnet50": TINY_RESNET, "vit_b16": TINY_VIT, "cnn_transformer": TINY_HYBRID}
NAMES = tuple(TINY)


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@functools.lru_cache(maxsize=None)
def _tiny(name: str, seed: int = 0):
  """(model, variables) of the tiny configuration for 1-channel 32x32 inputs."""
  model = build_classifier(name, 2, **TINY[name])
  return model, _fill(_shapes(model, (1, 32, 32, 1)), seed)


X = _images((4, 32, 32, 1), seed=5) * 3.0 + 2.0
LABELS = jnp.array([0, 1, 1, 0])
LR = 1e-2


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> dict:
  """Everything the forward/backward tests check, from ONE compiled program per model.

  XLA compilation dominates on a small CPU, so the eval and train passes, the batch-stat
  updates, the gradient step and the input-handling checks share one `jax.jit`.
  """
  model, v = _tiny(name)

  def apply(variables, x, train, seed=1):
    return model.apply(variables, x, train=train, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(seed, impl="unsafe_rbg")})

  def loss_fn(params, batch_stats, x, labels):
    # Train mode (batch statistics, dropout) with a fixed dropout mask.
    logits, stats = apply({"params": params, **batch_stats}, x, True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, stats)

  # Correctness does not depend on LLVM's optimisation level; level 0 compiles ~3x faster.
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
  def probe(v, x, labels):
    out = {}
    params, batch_stats = v["params"], {k: val for k, val in v.items() if k != "params"}
    out["eval"], out["eval_stats"] = apply(v, x, False)
    out["eval_seed2"], _ = apply(v, x, False, seed=2)
    (loss, (out["train_1"], out["train_stats"])), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch_stats, x, labels)
    out["train_2"], _ = apply(v, x, True, seed=2)
    out["loss_before"] = loss
    # A plain gradient-descent step of fixed length LR (normalised by the gradient norm).
    scale = LR / optax.tree.norm(grads)
    stepped = jax.tree.map(lambda p, g: p - scale * g, params, grads)
    out["loss_after"] = loss_fn(stepped, batch_stats, x, labels)[0]
    if name != "cnn_transformer":  # grayscale replicated to 3 channels
      out["eval_rgb"], _ = apply(v, jnp.tile(x, (1, 1, 1, 3)), False)
    if name == "vit_b16":  # 16x16 inputs resized to image_size = 32 inside the model
      small = x[:, ::2, ::2]
      out["eval_small"], _ = apply(v, small, False)
      out["eval_small_resized"], _ = apply(
          v, jax.image.resize(small, (4, 32, 32, 1), "bilinear"), False)
    return out

  return jax.device_get(probe(v, X, LABELS))


class ParameterCountTest(absltest.TestCase):

  def test_resnet50_parameter_count_and_layout(self):
    # torchvision.models.resnet50(): 25,557,032 parameters with its 2048 x 1000 fc
    # (2,049,000); a 2-class fc has 2048 * 2 + 2 = 4,098.
    model = resnet50(num_classes=2)
    v = _shapes(model, (1, 64, 64, 1))
    self.assertEqual(_count(v["params"]), 25_557_032 - 2_049_000 + 4_098)
    self.assertEqual(_count(v["params"]), 23_512_130)
    p = v["params"]
    self.assertEqual(sorted(p), ["bn1", "conv1", "fc", "layer1", "layer2", "layer3", "layer4"])
    self.assertEqual([len(p[f"layer{i}"]) for i in range(1, 5)], [3, 4, 6, 3])
    # Grayscale is replicated to 3 channels, so the stem has ImageNet's input channels.
    self.assertEqual(p["conv1"]["kernel"].shape, (7, 7, 3, 64))
    self.assertNotIn("bias", p["conv1"])
    self.assertEqual(p["layer1"]["0"]["downsample"]["0"]["kernel"].shape, (1, 1, 64, 256))
    self.assertEqual(sorted(p["layer1"]["0"]["downsample"]["1"]), ["bias", "scale"])
    self.assertNotIn("downsample", p["layer1"]["1"])
    self.assertEqual(p["layer4"]["2"]["conv3"]["kernel"].shape, (1, 1, 512, 2048))
    self.assertEqual(p["fc"]["kernel"].shape, (2048, 2))
    self.assertEqual(sorted(v["batch_stats"]["bn1"]), ["mean", "var"])

    # v1.5: a stage's stride sits on its first block's 3x3 conv, not on the 1x1.
    out = jax.eval_shape(
        functools.partial(model.apply, train=False, capture_intermediates=True,
                          mutable=["intermediates"]),
        v, jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32))[1]["intermediates"]
    block = out["layer2"]["0"]
    self.assertEqual(block["conv1"]["__call__"][0].shape, (1, 16, 16, 128))
    self.assertEqual(block["conv2"]["__call__"][0].shape, (1, 8, 8, 128))
    self.assertEqual(block["downsample"]["0"]["__call__"][0].shape, (1, 8, 8, 512))

  def test_vit_b16_parameter_count_and_layout(self):
    # torchvision.models.vit_b_16(): 86,567,656 parameters with its 768 x 1000 head
    # (769,000); a 2-class head has 768 * 2 + 2 = 1,538.
    v = _shapes(vit_b16(num_classes=2), (1, 128, 128, 1))
    self.assertEqual(_count(v["params"]), 86_567_656 - 769_000 + 1_538)
    self.assertEqual(_count(v["params"]), 85_800_194)
    p = v["params"]
    self.assertEqual(sorted(p), ["class_token", "conv_proj", "encoder", "head"])
    self.assertEqual(p["conv_proj"]["kernel"].shape, (16, 16, 3, 768))
    # 128 x 128 inputs are resized to 224 x 224: 14 * 14 patches + the class token.
    self.assertEqual(p["encoder"]["pos_embedding"].shape, (1, 197, 768))
    self.assertLen([k for k in p["encoder"] if k.startswith("encoder_layer_")], 12)
    block = p["encoder"]["encoder_layer_11"]
    self.assertEqual(block["self_attention"]["query"]["kernel"].shape, (768, 12, 64))
    self.assertEqual(block["self_attention"]["out"]["kernel"].shape, (12, 64, 768))
    self.assertEqual(block["mlp"]["linear_1"]["kernel"].shape, (768, 3072))
    self.assertNotIn("batch_stats", v)

  def test_tiny_hybrid_parameter_count(self):
    # TINY_HYBRID on 1-channel 32x32 input: conv widths (4, 8, 8) -> 8x8 maps of C = 16;
    # channel tokens: 16 tokens of 8 * 8 = 64 values -> d = 16.
    v = _shapes(CNNTransformer(num_classes=2, **TINY_HYBRID), (1, 32, 32, 1))
    conv3x3 = lambda cin, cout: 3 * 3 * cin * cout + 2 * cout  # no bias; BN scale + bias
    cnn = (conv3x3(1, 4) + conv3x3(4, 4) + conv3x3(4, 8) + conv3x3(8, 8) + conv3x3(8, 8)
           + (8 * 16 + 16))                                    # Conv1x1(16) with bias
    tokens = (64 * 16 + 16) + 16 + (16 + 1) * 16               # projection, CLS, pos-emb
    block = (2 * 16                                            # ln_1
             + 4 * (16 * 16 + 16)                              # q, k, v, out with biases
             + 2 * 16                                          # ln_2
             + (16 * 32 + 32) + (32 * 16 + 16))                # MLP
    head = 2 * 16 + (16 * 2 + 2)                               # final LN, Dense(2)
    self.assertEqual(_count(v["params"]), cnn + tokens + 1 * block + head)
    self.assertEqual(_count(v["params"]), 5_446)

  def test_hybrid_default_layout_at_128(self):
    # Spec: 128 x 128 -> 32 x 32 maps, C = 1024 channel tokens of 1024 values, d = 256.
    v = _shapes(CNNTransformer(num_classes=2), (1, 128, 128, 1))
    p = v["params"]
    self.assertEqual(p["conv_out"]["kernel"].shape, (1, 1, 256, 1024))
    self.assertEqual(p["token_proj"]["kernel"].shape, (32 * 32, 256))
    self.assertEqual(p["encoder"]["pos_embedding"].shape, (1, 1024 + 1, 256))
    self.assertLen([k for k in p["encoder"] if k.startswith("encoder_layer_")], 4)
    self.assertEqual(p["encoder"]["encoder_layer_0"]["self_attention"]["query"]["kernel"].shape,
                     (256, 8, 32))
    self.assertEqual(p["encoder"]["encoder_layer_0"]["mlp"]["linear_1"]["kernel"].shape,
                     (256, 512))

  def test_token_modes_give_different_token_counts(self):
    shape = (1, 32, 32, 1)  # TINY_HYBRID: 8 x 8 maps of C = 16
    chan = _shapes(CNNTransformer(token_mode="channel", **TINY_HYBRID), shape)["params"]
    spat = _shapes(CNNTransformer(token_mode="spatial", **TINY_HYBRID), shape)["params"]
    self.assertEqual(chan["encoder"]["pos_embedding"].shape, (1, 16 + 1, 16))
    self.assertEqual(chan["token_proj"]["kernel"].shape, (8 * 8, 16))
    self.assertEqual(spat["encoder"]["pos_embedding"].shape, (1, 8 * 8 + 1, 16))
    self.assertEqual(spat["token_proj"]["kernel"].shape, (16, 16))
    with self.assertRaisesRegex(ValueError, "token_mode"):
      _shapes(CNNTransformer(token_mode="patch", **TINY_HYBRID), shape)


class ForwardTest(absltest.TestCase):

  def test_output_shapes_and_dtypes(self):
    for name in NAMES:
      with self.subTest(name):
        logits = _probe(name)["eval"]
        self.assertEqual((logits.shape, logits.dtype), ((4, 2), np.float32))
        chex.assert_tree_all_finite(logits)
        model, v = _tiny(name)
        # 3-channel input (the hybrid has its own stem kernel for it).
        v3 = _shapes(model, (1, 32, 32, 3))
        out = jax.eval_shape(functools.partial(model.apply, train=False), v3,
                             jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32))
        self.assertEqual((out.shape, out.dtype), ((4, 2), jnp.float32))
        # bfloat16 compute: parameters stay float32 and logits come back float32.
        low = build_classifier(name, 3, dtype=jnp.bfloat16, **TINY[name])
        vb = _shapes(low, (1, 32, 32, 1))
        self.assertEqual({x.dtype for x in jax.tree.leaves(vb)}, {jnp.dtype(jnp.float32)})
        out = jax.eval_shape(functools.partial(low.apply, train=False), vb,
                             jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))
        self.assertEqual((out.shape, out.dtype), ((2, 3), jnp.float32))

  def test_grayscale_is_replicated(self):
    for name in ("resnet50", "vit_b16"):
      with self.subTest(name):
        out = _probe(name)
        np.testing.assert_allclose(out["eval"], out["eval_rgb"], rtol=1e-5, atol=1e-5)

  def test_vit_resizes_to_image_size(self):
    out = _probe("vit_b16")  # image_size 32, fed 16x16 images
    np.testing.assert_allclose(out["eval_small"], out["eval_small_resized"], rtol=1e-5,
                               atol=1e-5)
    self.assertFalse(np.allclose(out["eval_small"], out["eval"]))
    # Without resizing, the input must be a multiple of the patch size.
    fixed = VisionTransformer(**{**TINY_VIT, "image_size": None})
    with self.assertRaisesRegex(ValueError, "patch_size"):
      _shapes(fixed, (1, 20, 20, 1))
    self.assertEqual(_shapes(fixed, (1, 16, 16, 1))["params"]["encoder"]["pos_embedding"].shape,
                     (1, 2 * 2 + 1, 16))

  def test_eval_is_deterministic_and_dropout_uses_the_rng(self):
    for name in ("vit_b16", "cnn_transformer"):
      with self.subTest(name):
        out = _probe(name)
        np.testing.assert_array_equal(out["eval"], out["eval_seed2"])
        self.assertFalse(np.allclose(out["eval"], out["train_1"]))
        self.assertFalse(np.allclose(out["train_1"], out["train_2"]))
    # Without dropout the rng does not matter.
    np.testing.assert_array_equal(_probe("resnet50")["train_1"], _probe("resnet50")["train_2"])

  def test_batch_stats_update_only_in_train_mode(self):
    for name in ("resnet50", "cnn_transformer"):
      with self.subTest(name):
        _, v = _tiny(name)
        out = _probe(name)
        old_leaves = jax.tree.leaves(v["batch_stats"])
        new_leaves = jax.tree.leaves(out["train_stats"]["batch_stats"])
        self.assertLen(new_leaves, len(old_leaves))
        for a, b in zip(old_leaves, new_leaves):
          self.assertFalse(np.allclose(a, b))
        chex.assert_trees_all_equal(out["eval_stats"]["batch_stats"],
                                    jax.device_get(v["batch_stats"]))
    self.assertEqual(_probe("vit_b16")["train_stats"], {})

  def test_conv_initialiser_is_he_normal_fan_out(self):
    w = np.asarray(resnet._CONV_INIT(jax.random.key(0), (3, 3, 64, 128), jnp.float32))
    self.assertAlmostEqual(w.std(), np.sqrt(2.0 / (3 * 3 * 128)), delta=0.002)


class GradientStepTest(absltest.TestCase):

  def test_one_step_reduces_the_loss(self):
    for name in NAMES:
      with self.subTest(name):
        out = _probe(name)
        self.assertTrue(np.isfinite(out["loss_before"]))
        self.assertLess(out["loss_after"], out["loss_before"])


def _to_torchvision_state_dict(variables) -> dict[str, np.ndarray]:
  """The inverse of `load_torchvision_resnet`: Flax variables -> torchvision names/layouts.

  params  .../kernel [H, W, I, O] (conv)  -> ....weight [O, I, H, W]
  params  fc/kernel [in, out]             -> fc.weight [out, in]
  params  .../scale (BN)                  -> ....weight
  params  .../bias                        -> ....bias
  batch_stats .../mean, .../var           -> ....running_mean, ....running_var
  plus a `num_batches_tracked` entry per BN, as in a real state_dict.
  """
  state = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
      keys = [p.key for p in path]
      prefix, leaf_name = ".".join(keys[:-1]), keys[-1]
      value = np.asarray(leaf)
      if leaf_name == "kernel" and value.ndim == 4:
        state[prefix + ".weight"] = value.transpose(3, 2, 0, 1)
      elif leaf_name == "kernel":
        state[prefix + ".weight"] = value.T
      elif leaf_name == "scale":
        state[prefix + ".weight"] = value
        state[prefix + ".num_batches_tracked"] = np.array(3, np.int64)
      elif leaf_name == "bias":
        state[prefix + ".bias"] = value
      elif leaf_name == "mean":
        state[prefix + ".running_mean"] = value
      elif leaf_name == "var":
        state[prefix + ".running_var"] = value
      else:
        raise AssertionError(f"unexpected leaf {keys}")
  return state


class TorchvisionLoadingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Two blocks in the second stage: one with and one without a projection shortcut.
    shapes = _shapes(ResNet(stage_sizes=(1, 2), width=4), (1, 32, 32, 1))
    self.fresh = _fill(shapes, seed=0)
    self.src = _fill(shapes, seed=1)  # the "pretrained" weights
    self.state = _to_torchvision_state_dict(self.src)
    self.dir = self.enterContext(tempfile.TemporaryDirectory())

  def _save(self, state, name="weights.npz"):
    path = os.path.join(self.dir, name)
    np.savez(path, **state)
    return path

  def test_state_dict_names_follow_torchvision(self):
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
                "layer2.1.bn3.bias", "fc.weight", "fc.bias"):
      self.assertIn(key, self.state)
    self.assertNotIn("layer2.1.downsample.0.weight", self.state)
    self.assertEqual(self.state["conv1.weight"].shape, (4, 3, 7, 7))
    self.assertEqual(self.state["fc.weight"].shape, (2, 32))

  def test_round_trip_restores_every_leaf(self):
    self.assertFalse(np.allclose(self.fresh["params"]["fc"]["kernel"],
                                 self.src["params"]["fc"]["kernel"]))
    loaded = load_torchvision_resnet(self._save(self.state), self.fresh)
    chex.assert_trees_all_equal_structs(loaded, self.src)
    chex.assert_trees_all_equal(loaded, self.src)

  def test_skip_head_keeps_the_fresh_head(self):
    # An ImageNet-style file with a 1000-class fc loads under a 2-class head.
    state = dict(self.state, **{"fc.weight": np.zeros((1000, 32), np.float32),
                                "fc.bias": np.zeros((1000,), np.float32)})
    loaded = load_torchvision_resnet(self._save(state), self.fresh, skip_head=True)
    chex.assert_trees_all_equal(loaded["params"]["fc"], self.fresh["params"]["fc"])
    chex.assert_trees_all_equal(loaded["params"]["layer2"], self.src["params"]["layer2"])
    chex.assert_trees_all_equal(loaded["batch_stats"], self.src["batch_stats"])
    with self.assertRaisesRegex(ValueError, r"fc\.weight"):
      load_torchvision_resnet(self._save(state), self.fresh)

  def test_missing_key_raises(self):
    state = dict(self.state)
    del state["layer1.0.bn2.running_var"]
    with self.assertRaisesRegex(ValueError, r"missing keys: layer1\.0\.bn2\.running_var"):
      load_torchvision_resnet(self._save(state), self.fresh)

  def test_wrong_shape_and_unexpected_key_raise(self):
    state = dict(self.state)
    state["layer2.0.downsample.0.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    with self.assertRaisesRegex(ValueError, r"shape mismatches: layer2\.0\.downsample\.0\.weight"):
      load_torchvision_resnet(self._save(state), self.fresh)
    state = dict(self.state, **{"layer3.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with self.assertRaisesRegex(ValueError, r"unexpected keys: layer3\.0\.conv1\.weight"):
      load_torchvision_resnet(self._save(state), self.fresh)


class FactoryTest(absltest.TestCase):

  def test_build_classifier(self):
    self.assertIsInstance(build_classifier("resnet50", 2), ResNet)
    self.assertEqual(build_classifier("resnet50", 2).stage_sizes, (3, 4, 6, 3))
    self.assertEqual(build_classifier("resnet50", 3, width=16).width, 16)
    vit = build_classifier("vit_b16", 2, dropout=0.0)
    self.assertIsInstance(vit, VisionTransformer)
    self.assertEqual((vit.width, vit.depth, vit.dropout, vit.image_size), (768, 12, 0.0, 224))
    hybrid = build_classifier("cnn_transformer", 5, token_mode="spatial")
    self.assertIsInstance(hybrid, CNNTransformer)
    self.assertEqual((hybrid.num_classes, hybrid.token_mode, hybrid.channels),
                     (5, "spatial", 1024))
    with self.assertRaisesRegex(ValueError, "unknown classifier 'resnet18'"):
      build_classifier("resnet18", 2)
    with self.assertRaisesRegex(ValueError, "patch_size"):
      build_classifier("resnet50", 2, patch_size=16)


if __name__ == "__main__":
  absltest.main()
