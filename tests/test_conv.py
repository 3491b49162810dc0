"""models/conv.py: the convolution whose gradients are canonical convolutions, checked
against jax.lax's own (values, gradients, a gradient penalty's double backward) and on the
compiled program of a scanned training step: every convolution XLA:CPU is handed inside the
loop is in the canonical order its fast kernels need."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64, lax

from medda_jax.models import conv

CASES = [  # input, kernel, strides, padding, lhs dilation, rhs dilation, dimension numbers
    ((2, 7, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC")),
    ((2, 7, 6, 3), (4, 4, 3, 2), (2, 2), ((1, 2), (2, 1)), None, (2, 1),
     ("NHWC", "HWIO", "NHWC")),
    ((1, 4, 5, 2), (3, 3, 2, 3), (1, 1), ((2, 2), (1, 1)), (2, 2), None,  # transposed conv
     ("NHWC", "HWIO", "NHWC")),
    ((2, 3, 7, 6), (4, 3, 3, 3), (2, 1), "VALID", None, None, ("NCHW", "OIHW", "NCHW")),
    ((1, 5, 4, 3, 2), (3, 3, 2, 2, 3), (1, 2, 1), "SAME", None, None,
     ("NDHWC", "DHWIO", "NDHWC")),
    # kernels larger than their inputs: computed with the operands swapped (as XLA would)
    ((2, 3, 4, 2), (5, 4, 2, 3), (2, 1), ((3, 2), (1, 2)), (1, 2), (1, 2),
     ("NHWC", "HWIO", "NHWC")),
    ((3, 2, 2, 1), (4, 4, 1, 2), (1, 1), ((3, 3), (3, 3)), None, None,
     ("NHWC", "HWIO", "NHWC")),
]


@pytest.mark.parametrize("shape, kernel, strides, padding, lhs_dil, rhs_dil, dn", CASES)
def test_values_gradients_and_double_backward_equal_lax(shape, kernel, strides, padding,
                                                        lhs_dil, rhs_dil, dn):
  with enable_x64():
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.normal(size=kernel))
    plain = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil, dn)
    ours = lambda x, w: conv.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil, dn)
    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-12, atol=1e-12)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(plain), (0, 1))(x, w)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # a gradient penalty: the kernel's gradient of the squared input-gradient norm
    penalty = lambda f: lambda w, x: jnp.sum(
        jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, w))))(x) ** 2)
    np.testing.assert_allclose(jax.grad(penalty(ours))(w, x), jax.grad(penalty(plain))(w, x),
                               rtol=1e-9, atol=1e-9)


def test_the_swap_rule_is_xlas():
  # the cases above that XLA's ConvOperandSwapper swaps: the window is larger than the input
  assert conv._xla_would_swap((2, 3, 4, 2), (5, 4, 2, 3), (2, 1), ((3, 2), (1, 2)), (1, 2),
                              (1, 2))
  assert conv._xla_would_swap((3, 2, 2, 1), (4, 4, 1, 2), (1, 1), ((3, 3), (3, 3)), (1, 1),
                              (1, 1))
  assert not conv._xla_would_swap((2, 7, 6, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)),
                                  (1, 1), (1, 1))
  # a single-pixel input padded by window - 1 on both sides counts as the window's size
  assert not conv._xla_would_swap((2, 1, 1, 3), (3, 3, 3, 4), (1, 1), ((2, 2), (2, 2)),
                                  (1, 1), (1, 1))
  assert conv._xla_would_swap((2, 1, 1, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)),
                              (1, 1), (1, 1))


def test_flax_conv_keeps_parameters_and_numbers():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 3)), jnp.float32)
  ours, plain = conv.Conv(4, (3, 3), strides=2), nn.Conv(4, (3, 3), strides=2)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x), rtol=1e-6)


def _scanned_step_hlo(convolution, penalty: bool = False) -> str:
  """The compiled program of 3 SGD steps of a 3-layer conv net as one lax.scan; with
  `penalty`, of a critic's gradient penalty (its double backward through a strided
  convolution holds kernel gradients whose window is larger than their input)."""
  def net(p, x):
    h = jax.nn.relu(convolution(x, p[0], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    h = jax.nn.relu(convolution(h, p[1], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.mean(convolution(h, p[2], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

  def loss(p, x):
    if not penalty:
      return net(p, x)
    return jnp.sum(jax.grad(net, 1)(p, x) ** 2)

  def step(p, x):
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, x)), None

  params = [jnp.ones((3, 3, 1, 4)), jnp.ones((3, 3, 4, 4)), jnp.ones((3, 3, 4, 1))]
  xs = jnp.ones((3, 2, 8, 8, 1))
  run = jax.jit(lambda p, xs: lax.scan(step, p, xs)[0])
  return run.lower(params, xs).compile().as_text()


@pytest.mark.parametrize("penalty", [False, True], ids=["loss", "gradient_penalty"])
def test_a_scanned_training_step_hands_xla_only_canonical_convolutions(penalty):
  labels = lambda hlo: re.findall(r"convolution\([^\n]*dim_labels=(\S+?),", hlo)
  ours = labels(_scanned_step_hlo(conv.conv_general_dilated, penalty))
  # forward (3), input gradients (2) and kernel gradients (3) of the loop body, each in
  # the order XLA:CPU's Eigen / YNNPACK kernels take; a fused forward convolution may be
  # listed inside its fusion only
  assert ours and set(ours) == {"b01f_01io->b01f"}, ours
  # with jax.lax's own gradients the loop body keeps non-canonical ones (which XLA:CPU
  # runs as a naive loop nest, about 20x slower)
  assert set(labels(_scanned_step_hlo(lax.conv_general_dilated, penalty))) - {"b01f_01io->b01f"}


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=(2, 2), strides=(2, 2)),  # U-Net up-sampling
    dict(kernel_size=(2, 2), strides=(2, 2), padding="VALID", use_bias=False),
    dict(kernel_size=(3, 3), strides=(2, 2), padding=((1, 2), (1, 2))),  # torch output_padding 1
    dict(kernel_size=(4, 4), strides=(2, 2), padding="SAME", transpose_kernel=True),
    dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME", transpose_kernel=True,
         kernel_dilation=(2, 1)),
])
def test_flax_conv_transpose_keeps_parameters_numbers_and_gradients(kwargs):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 6, 3)), jnp.float32)
  ours, plain = conv.ConvTranspose(4, **kwargs), nn.ConvTranspose(4, **kwargs)
  variables = plain.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), variables)
  np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5,
                             atol=1e-6)
  grad = lambda m: jax.grad(lambda v: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grad(ours), grad(plain))
