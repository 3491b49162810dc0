"""SIFA's networks and SynthMix's Mixup Inspector (`medda_jax.models.sifa`): parameter counts
at the reference sizes against sums over the TF layer lists, output shapes, the building
blocks (TF instance norm, the zero-padded channel shortcut, TF's SAME transposed
convolution, the dilated convolution, TF batch norm) against plain numpy transcriptions,
whole small networks against numpy forward passes, the residual skips, the decoder's
dropout, the encoder's running statistics, the initialisations and the Inspector's size
checks."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medda_jax.models.sifa import (ConvTransposeSame, Decoder, DrnBlock, Encoder, Generator,
                                   InstanceNorm, MixupInspector, PatchDiscriminator, ResBlock,
                                   Segmenter, count_params, pad_channels)


# --- parameter counts written out from the TF layer lists (model.py, layers.py) ------------

def _conv(k, cin, cout, bias):
  return k * k * cin * cout + (cout if bias else 0)


def _norm(c):  # IN scale + offset, or BN gamma + beta (moving statistics are no params)
  return 2 * c


def _generator_count(ngf=32, blocks=9):
  c1 = _conv(7, 1, ngf, True) + _norm(ngf)
  c2 = _conv(3, ngf, 2 * ngf, True) + _norm(2 * ngf)
  c3 = _conv(3, 2 * ngf, 4 * ngf, True) + _norm(4 * ngf)
  res = blocks * 2 * (_conv(3, 4 * ngf, 4 * ngf, True) + _norm(4 * ngf))
  c4 = _conv(3, 4 * ngf, 2 * ngf, True) + _norm(2 * ngf)  # conv2d_transpose has a bias
  c5 = _conv(3, 2 * ngf, ngf, True) + _norm(ngf)
  c6 = _conv(7, ngf, 1, True)
  return c1 + c2 + c3 + res + c4 + c5 + c6


def _encoder_counts(fb=16):
  """(params, BN channels) of build_encoder."""
  blocks = [(fb, fb), (fb, 2 * fb), (2 * fb, 4 * fb), (4 * fb, 4 * fb), (4 * fb, 8 * fb),
            (8 * fb, 8 * fb), (8 * fb, 16 * fb), (16 * fb, 16 * fb), (16 * fb, 16 * fb),
            (16 * fb, 16 * fb), (16 * fb, 32 * fb), (32 * fb, 32 * fb)]  # r1 .. r12
  params = _conv(7, 1, fb, False) + _norm(fb)
  bn = fb
  for a, b in blocks:
    params += _conv(3, a, b, False) + _conv(3, b, b, False) + 2 * _norm(b)
    bn += 2 * b
  top = 32 * fb
  params += 2 * 2 * (_conv(3, top, top, True) + _norm(top))  # d1, d2: dilate_conv2d has bias
  bn += 4 * top
  params += 2 * (_conv(3, top, top, False) + _norm(top))  # c2, c3
  bn += 2 * top
  return params, bn


def _decoder_count(ngf=32, blocks=4, cin=512):
  c1 = _conv(3, cin, 4 * ngf, False) + _norm(4 * ngf)
  res = blocks * 2 * (_conv(3, 4 * ngf, 4 * ngf, False) + _norm(4 * ngf))
  c3 = _conv(3, 4 * ngf, 2 * ngf, True) + _norm(2 * ngf)
  c4 = _conv(3, 2 * ngf, 2 * ngf, True) + _norm(2 * ngf)
  c5 = _conv(3, 2 * ngf, ngf, True) + _norm(ngf)
  c6 = _conv(7, ngf, 1, False)
  return c1 + res + c3 + c4 + c5 + c6


def _discriminator_count(cin, out=1, ndf=64):
  return (_conv(4, cin, ndf, False) + _conv(4, ndf, 2 * ndf, False) + _norm(2 * ndf)
          + _conv(4, 2 * ndf, 4 * ndf, False) + _norm(4 * ndf)
          + _conv(4, 4 * ndf, 8 * ndf, False) + _norm(8 * ndf) + _conv(4, 8 * ndf, out, False))


def _inspector_count(size=256, k=8):
  """The spec's layout at F = 64: 64 -> 128 -> 256 -> 512 -> 512 -> 512 down to 4 x 4, then
  deconvs 256, 128, ... to k, k3 map head, k4 global head (all with bias)."""
  widths = [64, 128, 256, 512, 512, 512][:int(math.log2(size // 4))]
  total = sum(_conv(4, a, b, True) for a, b in zip([1] + widths, widths))
  ups = [256, 128, 64, 32, 32, 32][:int(math.log2(k // 4))]
  total += sum(_conv(4, a, b, True) for a, b in zip([widths[-1]] + ups, ups))
  return total + _conv(3, ([widths[-1]] + ups)[-1], 1, True) + _conv(4, widths[-1], 1, True)


X256 = jax.ShapeDtypeStruct((1, 256, 256, 1), jnp.float32)
F256 = jax.ShapeDtypeStruct((1, 32, 32, 512), jnp.float32)


def _eval_shape(fn, *args):
  """jax.eval_shape over the array arguments; the others (a size tuple) stay static."""
  traced = [i for i, a in enumerate(args)
            if isinstance(a, (jax.ShapeDtypeStruct, np.ndarray, jax.Array, dict))]

  def run(*arrays):
    full = list(args)
    for i, a in zip(traced, arrays):
      full[i] = a
    return fn(*full)

  return jax.eval_shape(run, *[args[i] for i in traced])


def _shapes(model, *args, **kw):
  return _eval_shape(lambda *a: model.init(jax.random.key(0), *a, **kw), *args)


def _out_shapes(model, variables, *args, **kw):
  return _eval_shape(lambda v, *a: model.apply(v, *a, **kw), variables, *args)


def test_parameter_counts_at_reference_sizes():
  assert _generator_count() == 2_849_537  # the module docstring's numbers
  assert count_params(_shapes(Generator(), X256)["params"]) == _generator_count()

  e = _shapes(Encoder(), X256, train=False)
  params, bn = _encoder_counts()
  assert (params, 2 * bn) == (27_519_472, 16_096)
  assert count_params(e["params"]) == params
  assert count_params(e["batch_stats"]) == 2 * bn  # moving mean and variance

  u = _shapes(Decoder(), F256, X256, deterministic=True)
  assert count_params(u["params"]) == _decoder_count() == 1_902_848
  assert count_params(_shapes(Segmenter(), F256, (256, 256))["params"]) == 512 * 5

  for cin, out, expected in ((1, 1, 2_763_520), (5, 1, 2_767_616), (1, 2, 2_771_712)):
    x = jax.ShapeDtypeStruct((1, 256, 256, cin), jnp.float32)
    d = _shapes(PatchDiscriminator(out_channels=out), x)
    assert count_params(d["params"]) == _discriminator_count(cin, out) == expected

  for k, expected in ((4, 11_156_930), (8, 13_252_034), (32, 13_905_858)):
    i = _shapes(MixupInspector(k=k), X256)
    assert count_params(i["params"]) == _inspector_count(256, k) == expected


def test_output_shapes_follow_the_input():
  g = _shapes(Generator(), X256)
  assert _out_shapes(Generator(), g, X256).shape == (1, 256, 256, 1)
  e = _shapes(Encoder(), X256, train=False)
  f, f_ll = _out_shapes(Encoder(), e, X256, train=False)
  assert f.shape == f_ll.shape == (1, 32, 32, 512)
  u = _shapes(Decoder(), F256, X256, deterministic=True)
  assert _out_shapes(Decoder(), u, F256, X256, deterministic=True).shape == (1, 256, 256, 1)
  c = _shapes(Segmenter(), F256, (256, 256))
  assert _out_shapes(Segmenter(), c, F256, (256, 256)).shape == (1, 256, 256, 5)
  d = _shapes(PatchDiscriminator(out_channels=2), X256)
  assert _out_shapes(PatchDiscriminator(out_channels=2), d, X256).shape == (1, 35, 35, 2)
  for k in (4, 8, 32):
    i = _shapes(MixupInspector(k=k), X256)
    cells, glob = _out_shapes(MixupInspector(k=k), i, X256)
    assert (cells.shape, glob.shape) == ((1, k, k), (1,))

  # Nothing is tied to 256: a 64 x 48 batch of 3 gives 8 x 6 features and comes back whole.
  x = jax.ShapeDtypeStruct((3, 64, 48, 1), jnp.float32)
  f, f_ll = _out_shapes(Encoder(), _shapes(Encoder(), x, train=False), x, train=False)
  assert f.shape == f_ll.shape == (3, 8, 6, 512)
  u = _shapes(Decoder(), f, x, deterministic=True)
  assert _out_shapes(Decoder(), u, f, x, deterministic=True).shape == (3, 64, 48, 1)
  assert _out_shapes(Generator(), _shapes(Generator(), x), x).shape == (3, 64, 48, 1)
  c = _shapes(Segmenter(), f, (64, 48))
  assert _out_shapes(Segmenter(), c, f, (64, 48)).shape == (3, 64, 48, 5)
  # The decoder reads its number of up-sampling stages from the two inputs.
  f4 = jax.ShapeDtypeStruct((3, 16, 12, 512), jnp.float32)
  u4 = _shapes(Decoder(), f4, x, deterministic=True)
  ups = sorted(k for k in u4["params"] if k.startswith("up") and not k.endswith("norm"))
  assert ups == ["up1", "up2"]
  with pytest.raises(ValueError, match="power of 2"):
    _shapes(Decoder(), jax.ShapeDtypeStruct((3, 8, 8, 512), jnp.float32), x, deterministic=True)
  with pytest.raises(ValueError, match="multiples of 4"):
    _shapes(Generator(), jax.ShapeDtypeStruct((1, 18, 16, 1), jnp.float32))


def test_compute_dtype_keeps_float32_params_and_outputs():
  bf = jnp.bfloat16
  x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
  f = jax.ShapeDtypeStruct((2, 4, 4, 32), jnp.float32)
  cases = [(Generator(features=4, n_blocks=1, dtype=bf), (x,), {}),
           (Encoder(features=2, dtype=bf), (x,), {"train": True}),
           (Decoder(features=4, n_blocks=1, dtype=bf), (f, x), {"deterministic": True}),
           (Segmenter(dtype=bf), (f, (32, 32)), {}),
           (PatchDiscriminator(features=4, dtype=bf), (x,), {}),
           (MixupInspector(k=8, features=4, dtype=bf), (x,), {})]
  for model, args, kw in cases:
    variables = _shapes(model, *args, **kw)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}, type(model).__name__
    mutable = ["batch_stats"] if isinstance(model, Encoder) else False
    out = _out_shapes(model, variables, *args, mutable=mutable, **kw)
    out = out[0] if mutable else out
    assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}


# --- numpy transcriptions (NHWC, HWIO kernels unless said otherwise; float64) ----------------

def tf_same_pads(n, k, s, d=1):
  """TF's SAME padding of one axis: (before, after), the odd pixel after."""
  k_eff = (k - 1) * d + 1
  total = max((math.ceil(n / s) - 1) * s + k_eff - n, 0)
  return total // 2, total - total // 2


def np_conv(x, w, b=None, stride=1, pads=((0, 0), (0, 0)), dilation=1):
  """Cross-correlation as TF and lax compute it: out[i] = sum_k xpad[s i + d k] w[k]."""
  kh, kw, _, cout = w.shape
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  h = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
  wd = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros(x.shape[:1] + (h, wd, cout))
  for ky in range(kh):
    for kx in range(kw):
      patch = xp[:, ky * dilation:ky * dilation + stride * (h - 1) + 1:stride,
                 kx * dilation:kx * dilation + stride * (wd - 1) + 1:stride]
      out += patch @ w[ky, kx]
  return out if b is None else out + b


def np_conv_same(x, w, b=None, stride=1):
  pads = (tf_same_pads(x.shape[1], w.shape[0], stride),
          tf_same_pads(x.shape[2], w.shape[1], stride))
  return np_conv(x, w, b, stride, pads)


def np_tf_deconv_same(x, w, b=None):
  """TF conv2d_transpose(stride 2, "SAME"), w[ky, kx, out, in]: the adjoint of conv2d(stride
  2, SAME) on the 2n x 2m output, y[i] = sum_k opad[2 i + k] w[k] with opad the output padded
  by tf_same_pads(2n) at the top: scatter x[i] w[k]^T to output index 2 i + k - top."""
  n, m = x.shape[1:3]
  kh, kw, cout, _ = w.shape
  top = tf_same_pads(2 * n, kh, 2)[0]
  left = tf_same_pads(2 * m, kw, 2)[0]
  buf = np.zeros((x.shape[0], 2 * n + kh, 2 * m + kw, cout))
  for ky in range(kh):
    for kx in range(kw):
      buf[:, ky:ky + 2 * n:2, kx:kx + 2 * m:2] += x @ w[ky, kx].T
  out = buf[:, top:top + 2 * n, left:left + 2 * m]
  return out if b is None else out + b


def np_torch_deconv(x, w, b, padding=1):
  """torch ConvTranspose2d(stride 2, padding p), w[ky, kx, out, in] = torch_w[in, out, ky, kx]:
  out[2 i - p + k] += x[i] w[k]^T; output (n - 1) 2 - 2p + k."""
  n, m = x.shape[1:3]
  kh, kw, cout, _ = w.shape
  buf = np.zeros((x.shape[0], 2 * (n - 1) + kh, 2 * (m - 1) + kw, cout))
  for ky in range(kh):
    for kx in range(kw):
      buf[:, ky:ky + 2 * n:2, kx:kx + 2 * m:2] += x @ w[ky, kx].T
  oh, ow = 2 * (n - 1) - 2 * padding + kh, 2 * (m - 1) - 2 * padding + kw
  return buf[:, padding:padding + oh, padding:padding + ow] + b


def np_instance_norm(x, scale=None, bias=None, eps=1e-6):
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  y = (x - mean) / np.sqrt(var + eps)
  return y if scale is None else y * scale + bias


def np_batch_norm(x, p, stats=None, eps=1e-3):
  """TF batch_norm: batch statistics (biased variance) or, given `stats`, the running ones."""
  if stats is None:
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  else:
    mean, var = stats["mean"], stats["var"]
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_pad_channels(x, c):
  a = x.shape[-1]
  out = np.zeros(x.shape[:3] + (c,))
  out[..., (c - a) // 2:(c - a) // 2 + a] = x
  return out


def np_maxpool2_same(x):
  n, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
  return xp.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


relu = lambda x: np.maximum(x, 0)
lrelu = lambda x: np.maximum(x, 0.2 * x)
P1 = ((1, 1), (1, 1))


def np_generator(p, x, blocks):
  h = np_conv(np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0))), p["c1"]["kernel"], p["c1"]["bias"])
  h = relu(np_instance_norm(h, **p["c1_norm"]))
  for name in ("c2", "c3"):
    h = np_conv_same(h, p[name]["kernel"], p[name]["bias"], stride=2)
    h = relu(np_instance_norm(h, **p[f"{name}_norm"]))
  for i in range(blocks):
    r = p[f"r{i + 1}"]
    t = relu(np_instance_norm(np_conv(h, r["c1"]["kernel"], r["c1"]["bias"], pads=P1),
                              **r["c1_norm"]))
    t = np_instance_norm(np_conv(t, r["c2"]["kernel"], r["c2"]["bias"], pads=P1), **r["c2_norm"])
    h = relu(h + t)
  for name in ("c4", "c5"):
    h = relu(np_instance_norm(np_tf_deconv_same(h, p[name]["kernel"], p[name]["bias"]),
                              **p[f"{name}_norm"]))
  return np.tanh(x + np_conv_same(h, p["c6"]["kernel"], p["c6"]["bias"]))


def np_resblock(r, x, c, norm):
  t = relu(norm(np_conv(x, r["c1"]["kernel"], pads=P1), "c1_norm"))
  t = norm(np_conv(t, r["c2"]["kernel"], pads=P1), "c2_norm")
  return relu(np_pad_channels(x, c) + t)


def np_encoder(p, x, fb, stats=None):
  def bn(scope_p, scope_s):
    return lambda h, name: np_batch_norm(h, scope_p[name], None if scope_s is None
                                         else scope_s[name])

  def rb(h, name, c):
    return np_resblock(p[name], h, c, bn(p[name], None if stats is None else stats[name]))

  def conv_bn(h, name, k):
    h = np_conv_same(h, p[name]["kernel"])
    return relu(bn(p, stats)(h, f"{name}_norm"))

  h = conv_bn(x, "c1", 7)
  h = np_maxpool2_same(rb(h, "r1", fb))
  h = np_maxpool2_same(rb(h, "r2", 2 * fb))
  h = np_maxpool2_same(rb(rb(h, "r3", 4 * fb), "r4", 4 * fb))
  for name, c in (("r5", 8), ("r6", 8), ("r7", 16), ("r8", 16), ("r9", 16), ("r10", 16),
                  ("r11", 32), ("r12", 32)):
    h = rb(h, name, c * fb)
  f_ll = h
  for name in ("d1", "d2"):
    d, norm = p[name], bn(p[name], None if stats is None else stats[name])
    t = relu(norm(np_conv(h, d["c1"]["kernel"], d["c1"]["bias"], pads=((2, 2), (2, 2)),
                          dilation=2), "c1_norm"))
    t = norm(np_conv(t, d["c2"]["kernel"], d["c2"]["bias"], pads=((2, 2), (2, 2)), dilation=2),
             "c2_norm")
    h = relu(h + t)
  return conv_bn(conv_bn(h, "c2", 3), "c3", 3), f_ll


def np_decoder(p, f, x_in, blocks):
  h = relu(np_instance_norm(np_conv_same(f, p["c1"]["kernel"]), **p["c1_norm"]))
  for i in range(blocks):
    r = p[f"r{i + 1}"]
    h = np_resblock(r, h, h.shape[-1], lambda t, name, r=r: np_instance_norm(t, **r[name]))
  i = 1
  while f"up{i}" in p:
    h = np_tf_deconv_same(h, p[f"up{i}"]["kernel"], p[f"up{i}"]["bias"])
    h = relu(np_instance_norm(h, **p[f"up{i}_norm"]))
    i += 1
  return np.tanh(x_in + np_conv_same(h, p["c6"]["kernel"]))


def np_discriminator(p, x):
  pad2 = ((2, 2), (2, 2))
  h = lrelu(np_conv(x, p["c1"]["kernel"], stride=2, pads=pad2))
  for name, stride in (("c2", 2), ("c3", 2), ("c4", 1)):
    h = lrelu(np_instance_norm(np_conv(h, p[name]["kernel"], stride=stride, pads=pad2),
                               **p[f"{name}_norm"]))
  return np_conv(h, p["c5"]["kernel"], pads=pad2)


def np_inspector(p, x):
  h, i = x, 0
  while f"down{i}" in p:
    h = np_conv(h, p[f"down{i}"]["kernel"], p[f"down{i}"]["bias"], stride=2, pads=P1)
    h = lrelu(h if i == 0 else np_instance_norm(h, eps=1e-5))
    i += 1
  bottleneck, i = h, 0
  while f"up{i}" in p:
    h = relu(np_instance_norm(np_torch_deconv(h, p[f"up{i}"]["kernel"], p[f"up{i}"]["bias"]),
                              eps=1e-5))
    i += 1
  cells = np_conv_same(h, p["map_head"]["kernel"], p["map_head"]["bias"])[..., 0]
  glob = np_conv_same(bottleneck, p["global_head"]["kernel"], p["global_head"]["bias"])
  return cells, glob.mean(axis=(1, 2, 3))


# --- helpers ------------------------------------------------------------------------------

def _random_variables(variables, seed, scale=0.2):
  """Every leaf drawn at random (float32): norm scales and running variances around 1,
  everything else N(0, scale^2), so that no term of the forward pass is zero."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return (1.0 + 0.2 * rng.uniform(-1, 1, leaf.shape)).astype(np.float32)
    return (scale * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, variables)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _apply(model, **kw):
  return jax.jit(functools.partial(model.apply, **kw))


def _image(seed, shape):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# --- building blocks ---------------------------------------------------------------------

def test_instance_norm_matches_tf_contrib():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4))
  x[..., 3] = 0.5 + 1e-3 * x[..., 3]  # a channel with variance ~1e-6: eps matters there
  x = x.astype(np.float32)
  model = InstanceNorm()
  v = _random_variables(_shapes(model, x), 1)
  got = np.asarray(_apply(model)(v, x))
  want = np_instance_norm(x.astype(np.float64), **_f64(v["params"]), eps=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  wrong_eps = np_instance_norm(x.astype(np.float64), **_f64(v["params"]), eps=1e-5)
  assert np.abs(got - wrong_eps).max() > 1e-2
  params = _shapes(model, x)["params"]
  assert {k: p.shape for k, p in params.items()} == {"scale": (4,), "bias": (4,)}


def test_pad_channels_and_downsampling_resblock_shortcut():
  x = _image(0, (2, 3, 3, 4))
  got = np.asarray(pad_channels(jnp.asarray(x), 8))
  np.testing.assert_array_equal(got, np_pad_channels(x, 8))
  np.testing.assert_array_equal(got[..., 2:6], x)
  assert not got[..., :2].any() and not got[..., 6:].any()
  with pytest.raises(ValueError):
    pad_channels(jnp.asarray(x), 7)
  # With its conv kernels zero a ResBlock(4 -> 8) is ReLU(shortcut): BN of zeros is its
  # offset (0), so what is left is the padded input.
  block = ResBlock(8, "batch")
  v = jax.jit(functools.partial(block.init, train=False))(jax.random.key(0), x)
  v = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if path[-1].key == "kernel" else a, v)
  got = np.asarray(_apply(block, train=False)(v, x))
  np.testing.assert_array_equal(got, np.maximum(np_pad_channels(x, 8), 0))


@pytest.mark.parametrize("subpixel", [True, False])
def test_transposed_conv_is_tf_conv2d_transpose_same(subpixel):
  x = _image(1, (2, 3, 4, 3))
  model = ConvTransposeSame(5, subpixel=subpixel)
  v = _random_variables(_shapes(model, x), 2)
  p = _f64(v["params"])
  assert p["kernel"].shape == (3, 3, 5, 3)  # TF's conv2d_transpose layout [h, w, out, in]
  got = np.asarray(_apply(model)(v, x))
  assert got.shape == (2, 6, 8, 5)
  want = np_tf_deconv_same(x.astype(np.float64), p["kernel"], p["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The transcription's taps: out[2m] = x[m] W[0] + x[m - 1] W[2], out[2m + 1] = x[m] W[1].
  x1 = np.arange(1.0, 4.0).reshape(1, 3, 1, 1)
  w1 = np.zeros((3, 1, 1, 1))
  w1[:, 0, 0, 0] = [1.0, 10.0, 100.0]
  np.testing.assert_array_equal(np_tf_deconv_same(x1, w1)[0, :, 0, 0],
                                [1, 10, 102, 20, 203, 30])
  # ... and TF's definition: the input gradient of conv2d(stride 2, SAME) on the output.
  y_shape = jax.ShapeDtypeStruct((2, 6, 8, 5), jnp.float32)
  fwd = lambda y: jax.lax.conv_general_dilated(y, v["params"]["kernel"], (2, 2), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _, vjp = jax.vjp(fwd, jnp.zeros(y_shape.shape))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(x))[0]) + p["bias"], want,
                             rtol=1e-5, atol=1e-5)


def test_drn_block_dilated_conv_and_batch_norm_against_numpy():
  x = _image(3, (2, 5, 6, 4))
  block = DrnBlock(4)
  v = _random_variables(_shapes(block, x, train=False), 4)
  p = _f64(v["params"])
  assert p["c1"]["kernel"].shape == (3, 3, 4, 4) and p["c1"]["bias"].shape == (4,)
  out, _ = _apply(block, train=True, mutable=["batch_stats"])(v, x)
  norm = lambda h, name: np_batch_norm(h, p[name])
  pad2 = ((2, 2), (2, 2))
  xd = x.astype(np.float64)
  t = relu(norm(np_conv(xd, p["c1"]["kernel"], p["c1"]["bias"], pads=pad2, dilation=2),
                "c1_norm"))
  t = norm(np_conv(t, p["c2"]["kernel"], p["c2"]["bias"], pads=pad2, dilation=2), "c2_norm")
  np.testing.assert_allclose(np.asarray(out), relu(xd + t), rtol=1e-4, atol=1e-4)
  # The dilated conv by itself: pad 2, then taps 2 apart; one tap checked by hand.
  conv = np_conv(xd, p["c1"]["kernel"], None, pads=pad2, dilation=2)
  by_hand = sum(xd[0, 1 + 2 * ky - 2, 2 + 2 * kx - 2] @ p["c1"]["kernel"][ky, kx]
                for ky in range(3) for kx in range(3)
                if 0 <= 1 + 2 * ky - 2 < 5 and 0 <= 2 + 2 * kx - 2 < 6)
  np.testing.assert_allclose(conv[0, 1, 2], by_hand, rtol=1e-12)


def test_segmenter_is_a_1x1_conv_then_half_pixel_bilinear():
  f = _image(5, (2, 2, 3, 6))
  model = Segmenter(num_classes=3)
  v = _random_variables(_shapes(model, f, (5, 6)), 6)
  got = np.asarray(_apply(model, size=(5, 6))(v, f))
  logits = f.astype(np.float64) @ _f64(v["params"])["c8"]["kernel"][0, 0]

  def weights(n_in, n_out):  # half-pixel centres, clamped at the borders
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m

  want = np.einsum("ih,jw,nhwc->nijc", weights(2, 5), weights(3, 6), logits)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- whole small networks against numpy --------------------------------------------------

def test_generator_against_numpy():
  x = _image(7, (2, 8, 12, 1))
  model = Generator(features=2, n_blocks=2)
  v = _random_variables(_shapes(model, x), 8)
  got = np.asarray(_apply(model)(v, x))
  want = np_generator(_f64(v["params"]), x.astype(np.float64), 2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(got - np.tanh(x)).max() > 1e-2


# One small encoder, its two modes compiled once for the tests below.
ENCODER = Encoder(features=2)
ENCODER_TRAIN = _apply(ENCODER, train=True, mutable=["batch_stats"])
ENCODER_EVAL = _apply(ENCODER, train=False, mutable=["batch_stats"])


def test_encoder_against_numpy_in_both_modes():
  x = _image(9, (2, 16, 16, 1))
  v = _random_variables(_shapes(ENCODER, x, train=False), 10)
  xd = x.astype(np.float64)
  (f, f_ll), _ = ENCODER_TRAIN(v, x)
  want_f, want_ll = np_encoder(_f64(v["params"]), xd, 2)
  np.testing.assert_allclose(np.asarray(f_ll), want_ll, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(np.asarray(f), want_f, rtol=1e-3, atol=1e-3)
  # train=False normalises with the running statistics in "batch_stats".
  (f, f_ll), _ = ENCODER_EVAL(v, x)
  want_f, want_ll = np_encoder(_f64(v["params"]), xd, 2, stats=_f64(v["batch_stats"]))
  np.testing.assert_allclose(np.asarray(f_ll), want_ll, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(np.asarray(f), want_f, rtol=1e-3, atol=1e-3)
  assert f.shape == f_ll.shape == (2, 2, 2, 64)


def test_decoder_against_numpy():
  f = _image(11, (2, 2, 3, 6))
  x = _image(12, (2, 16, 24, 1))
  model = Decoder(features=4, n_blocks=2, dropout_rate=0.25)
  v = _random_variables(_shapes(model, f, x, deterministic=True), 13)
  p = _f64(v["params"])
  assert [p[f"up{i}"]["kernel"].shape[2] for i in (1, 2, 3)] == [8, 8, 4]
  got = np.asarray(_apply(model, deterministic=True)(v, f, x))
  want = np_decoder(p, f.astype(np.float64), x.astype(np.float64), 2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_discriminator_against_numpy():
  x = _image(14, (2, 16, 16, 3))
  model = PatchDiscriminator(features=4, out_channels=2)
  v = _random_variables(_shapes(model, x), 15)
  got = np.asarray(_apply(model)(v, x))
  assert got.shape == (2, 5, 5, 2)
  want = np_discriminator(_f64(v["params"]), x.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_inspector_against_numpy():
  x = _image(16, (2, 16, 16, 1))
  model = MixupInspector(k=8, features=4)
  v = _random_variables(_shapes(model, x), 17)
  p = _f64(v["params"])
  assert [p["down0"]["kernel"].shape[-1], p["down1"]["kernel"].shape[-1]] == [4, 8]
  assert p["up0"]["kernel"].shape == (4, 4, 16, 8)  # [h, w, out, in]
  cells, glob = _apply(model)(v, x)
  want_cells, want_glob = np_inspector(p, x.astype(np.float64))
  assert cells.shape == (2, 8, 8) and glob.shape == (2,)
  np.testing.assert_allclose(np.asarray(cells), want_cells, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(glob), want_glob, rtol=1e-4, atol=1e-4)


# --- skips, dropout, running statistics, initialisation, size checks ---------------------

def test_residual_skips():
  x = _image(18, (2, 16, 16, 1))
  g = Generator(features=4, n_blocks=1)
  v = _random_variables(_shapes(g, x), 19)
  # All conv kernels (and the last bias) zero; or only the last conv, the rest random.
  zero_all = lambda v: jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if path[-1].key == "kernel" or path[-2].key == "c6"
      else a, v)
  zero_last = lambda v: jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if path[-2].key == "c6" else a, v)
  run = _apply(g)
  for zero in (zero_all, zero_last):
    np.testing.assert_allclose(np.asarray(run(zero(v), x)), np.tanh(x), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(run(v, x)) - np.tanh(x)).max() > 1e-2
  f = _image(20, (2, 2, 2, 8))
  u = Decoder(features=4, n_blocks=1)
  vu = _random_variables(_shapes(u, f, x, deterministic=True), 21)
  run = _apply(u, deterministic=False)
  rngs = {"dropout": jax.random.key(0)}
  for zero in (zero_all, zero_last):
    np.testing.assert_allclose(np.asarray(run(zero(vu), f, x, rngs=rngs)), np.tanh(x),
                               rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(run(vu, f, x, rngs=rngs)) - np.tanh(x)).max() > 1e-2


def test_decoder_dropout():
  f = _image(22, (2, 2, 2, 8))
  x = _image(23, (2, 16, 16, 1))
  model = Decoder(features=4, n_blocks=1, dropout_rate=0.25)
  v = _random_variables(_shapes(model, f, x, deterministic=True), 24)
  det = _apply(model, deterministic=True)
  a = np.asarray(det(v, f, x))
  np.testing.assert_array_equal(a, np.asarray(det(v, f, x, rngs={"dropout": jax.random.key(5)})))
  drop = _apply(model, deterministic=False)
  d1 = np.asarray(drop(v, f, x, rngs={"dropout": jax.random.key(1)}))
  d2 = np.asarray(drop(v, f, x, rngs={"dropout": jax.random.key(2)}))
  np.testing.assert_array_equal(d1, np.asarray(drop(v, f, x, rngs={"dropout": jax.random.key(1)})))
  assert np.abs(d1 - d2).max() > 1e-3 and np.abs(d1 - a).max() > 1e-3
  no_drop = Decoder(features=4, n_blocks=1, dropout_rate=0.0)
  d0 = np.asarray(_apply(no_drop, deterministic=False)(v, f, x,
                                                      rngs={"dropout": jax.random.key(1)}))
  np.testing.assert_array_equal(d0, a)
  with pytest.raises(Exception, match="dropout"):
    drop(v, f, x)  # no rng given


def test_encoder_batch_norm_statistics():
  x = _image(25, (2, 16, 16, 1))
  v = _random_variables(_shapes(ENCODER, x, train=False), 26)
  old = v["batch_stats"]["c1_norm"]
  (f, _), updated = ENCODER_TRAIN(v, x)
  conv = np_conv_same(x.astype(np.float64), _f64(v["params"])["c1"]["kernel"])
  new = updated["batch_stats"]["c1_norm"]
  np.testing.assert_allclose(np.asarray(new["mean"]),
                             0.9 * old["mean"] + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["var"]),
                             0.9 * old["var"] + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  # Every BN moved; train=False is per sample (running statistics) and leaves them as they are.
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       v["batch_stats"], updated["batch_stats"])
  assert all(jax.tree.leaves(moved))
  (f_eval, _), after = ENCODER_EVAL(v, x)
  jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], v["batch_stats"])
  (f_one, _), _ = ENCODER_EVAL(v, x[:1])
  np.testing.assert_allclose(np.asarray(f_one[0]), np.asarray(f_eval[0]), rtol=1e-5, atol=1e-5)
  (f_train_one, _), _ = ENCODER_TRAIN(v, x[:1])
  assert np.abs(np.asarray(f_train_one[0]) - np.asarray(f[0])).max() > 1e-3


def test_initialisation():
  x = jnp.zeros((1, 16, 16, 1))
  g = jax.jit(Generator().init)(jax.random.key(0), x)["params"]
  e = jax.jit(functools.partial(ENCODER.init, train=False))(jax.random.key(1), x)
  d = jax.jit(PatchDiscriminator().init)(jax.random.key(2), x)["params"]
  i = jax.jit(MixupInspector(k=8).init)(jax.random.key(3), x)["params"]

  def check_truncated(kernel, std):
    k = np.asarray(kernel)
    assert np.abs(k).max() <= 2 * std + 1e-7
    # N(0, std) cut at +-2 std has standard deviation 0.8796 std.
    np.testing.assert_allclose(k.std(), 0.8796 * std, rtol=0.05)

  check_truncated(g["r1"]["c1"]["kernel"], 0.02)
  check_truncated(g["c4"]["kernel"], 0.02)
  check_truncated(e["params"]["c3"]["kernel"], 0.01)
  check_truncated(e["params"]["d1"]["c1"]["kernel"], 0.01)
  check_truncated(d["c4"]["kernel"], 0.02)
  k = np.asarray(i["down1"]["kernel"])
  assert np.abs(k).max() > 2.5 * 0.02  # the Inspector's init is the untruncated N(0, 0.02)
  np.testing.assert_allclose(k.std(), 0.02, rtol=0.05)
  biases = [g["c1"]["bias"], g["c4"]["bias"], e["params"]["d1"]["c1"]["bias"], i["up0"]["bias"]]
  assert not any(np.asarray(b).any() for b in biases)
  assert np.all(np.asarray(g["c1_norm"]["scale"]) == 1)
  assert not np.asarray(g["c1_norm"]["bias"]).any()
  stats = e["batch_stats"]["r1"]["c1_norm"]
  assert np.all(np.asarray(stats["var"]) == 1) and not np.asarray(stats["mean"]).any()
  assert "bias" not in e["params"]["c1"] and "bias" not in d["c1"]


@pytest.mark.parametrize("shape,k,match", [
    ((1, 32, 16, 1), 8, "square"),
    ((1, 24, 24, 1), 8, "power-of-2"),
    ((1, 4, 4, 1), 4, ">= 8"),
    ((1, 32, 32, 1), 6, "power of 2"),
    ((1, 32, 32, 1), 2, "4 <= k"),
    ((1, 32, 32, 1), 64, "k <="),
])
def test_inspector_rejects_bad_sizes(shape, k, match):
  with pytest.raises(ValueError, match=match):
    _shapes(MixupInspector(k=k), jax.ShapeDtypeStruct(shape, jnp.float32))
