"""MetaMedSeg's U-Net (§2.2): align_corners up-sampling, instance norm, size and init."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from medda_jax.models.unet import (UNet, align_corners_matrix, instance_norm,
                                   upsample_bilinear_align_corners)


def np_upsample_align_corners(x, out_h, out_w):
  """torch.nn.functional.interpolate(mode="bilinear", align_corners=True), NHWC, double loop."""
  n, h, w, c = x.shape
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    src_y = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = int(math.floor(src_y))
    y1 = min(y0 + 1, h - 1)
    wy = src_y - y0
    for j in range(out_w):
      src_x = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = int(math.floor(src_x))
      x1 = min(x0 + 1, w - 1)
      wx = src_x - x0
      out[:, i, j, :] = ((1 - wy) * (1 - wx) * x[:, y0, x0, :] + (1 - wy) * wx * x[:, y0, x1, :]
                         + wy * (1 - wx) * x[:, y1, x0, :] + wy * wx * x[:, y1, x1, :])
  return out


def _init(model, shape, seed=0):
  """Parameters of the right structure filled from NumPy (kernels N(0, 1), small biases).

  XLA compiles the threefry draws of `model.init` slowly on CPU (tens of seconds for the
  tiny U-Net), so only the tests of the initialisation itself call `init`.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    scale = 1.0 if path[-1].key == "kernel" else 0.1
    return jnp.asarray(rng.normal(scale=scale, size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _conv_params(c_in, c_out, k):
  return k * k * c_in * c_out + c_out


def _double_conv_params(c_in, c_out):
  return _conv_params(c_in, c_out, 3) + _conv_params(c_out, c_out, 3)


class UpsampleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((2, 2), (3, 5), (4, 4), (5, 2), (7, 6), (1, 3))
  def test_matches_torch_align_corners_numpy(self, h, w):
    rng = np.random.default_rng(h * 10 + w)
    x = rng.normal(size=(2, h, w, 3))
    out = self.variant(upsample_bilinear_align_corners)(jnp.asarray(x, jnp.float32))
    chex.assert_shape(out, (2, 2 * h, 2 * w, 3))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), np_upsample_align_corners(x, 2 * h, 2 * w),
                               rtol=1e-5, atol=1e-6)

  def test_factor_three(self):
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 2))
    out = upsample_bilinear_align_corners(jnp.asarray(x, jnp.float32), factor=3)
    np.testing.assert_allclose(np.asarray(out), np_upsample_align_corners(x, 9, 12),
                               rtol=1e-5, atol=1e-6)

  def test_known_torch_values(self):
    # torch: F.interpolate([[1, 2], [3, 4]], scale_factor=2, mode="bilinear", align_corners=True)
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    expected = np.array([[1.0, 4 / 3, 5 / 3, 2.0],
                         [5 / 3, 2.0, 7 / 3, 8 / 3],
                         [7 / 3, 8 / 3, 3.0, 10 / 3],
                         [3.0, 10 / 3, 11 / 3, 4.0]])
    np.testing.assert_allclose(np.asarray(upsample_bilinear_align_corners(x))[0, :, :, 0],
                               expected, rtol=1e-6)

  def test_differs_from_half_pixel_resize(self):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 1)), jnp.float32)
    ours = upsample_bilinear_align_corners(x)
    half_pixel = jax.image.resize(x, (1, 8, 8, 1), "bilinear")
    self.assertGreater(float(jnp.abs(ours - half_pixel).max()), 1e-2)

  def test_bfloat16_keeps_dtype(self):
    x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
    out = upsample_bilinear_align_corners(x)
    chex.assert_type(out, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out, np.float32), 1.0, rtol=1e-2)

  @parameterized.parameters((2, 4), (3, 6), (5, 10), (4, 7), (1, 4), (6, 1))
  def test_matrix_rows_sum_to_one(self, n_in, n_out):
    m = align_corners_matrix(n_in, n_out)
    self.assertEqual(m.shape, (n_out, n_in))
    np.testing.assert_allclose(m.sum(axis=1), np.ones(n_out), rtol=1e-6)
    self.assertTrue(np.all(m >= 0))
    # the corners are aligned: first and last outputs copy the first and last inputs
    self.assertEqual(m[0, 0], 1.0)
    if n_out > 1:
      self.assertEqual(m[-1, -1], 1.0)
    # each row is linear interpolation at i (n_in − 1)/(n_out − 1)
    if n_out > 1 and n_in > 1:
      positions = m @ np.arange(n_in)
      np.testing.assert_allclose(positions, np.arange(n_out) * (n_in - 1) / (n_out - 1),
                                 atol=1e-6)


class InstanceNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_mean_unit_variance_per_sample_channel(self):
    rng = np.random.default_rng(0)
    scales = np.array([0.1, 1.0, 30.0])
    shifts = np.array([-5.0, 0.0, 100.0])
    x = rng.normal(size=(2, 8, 8, 3)) * scales + shifts
    x[1] *= 7.0
    out = np.asarray(self.variant(instance_norm)(jnp.asarray(x, jnp.float32)), np.float64)
    for n in range(2):
      for c in range(3):
        plane = out[n, :, :, c]
        # float32 input: the plane (mean -5, std 0.1) rounds its mean to ~ulp(5) / 0.1 = 5e-6,
        # and the summation order (hence the last digit) differs between CPUs.
        self.assertAlmostEqual(plane.mean(), 0.0, delta=5e-5)
        # biased variance over H, W, shrunk by eps = 1e-5: var/(var + eps)
        v = x[n, :, :, c].var()
        self.assertAlmostEqual(plane.var(), v / (v + 1e-5), places=4)
        self.assertGreater(plane.var(), 0.99)
    # NumPy reference: (x − mean)/sqrt(var + 1e-5) over H, W
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)

  def test_constant_plane_is_zero(self):
    out = instance_norm(jnp.full((1, 4, 4, 2), 3.0))
    np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-6)


class UNetTest(chex.TestCase):

  def test_default_parameter_count(self):
    # enc 1→32, 32→64, mid 64→128; dec [128+64]→64, [64+32]→32; 1x1 32→1
    expected = (_double_conv_params(1, 32) + _double_conv_params(32, 64)
                + _double_conv_params(64, 128) + _double_conv_params(192, 64)
                + _double_conv_params(96, 32) + _conv_params(32, 1, 1))
    self.assertEqual(expected, 470_977)
    variables = jax.eval_shape(UNet().init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    self.assertEqual(set(variables), {"params"})  # no norm statistics, no affine
    self.assertEqual(_count_params(variables), expected)
    leaf_names = {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(variables)}
    self.assertEqual(leaf_names, {"kernel", "bias"})
    self.assertEqual(len(jax.tree.leaves(variables)), 2 * 11)  # 11 convolutions

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shape_and_dtype(self):
    model = UNet(features=4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
    params = _init(model, x.shape)
    out = self.variant(model.apply)(params, x)
    chex.assert_shape(out, (2, 16, 16, 1))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    # small-model count by the same formula
    self.assertEqual(_count_params(params),
                     _double_conv_params(1, 4) + _double_conv_params(4, 8)
                     + _double_conv_params(8, 16) + _double_conv_params(24, 8)
                     + _double_conv_params(12, 4) + _conv_params(4, 1, 1))

  def test_per_sample_independence(self):
    # instance norm: no statistics shared across the batch
    model = UNet(features=4)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 1)), jnp.float32)
    params = _init(model, x.shape, seed=1)
    apply = jax.jit(model.apply)
    together = apply(params, x)
    alone = jnp.concatenate([apply(params, x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(np.asarray(together), np.asarray(alone), rtol=1e-4, atol=1e-4)

  def test_kernels_standard_normal_biases_zero(self):
    # one level at the width of the default bottleneck (same init path as every layer of
    # UNet(); the full default model's init takes too long to compile for a CPU test)
    model = UNet(features=128, levels=1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    kernels = [(path, np.asarray(x)) for path, x in jax.tree_util.tree_leaves_with_path(params)
               if path[-1].key == "kernel"]
    self.assertEqual(len(kernels), 3)
    biggest = max(kernels, key=lambda kv: kv[1].size)[1]
    self.assertEqual(biggest.shape, (3, 3, 128, 128))
    self.assertAlmostEqual(float(biggest.std()), 1.0, delta=0.02)
    self.assertAlmostEqual(float(biggest.mean()), 0.0, delta=0.02)
    for path, k in kernels:
      if k.size >= 1000:  # not He/Glorot: std 1 whatever the fan-in
        self.assertAlmostEqual(float(k.std()), 1.0, delta=0.1, msg=str(path))
    for path, b in jax.tree_util.tree_leaves_with_path(params):
      if path[-1].key == "bias":
        np.testing.assert_array_equal(np.asarray(b), 0.0)

  def test_lecun_init_option(self):
    model = UNet(features=64, levels=1, init_std=None)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    kernels = [np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(params)
               if path[-1].key == "kernel"]
    biggest = max(kernels, key=lambda k: k.size)
    self.assertEqual(biggest.shape, (3, 3, 64, 64))
    self.assertAlmostEqual(float(biggest.std()), 1 / math.sqrt(9 * 64), delta=0.005)

  def test_transpose_upsampling(self):
    model = UNet(features=4, upsample="transpose")
    x = jnp.zeros((2, 16, 16, 1))
    params = _init(model, x.shape)
    out = jax.jit(model.apply)(params, x)
    chex.assert_shape(out, (2, 16, 16, 1))
    chex.assert_type(out, jnp.float32)
    # two 2x2 stride-2 transposed convs: 16→8 and 8→4 channels, each before a DoubleConv
    # whose input is [up, skip] = 8+8 and 4+4 channels
    expected = (_double_conv_params(1, 4) + _double_conv_params(4, 8)
                + _double_conv_params(8, 16) + _conv_params(16, 8, 2) + _double_conv_params(16, 8)
                + _conv_params(8, 4, 2) + _double_conv_params(8, 4) + _conv_params(4, 1, 1))
    self.assertEqual(_count_params(params), expected)

  @parameterized.parameters("bilinear", "transpose")
  def test_five_levels(self, upsample):
    model = UNet(features=4, levels=5, upsample=upsample, out_channels=2)
    x = jnp.zeros((1, 32, 32, 1))
    out = jax.jit(model.apply)(_init(model, x.shape), x)
    chex.assert_shape(out, (1, 32, 32, 2))
    chex.assert_type(out, jnp.float32)

  def test_bfloat16_compute_float32_logits_and_params(self):
    model = UNet(features=4, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 16, 1)), jnp.float32)
    params = _init(model, x.shape)
    for leaf in jax.tree.leaves(params):
      chex.assert_type(leaf, jnp.float32)
    out = jax.jit(model.apply)(params, x)
    chex.assert_type(out, jnp.float32)
    chex.assert_shape(out, (1, 16, 16, 1))
    ref = jax.jit(UNet(features=4).apply)(params, x)
    # same network, bf16 compute: close in relative terms, not bit-equal
    scale = float(jnp.abs(ref).max())
    self.assertLess(float(jnp.abs(out - ref).max()), 0.1 * scale)
    self.assertGreater(float(jnp.abs(out - ref).max()), 0.0)

  def test_invalid_upsample(self):
    with self.assertRaises(ValueError):
      UNet(upsample="nearest").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


if __name__ == "__main__":
  absltest.main()


def test_affine_norm_has_one_scale_and_shift_per_norm():
  import jax
  import jax.numpy as jnp
  from medda_jax.models.unet import UNet
  plain = UNet(features=4, levels=2)
  affine = UNet(features=4, levels=2, affine_norm=True)
  x = jnp.zeros((1, 8, 8, 1))
  count = lambda m: sum(v.size for v in jax.tree.leaves(jax.eval_shape(m.init, jax.random.PRNGKey(0), x)))
  # 3 DoubleConvs x 2 norms, each with a scale and a shift of `features * 2**level` channels
  expected_extra = 2 * 2 * (4 + 8 + 4)
  assert count(affine) - count(plain) == expected_extra
  params = affine.init(jax.random.PRNGKey(0), x)["params"]
  assert {"norm_scale_0", "norm_scale_1", "norm_bias_0", "norm_bias_1"} <= set(params["DoubleConv_0"])


def test_instance_norm_gradients_match_autodiff_of_the_plain_formula():
  """instance_norm's hand-written backward (custom VJP) against autodiff of the formula, to
  the second order (grad of a grad-dependent loss) and through a bf16 input."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from medda_jax.models.unet import instance_norm

  def plain(x, eps=1e-5):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=(1, 2), keepdims=True)
    return ((x32 - mean) / jnp.sqrt(x32.var(axis=(1, 2), keepdims=True) + eps)).astype(x.dtype)

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)) * 3.0 + 1.0, jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.float32)
  loss = lambda f: lambda t: jnp.sum(jnp.tanh(f(t)) * w)  # noqa: E731
  np.testing.assert_allclose(instance_norm(x), plain(x), atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss(instance_norm))(x), jax.grad(loss(plain))(x),
                             atol=1e-5)
  second = lambda f: jax.grad(lambda t: jnp.sum(jnp.square(jax.grad(loss(f))(t))))  # noqa: E731
  np.testing.assert_allclose(second(instance_norm)(x), second(plain)(x), rtol=1e-3, atol=1e-4)
  xb = x.astype(jnp.bfloat16)
  gb = jax.grad(lambda t: jnp.sum(instance_norm(t).astype(jnp.float32) * w))(xb)
  assert gb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(gb, np.float32),
                             np.asarray(jax.grad(lambda t: jnp.sum(plain(t).astype(jnp.float32)
                                                                    * w))(xb), np.float32),
                             atol=0.05)
