"""Swin Transformer (medda_jax/models/swin.py): layout and parameter count, windows, masks,
relative positions and attention against plain references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from scipy.special import erf

from medda_jax.models import swin
from conftest import fill_variables as _fill, param_count as _count


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _params_shapes(model, shape, mask_shape=None, **kw):
  """`model.init(...)["params"]` as shapes only (nothing compiled); with `mask_shape`, for a
  boolean mask of that shape."""
  init = functools.partial(model.init, train=False, **kw)
  args = [jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32)]
  if mask_shape is not None:
    args.append(jax.ShapeDtypeStruct(mask_shape, jnp.bool_))
    init = lambda key, x, mask, init=init: init(key, x, mask=mask)
  return jax.eval_shape(init, *args)["params"]


def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _linear(x, p):
  y = x @ np.asarray(p["kernel"], np.float64)
  return y + np.asarray(p["bias"]) if "bias" in p else y


class ParameterCountTest(absltest.TestCase):

  def test_swin_b_parameter_count_and_layout(self):
    p = _params_shapes(swin.swin_b(num_classes=1000), (1, 224, 224, 3))
    # timm swin_base_patch4_window7_224 / torchvision swin_b: 87,768,224 parameters.
    self.assertEqual(_count(p), 87_768_224)

    # The same number written out layer by layer.
    def block(c, heads, w=7):
      return (2 * c  # norm1
              + c * 3 * c + 3 * c  # attn.qkv
              + (2 * w - 1) ** 2 * heads  # attn.relative_position_bias_table
              + c * c + c  # attn.proj
              + 2 * c  # norm2
              + c * 4 * c + 4 * c  # mlp.fc1
              + 4 * c * c + c)  # mlp.fc2

    def merging(c):
      return 2 * 4 * c + 4 * c * 2 * c  # norm on 4C, reduction 4C -> 2C without bias

    dims, depths, heads = (128, 256, 512, 1024), (2, 2, 18, 2), (4, 8, 16, 32)
    expected = 4 * 4 * 3 * 128 + 128 + 2 * 128  # patch_embed.proj and .norm
    for i in range(4):
      expected += depths[i] * block(dims[i], heads[i])
      if i < 3:
        expected += merging(dims[i])
    expected += 2 * 1024 + 1024 * 1000 + 1000  # norm, head
    self.assertEqual(_count(p), expected)

    # timm's names, and the formula's pieces where they sit.
    self.assertEqual(sorted(p), ["head", "layers_0", "layers_1", "layers_2", "layers_3", "norm",
                                 "patch_embed"])
    self.assertEqual(p["patch_embed"]["proj"]["kernel"].shape, (4, 4, 3, 128))
    self.assertEqual(sorted(p["patch_embed"]["norm"]), ["bias", "scale"])
    for i in range(4):
      layer = p[f"layers_{i}"]
      self.assertEqual({k for k in layer if k.startswith("blocks_")},
                       {f"blocks_{j}" for j in range(depths[i])})
      self.assertEqual("downsample" in layer, i < 3)
      self.assertEqual(_count(layer["blocks_1"]), block(dims[i], heads[i]))
      if i < 3:
        self.assertEqual(_count(layer["downsample"]), merging(dims[i]))
        self.assertNotIn("bias", layer["downsample"]["reduction"])
        self.assertEqual(layer["downsample"]["reduction"]["kernel"].shape,
                         (4 * dims[i], 2 * dims[i]))
    b = p["layers_2"]["blocks_17"]
    self.assertEqual(sorted(b), ["attn", "mlp", "norm1", "norm2"])
    self.assertEqual(sorted(b["attn"]), ["proj", "qkv", "relative_position_bias_table"])
    self.assertEqual(b["attn"]["qkv"]["kernel"].shape, (512, 1536))
    self.assertEqual(b["attn"]["relative_position_bias_table"].shape, (169, 16))
    self.assertEqual(sorted(b["mlp"]), ["fc1", "fc2"])
    self.assertEqual(p["head"]["kernel"].shape, (1024, 1000))
    self.assertNotIn("mask_token", p)


class WindowTest(absltest.TestCase):

  def test_window_partition_matches_loop_and_round_trips(self):
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    ws = 2
    expected = np.stack([x[b, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws]
                         for b in range(2) for r in range(4 // ws) for c in range(6 // ws)])
    windows = swin.window_partition(jnp.asarray(x), ws)
    np.testing.assert_array_equal(windows, expected)
    np.testing.assert_array_equal(swin.window_reverse(windows, ws, 4, 6), x)

  def test_shifted_window_mask_matches_region_labels(self):
    for h, w, ws, shift in ((8, 8, 4, 2), (8, 4, 2, 1)):
      # Region of each token of the rolled grid: rows (and columns) [0, h - ws),
      # [h - ws, h - shift) and [h - shift, h).
      def region(i, n):
        return 0 if i < n - ws else (1 if i < n - shift else 2)

      label = np.zeros((h, w), int)
      for r in range(h):
        for c in range(w):
          label[r, c] = 3 * region(r, h) + region(c, w)
      expected = []
      for wr in range(h // ws):
        for wc in range(w // ws):
          tokens = [(wr * ws + a, wc * ws + b) for a in range(ws) for b in range(ws)]
          expected.append([[0.0 if label[t1] == label[t2] else -100.0 for t2 in tokens]
                           for t1 in tokens])
      mask = swin.shifted_window_mask(h, w, ws, shift)
      np.testing.assert_array_equal(mask, np.asarray(expected, np.float32))
      # Only the windows of the last window row or column straddle the wrap-around.
      self.assertEqual(int((mask != 0).any(axis=(1, 2)).sum()), h // ws + w // ws - 1)

  def test_relative_position_index_matches_double_loop(self):
    for w in (2, 3, 7):
      index = swin.relative_position_index(w)
      self.assertEqual(index.shape, (w * w, w * w))
      for (i1, j1), (i2, j2) in itertools.product(itertools.product(range(w), repeat=2),
                                                  repeat=2):
        self.assertEqual(index[i1 * w + j1, i2 * w + j2],
                         (i1 - i2 + w - 1) * (2 * w - 1) + (j1 - j2 + w - 1))

  def test_window_rule_and_errors(self):
    # 16 / 4 = 4 tokens = the window: one window, no shift; stage 1 (2 x 2) shrinks it to 2.
    p = _params_shapes(swin.swin_tiny_test(image_size=16), (1, 16, 16, 1))
    self.assertEqual(p["layers_0"]["blocks_1"]["attn"]["relative_position_bias_table"].shape,
                     (49, 1))
    self.assertEqual(p["layers_1"]["blocks_1"]["attn"]["relative_position_bias_table"].shape,
                     (9, 2))
    with self.assertRaisesRegex(ValueError, "does not divide the 6x6 token grid"):
      _params_shapes(swin.swin_tiny_test(image_size=24), (1, 24, 24, 1))
    with self.assertRaisesRegex(ValueError, "not a multiple of patch_size"):
      _params_shapes(swin.swin_tiny_test(image_size=None), (1, 30, 30, 1))
    with self.assertRaisesRegex(ValueError, "even token grid"):
      _params_shapes(swin.swin_tiny_test(image_size=24, window_size=3, depths=(1, 1, 1),
                                         num_heads=(1, 1, 1)), (1, 24, 24, 1))


def _block_reference(p, x, heads, ws, shift):
  """A Swin block on one [H, W, C] image, float64, token by token.

  Token (r, c) attends to the tokens of its cell of the (shifted) window partition, whose
  boundaries sit at shift, shift + ws, ... (plus the image edges): no roll, no mask.
  """
  h, w, c = x.shape
  hd = c // heads
  a = p["attn"]
  table = np.asarray(a["relative_position_bias_table"], np.float64)

  def cell(i):
    return i // ws if shift == 0 else (0 if i < shift else 1 + (i - shift) // ws)

  tokens = [(r, col) for r in range(h) for col in range(w)]
  qkv = _linear(_ln(x, p["norm1"]).reshape(h * w, c), a["qkv"])
  out = np.zeros((h * w, c))
  for i, (r1, c1) in enumerate(tokens):
    for head in range(heads):
      q = qkv[i, head * hd:(head + 1) * hd] * hd ** -0.5
      logits, values = [], []
      for j, (r2, c2) in enumerate(tokens):
        if (cell(r1), cell(c1)) != (cell(r2), cell(c2)):
          continue
        k = qkv[j, c + head * hd:c + (head + 1) * hd]
        bias = table[(r1 - r2 + ws - 1) * (2 * ws - 1) + (c1 - c2 + ws - 1), head]
        logits.append(q @ k + bias)
        values.append(qkv[j, 2 * c + head * hd:2 * c + (head + 1) * hd])
      weights = np.exp(np.array(logits) - max(logits))
      out[i, head * hd:(head + 1) * hd] = weights @ np.array(values) / weights.sum()
  y = x + _linear(out, a["proj"]).reshape(h, w, c)
  hidden = _linear(_ln(y, p["norm2"]), p["mlp"]["fc1"])
  hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))  # exact GELU
  return y + _linear(hidden, p["mlp"]["fc2"])


class BlockTest(absltest.TestCase):

  def test_block_matches_plain_window_attention(self):
    heads, ws = 2, 4
    x = _images((2, 8, 8, 8), seed=1)
    blocks = {shift: swin.SwinTransformerBlock(heads, ws, shift) for shift in (0, 2)}
    params = {}
    for shift, block in blocks.items():
      v = _fill(jax.eval_shape(block.init, jax.random.key(0), x), seed=shift)
      # Relative position biases of order 1, so that a wrong index shows.
      v["params"]["attn"]["relative_position_bias_table"] *= 10.0
      params[shift] = v

    @jax.jit
    def run(params, x):
      return {shift: b.apply(params[shift], x) for shift, b in blocks.items()}

    out = run(params, x)
    for shift in (0, 2):
      for n in range(2):
        expected = _block_reference(params[shift]["params"], np.asarray(x[n], np.float64),
                                    heads, ws, shift)
        np.testing.assert_allclose(out[shift][n], expected, atol=1e-5, rtol=1e-5)
    # The shift matters: the two blocks differ beyond the tolerance on the same parameters.
    same = blocks[2].apply(params[0], x)
    self.assertGreater(float(jnp.abs(same - out[0]).max()), 1e-2)

  def test_patch_merging_matches_plain_concat(self):
    x = _images((1, 4, 6, 3), seed=2)
    merge = swin.PatchMerging()
    v = _fill(jax.eval_shape(merge.init, jax.random.key(0), x), seed=3)
    out = jax.jit(merge.apply)(v, x)
    xs, p = np.asarray(x[0], np.float64), v["params"]
    expected = np.zeros((2, 3, 6))
    for i in range(2):
      for j in range(3):
        cat = np.concatenate([xs[2 * i, 2 * j], xs[2 * i + 1, 2 * j], xs[2 * i, 2 * j + 1],
                              xs[2 * i + 1, 2 * j + 1]])
        expected[i, j] = _linear(_ln(cat, p["norm"]), p["reduction"])
    np.testing.assert_allclose(out[0], expected, atol=1e-5, rtol=1e-5)


class ModelTest(absltest.TestCase):

  def test_mask_token_features_and_head(self):
    model = swin.swin_tiny_test()
    n = 2
    x = _images((n, 32, 32, 1), seed=4)
    grid = (n, 8, 8)
    with_mask = _params_shapes(model, x.shape, grid, return_features=True)
    self.assertEqual(with_mask["mask_token"].shape, (1, 1, 16))
    self.assertNotIn("head", with_mask)
    plain = _params_shapes(model, x.shape)
    self.assertNotIn("mask_token", plain)
    self.assertEqual(plain["head"]["kernel"].shape, (32, 10))
    self.assertEqual(set(with_mask) | {"head"}, set(plain) | {"mask_token"})

    params = _fill(with_mask, seed=5)
    no_token = {k: val for k, val in params.items() if k != "mask_token"}
    # x2 differs from x only inside the patch at (1, 2) (pixels [4:8, 8:12]), which m masks.
    x2 = x.at[:, 4:8, 8:12].add(_images((n, 4, 4, 1), seed=6))
    m = np.zeros(grid, bool)
    m[:, 1, 2] = True
    m[0, 5, 5] = True

    @jax.jit
    def probe(params, no_token, x, x2, m):
      feats = functools.partial(model.apply, return_features=True)
      return {"none": feats({"params": no_token}, x),
              "zeros": feats({"params": params}, x, mask=jnp.zeros(grid, bool)),
              "masked": feats({"params": params}, x, mask=m),
              "masked_float": feats({"params": params}, x, mask=m.astype(jnp.float32)),
              "masked_x2": feats({"params": params}, x2, mask=m),
              "none_x2": feats({"params": no_token}, x2)}

    out = probe(params, no_token, x, x2, m)
    self.assertEqual(out["none"].shape, (n, 4, 4, 32))
    self.assertEqual(out["none"].dtype, jnp.float32)
    np.testing.assert_allclose(out["zeros"], out["none"], atol=1e-6)
    np.testing.assert_allclose(out["masked_float"], out["masked"], atol=1e-6)
    # Masking changes the features ...
    self.assertGreater(float(jnp.abs(out["masked"] - out["none"]).max()), 1e-2)
    # ... and a masked patch's pixels no longer matter, while an unmasked one's do.
    np.testing.assert_allclose(out["masked_x2"], out["masked"], atol=1e-6)
    self.assertGreater(float(jnp.abs(out["none_x2"] - out["none"]).max()), 1e-2)
    with self.assertRaisesRegex(ValueError, "mask shape"):
      model.apply({"params": params}, x, mask=jnp.zeros((n, 4, 4), bool))

  def test_logits_and_train_mode(self):
    model = swin.swin_tiny_test(drop_path_rate=0.5)
    x = _images((4, 16, 16, 1), seed=7)  # resized to 32 x 32 inside the model
    v = _fill(jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x),
              seed=8)

    @jax.jit
    def probe(v, x):
      run = lambda train, seed=0: model.apply(v, x, train=train,
                                              rngs={"dropout": jax.random.key(seed)})
      resized = jax.image.resize(x, (4, 32, 32, 1), "bilinear")
      return {"eval": run(False), "train": run(True), "train_again": run(True),
              "train_seed1": run(True, 1), "resized": model.apply(v, resized),
              "rgb": model.apply(v, jnp.tile(resized, (1, 1, 1, 3)))}

    out = probe(v, x)
    self.assertEqual(out["eval"].shape, (4, 10))
    self.assertEqual(out["eval"].dtype, jnp.float32)
    np.testing.assert_allclose(out["resized"], out["eval"], atol=1e-5)
    np.testing.assert_allclose(out["rgb"], out["eval"], atol=1e-5)
    # Stochastic depth is on in training only, and follows the rng.
    self.assertGreater(float(jnp.abs(out["train"] - out["eval"]).max()), 1e-3)
    np.testing.assert_array_equal(out["train"], out["train_again"])
    self.assertGreater(float(jnp.abs(out["train"] - out["train_seed1"]).max()), 1e-3)


def _keys(t, a=-0.75):
  """Keys' cubic convolution kernel (torch's bicubic uses a = -0.75)."""
  t = abs(t)
  if t <= 1:
    return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
  if t < 2:
    return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
  return 0.0


class InterpolateTest(absltest.TestCase):

  def test_same_window_and_constant_table(self):
    table = _images((9, 3), seed=9)
    self.assertIs(swin.interpolate_relative_position_bias(table, 2, 2), table)
    const = jnp.full((9, 3), 0.7, jnp.float32)
    out = swin.interpolate_relative_position_bias(const, 2, 3)
    self.assertEqual(out.shape, (25, 3))
    np.testing.assert_allclose(out, 0.7, atol=1e-6)

  def test_matches_torch_bicubic_definition(self):
    # torch F.interpolate(mode="bicubic", align_corners=False): output pixel y samples the
    # input at (y + 0.5) * in / out - 0.5 with the four nearest taps (clamped at the border).
    old, new = 3, 9  # windows 2 -> 5
    table = np.asarray(_images((old * old, 2), seed=10), np.float64)
    grid = table.reshape(old, old, 2)

    def taps(y):
      src = (y + 0.5) * old / new - 0.5
      base = int(np.floor(src))
      return [(min(max(k, 0), old - 1), _keys(src - k)) for k in range(base - 1, base + 3)]

    expected = np.zeros((new, new, 2))
    for y in range(new):
      for x in range(new):
        for (i, wy), (j, wx) in itertools.product(taps(y), taps(x)):
          expected[y, x] += wy * wx * grid[i, j]
    out = swin.interpolate_relative_position_bias(jnp.asarray(table, jnp.float32), 2, 5)
    np.testing.assert_allclose(np.asarray(out).reshape(new, new, 2), expected, atol=1e-5)
    # Cubic convolution interpolates: outputs 1, 4, 7 sit on the input samples 0, 1, 2.
    np.testing.assert_allclose(np.asarray(out).reshape(new, new, 2)[1::3, 1::3], grid,
                               atol=1e-5)

  def test_resize_tree(self):
    t3 = _images((9, 2), seed=11)   # window 2
    t5 = _images((25, 4), seed=12)  # window 3
    params = {"layers_0": {"blocks_0": {"attn": {"relative_position_bias_table": t3,
                                                 "qkv": {"kernel": t3}}}},
              "layers_1": {"blocks_0": {"attn": {"relative_position_bias_table": t5}}}}
    out = swin.resize_relative_position_tables(params, 3)
    np.testing.assert_array_equal(
        out["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"],
        swin.interpolate_relative_position_bias(t3, 2, 3))
    self.assertIs(out["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"], t3)
    self.assertIs(out["layers_1"]["blocks_0"]["attn"]["relative_position_bias_table"], t5)


if __name__ == "__main__":
  absltest.main()
