"""CycleGAN's generator and PatchGAN critic and torchvision's AlexNet: parameter counts from
the layer lists, output shapes, the building blocks (PyTorch's transposed convolution,
reflection padding, instance norm, adaptive average pooling) against plain numpy
transcriptions, whole small networks against numpy forward passes, and the initialisations."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medda_jax.models import alexnet, cyclegan
from medda_jax.models.alexnet import AlexNet
from medda_jax.models.cyclegan import NLayerDiscriminator, ResnetGenerator, count_params


def _conv_count(kernel, cin, cout):
  return kernel * kernel * cin * cout + cout


def _generator_count(channels, ngf=64, blocks=9):
  return (_conv_count(7, channels, ngf) + _conv_count(3, ngf, 2 * ngf)
          + _conv_count(3, 2 * ngf, 4 * ngf) + blocks * 2 * _conv_count(3, 4 * ngf, 4 * ngf)
          + _conv_count(3, 4 * ngf, 2 * ngf) + _conv_count(3, 2 * ngf, ngf)
          + _conv_count(7, ngf, channels))


def _critic_count(channels, ndf=64, n_layers=3):
  widths = [ndf * min(2 ** n, 8) for n in range(n_layers + 1)] + [1]
  return sum(_conv_count(4, cin, cout) for cin, cout in zip([channels] + widths, widths))


def _alexnet_count(classes, hidden=4096):
  convs = (_conv_count(11, 3, 64) + _conv_count(5, 64, 192) + _conv_count(3, 192, 384)
           + _conv_count(3, 384, 256) + _conv_count(3, 256, 256))
  fc6, fc7 = 256 * 6 * 6 * hidden + hidden, hidden * hidden + hidden
  return convs + fc6 + fc7 + hidden * classes + classes


def _param_shapes(model, x, **kw):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kw))["params"]


# Whole computations are compiled once: op-by-op execution compiles every op on its own and
# takes several times longer for these small networks.
def _init(model, x, seed=0, **kw):
  return jax.jit(functools.partial(model.init, **kw))(jax.random.key(seed), x)


def _apply(model, variables, x, **kw):
  return jax.jit(functools.partial(model.apply, **kw))(variables, x)


def _random_params(model, x, seed, scale=0.3):
  """Parameters of `model` drawn N(0, scale^2), biases included, so that no term is zero."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32),
                      _param_shapes(model, x))


# --- numpy transcriptions (NHWC images, HWIO kernels unless said otherwise) ----------------

def np_reflect_pad(x, pad):
  """torch ReflectionPad2d: index i of the padded axis reads x[r(i - pad)], r mirroring about
  the first and last element without repeating them."""
  def reflect(j, n):
    if j < 0:
      return -j
    if j > n - 1:
      return 2 * (n - 1) - j
    return j
  h, w = x.shape[1:3]
  rows = [reflect(i - pad, h) for i in range(h + 2 * pad)]
  cols = [reflect(j - pad, w) for j in range(w + 2 * pad)]
  return x[:, rows][:, :, cols]


def np_instance_norm(x, eps=1e-5):
  out = np.empty(x.shape, np.float64)
  for n in range(x.shape[0]):
    for c in range(x.shape[3]):
      plane = x[n, :, :, c].astype(np.float64)
      mean = plane.sum() / plane.size
      var = ((plane - mean) ** 2).sum() / plane.size  # biased, as torch normalises
      out[n, :, :, c] = (plane - mean) / math.sqrt(var + eps)
  return out


def np_conv2d(x, kernel, bias, stride=1, padding=0):
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  k = kernel.shape[0]
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for y in range(out_h):
    for z in range(out_w):
      patch = x[:, y * stride:y * stride + k, z * stride:z * stride + k, :]
      out[:, y, z, :] = np.einsum("nijc,ijco->no", patch, kernel)
  return out + bias


def np_torch_conv_transpose2d(x, weight, bias, stride, padding, output_padding):
  """torch ConvTranspose2d in torch's layouts: x [N, Cin, H, W], weight [Cin, Cout, k, k].
  Each input pixel scatters x[i, j] * weight[:, :, ky, kx] to (i * stride + ky, j * stride +
  kx); the first `padding` rows and columns are then cut and the map is (H - 1) * stride -
  2 * padding + k + output_padding long."""
  n, _, h, w = x.shape
  cout, k = weight.shape[1], weight.shape[2]
  full = np.zeros((n, cout, (h - 1) * stride + k + output_padding,
                   (w - 1) * stride + k + output_padding))
  for i in range(h):
    for j in range(w):
      for ky in range(k):
        for kx in range(k):
          full[:, :, i * stride + ky, j * stride + kx] += x[:, :, i, j] @ weight[:, :, ky, kx]
  out_h = (h - 1) * stride - 2 * padding + k + output_padding
  out_w = (w - 1) * stride - 2 * padding + k + output_padding
  out = full[:, :, padding:padding + out_h, padding:padding + out_w]
  return out + bias[None, :, None, None]


def np_up(x, params):
  """The generator's up-sampling layer, with its kernel turned back into torch's layout."""
  weight = np.transpose(params["kernel"], (3, 2, 0, 1))  # [ky, kx, out, in] -> [in, out, ky, kx]
  y = np_torch_conv_transpose2d(np.transpose(x, (0, 3, 1, 2)), weight, params["bias"], 2, 1, 1)
  return np.transpose(y, (0, 2, 3, 1))


def np_adaptive_avg_pool(x, out):
  h, w = x.shape[1:3]
  y = np.zeros((x.shape[0], out, out, x.shape[3]))
  for i in range(out):
    for j in range(out):
      h0, h1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
      w0, w1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
      y[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
  return y


def np_max_pool3s2(x):
  out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      y[:, i, j, :] = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].max(axis=(1, 2))
  return y


def np_generator(x, p, blocks):
  relu = lambda h: np.maximum(h, 0.0)
  conv = lambda h, q, **kw: np_conv2d(h, q["kernel"], q["bias"], **kw)
  h = relu(np_instance_norm(conv(np_reflect_pad(x, 3), p["stem"])))
  h = relu(np_instance_norm(conv(h, p["down_0"], stride=2, padding=1)))
  h = relu(np_instance_norm(conv(h, p["down_1"], stride=2, padding=1)))
  for i in range(blocks):
    q = p[f"block_{i}"]
    r = relu(np_instance_norm(conv(np_reflect_pad(h, 1), q["conv_0"])))
    h = h + np_instance_norm(conv(np_reflect_pad(r, 1), q["conv_1"]))
  h = relu(np_instance_norm(np_up(h, p["up_0"])))
  h = relu(np_instance_norm(np_up(h, p["up_1"])))
  return np.tanh(conv(np_reflect_pad(h, 3), p["head"]))


def np_critic(x, p, n_layers):
  lrelu = lambda h: np.where(h > 0, h, 0.2 * h)
  conv = lambda h, q, stride: np_conv2d(h, q["kernel"], q["bias"], stride=stride, padding=1)
  h = lrelu(conv(x, p["conv_0"], 2))
  for n in range(1, n_layers):
    h = lrelu(np_instance_norm(conv(h, p[f"conv_{n}"], 2)))
  h = lrelu(np_instance_norm(conv(h, p[f"conv_{n_layers}"], 1)))
  return conv(h, p["head"], 1)


def _numpy_tree(params):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


# --- parameter counts and shapes -----------------------------------------------------------

def test_cyclegan_parameter_counts_match_the_layer_lists_and_the_reference():
  x3, x1 = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 1))
  g3 = count_params(_param_shapes(ResnetGenerator(channels=3), x3))
  d3 = count_params(_param_shapes(NLayerDiscriminator(), x3))
  assert g3 == _generator_count(3) == 11_378_179
  assert d3 == _critic_count(3) == 2_764_737
  assert round(g3 / 1e6, 3) == 11.378 and round(d3 / 1e6, 3) == 2.765  # the reference prints
  assert count_params(_param_shapes(ResnetGenerator(channels=1), x1)) == _generator_count(1)
  assert count_params(_param_shapes(NLayerDiscriminator(), x1)) == _critic_count(1)
  small = _param_shapes(ResnetGenerator(channels=1, features=4, n_blocks=2), x1)
  assert count_params(small) == _generator_count(1, 4, 2)
  assert count_params(_param_shapes(NLayerDiscriminator(features=4, n_layers=1), x1)) == \
      _critic_count(1, 4, 1)
  # Transposed-conv kernels hold [ky, kx, out, in]: torch's [in, out, ky, kx] transposed.
  assert small["up_0"]["kernel"].shape == (3, 3, 8, 16)
  assert small["up_1"]["kernel"].shape == (3, 3, 4, 8)


def test_alexnet_parameter_counts():
  x = jnp.zeros((1, 224, 224, 3))
  assert count_params(_param_shapes(AlexNet(num_classes=1000), x, train=False)) == 61_100_840
  assert _alexnet_count(1000) == 61_100_840
  two = count_params(_param_shapes(AlexNet(num_classes=2), x, train=False))
  assert two == _alexnet_count(2) == 61_100_840 - (4096 * 1000 + 1000) + (4096 * 2 + 2)
  # Grey images are replicated to RGB: same kernels, so torchvision weights still fit.
  grey = jnp.zeros((1, 224, 224, 1))
  assert count_params(_param_shapes(AlexNet(num_classes=2), grey, train=False)) == two
  small = _param_shapes(AlexNet(num_classes=2, fc_features=16), grey, train=False)
  assert count_params(small) == _alexnet_count(2, hidden=16)


def test_generator_and_critic_shapes_at_256_px():
  x = jnp.zeros((2, 256, 256, 1))
  generator, critic = ResnetGenerator(), NLayerDiscriminator()
  g_params = _param_shapes(generator, x)
  d_params = _param_shapes(critic, x)
  out = jax.eval_shape(lambda p: generator.apply({"params": p}, x), g_params)
  assert out.shape == (2, 256, 256, 1) and out.dtype == jnp.float32
  scores = jax.eval_shape(lambda p: critic.apply({"params": p}, x), d_params)
  assert scores.shape == (2, 30, 30, 1) and scores.dtype == jnp.float32


@pytest.mark.parametrize("size,pooled_from", [(224, 6), (127, 3), (64, 1), (63, 1)])
def test_alexnet_logits_shape(size, pooled_from):
  assert alexnet.feature_size(size) == pooled_from
  net = AlexNet(num_classes=2)
  x = jnp.zeros((3, size, size, 1))
  params = _param_shapes(net, x, train=False)
  logits = jax.eval_shape(lambda p: net.apply({"params": p}, x, train=False), params)
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(62, 62), (62, 224), (224, 40)])
def test_alexnet_refuses_images_below_63_px(shape):
  assert alexnet.feature_size(62) == 0 and alexnet.MIN_SIZE == 63
  x = jnp.zeros((1, *shape, 1))
  with pytest.raises(ValueError, match="at least 63x63 px"):
    AlexNet().init(jax.random.key(0), x, train=False)


# --- building blocks against numpy ---------------------------------------------------------

@pytest.mark.parametrize("subpixel", [True, False])
def test_transposed_conv_is_torchs_conv_transpose2d(subpixel):
  rng = np.random.default_rng(0)
  n, cin, cout, h, w = 2, 3, 2, 3, 4
  x_nchw = rng.normal(size=(n, cin, h, w))
  weight = rng.normal(size=(cin, cout, 3, 3))  # torch's ConvTranspose2d layout
  bias = rng.normal(size=(cout,))
  want = np_torch_conv_transpose2d(x_nchw, weight, bias, stride=2, padding=1, output_padding=1)
  assert want.shape == (n, cout, 2 * h, 2 * w)
  layer = cyclegan.conv_transpose_up(cout, jnp.float32, "up", subpixel)
  params = {"kernel": jnp.asarray(np.transpose(weight, (2, 3, 1, 0)), jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32)}
  got = layer.apply({"params": params}, jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)),
                                                    jnp.float32))
  np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), want,
                             rtol=1e-5, atol=1e-5)


def test_reflection_padding_and_instance_norm():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  for pad in (1, 3):
    np.testing.assert_array_equal(np.asarray(cyclegan.reflect_pad(jnp.asarray(x), pad)),
                                  np_reflect_pad(x, pad))
  # Row -1 mirrors row 1 (the edge row is not repeated).
  np.testing.assert_array_equal(np_reflect_pad(x, 1)[:, 0, 1:-1], x[:, 1])
  y = (3.0 + 2.0 * rng.normal(size=(2, 5, 4, 3)) * np.arange(1, 4)).astype(np.float32)
  got = cyclegan.instance_norm(jnp.asarray(y))
  np.testing.assert_allclose(np.asarray(got), np_instance_norm(y), rtol=1e-4, atol=1e-5)
  assert cyclegan.instance_norm(jnp.asarray(y, jnp.bfloat16)).dtype == jnp.bfloat16
  # A constant map normalises to zero (what makes a zeroed residual branch the identity).
  np.testing.assert_array_equal(np.asarray(cyclegan.instance_norm(jnp.full((1, 3, 3, 2), 4.0))),
                                0.0)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (3, 3), (5, 5), (13, 13), (6, 6), (5, 13)])
def test_adaptive_average_pooling_matches_torchs_bins(h, w):
  x = np.random.default_rng(h * 100 + w).normal(size=(2, h, w, 3)).astype(np.float32)
  got = alexnet.adaptive_avg_pool(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), np_adaptive_avg_pool(x, 6), rtol=1e-6, atol=1e-6)


# --- whole networks ------------------------------------------------------------------------

def test_generator_matches_a_numpy_forward_pass():
  blocks = 2
  generator = ResnetGenerator(channels=1, features=2, n_blocks=blocks)
  x = np.tanh(np.random.default_rng(2).normal(size=(2, 8, 8, 1))).astype(np.float32)
  params = _random_params(generator, x, 3)
  got = _apply(generator, {"params": params}, x)
  want = np_generator(x.astype(np.float64), _numpy_tree(params), blocks)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  assert np.std(want) > 0.1  # a non-trivial output


def test_critic_matches_a_numpy_forward_pass():
  n_layers = 2
  critic = NLayerDiscriminator(features=2, n_layers=n_layers)
  x = np.random.default_rng(4).normal(size=(2, 16, 16, 1)).astype(np.float32)
  params = _random_params(critic, x, 5)
  got = _apply(critic, {"params": params}, x)
  want = np_critic(x.astype(np.float64), _numpy_tree(params), n_layers)
  assert got.shape == want.shape == (2, 2, 2, 1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_zeroed_residual_branches_leave_the_blocks_out():
  x = jnp.asarray(np.tanh(np.random.default_rng(6).normal(size=(1, 8, 8, 1))), jnp.float32)
  with_blocks = ResnetGenerator(channels=1, features=2, n_blocks=2)
  params = _random_params(with_blocks, x, 7)
  zeroed = dict(params)
  for i in range(2):
    zeroed[f"block_{i}"] = {**params[f"block_{i}"],
                            "conv_1": jax.tree.map(np.zeros_like, params[f"block_{i}"]["conv_1"])}
  without = {k: v for k, v in params.items() if not k.startswith("block_")}
  got = _apply(with_blocks, {"params": zeroed}, x)
  want = _apply(ResnetGenerator(channels=1, features=2, n_blocks=0), {"params": without}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  # ... and with the branches in place the blocks do change the output.
  assert not np.allclose(np.asarray(_apply(with_blocks, {"params": params}, x)),
                         np.asarray(want), atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  x = jnp.asarray(np.tanh(np.random.default_rng(8).normal(size=(1, 8, 8, 1))), jnp.float32)
  g32 = ResnetGenerator(channels=1, features=4, n_blocks=1)
  g16 = ResnetGenerator(channels=1, features=4, n_blocks=1, dtype=jnp.bfloat16)
  shapes = _param_shapes(g16, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  params = _random_params(g16, x, 8)
  out16 = _apply(g16, {"params": params}, x)
  assert out16.dtype == jnp.float32
  out32 = np.asarray(_apply(g32, {"params": params}, x))
  error = np.abs(np.asarray(out16) - out32)
  assert error.mean() < 0.03 and error.max() < 0.2
  assert error.max() > 0  # it did compute in bfloat16
  d16 = NLayerDiscriminator(features=4, n_layers=1, dtype=jnp.bfloat16)
  d_shapes = _param_shapes(d16, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(d_shapes))
  scores = jax.eval_shape(lambda p: d16.apply({"params": p}, x), d_shapes)
  assert scores.dtype == jnp.float32


def test_alexnet_matches_a_numpy_forward_pass_in_torchs_flatten_order():
  # 127 px: conv5 leaves 7 x 7, the last max-pool 3 x 3, spread over the 6 x 6 bins.
  net = AlexNet(num_classes=2, fc_features=16)
  grey = np.random.default_rng(9).normal(size=(2, 127, 127, 1)).astype(np.float32)
  variables = _init(net, grey, train=False)
  logits, state = _apply(net, variables, grey, train=False, capture_intermediates=True)
  conv5 = np.asarray(state["intermediates"]["conv5"]["__call__"][0], np.float64)
  assert conv5.shape == (2, 7, 7, 256)
  p = _numpy_tree(variables["params"])
  pooled = np_adaptive_avg_pool(np_max_pool3s2(np.maximum(conv5, 0.0)), 6)
  flat = np.stack([pooled[n].transpose(2, 0, 1).reshape(-1) for n in range(2)])  # C, H, W
  h = np.maximum(flat @ p["fc6"]["kernel"] + p["fc6"]["bias"], 0.0)
  h = np.maximum(h @ p["fc7"]["kernel"] + p["fc7"]["bias"], 0.0)
  want = h @ p["fc8"]["kernel"] + p["fc8"]["bias"]
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
  # The grey image is read as its RGB replica.
  rgb = np.repeat(grey, 3, axis=-1)
  np.testing.assert_allclose(np.asarray(_apply(net, variables, rgb, train=False)),
                             np.asarray(logits), rtol=1e-6, atol=1e-6)


def test_alexnet_dropout_only_in_training():
  net = AlexNet(num_classes=2, fc_features=16)
  x = jnp.asarray(np.random.default_rng(10).normal(size=(4, 64, 64, 1)), jnp.float32)
  variables = _init(net, x, train=False)
  eval_a = _apply(net, variables, x, train=False)
  np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(_apply(net, variables, x)))
  train_step = jax.jit(lambda v, k: net.apply(v, x, train=True, rngs={"dropout": k}))
  train = lambda seed: np.asarray(train_step(variables, jax.random.key(seed)))
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  assert not np.allclose(train(1), np.asarray(eval_a))
  with pytest.raises(Exception, match="dropout"):  # dropout needs its rng
    jax.eval_shape(lambda v: net.apply(v, x, train=True), variables)


# --- initialisation ------------------------------------------------------------------------

def _check_normal_002(params):
  """Kernels N(0, 0.02) within 5 standard errors, biases exactly 0; returns the largest
  kernel's relative std error."""
  largest = (0, None)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf, np.float64)
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
      continue
    n = leaf.size
    assert abs(leaf.mean()) < 5 * 0.02 / math.sqrt(n), name
    assert abs(leaf.std() - 0.02) < 5 * 0.02 / math.sqrt(2 * n), (name, leaf.std())
    largest = max(largest, (n, abs(leaf.std() / 0.02 - 1)))
  return largest


def test_cyclegan_initialisation_is_normal_002_with_zero_biases():
  x = jnp.zeros((1, 16, 16, 1))
  g = _init(ResnetGenerator(channels=1, features=16, n_blocks=1), x)
  n, error = _check_normal_002(g["params"])
  assert n == 9 * 64 * 64 and error < 0.03  # a residual-block conv
  d = _init(NLayerDiscriminator(features=16, n_layers=3), x, seed=1)
  n, error = _check_normal_002(d["params"])
  assert n == 16 * 64 * 128 and error < 0.03
  assert set(g) == {"params"} and set(d) == {"params"}  # no state: instance statistics only


def test_alexnet_initialisation_is_torchs_default():
  net = AlexNet(num_classes=2, fc_features=64)
  params = _init(net, jnp.zeros((1, 63, 63, 1)), train=False)["params"]
  for name, layer in params.items():
    kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
    fan_in = int(np.prod(kernel.shape[:-1]))  # HWI for convs, in for dense
    bound = 1.0 / math.sqrt(fan_in)
    for what, values in (("kernel", kernel), ("bias", bias)):
      assert np.abs(values).max() <= bound, (name, what)
      if values.size >= 1000:  # uniform: std bound / sqrt(3) and values up to the bound
        assert abs(values.std() * math.sqrt(3) / bound - 1) < 0.1, (name, what)
        assert np.abs(values).max() > 0.95 * bound, (name, what)
  assert params["conv1"]["kernel"].shape == (11, 11, 3, 64)  # grey input, RGB kernel
